//! What a model call asked, recorded so that a replay can tell whether it asks the same: [`RequestPrint`]
//! (the messages, `max_tokens`, the output spec with its schema or options, and the configuration of the
//! model that answers: provider, model, sampling), its SHA-256 [`RequestPrint::digest`], and
//! [`compare`], which says what differs between a recorded call and a new one ([`Divergence`]).
//!
//! Stored per call in `llm_calls` (`prompt` holds the messages, `request` the rest, `request_digest` the
//! digest); read back by `llm::replay`. Deciding what a divergence does is `llm::models`' and
//! `llm::recorded`'s.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ChatMessage, LlmRequest, OutputSpec, Role};

/// Characters of context shown before the first difference in a divergence's excerpts.
const BEFORE_CHARS: usize = 40;
/// Characters shown from the first difference on.
const AFTER_CHARS: usize = 120;

/// Everything a model call asked: what makes two calls the same question to the same model.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPrint {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Generation budget.
    pub max_tokens: u32,
    /// Required shape of the output (schema, options).
    pub output: OutputSpec,
    /// The answering model's configuration, as its provider describes it
    /// ([`LlmProvider::model_config`](super::LlmProvider::model_config)).
    pub model: serde_json::Value,
}

/// The part of a [`RequestPrint`] stored beside the messages (`llm_calls.request`).
#[derive(Debug, Serialize, Deserialize)]
struct Asked {
    max_tokens: u32,
    output: OutputSpec,
    model: serde_json::Value,
}

/// A stored request that does not read back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("recorded request of '{purpose}' is unreadable: {detail}")]
pub struct UnreadableRequest {
    /// The call's purpose.
    pub purpose: String,
    /// What is wrong.
    pub detail: String,
}

impl RequestPrint {
    /// What `request` asks of the model configured as `model`.
    pub fn of(request: &LlmRequest, model: serde_json::Value) -> Self {
        RequestPrint {
            messages: request.messages.clone(),
            max_tokens: request.max_tokens,
            output: request.output.clone(),
            model,
        }
    }

    /// Reads a stored print back: `prompt` (the messages as JSON) and `request` (the rest, as JSON).
    pub fn from_stored(
        purpose: &str,
        prompt: &str,
        request: &str,
    ) -> Result<Self, UnreadableRequest> {
        let unreadable = |what: &str, error: serde_json::Error| UnreadableRequest {
            purpose: purpose.to_owned(),
            detail: format!("{what}: {error}"),
        };
        let messages: Vec<ChatMessage> =
            serde_json::from_str(prompt).map_err(|e| unreadable("messages", e))?;
        let asked: Asked = serde_json::from_str(request).map_err(|e| unreadable("request", e))?;
        Ok(RequestPrint {
            messages,
            max_tokens: asked.max_tokens,
            output: asked.output,
            model: asked.model,
        })
    }

    /// What is stored beside the messages (`llm_calls.request`): JSON of `max_tokens`, `output`, `model`.
    pub fn asked_json(&self) -> String {
        json!({
            "max_tokens": self.max_tokens,
            "output": self.output,
            "model": self.model,
        })
        .to_string()
    }

    /// SHA-256 (lower-case hex) of the whole print as canonical JSON (object keys sorted): the same for
    /// two calls exactly when they asked the same.
    pub fn digest(&self) -> String {
        let canonical = json!({
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "output": self.output,
            "model": self.model,
        });
        let hash = Sha256::digest(canonical.to_string().as_bytes());
        hash.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

/// Which part of a request differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergedPart {
    /// No call of this purpose was recorded.
    Unrecorded,
    /// Another number or order of messages.
    Messages,
    /// A system message's text (the instructions).
    System,
    /// A user message's text (the task, the step, what the agent is shown).
    Prompt,
    /// The generation budget.
    MaxTokens,
    /// The output spec: another schema, other options, another kind of output.
    Output,
    /// The model's configuration: another provider, model or sampling.
    Model,
}

impl DivergedPart {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            DivergedPart::Unrecorded => "unrecorded",
            DivergedPart::Messages => "messages",
            DivergedPart::System => "system",
            DivergedPart::Prompt => "prompt",
            DivergedPart::MaxTokens => "max_tokens",
            DivergedPart::Output => "output",
            DivergedPart::Model => "model",
        }
    }
}

/// How a call's request differs from the recorded call of the same purpose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// The call's purpose.
    pub purpose: String,
    /// The first part that differs, in the order messages, `max_tokens`, output, model.
    pub part: DivergedPart,
    /// Every part that differs.
    pub parts: Vec<DivergedPart>,
    /// For a message: which one (from 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<usize>,
    /// The first differing character of the part's text (from 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// The recorded text from a little before that position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// The new text from the same place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
}

