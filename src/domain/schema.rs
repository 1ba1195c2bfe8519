//! Checks a value against a JSON schema: the subset Troupe's schemas use (`type` object, array, string,
//! integer, boolean; `properties`, `required`, `additionalProperties: false`, `items`, `prefixItems`,
//! `minItems`/`maxItems`, `enum`, `const`, `minLength`/`maxLength`, `minimum`/`maximum`, `anyOf`). Model
//! output is hostile input: a tool call whose arguments do not fit is refused before the tool runs, and a
//! remote model's structured answer that does not fit is asked for again (`llm::openai`), each with the
//! first problem found.

use serde_json::Value;

/// The first way `value` does not fit `schema`, or `None` when it fits. `at` names the place (`arguments`).
pub fn problem(schema: &Value, value: &Value, at: &str) -> Option<String> {
    if let Some(Value::Array(alternatives)) = schema.get("anyOf") {
        // Fits one of them; otherwise the problem with the alternative that got furthest (its problem's
        // place is the deepest), which names the step where, say, a plan went wrong.
        let mut problems = Vec::with_capacity(alternatives.len());
        for alternative in alternatives {
            match problem(alternative, value, at) {
                None => return None,
                Some(found) => problems.push(found),
            }
        }
        // The deepest place wins; among equals, the first alternative's (its `max_by_key` over the
        // reversed list).
        return problems
            .into_iter()
            .rev()
            .max_by_key(|found| found.split(' ').next().map_or(0, str::len));
    }
    if let Some(allowed) = schema.get("const") {
        if value != allowed {
            return Some(format!("{at} must be {allowed}"));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Some(format!("{at} must be one of {}", names.join(", ")));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => object_problem(schema, value, at),
        Some("string") => {
            let Some(text) = value.as_str() else {
                return Some(format!("{at} must be a string"));
            };
            let chars = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
            if let Some(least) = schema.get("minLength").and_then(Value::as_u64) {
                if chars < least {
                    return Some(format!("{at} must have at least {least} characters"));
                }
            }
            if let Some(most) = schema.get("maxLength").and_then(Value::as_u64) {
                if chars > most {
                    return Some(format!("{at} must have at most {most} characters"));
                }
            }
            None
        }
        Some("integer") => {
            let Some(number) = value.as_i64() else {
                return Some(format!("{at} must be an integer"));
            };
            if let Some(least) = schema.get("minimum").and_then(Value::as_i64) {
                if number < least {
                    return Some(format!("{at} must be at least {least}"));
                }
            }
            if let Some(most) = schema.get("maximum").and_then(Value::as_i64) {
                if number > most {
                    return Some(format!("{at} must be at most {most}"));
                }
            }
            None
        }
        Some("boolean") if !value.is_boolean() => Some(format!("{at} must be true or false")),
        Some("array") => array_problem(schema, value, at),
        _ => None,
    }
}

fn array_problem(schema: &Value, value: &Value, at: &str) -> Option<String> {
    let Some(items) = value.as_array() else {
        return Some(format!("{at} must be an array"));
    };
    let count = u64::try_from(items.len()).unwrap_or(u64::MAX);
    if let Some(least) = schema.get("minItems").and_then(Value::as_u64) {
        if count < least {
            return Some(format!("{at} must have at least {least} items"));
        }
    }
    if let Some(most) = schema.get("maxItems").and_then(Value::as_u64) {
        if count > most {
            return Some(format!("{at} must have at most {most} items"));
        }
    }
    if let Some(Value::Array(positions)) = schema.get("prefixItems") {
        if let Some(found) =
            items
                .iter()
                .zip(positions)
                .enumerate()
                .find_map(|(index, (item, position))| {
                    problem(position, item, &format!("{at}[{index}]"))
                })
        {
            return Some(found);
        }
    }
    let item_schema = schema.get("items")?;
    items
        .iter()
        .enumerate()
        .find_map(|(index, item)| problem(item_schema, item, &format!("{at}[{index}]")))
}

fn object_problem(schema: &Value, value: &Value, at: &str) -> Option<String> {
    let Some(object) = value.as_object() else {
        return Some(format!("{at} must be an object"));
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                return Some(format!("{at}.{name} is required"));
            }
        }
    }
    for (name, item) in object {
        match properties.and_then(|properties| properties.get(name)) {
            Some(property) => {
                if let Some(problem) = problem(property, item, &format!("{at}.{name}")) {
                    return Some(problem);
                }
            }
            None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                return Some(format!("{at}.{name} is not an argument of this tool"));
            }
            None => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "language": { "type": "string", "enum": ["python", "shell"] },
                "file": { "type": "string", "minLength": 1, "maxLength": 5 },
                "k": { "type": "integer", "minimum": 1, "maximum": 10 }
            },
            "required": ["language"],
            "additionalProperties": false
        })
    }

    #[test]
    fn a_fitting_value_has_no_problem() {
        assert_eq!(
            problem(
                &schema(),
                &json!({"language": "python", "k": 3}),
                "arguments"
            ),
            None
        );
    }

    #[test]
    fn each_rule_names_the_place() {
        let cases = [
            (json!({}), "arguments.language is required"),
            (
                json!({"language": "rust"}),
                "arguments.language must be one of",
            ),
            (json!({"language": "shell", "file": "toolong"}), "at most 5"),
            (json!({"language": "shell", "k": 0}), "at least 1"),
            (json!({"language": "shell", "k": "3"}), "must be an integer"),
            (
                json!({"language": "shell", "x": 1}),
                "arguments.x is not an argument",
            ),
            (json!([]), "must be an object"),
        ];
        for (value, expected) in cases {
            let found = problem(&schema(), &value, "arguments").unwrap_or_default();
            assert!(found.contains(expected), "{value}: {found}");
        }
    }

    #[test]
    fn arrays_are_checked_by_count_and_item() {
        let schema = json!({
            "type": "array",
            "items": { "type": "string", "minLength": 2 },
            "minItems": 1,
            "maxItems": 2
        });
        assert_eq!(problem(&schema, &json!(["ab", "cd"]), "steps"), None);
        let cases = [
            (json!([]), "steps must have at least 1 items"),
            (json!(["ab", "cd", "ef"]), "steps must have at most 2 items"),
            (
                json!(["ab", "c"]),
                "steps[1] must have at least 2 characters",
            ),
            (json!("ab"), "steps must be an array"),
        ];
        for (value, expected) in cases {
            let found = problem(&schema, &value, "steps").unwrap_or_default();
            assert_eq!(found, expected, "{value}");
        }
    }
}
