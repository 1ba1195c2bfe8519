//! The line protocol between the server and its model worker process: one JSON object per line, on the
//! worker's stdin (requests) and stdout (replies). Nothing else is written to the worker's stdout.

use serde::{Deserialize, Serialize};

use super::{Alternative, LlmOutput, LlmRequest};

/// Server to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Run one call. Calls are served one at a time, in order.
    Generate {
        /// Correlates replies.
        id: u64,
        /// The call.
        request: LlmRequest,
        /// Keep generating past end-of-generation tokens (benchmarks measure a fixed token count).
        #[serde(default)]
        ignore_eos: bool,
    },
    /// Stop call `id` at the next token.
    Cancel {
        /// The call.
        id: u64,
    },
}

/// Worker to server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The model is loaded; calls may be sent.
    Ready {
        /// Model file name.
        model: String,
        /// Context window.
        context: u32,
    },
    /// A streamed piece of call `id`'s output.
    Token {
        /// The call.
        id: u64,
        /// Valid UTF-8 text (incomplete characters are held back until complete).
        text: String,
        /// The probability of this text given what came before: the product of its sampled tokens'
        /// probabilities (softmax of the raw logits). Absent for text the worker forced (a choice's option).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        p: Option<f64>,
        /// The most probable tokens at the piece's first token (see [`TokenInfo::top`](super::TokenInfo)).
        /// Absent for forced text, and from a worker of an older build.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        top: Option<Vec<Alternative>>,
    },
    /// Call `id` finished.
    Done {
        /// The call.
        id: u64,
        /// Its output.
        output: LlmOutput,
        /// Seconds spent on the prompt, for prompt tokens/s.
        prompt_seconds: f64,
    },
    /// Call `id` failed; the worker goes on serving.
    Failed {
        /// The call.
        id: u64,
        /// Kind of failure (`cancelled`, `grammar`, `context_overflow`, `invalid_request`, `model`).
        kind: String,
        /// What went wrong.
        message: String,
    },
}
