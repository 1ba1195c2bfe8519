//! The model of a node that runs no tasks (`server.role = "api"`): nothing is loaded there (no model worker
//! process, no model file read, no connection to a model server), and a call, which nothing on such a node
//! makes (its tasks run on the workers), fails saying so.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{LlmError, LlmOutput, LlmProvider, LlmRequest, TokenSink};

/// No model: the provider of an API node.
pub struct Absent;

#[async_trait]
impl LlmProvider for Absent {
    fn provider_name(&self) -> &'static str {
        "none"
    }

    fn model_name(&self) -> &str {
        "none (this node runs no tasks)"
    }

    async fn complete(
        &self,
        _request: LlmRequest,
        _on_token: TokenSink,
        _cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        Err(LlmError::Unavailable(
            "this node (server.role = \"api\") runs no tasks and loads no model".into(),
        ))
    }

    /// Ready: an API node needs no model to serve.
    fn check_ready(&self) -> Result<(), LlmError> {
        Ok(())
    }
}
