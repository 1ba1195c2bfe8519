//! The chat-completions wire format as Troupe sends and reads it (async-openai's `byot`: our own types).
//!
//! Requests carry only what Troupe asks for. Responses are read leniently: every field is optional and
//! unknown fields are ignored, so that servers that add their own (Groq's `service_tier: "on_demand"` and
//! `x_groq`, llama.cpp's `timings`) or send numbers where OpenAI sends strings (llama.cpp's error `code`) parse
//! alike. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireMessage {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// Text.
    pub content: String,
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StreamOptions {
    /// Asks for a last chunk (without choices) carrying the call's usage.
    pub include_usage: bool,
}

/// A streamed chat-completions request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatRequest {
    /// The server's model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<WireMessage>,
    /// Always true: Troupe streams every call.
    pub stream: bool,
    /// Usage in the last chunk.
    pub stream_options: StreamOptions,
    /// Generation budget (`max_tokens` is what llama.cpp, Ollama, vLLM and Groq all read).
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// `{"type": "json_schema", ...}` (structured_output = "response_format").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// llama.cpp's own top-level schema field (structured_output = "llama_cpp").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
    /// Asks for each generated token's log-probability (for scoring a choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// How many alternatives per token with their log-probabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
}

/// One streamed chunk (`chat.completion.chunk`), or an error event some servers send inside the stream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChatChunk {
    /// Empty in the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// The call's usage (the last chunk, with `stream_options.include_usage`).
    #[serde(default)]
    pub usage: Option<WireUsage>,
    /// Groq's extension; its `usage` is where Groq reports usage in streams.
    #[serde(default)]
    pub x_groq: Option<XGroq>,
    /// An error reported inside an already started stream.
    #[serde(default)]
    pub error: Option<Value>,
}

/// One choice of a chunk (Troupe asks for one).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChunkChoice {
    /// The new text.
    #[serde(default)]
    pub delta: Delta,
    /// Log-probabilities of the new tokens, where asked for and supported.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length`, ... on the last content chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The new text of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Delta {
    /// Content; absent or null in role-only and final chunks.
    #[serde(default)]
    pub content: Option<String>,
}

/// `logprobs` of a choice.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

/// A generated token with its log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    #[serde(default)]
    pub token: String,
    /// Its natural-log probability.
    #[serde(default)]
    pub logprob: f64,
    /// The alternatives (including the token itself), most likely first.
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative token.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    #[serde(default)]
    pub token: String,
    /// Its natural-log probability.
    #[serde(default)]
    pub logprob: f64,
}

/// Token counts as servers report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct WireUsage {
    /// Prompt tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// Groq's `x_groq` object.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct XGroq {
    /// Groq's request id.
    #[serde(default)]
    pub id: Option<String>,
    /// Usage, in the last chunk.
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

impl ChatChunk {
    /// The usage this chunk reports, from `usage` or Groq's `x_groq.usage`.
    pub fn reported_usage(&self) -> Option<WireUsage> {
        self.usage
            .or_else(|| self.x_groq.as_ref().and_then(|groq| groq.usage))
    }
}

/// What an error body says: its message and code, from OpenAI's `{"error": {"message", "type", "code"}}`
/// (code a string, or a number from llama.cpp), Ollama's `{"error": "..."}`, a `{"detail": ...}`, or plain
/// text (bounded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorBody {
    /// The server's message.
    pub message: String,
    /// The error's `type`, if given.
    pub kind: Option<String>,
    /// The error's `code`, as text.
    pub code: Option<String>,
}

/// Longest error text kept from a server, in characters.
const ERROR_CHARS: usize = 300;

impl ErrorBody {
    /// Reads an error body of any of the shapes above.
    pub fn parse(body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body);
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => {
                Self::from_value(&value).unwrap_or_else(|| ErrorBody::plain(&value.to_string()))
            }
            Err(_) => ErrorBody::plain(&text),
        }
    }

    /// Reads an error object (`{"error": ...}` or its inside).
    pub fn from_value(value: &Value) -> Option<Self> {
        let error = value.get("error").unwrap_or(value);
        if let Some(message) = error.as_str() {
            return Some(ErrorBody::plain(message));
        }
        let as_text = |field: &Value| match field {
            Value::String(text) => Some(text.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        };
        let message = error
            .get("message")
            .or_else(|| value.get("detail"))
            .and_then(as_text)?;
        Some(ErrorBody {
            message: bounded(&message),
            kind: error.get("type").and_then(as_text),
            code: error.get("code").and_then(as_text),
        })
    }

    fn plain(text: &str) -> Self {
        ErrorBody {
            message: bounded(text.trim()),
            kind: None,
            code: None,
        }
    }

    /// The message with its code, for an error's text.
    pub fn describe(&self) -> String {
        match &self.code {
            Some(code) => format!("{} ({code})", self.message),
            None => self.message.clone(),
        }
    }
}

