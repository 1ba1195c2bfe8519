//! `run_code`: runs a snippet, or a file of the task's workspace, in the sandbox. The task's workspace files
//! are copied into the run's private workspace first (so a test can import the code it tests). Each
//! violation the sandbox contained is also a `sandbox.violation` event in the task's log (not for a
//! replay, whose violations are in its report only).

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError, ToolSpec, Workspaces};
use crate::domain::EventKind;
use crate::events::EventLog;
use crate::sandbox::{Language, RunRequest, Sandbox, SandboxError, WorkspaceFile};

/// Longest snippet accepted, in characters.
const MAX_CODE_CHARS: usize = 64 * 1024;
/// Longest a replayed run waits for a free sandbox slot before the replay is refused as busy: a person's
/// replay should not queue long behind the tasks' runs (each of which is bounded by the wall-clock limit).
pub const REPLAY_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `run_code` tool.
pub struct RunCode {
    sandbox: Sandbox,
    workspaces: Workspaces,
    events: EventLog,
}

impl RunCode {
    /// The tool over `sandbox`.
    pub fn new(sandbox: Sandbox, workspaces: Workspaces, events: EventLog) -> Self {
        RunCode {
            sandbox,
            workspaces,
            events,
        }
    }
}

#[async_trait]
impl Tool for RunCode {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "run_code",
            description: "Run code in the sandbox (no network, read-only system, private workspace, \
                          time and memory limits) and report its outcome, output and resource use. Give \
                          either `code` or a workspace `file`.",
            input_schema: json!({
                "type": "object",
                "properties": {
                    "language": { "type": "string", "enum": ["python", "shell"] },
                    "file": { "type": "string", "minLength": 1, "maxLength": crate::sandbox::MAX_NAME_CHARS },
                    "code": { "type": "string", "maxLength": MAX_CODE_CHARS }
                },
                "required": ["language"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, context: ToolContext, arguments: Value) -> Result<Value, ToolError> {
        let request = run_request(&self.workspaces, context, &arguments).await?;
        let report = self
            .sandbox
            .run_for(context.task_id, request)
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        for violation in &report.violations {
            self.events.emit(
                context.task_id,
                EventKind::SandboxViolation,
                Some(context.agent),
                json!({
                    "kind": violation.kind,
                    "detail": violation.detail,
                    "outcome": report.outcome,
                }),
            );
        }
        serde_json::to_value(&report).map_err(|e| ToolError::Failed(format!("report: {e}")))
    }

    async fn replay(
        &self,
        context: ToolContext,
        workspace: &Workspaces,
        arguments: Value,
    ) -> Result<Value, ToolError> {
        // A sandbox that is off cannot replay a run: that is no result of the run.
        self.sandbox.check_ready().map_err(ToolError::Unavailable)?;
        let request = run_request(workspace, context, &arguments).await?;
        // The same run in the same jail; its violations are in the report, not the task's log.
        let report = self
            .sandbox
            .run_waiting(request, REPLAY_SLOT_WAIT)
            .await
            .map_err(|error| match error {
                SandboxError::Busy(_) | SandboxError::Disabled | SandboxError::Unavailable(_) => {
                    ToolError::Unavailable(error)
                }
                other => ToolError::Failed(other.to_string()),
            })?;
        serde_json::to_value(&report).map_err(|e| ToolError::Failed(format!("report: {e}")))
    }
}

/// The sandbox run a `run_code` call asks for: the files of the task's folder in `workspaces`, and the
/// entry (a workspace file, or the snippet as `main.<ext>`).
async fn run_request(
    workspaces: &Workspaces,
    context: ToolContext,
    arguments: &Value,
) -> Result<RunRequest, ToolError> {
    let language: Language = arguments["language"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: SandboxError| ToolError::InvalidInput(e.to_string()))?;
    let mut files = workspaces.files(context.task_id).await?;
    let entry = match (arguments["file"].as_str(), arguments["code"].as_str()) {
        (Some(file), None) => {
            if !files.iter().any(|f| f.name == file) {
                return Err(ToolError::InvalidInput(format!(
                    "'{file}' is not in the task's workspace"
                )));
            }
            file.to_owned()
        }
        (None, Some(code)) => {
            let entry = format!("main.{}", language.extension());
            files.retain(|f| f.name != entry);
            files.push(WorkspaceFile {
                name: entry.clone(),
                content: code.to_owned(),
            });
            entry
        }
        _ => {
            return Err(ToolError::InvalidInput(
                "give exactly one of `code` and `file`".into(),
            ))
        }
    };
    Ok(RunRequest {
        language,
        files,
        entry,
    })
}
