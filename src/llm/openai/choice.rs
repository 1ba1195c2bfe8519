//! A choice asked of a server as a JSON object: its keys from the embedded provider's prefix and suffix,
//! reading the answer (whole, or cut off at the token budget after a complete option), and scoring the
//! options from the server's `logprobs` at the token where the option starts.

use serde_json::Value;

use super::wire::TokenLogprob;
use crate::domain::schema;
use crate::llm::softmax;

/// The JSON keys of a choice from its prefix (`{"agent": "`) and suffix (`", "reason": "`): the last quoted
/// name in each.
pub(super) fn choice_keys(prefix: &str, suffix: &str) -> Option<(String, String)> {
    fn last_key(text: &str) -> Option<String> {
        let colon = text.rfind(':')?;
        let before = text[..colon].trim_end().strip_suffix('"')?;
        let start = before.rfind('"')?;
        let key = &before[start + 1..];
        (!key.is_empty()).then(|| key.to_owned())
    }
    Some((last_key(prefix)?, last_key(suffix)?))
}

/// Where the string value of `key` starts in `text` (just after its opening quote).
fn value_start(text: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    let mut from = 0;
    while let Some(found) = text[from..].find(&quoted) {
        let after = from + found + quoted.len();
        let rest = &text[after..];
        let trimmed = rest.trim_start();
        if let Some(value) = trimmed.strip_prefix(':') {
            let value = value.trim_start();
            if value.starts_with('"') {
                return Some(text.len() - value.len() + 1);
            }
        }
        from = after;
    }
    None
}

/// The string value starting at `start` (unescaped up to its closing quote), and whether it was closed.
fn string_from(text: &str, start: usize) -> (String, bool) {
    let mut value = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return (value, true),
            '\\' => match chars.next() {
                Some('n') | Some('r') | Some('t') => value.push(' '),
                Some(other) => value.push(other),
                None => break,
            },
            other => value.push(other),
        }
    }
    (value, false)
}