impl Divergence {
    /// A call of `purpose` that was never recorded.
    pub fn unrecorded(purpose: &str) -> Self {
        Divergence {
            purpose: purpose.to_owned(),
            part: DivergedPart::Unrecorded,
            parts: vec![DivergedPart::Unrecorded],
            message: None,
            position: None,
            recorded: None,
            requested: None,
        }
    }

    /// One line for errors and logs: what differed, where, and the two excerpts.
    pub fn describe(&self) -> String {
        match self.part {
            DivergedPart::Unrecorded => {
                format!("the call '{}' was never recorded", self.purpose)
            }
            part => {
                let mut text =
                    format!("the call '{}' asks another {}", self.purpose, part.as_str());
                if let Some(message) = self.message {
                    text.push_str(&format!(" (message {message}"));
                    if let Some(position) = self.position {
                        text.push_str(&format!(", from character {position}"));
                    }
                    text.push(')');
                }
                if let (Some(recorded), Some(requested)) = (&self.recorded, &self.requested) {
                    text.push_str(&format!(": recorded {recorded:?}, now {requested:?}"));
                }
                text
            }
        }
    }
}

/// The first character where `a` and `b` differ, if they do (the shorter one's length when one is the
/// other's beginning).
fn first_difference(a: &str, b: &str) -> Option<usize> {
    let mut left = a.chars();
    let mut right = b.chars();
    let mut position = 0;
    loop {
        match (left.next(), right.next()) {
            (None, None) => return None,
            (x, y) if x == y => position += 1,
            _ => return Some(position),
        }
    }
}

/// `text` from a little before character `position`, bounded.
fn around(text: &str, position: usize) -> String {
    let start = position.saturating_sub(BEFORE_CHARS);
    let mut shown: String = text
        .chars()
        .skip(start)
        .take(BEFORE_CHARS + AFTER_CHARS)
        .collect();
    if start > 0 {
        shown.insert(0, '…');
    }
    if text.chars().count() > start + BEFORE_CHARS + AFTER_CHARS {
        shown.push('…');
    }
    shown
}

/// A short JSON text of `value` for an excerpt.
fn json_excerpt(value: &impl Serialize) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    around(&text, 0)
}

