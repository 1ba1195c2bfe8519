//! The replay provider: answers each call with the output recorded for the same call (same `purpose`) of an
//! earlier task. Used to replay a task deterministically (`options.replay_of`), to fork it, to debug, and
//! to benchmark the orchestration without model time. A call that was never recorded fails with
//! [`LlmError::ReplayMissing`]; nothing is invented. It also holds what each recorded call asked
//! ([`ReplayProvider::request`]), which a replay compares its own requests with before it is answered
//! (`llm::models`); the provider itself answers by purpose.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::divergence::RequestPrint;
use super::{Choice, LlmError, LlmOutput, LlmProvider, LlmRequest, TokenInfo, TokenSink, Usage};
use crate::domain::TaskId;
use crate::storage::{Recording, StorageError};

/// Recorded outputs of one task, by purpose.
pub struct ReplayProvider {
    source: TaskId,
    model_name: String,
    recorded: HashMap<String, LlmOutput>,
    /// What each call asked, for the calls recorded with their request (since issue 16).
    requests: HashMap<String, RequestPrint>,
}

impl ReplayProvider {
    /// A provider answering from `recorded` (purpose -> output), the calls of task `source`.
    pub fn new(source: TaskId, model_name: String, recorded: HashMap<String, LlmOutput>) -> Self {
        ReplayProvider {
            source,
            model_name,
            recorded,
            requests: HashMap::new(),
        }
    }

    /// A provider answering with task `source`'s `recording`; a recorded choice that does not parse is a
    /// corrupt row.
    pub fn from_recording(source: TaskId, recording: Recording) -> Result<Self, StorageError> {
        let mut recorded = HashMap::with_capacity(recording.calls.len());
        let mut requests = HashMap::new();
        for call in recording.calls {
            if let Some(request) = &call.request {
                let print = RequestPrint::from_stored(&call.purpose, &call.prompt, request)
                    .map_err(|e| StorageError::Corrupt {
                        what: "model call",
                        detail: e.to_string(),
                    })?;
                requests.insert(call.purpose.clone(), print);
            }
            let choice = call
                .choice
                .map(serde_json::from_value::<Choice>)
                .transpose()
                .map_err(|e| StorageError::Corrupt {
                    what: "model call",
                    detail: format!("choice: {e}"),
                })?;
            let output = LlmOutput {
                text: call.output,
                choice,
                usage: Usage {
                    input_tokens: u64::try_from(call.prompt_tokens).unwrap_or(0),
                    output_tokens: u64::try_from(call.completion_tokens).unwrap_or(0),
                },
                generation_seconds: call.duration_seconds,
            };
            recorded.insert(call.purpose, output);
        }
        let mut provider = Self::new(source, recording.model, recorded);
        provider.requests = requests;
        Ok(provider)
    }

    /// What the recorded call `purpose` asked, where it was recorded with its request.
    pub fn request(&self, purpose: &str) -> Option<&RequestPrint> {
        self.requests.get(purpose)
    }

    /// Whether the recording holds its calls' requests, so that a replay can check its own against them.
    /// A recording made before requests were recorded is replayed by purpose alone, as it always was.
    pub fn checks_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Whether a call with this purpose was recorded.
    pub fn has(&self, purpose: &str) -> bool {
        self.recorded.contains_key(purpose)
    }

    /// The output recorded for `purpose`, if any.
    pub fn output(&self, purpose: &str) -> Option<&LlmOutput> {
        self.recorded.get(purpose)
    }

    /// How many calls were recorded.
    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    /// Whether no call was recorded.
    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }

    /// The task whose outputs are replayed.
    pub fn source(&self) -> TaskId {
        self.source
    }
}

#[async_trait]
impl LlmProvider for ReplayProvider {
    fn provider_name(&self) -> &'static str {
        "replay"
    }

    fn model_name(&self) -> &str {
        &self.model_name
    }

    async fn complete(
        &self,
        request: LlmRequest,
        on_token: TokenSink,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        if cancel.is_cancelled() {
            return Err(LlmError::Cancelled);
        }
        let output =
            self.recorded
                .get(&request.purpose)
                .cloned()
                .ok_or(LlmError::ReplayMissing {
                    purpose: request.purpose,
                })?;
        // A replay knows no probabilities or alternatives (the recording keeps text only).
        on_token(&output.text, TokenInfo::unknown());
        Ok(output)
    }

    fn check_ready(&self) -> Result<(), LlmError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::llm::OutputSpec;

    fn request(purpose: &str) -> LlmRequest {
        LlmRequest {
            purpose: purpose.into(),
            messages: vec![],
            max_tokens: 8,
            output: OutputSpec::Text,
        }
    }

    fn provider() -> ReplayProvider {
        let output = LlmOutput {
            text: "recorded".into(),
            choice: None,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 1,
            },
            generation_seconds: 0.1,
        };
        ReplayProvider::new(
            TaskId::new(),
            "m".into(),
            HashMap::from([("plan".to_owned(), output)]),
        )
    }

    #[tokio::test]
    async fn answers_with_the_recorded_output_and_streams_it() {
        let streamed = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&streamed);
        let output = provider()
            .complete(
                request("plan"),
                Arc::new(move |text, _| sink.lock().unwrap().push_str(text)),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(output.text, "recorded");
        assert_eq!(*streamed.lock().unwrap(), "recorded");
    }

    #[test]
    fn a_recording_keeps_what_each_call_asked() {
        use crate::storage::{RecordedCall, Recording};
        let asked = request("plan");
        let print = RequestPrint::of(&asked, serde_json::json!({ "provider": "p", "model": "m" }));
        let call = |purpose: &str, request: Option<String>| RecordedCall {
            purpose: purpose.into(),
            prompt: serde_json::to_string(&asked.messages).unwrap(),
            request,
            request_digest: None,
            output: "out".into(),
            choice: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            duration_seconds: 0.0,
        };
        let recording = Recording {
            model: "m".into(),
            calls: vec![call("plan", Some(print.asked_json())), call("work.1", None)],
        };
        let provider = ReplayProvider::from_recording(TaskId::new(), recording).unwrap();
        assert!(provider.checks_requests());
        assert_eq!(provider.request("plan"), Some(&print));
        assert_eq!(provider.request("work.1"), None);
        assert!(provider.has("work.1"));

        let corrupt = Recording {
            model: "m".into(),
            calls: vec![call("plan", Some("{not json".into()))],
        };
        assert!(ReplayProvider::from_recording(TaskId::new(), corrupt).is_err());
    }

    #[tokio::test]
    async fn an_unrecorded_call_is_a_clear_error() {
        let error = provider()
            .complete(
                request("work.9"),
                Arc::new(|_, _| {}),
                CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            error,
            LlmError::ReplayMissing {
                purpose: "work.9".into()
            }
        );
    }
}
