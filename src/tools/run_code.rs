//! `run_code`: runs a snippet, or a file of the task's workspace, in the sandbox. The task's workspace files
//! are copied into the run's private workspace first (so a test can import the code it tests). Each
//! violation the sandbox contained is also a `sandbox.violation` event in the task's log.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Tool, ToolContext, ToolError, ToolSpec, Workspaces};
use crate::domain::EventKind;
use crate::events::EventLog;
use crate::sandbox::{Language, RunRequest, Sandbox, WorkspaceFile};

/// Longest snippet accepted, in characters.
const MAX_CODE_CHARS: usize = 64 * 1024;

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
        let language: Language = arguments["language"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: crate::sandbox::SandboxError| ToolError::InvalidInput(e.to_string()))?;
        let mut files = self.workspaces.files(context.task_id).await?;
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
        let report = self
            .sandbox
            .run(RunRequest {
                language,
                files,
                entry,
            })
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
}