fn bounded(text: &str) -> String {
    if text.chars().count() <= ERROR_CHARS {
        text.to_owned()
    } else {
        let mut kept: String = text.chars().take(ERROR_CHARS).collect();
        kept.push('…');
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groq_chunks_with_their_extensions_parse() {
        let chunk: ChatChunk = serde_json::from_str(
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instant",
                "system_fingerprint":"fp_1","service_tier":"on_demand",
                "choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],
                "x_groq":{"id":"req_01"}}"#,
        )
        .unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("Hi"));
        assert_eq!(chunk.reported_usage(), None);
        let last: ChatChunk = serde_json::from_str(
            r#"{"id":"chatcmpl-1","service_tier":"on_demand","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],
                "x_groq":{"id":"req_01","usage":{"queue_time":0.01,"prompt_tokens":12,"completion_tokens":3,
                "total_tokens":15,"prompt_time":0.001}}}"#,
        )
        .unwrap();
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            last.reported_usage(),
            Some(WireUsage {
                prompt_tokens: 12,
                completion_tokens: 3
            })
        );
    }

    #[test]
    fn llama_cpp_chunks_with_logprobs_and_timings_parse() {
        let chunk: ChatChunk = serde_json::from_str(
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"code"},
                "logprobs":{"content":[{"id":123,"token":"code","bytes":[99,111,100,101],"logprob":-0.2,
                "top_logprobs":[{"id":123,"token":"code","bytes":[99],"logprob":-0.2},
                                {"id":7,"token":"research","bytes":[114],"logprob":-1.9}]}]}}],
                "created":1,"id":"x","model":"m","object":"chat.completion.chunk",
                "timings":{"predicted_per_second":80.5}}"#,
        )
        .unwrap();
        let tokens = chunk.choices[0]
            .logprobs
            .as_ref()
            .and_then(|l| l.content.clone())
            .unwrap();
        assert_eq!(tokens[0].token, "code");
        assert_eq!(tokens[0].top_logprobs[1].token, "research");
        let usage: ChatChunk = serde_json::from_str(
            r#"{"choices":[],"usage":{"completion_tokens":5,"prompt_tokens":20,"total_tokens":25}}"#,
        )
        .unwrap();
        assert_eq!(usage.reported_usage().map(|u| u.completion_tokens), Some(5));
    }

    #[test]
    fn error_bodies_of_every_shape_are_read() {
        let groq = ErrorBody::parse(
            br#"{"error":{"message":"Rate limit reached","type":"tokens","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(groq.message, "Rate limit reached");
        assert_eq!(groq.kind.as_deref(), Some("tokens"));
        assert_eq!(groq.code.as_deref(), Some("rate_limit_exceeded"));
        let llama = ErrorBody::parse(
            br#"{"error":{"code":500,"message":"context overflow","type":"server_error"}}"#,
        );
        assert_eq!(llama.code.as_deref(), Some("500"));
        assert_eq!(llama.describe(), "context overflow (500)");
        assert_eq!(
            ErrorBody::parse(br#"{"error":"model 'x' not found"}"#).message,
            "model 'x' not found"
        );
        assert_eq!(
            ErrorBody::parse(br#"{"detail":"Not Found"}"#).message,
            "Not Found"
        );
        assert_eq!(ErrorBody::parse(b"Bad Gateway\n").message, "Bad Gateway");
        let long = "x".repeat(1000);
        assert!(ErrorBody::parse(long.as_bytes()).message.chars().count() <= ERROR_CHARS + 1);
    }

    #[test]
    fn requests_leave_out_what_was_not_asked() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![WireMessage {
                role: "user",
                content: "hi".into(),
            }],
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens: 8,
            temperature: 0.0,
            seed: None,
            response_format: None,
            json_schema: None,
            logprobs: None,
            top_logprobs: None,
        };
        let json = serde_json::to_value(&request).unwrap();
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert!(json.get("logprobs").is_none() && json.get("response_format").is_none());
    }
}