/// How `requested` differs from `recorded` (a call of `purpose`); `None` when they ask the same.
pub fn compare(
    purpose: &str,
    recorded: &RequestPrint,
    requested: &RequestPrint,
) -> Option<Divergence> {
    let mut parts = Vec::new();
    // The first differing message, with where its text differs.
    let mut detail: Option<(Option<usize>, Option<usize>, String, String)> = None;
    if recorded.messages.len() != requested.messages.len()
        || recorded
            .messages
            .iter()
            .zip(&requested.messages)
            .any(|(a, b)| a.role != b.role)
    {
        parts.push(DivergedPart::Messages);
        detail = Some((
            None,
            None,
            json_excerpt(&recorded.messages.iter().map(|m| m.role).collect::<Vec<_>>()),
            json_excerpt(
                &requested
                    .messages
                    .iter()
                    .map(|m| m.role)
                    .collect::<Vec<_>>(),
            ),
        ));
    } else {
        for (index, (a, b)) in recorded
            .messages
            .iter()
            .zip(&requested.messages)
            .enumerate()
        {
            let Some(position) = first_difference(&a.content, &b.content) else {
                continue;
            };
            let part = match a.role {
                Role::System => DivergedPart::System,
                Role::User => DivergedPart::Prompt,
            };
            if !parts.contains(&part) {
                parts.push(part);
            }
            detail.get_or_insert_with(|| {
                (
                    Some(index),
                    Some(position),
                    around(&a.content, position),
                    around(&b.content, position),
                )
            });
        }
    }
    if recorded.max_tokens != requested.max_tokens {
        parts.push(DivergedPart::MaxTokens);
        detail.get_or_insert_with(|| {
            (
                None,
                None,
                recorded.max_tokens.to_string(),
                requested.max_tokens.to_string(),
            )
        });
    }
    if recorded.output != requested.output {
        parts.push(DivergedPart::Output);
        let (a, b) = (
            serde_json::to_string(&recorded.output).unwrap_or_default(),
            serde_json::to_string(&requested.output).unwrap_or_default(),
        );
        let position = first_difference(&a, &b).unwrap_or(0);
        detail.get_or_insert_with(|| {
            (
                None,
                Some(position),
                around(&a, position),
                around(&b, position),
            )
        });
    }
    if recorded.model != requested.model {
        parts.push(DivergedPart::Model);
        detail.get_or_insert_with(|| {
            (
                None,
                None,
                json_excerpt(&recorded.model),
                json_excerpt(&requested.model),
            )
        });
    }
    let part = *parts.first()?;
    let (message, position, before, after) = detail.unwrap_or_default();
    Some(Divergence {
        purpose: purpose.to_owned(),
        part,
        parts,
        message,
        position,
        recorded: Some(before),
        requested: Some(after),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(user: &str) -> RequestPrint {
        RequestPrint {
            messages: vec![ChatMessage::system("You plan."), ChatMessage::user(user)],
            max_tokens: 64,
            output: OutputSpec::Json {
                schema: json!({ "type": "object", "properties": { "steps": { "maxItems": 2 } } }),
            },
            model: json!({ "provider": "llama.cpp", "model": "m", "temperature": 0.0 }),
        }
    }

    #[test]
    fn the_same_request_has_the_same_digest_and_no_divergence() {
        let a = print("Task: add two numbers");
        let b = print("Task: add two numbers");
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        assert_eq!(compare("plan", &a, &b), None);
        let stored = RequestPrint::from_stored(
            "plan",
            &serde_json::to_string(&a.messages).unwrap(),
            &a.asked_json(),
        )
        .unwrap();
        assert_eq!(stored, a);
        assert_eq!(stored.digest(), a.digest());
    }

    #[test]
    fn another_prompt_says_where_it_differs() {
        let recorded = print("Task: add two numbers");
        let requested = print("Task: add three numbers");
        assert_ne!(recorded.digest(), requested.digest());
        let divergence = compare("plan", &recorded, &requested).unwrap();
        assert_eq!(divergence.part, DivergedPart::Prompt);
        assert_eq!(divergence.parts, vec![DivergedPart::Prompt]);
        assert_eq!(divergence.message, Some(1));
        assert_eq!(divergence.position, Some(11));
        assert_eq!(
            divergence.recorded.as_deref(),
            Some("Task: add two numbers")
        );
        assert_eq!(
            divergence.requested.as_deref(),
            Some("Task: add three numbers")
        );
        let line = divergence.describe();
        assert!(line.contains("'plan' asks another prompt"), "{line}");
        assert!(line.contains("from character 11"), "{line}");
    }

    #[test]
    fn budget_schema_and_model_changes_are_named() {
        let recorded = print("p");
        let mut requested = print("p");
        requested.max_tokens = 32;
        requested.output = OutputSpec::Json {
            schema: json!({ "type": "object", "properties": { "steps": { "maxItems": 3 } } }),
        };
        requested.model["temperature"] = json!(0.7);
        let divergence = compare("plan", &recorded, &requested).unwrap();
        assert_eq!(divergence.part, DivergedPart::MaxTokens);
        assert_eq!(
            divergence.parts,
            vec![
                DivergedPart::MaxTokens,
                DivergedPart::Output,
                DivergedPart::Model
            ]
        );
        assert_eq!(divergence.recorded.as_deref(), Some("64"));

        let mut system = print("p");
        system.messages[0] = ChatMessage::system("You plan carefully.");
        let divergence = compare("plan", &recorded, &system).unwrap();
        assert_eq!(divergence.part, DivergedPart::System);
        assert_eq!(divergence.message, Some(0));

        let mut fewer = print("p");
        fewer.messages.pop();
        assert_eq!(
            compare("plan", &recorded, &fewer).unwrap().part,
            DivergedPart::Messages
        );
        assert_eq!(
            Divergence::unrecorded("work.3").describe(),
            "the call 'work.3' was never recorded"
        );
    }

    #[test]
    fn excerpts_are_bounded() {
        let long = "x".repeat(1000);
        let recorded = print(&format!("{long}a{long}"));
        let requested = print(&format!("{long}b{long}"));
        let divergence = compare("work.1", &recorded, &requested).unwrap();
        assert_eq!(divergence.position, Some(1000));
        let shown = divergence.recorded.unwrap();
        assert!(
            shown.chars().count() <= BEFORE_CHARS + AFTER_CHARS + 2,
            "{shown}"
        );
        assert!(shown.starts_with('…') && shown.ends_with('…'));
        assert_eq!(shown.chars().nth(BEFORE_CHARS + 1), Some('a'));
    }

    #[test]
    fn an_unreadable_stored_request_is_an_error() {
        let error = RequestPrint::from_stored("plan", "[]", "{not json").unwrap_err();
        assert_eq!(error.purpose, "plan");
        assert!(RequestPrint::from_stored("plan", "nope", "{}").is_err());
    }
}
