//! The one place where errors become HTTP responses: `{"error": {"code", "message"}}` with a 4xx saying
//! what is wrong, or an opaque 5xx whose cause goes to the log. Every variant is matched explicitly.

use actix_web::error::{JsonPayloadError, ResponseError};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::json;

use crate::domain::{BreakpointId, TaskId, TaskStatus};
use crate::service::{
    BreakpointsError, CancelError, CompareError, ConfirmError, DeleteError, SubmitError,
    ToolReplayError,
};
use crate::storage::StorageError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body is JSON of the wrong shape.
    #[error("request body is invalid: {0}")]
    InvalidBody(String),
    /// The body is not declared as JSON.
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    /// The body did not arrive in time (`server.body_timeout_seconds`).
    #[error("{0}")]
    RequestTimeout(String),
    /// The body is larger than allowed.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The prompt is empty.
    #[error("prompt must not be empty")]
    EmptyPrompt,
    /// The prompt is too long.
    #[error("prompt has {chars} characters; at most {max} are allowed")]
    PromptTooLarge {
        /// Its length.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// An option is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// A path id is not a UUID.
    #[error("'{0}' is not a task id (a UUID)")]
    InvalidId(String),
    /// A path's tool-call id is not one Troupe gives.
    #[error("'{0}' is not a tool-call id (1..=128 letters, digits, '.', '_', '-', ':')")]
    InvalidCallId(String),
    /// The task has no recorded tool call of this id.
    #[error("{0}")]
    ToolCallNotFound(String),
    /// The recorded tool call cannot be replayed as it was recorded.
    #[error("{0}")]
    NotReplayable(String),
    /// The sandbox a replay needs is off or cannot run code on this server (not the client's fault, and
    /// no retry helps until the server is configured otherwise).
    #[error("{0}")]
    SandboxUnavailable(String),
    /// Every sandbox slot stayed busy; retry shortly (503 with `Retry-After`).
    #[error("{0}")]
    SandboxBusy(String),
    /// The query string is invalid.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// No such task.
    #[error("task {0} does not exist")]
    TaskNotFound(TaskId),
    /// An experiment's specification cannot run; says what is wrong.
    #[error("{0}")]
    InvalidExperiment(String),
    /// No such experiment.
    #[error("experiment {0} does not exist")]
    ExperimentNotFound(crate::domain::experiment::ExperimentId),
    /// The task is already over.
    #[error("task {id} is already {status}")]
    TaskFinished {
        /// The task.
        id: TaskId,
        /// Its terminal status.
        status: TaskStatus,
    },
    /// The task has not finished, so it cannot be deleted.
    #[error("task {id} is {status}; only a finished task can be deleted (cancel it first)")]
    TaskUnfinished {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// A fork's source has not finished, so its recording is not complete.
    #[error("task {id} is {status}; only a finished task can be forked")]
    SourceUnfinished {
        /// The source.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// The task waits for no confirmation.
    #[error("task {id} is {status} and is not waiting for a confirmation")]
    NotAwaitingConfirmation {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// A breakpoint's body parses but asks for something that cannot be (an unknown kind or tool, a bad
    /// condition, fields that do not apply).
    #[error("invalid breakpoint: {0}")]
    InvalidBreakpoint(String),
    /// A path segment is not a breakpoint id.
    #[error("'{0}' is not a breakpoint id (a UUID)")]
    InvalidBreakpointId(String),
    /// No such breakpoint.
    #[error("breakpoint {0} does not exist")]
    BreakpointNotFound(BreakpointId),
    /// As many breakpoints as allowed are set.
    #[error("{0}")]
    TooManyBreakpoints(String),
    /// The task is not paused at a breakpoint.
    #[error("task {id} is {status} and is not paused at a breakpoint")]
    NotPaused {
        /// The task.
        id: TaskId,
        /// Its status.
        status: TaskStatus,
    },
    /// The task is held by another process of the deployment, which answers this (the Redis queue).
    #[error("{0}")]
    HeldElsewhere(String),
    /// The route serves only WebSocket upgrades.
    #[error("this route serves a WebSocket: send an upgrade request (Upgrade: websocket)")]
    UpgradeRequired,
    /// No such route.
    #[error("no such route")]
    NotFound,
    /// The route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The `Host` header names a host this server does not answer to (the DNS-rebinding defence).
    #[error("host '{0}' is not allowed: this server answers to loopback names and addresses, its bind address and server.allowed_hosts (add the name there, TROUPE__SERVER__ALLOWED_HOSTS)")]
    ForbiddenHost(String),
    /// A state-changing request or WebSocket upgrade came from a page of another origin.
    #[error("origin '{origin}' is not allowed: only pages served by this server ({host}) may change state or open WebSockets")]
    ForbiddenOrigin {
        /// The request's `Origin`.
        origin: String,
        /// The request's `Host`.
        host: String,
    },
    /// The request carries no valid auth token.
    #[error("authentication required: send Authorization: Bearer <token> (the server's TROUPE__SERVER__AUTH_TOKEN), or log in at /login")]
    Unauthorized,
    /// Too many tasks are admitted; the client should retry later (429 with `Retry-After`).
    #[error("{0}")]
    TooManyTasks(String),
    /// Too many WebSocket streams are open; the client should retry later (429 with `Retry-After`).
    #[error("{0}")]
    TooManyConnections(String),
    /// A dependency is down.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Our fault; the message stays in the log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable error code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::EmptyPrompt => "empty_prompt",
            ApiError::PromptTooLarge { .. } => "prompt_too_large",
            ApiError::InvalidOption(_) => "invalid_option",
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::InvalidCallId(_) => "invalid_call_id",
            ApiError::ToolCallNotFound(_) => "tool_call_not_found",
            ApiError::NotReplayable(_) => "not_replayable",
            ApiError::SandboxUnavailable(_) => "sandbox_unavailable",
            ApiError::SandboxBusy(_) => "sandbox_busy",
            ApiError::TaskNotFound(_) => "task_not_found",
            ApiError::InvalidExperiment(_) => "invalid_experiment",
            ApiError::ExperimentNotFound(_) => "experiment_not_found",
            ApiError::TaskFinished { .. } => "task_finished",
            ApiError::TaskUnfinished { .. } => "task_unfinished",
            ApiError::SourceUnfinished { .. } => "source_unfinished",
            ApiError::NotAwaitingConfirmation { .. } => "not_awaiting_confirmation",
            ApiError::InvalidBreakpoint(_) => "invalid_breakpoint",
            ApiError::InvalidBreakpointId(_) => "invalid_id",
            ApiError::BreakpointNotFound(_) => "breakpoint_not_found",
            ApiError::TooManyBreakpoints(_) => "too_many_breakpoints",
            ApiError::NotPaused { .. } => "not_paused",
            ApiError::HeldElsewhere(_) => "held_elsewhere",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::ForbiddenHost(_) => "forbidden_host",
            ApiError::ForbiddenOrigin { .. } => "forbidden_origin",
            ApiError::Unauthorized => "unauthorized",
            ApiError::TooManyTasks(_) => "too_many_tasks",
            ApiError::TooManyConnections(_) => "too_many_connections",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_)
            | ApiError::InvalidBody(_)
            | ApiError::EmptyPrompt
            | ApiError::InvalidOption(_)
            | ApiError::InvalidId(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidCallId(_)
            | ApiError::InvalidBreakpoint(_)
            | ApiError::InvalidBreakpointId(_)
            | ApiError::InvalidExperiment(_)
            | ApiError::UpgradeRequired => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) | ApiError::PromptTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::TaskNotFound(_)
            | ApiError::ExperimentNotFound(_)
            | ApiError::ToolCallNotFound(_)
            | ApiError::BreakpointNotFound(_)
            | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TaskFinished { .. }
            | ApiError::TaskUnfinished { .. }
            | ApiError::SourceUnfinished { .. }
            | ApiError::NotAwaitingConfirmation { .. }
            | ApiError::NotReplayable(_)
            | ApiError::TooManyBreakpoints(_)
            | ApiError::NotPaused { .. }
            | ApiError::HeldElsewhere(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ForbiddenHost(_) | ApiError::ForbiddenOrigin { .. } => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyTasks(_) | ApiError::TooManyConnections(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_)
            | ApiError::SandboxUnavailable(_)
            | ApiError::SandboxBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(%cause, "internal error");
        }
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized = self {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::TooManyTasks(_)
        | ApiError::TooManyConnections(_)
        | ApiError::SandboxBusy(_) = self
        {
            // A task or a run takes seconds at least; a second is the soonest a place can be expected.
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        response.json(json!({
            "error": { "code": self.code(), "message": self.to_string() }
        }))
    }
}

impl actix_web::Responder for ApiError {
    type Body = actix_web::body::BoxBody;
    fn respond_to(self, _request: &actix_web::HttpRequest) -> HttpResponse {
        self.error_response()
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(error: JsonPayloadError) -> Self {
        match error {
            JsonPayloadError::OverflowKnownLength { limit, .. }
            | JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge(limit),
            JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
            JsonPayloadError::Deserialize(error) | JsonPayloadError::Serialize(error) => {
                if error.is_data() {
                    ApiError::InvalidBody(error.to_string())
                } else {
                    ApiError::InvalidJson(error.to_string())
                }
            }
            JsonPayloadError::Payload(actix_web::error::PayloadError::Io(error))
                if error.kind() == std::io::ErrorKind::TimedOut =>
            {
                ApiError::RequestTimeout(error.to_string())
            }
            JsonPayloadError::Payload(error) => ApiError::InvalidBody(error.to_string()),
            other => ApiError::InvalidBody(other.to_string()),
        }
    }
}

impl From<crate::service::experiments::ExperimentError> for ApiError {
    fn from(error: crate::service::experiments::ExperimentError) -> Self {
        use crate::service::experiments::ExperimentError;
        match error {
            ExperimentError::Invalid(message) => ApiError::InvalidExperiment(message),
            ExperimentError::NotFound(id) => ApiError::ExperimentNotFound(id),
            ExperimentError::Storage(error) => ApiError::from(error),
            // A run the server cannot take now (unavailable, busy) is not the client's mistake.
            ExperimentError::Run {
                variant,
                prompt,
                source,
            } => match ApiError::from(source) {
                error @ (ApiError::Unavailable(_)
                | ApiError::Internal(_)
                | ApiError::TooManyTasks(_)) => error,
                refused => ApiError::InvalidExperiment(format!(
                    "variant '{variant}', prompt {prompt}: {refused}"
                )),
            },
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::EmptyPrompt => ApiError::EmptyPrompt,
            SubmitError::PromptTooLarge { chars, max } => ApiError::PromptTooLarge { chars, max },
            SubmitError::InvalidOption(message) => ApiError::InvalidOption(message),
            SubmitError::ReplaySourceNotFound(id) | SubmitError::ForkSourceNotFound(id) => {
                ApiError::TaskNotFound(id)
            }
            SubmitError::ForkSourceUnfinished { id, status } => {
                ApiError::SourceUnfinished { id, status }
            }
            error @ (SubmitError::Busy { .. } | SubmitError::QueueFull { .. }) => {
                ApiError::TooManyTasks(error.to_string())
            }
            SubmitError::QueueUnavailable(error) => ApiError::Unavailable(error.to_string()),
            SubmitError::Breakpoint(error) => ApiError::from(error),
            SubmitError::Storage(error) => ApiError::from(error),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(error: CancelError) -> Self {
        match error {
            CancelError::NotFound(id) => ApiError::TaskNotFound(id),
            CancelError::Finished { id, status } => ApiError::TaskFinished { id, status },
            CancelError::Storage(error) => ApiError::from(error),
            CancelError::DirectorGone => {
                ApiError::Unavailable("the director is shutting down".into())
            }
        }
    }
}

impl From<DeleteError> for ApiError {
    fn from(error: DeleteError) -> Self {
        match error {
            DeleteError::NotFound(id) => ApiError::TaskNotFound(id),
            DeleteError::Unfinished { id, status } => ApiError::TaskUnfinished { id, status },
            DeleteError::Storage(error) => ApiError::from(error),
        }
    }
}

impl From<CompareError> for ApiError {
    fn from(error: CompareError) -> Self {
        match error {
            CompareError::NotFound(id) => ApiError::TaskNotFound(id),
            CompareError::Storage(error) => ApiError::from(error),
        }
    }
}

impl From<ConfirmError> for ApiError {
    fn from(error: ConfirmError) -> Self {
        match error {
            ConfirmError::NotFound(id) => ApiError::TaskNotFound(id),
            ConfirmError::NotWaiting { id, status } => {
                ApiError::NotAwaitingConfirmation { id, status }
            }
            ConfirmError::HeldElsewhere(why) => ApiError::HeldElsewhere(why),
            ConfirmError::Storage(error) => ApiError::from(error),
        }
    }
}

impl From<ToolReplayError> for ApiError {
    fn from(error: ToolReplayError) -> Self {
        let message = error.to_string();
        match error {
            ToolReplayError::TaskNotFound(id) => ApiError::TaskNotFound(id),
            ToolReplayError::CallNotFound { .. } => ApiError::ToolCallNotFound(message),
            ToolReplayError::NotReplayable { .. } => ApiError::NotReplayable(message),
            ToolReplayError::SandboxUnavailable(_) => ApiError::SandboxUnavailable(message),
            ToolReplayError::SandboxBusy(_) => ApiError::SandboxBusy(message),
            ToolReplayError::Internal(_) => ApiError::Internal(message),
            ToolReplayError::Storage(error) => ApiError::from(error),
        }
    }
}

impl From<BreakpointsError> for ApiError {
    fn from(error: BreakpointsError) -> Self {
        match error {
            BreakpointsError::Invalid(problem) => ApiError::InvalidBreakpoint(problem.to_string()),
            BreakpointsError::TaskNotFound(id) => ApiError::TaskNotFound(id),
            BreakpointsError::TaskFinished { id, status } => ApiError::TaskFinished { id, status },
            BreakpointsError::NotFound(id) => ApiError::BreakpointNotFound(id),
            error @ BreakpointsError::TooMany { .. } => {
                ApiError::TooManyBreakpoints(error.to_string())
            }
            BreakpointsError::Storage(error) => ApiError::from(error),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        let mut cause = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            cause.push_str(": ");
            cause.push_str(&inner.to_string());
            source = inner.source();
        }
        // Unreachable (down, refusing, the pool timed out): 503, retry later; anything else is a fault.
        if error.is_unavailable() {
            ApiError::Unavailable(cause)
        } else {
            ApiError::Internal(cause)
        }
    }
}

/// Parses a task id from a path segment.
pub fn parse_task_id(text: &str) -> Result<TaskId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::InvalidId(text.chars().take(64).collect()))
}

/// Parses a breakpoint id from a path segment.
pub fn parse_breakpoint_id(text: &str) -> Result<BreakpointId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::InvalidBreakpointId(text.chars().take(64).collect()))
}

impl From<crate::memory::MemoryError> for ApiError {
    fn from(error: crate::memory::MemoryError) -> Self {
        use crate::memory::MemoryError;
        match error {
            MemoryError::Disabled => ApiError::Unavailable(error.to_string()),
            MemoryError::Storage(error) => ApiError::from(error),
            MemoryError::Embedding(_) | MemoryError::Thread(_) => {
                ApiError::Internal(error.to_string())
            }
        }
    }
}

/// A problem with a request to the OpenAI-compatible front (`/v1`, `api/chat.rs`), answered in OpenAI's
/// error shape, `{"error": {"message", "type", "param", "code"}}`, which OpenAI clients read; Troupe's own
/// problems ([`ApiError`]) keep their status and code.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: String,
}

impl OpenAiError {
    /// A problem with `status`, about request field `param`, named `code`.
    pub fn new(
        status: StatusCode,
        param: Option<&'static str>,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        OpenAiError {
            status,
            message: message.into(),
            param,
            code: code.to_owned(),
        }
    }

    /// 400 for request field `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            Some(param),
            "invalid_value",
            message,
        )
    }

    /// The error's code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The request field it is about.
    pub fn param(&self) -> Option<&'static str> {
        self.param
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        if let ApiError::Internal(cause) = &error {
            tracing::error!(%cause, "internal error");
        }
        OpenAiError::new(error.status_code(), None, error.code(), error.to_string())
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let kind = if self.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        response.json(json!({
            "error": { "message": self.message, "type": kind, "param": self.param, "code": self.code }
        }))
    }
}
