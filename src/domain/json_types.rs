//! JSON values in request bodies as the OpenAPI document's JSON Schema types them, where serde's derives
//! read them otherwise:
//! - an `integer` is any number whose fractional part is zero, so `2.0` is one; serde's integer types
//!   refuse it. Fields the document declares `integer` take [`whole`] (or [`optional_whole`] with
//!   `default`), which still refuse `2.5`, what does not fit, and beyond 2^53 - 1 (JSON's exact range).
//! - an `object` is a JSON object; a derived struct also reads an array as its fields in order
//!   (`[null, null]`). Bodies and object fields take [`Object`] (or [`optional_object`] with `default`),
//!   which refuse anything but an object.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Error, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The largest integer an `f64` holds exactly (2^53).
const EXACT: f64 = 9_007_199_254_740_992.0;

fn from_json<E: Error, T: TryFrom<i128>>(number: &serde_json::Number) -> Result<T, E> {
    let value = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
        .or_else(|| {
            number
                .as_f64()
                .filter(|float| float.fract() == 0.0 && float.abs() <= EXACT)
                // Exact: a whole float of at most 2^53 in magnitude.
                .map(|float| float as i128)
        })
        .ok_or_else(|| E::custom(format!("invalid value: {number}, expected a whole number")))?;
    // Beyond 2^53 a JSON number is not exact in most readers: refused, as the document's bounds say.
    if value.unsigned_abs() >= 1 << 53 {
        return Err(E::custom(format!(
            "invalid value: integer `{value}`, out of range"
        )));
    }
    T::try_from(value)
        .map_err(|_| E::custom(format!("invalid value: integer `{value}`, out of range")))
}

/// A whole number (`3` or `3.0`) that fits `T`.
pub fn whole<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<T, D::Error> {
    from_json(&serde_json::Number::deserialize(deserializer)?)
}

/// An optional whole number (`null` is none).
pub fn optional_whole<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<serde_json::Number>::deserialize(deserializer)?
        .map(|number| from_json(&number))
        .transpose()
}

/// A `T` read from a JSON object only.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<T>(pub T);

impl<T> Object<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(PhantomData))
            .map(Object)
    }
}

/// An optional object field (`null` is none).
pub fn optional_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(Object::into_inner))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::Object;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default, deserialize_with = "super::optional_whole")]
        max: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(deserialize_with = "super::whole")]
        step: i32,
        #[serde(default, deserialize_with = "super::optional_object")]
        inner: Option<Inner>,
    }

    fn parse(text: &str) -> Result<Body, String> {
        serde_json::from_str::<Object<Body>>(text)
            .map(Object::into_inner)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn whole_floats_are_integers_and_the_rest_is_refused() {
        let body = parse(r#"{"step": 2.0, "inner": {"max": 8.0}}"#).unwrap();
        assert_eq!((body.step, body.inner.unwrap().max), (2, Some(8)));
        assert!(parse(r#"{"step": -1, "inner": {"max": null}}"#)
            .unwrap()
            .inner
            .unwrap()
            .max
            .is_none());
        assert!(parse(r#"{"step": 1}"#).unwrap().inner.is_none());
        assert!(parse(r#"{"step": 2.5}"#)
            .unwrap_err()
            .contains("whole number"));
        assert!(parse(r#"{"step": 3162822126951363584}"#)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse(r#"{"step": 1, "inner": {"max": -1}}"#)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse(r#"{"step": 1e300}"#)
            .unwrap_err()
            .contains("whole number"));
        assert!(parse(r#"{"step": "1"}"#).is_err());
    }

    #[test]
    fn only_objects_are_objects() {
        assert!(parse(r#"[1]"#)
            .unwrap_err()
            .contains("expected a JSON object"));
        assert!(parse(r#"{"step": 1, "inner": [null]}"#)
            .unwrap_err()
            .contains("expected a JSON object"));
        assert!(parse(r#"{"step": 1, "inner": null}"#)
            .unwrap()
            .inner
            .is_none());
        // Errors inside keep their position.
        assert!(parse(r#"{"step": 1, "other": 2}"#)
            .unwrap_err()
            .contains("unknown field `other`"));
    }
}