/// The reason as the embedded provider's grammar allows it: no quotes, backslashes or line breaks.
fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if matches!(c, '"' | '\\' | '\n' | '\r') {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Reads a choice's answer: the option and the reason. A whole answer must fit the schema; one cut off by
/// the token budget (`finish_reason` "length") is taken when its option is complete, with the reason as far
/// as it got (as the embedded provider cuts its reason at the budget).
pub(super) fn read_choice(
    schema: &Value,
    text: &str,
    finish_reason: Option<&str>,
    key: &str,
    reason_key: &str,
    options: &[String],
) -> Result<(String, String), String> {
    let text = text.trim();
    match serde_json::from_str::<Value>(text) {
        Ok(value) => {
            if let Some(problem) = schema::problem(schema, &value, "answer") {
                return Err(problem);
            }
            let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default();
            Ok((field(key).to_owned(), clean_reason(field(reason_key))))
        }
        Err(error) if finish_reason == Some("length") => {
            let start = value_start(text, key)
                .ok_or_else(|| format!("the answer was cut off before its \"{key}\" ({error})"))?;
            let (option, closed) = string_from(text, start);
            if !closed || !options.contains(&option) {
                return Err(format!(
                    "answer.{key} must be one of {} (the answer was cut off)",
                    options.join(", ")
                ));
            }
            let reason = value_start(text, reason_key)
                .map(|start| string_from(text, start).0)
                .unwrap_or_default();
            Ok((option, clean_reason(&reason)))
        }
        Err(error) => Err(format!("the answer is not JSON ({error})")),
    }
}

/// The options' probabilities from the log-probabilities at the token where the value of `key` starts:
/// for each option the most likely alternative that begins it (after what of the token lies before the value,
/// e.g. a quote), softmax over those. An option no alternative begins is below the server's top
/// `llm.top_logprobs`: probability 0. `None` when the server sent no log-probabilities, they do not spell the
/// text, or no option is among them.
pub(super) fn score_options(
    tokens: &[TokenLogprob],
    text: &str,
    key: &str,
    options: &[String],
) -> Option<Vec<f64>> {
    if tokens.is_empty() {
        return None;
    }
    let spelled: String = tokens.iter().map(|token| token.token.as_str()).collect();
    if spelled != text {
        return None;
    }
    let target = value_start(text, key)?;
    let mut offset = 0;
    for token in tokens {
        let end = offset + token.token.len();
        if end > target {
            let lead = text.get(offset..target)?;
            let logits: Vec<f32> = options
                .iter()
                .map(|option| {
                    token
                        .top_logprobs
                        .iter()
                        .filter_map(|alternative| {
                            let rest = alternative.token.strip_prefix(lead)?;
                            let begins = !rest.is_empty()
                                && (option.starts_with(rest) || rest.starts_with(option.as_str()));
                            begins.then_some(alternative.logprob as f32)
                        })
                        .fold(f32::NEG_INFINITY, f32::max)
                })
                .collect();
            if logits.iter().all(|logit| logit.is_infinite()) {
                return None;
            }
            return Some(softmax(&logits));
        }
        offset = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::wire::TopLogprob;
    use super::*;
    use serde_json::json;

    fn token(text: &str, top: &[(&str, f64)]) -> TokenLogprob {
        TokenLogprob {
            token: text.into(),
            logprob: top.first().map_or(0.0, |t| t.1),
            top_logprobs: top
                .iter()
                .map(|(token, logprob)| TopLogprob {
                    token: (*token).into(),
                    logprob: *logprob,
                })
                .collect(),
        }
    }

    fn options() -> Vec<String> {
        vec!["research".into(), "code".into(), "qa".into()]
    }

    #[test]
    fn choice_keys_come_from_prefix_and_suffix() {
        assert_eq!(
            choice_keys("{\"agent\": \"", "\", \"reason\": \""),
            Some(("agent".into(), "reason".into()))
        );
        assert_eq!(choice_keys("pick: ", "\""), None);
    }

    #[test]
    fn options_are_scored_at_the_token_where_the_value_starts() {
        let tokens = vec![
            token("{\"", &[]),
            token("agent", &[]),
            token("\":", &[]),
            token(" \"", &[]),
            token(
                "code",
                &[
                    ("code", -0.1),
                    ("research", -2.5),
                    ("q", -4.0),
                    ("hello", -1.0),
                ],
            ),
            token("\"}", &[]),
        ];
        let text: String = tokens.iter().map(|t| t.token.clone()).collect();
        let scores = score_options(&tokens, &text, "agent", &options()).unwrap();
        let sum: f64 = scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9);
        let expected = softmax(&[-2.5, -0.1, -4.0]);
        for (got, want) in scores.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{scores:?}");
        }
    }

    #[test]
    fn a_token_that_carries_the_quote_is_matched_after_it() {
        let tokens = vec![
            token("{\"agent\": ", &[]),
            token("\"res", &[("\"res", -0.3), ("\"code", -1.3), ("\"x", -0.5)]),
            token("earch\"}", &[]),
        ];
        let text: String = tokens.iter().map(|t| t.token.clone()).collect();
        let scores = score_options(&tokens, &text, "agent", &options()).unwrap();
        assert!(scores[0] > scores[1] && scores[2] == 0.0, "{scores:?}");
    }

    #[test]
    fn without_logprobs_nothing_is_scored() {
        let text = "{\"agent\": \"code\"}";
        assert_eq!(score_options(&[], text, "agent", &options()), None);
        let unrelated = vec![token(text, &[("zzz", -0.1)])];
        assert_eq!(score_options(&unrelated, text, "agent", &options()), None);
    }

    /// Reads `text` as a choice's answer that ended for `finish`.
    fn read(text: &str, finish: &str) -> Result<(String, String), String> {
        read_choice(
            &choice_schema(),
            text,
            Some(finish),
            "agent",
            "reason",
            &options(),
        )
    }

    fn choice_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "agent": { "type": "string", "enum": options() },
                "reason": { "type": "string" }
            },
            "required": ["agent", "reason"],
            "additionalProperties": false
        })
    }

    #[test]
    fn a_choice_reads_whole_or_cut_off_at_the_budget() {
        assert_eq!(
            read(
                "{\"agent\": \"qa\", \"reason\": \"it \\\"reviews\\\"\"}",
                "stop"
            ),
            Ok(("qa".into(), "it  reviews".into()))
        );
        assert_eq!(
            read("{\"agent\": \"code\", \"reason\": \"it writes", "length"),
            Ok(("code".into(), "it writes".into()))
        );
        assert!(read("{\"agent\": \"boss\", \"reason\": \"x\"}", "stop")
            .unwrap_err()
            .contains("must be one of"));
        assert!(read("{\"agent\": \"co", "length").is_err());
        assert!(read("I pick code", "stop")
            .unwrap_err()
            .contains("not JSON"));
    }
}
