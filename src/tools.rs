//! The tool registry: what agents can do besides asking the model. Each tool has a name, a description and
//! a JSON schema for its input; a model asks for a tool with a *tool call* (`{"tool": name, "arguments":
//! {...}}`) generated under a grammar built from [`Tools::call_schema`], and [`Tools::invoke`] checks the
//! arguments against the schema and runs it.
//!
//! Every call is an `execute_tool {tool}` span (GenAI attributes `gen_ai.tool.name`, `gen_ai.tool.call.id`,
//! `gen_ai.tool.type`), a `tool.called` event in the task's log, and counted
//! (`troupe_tool_calls_total{tool,outcome}`, `troupe_tool_call_duration_seconds{tool}`).
//!
//! Tools: `run_code` (the sandbox), `search_memory` (semantic memory), `read_file`, `write_file` and
//! `list_files` (the task's workspace folder, nothing outside it).
//!
//! A recorded call can be run again ([`replay`]): with the same arguments, in a workspace rebuilt as it was
//! at that call, with no effect on the task.

pub mod replay;
pub mod run_code;
pub mod search_memory;
pub mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use crate::debug::{Debugger, Point, Resolution};
use crate::domain::{excerpt, schema, shorten, AgentKind, EventKind, PausePoint, TaskId};
use crate::events::EventLog;
use crate::memory::Memory;
use crate::sandbox::Sandbox;
use crate::telemetry::metrics::Metrics;

pub use workspace::Workspaces;

/// Longest argument or result text kept in a `tool.called` event, in characters.
const EVENT_TEXT_CHARS: usize = 2000;

/// What describes a tool to a model and to a user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    /// Its name, as a tool call names it.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// JSON schema of its arguments.
    pub input_schema: Value,
}

/// Who calls a tool, for which task.
#[derive(Debug, Clone, Copy)]
pub struct ToolContext {
    /// The task.
    pub task_id: TaskId,
    /// The calling agent.
    pub agent: AgentKind,
    /// The step it works on (0: none, such as the Director's own checks).
    pub step: i32,
}

/// A request to run a tool, as a model writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The tool's name.
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
}

impl ToolCall {
    /// Reads a tool call from model output.
    pub fn parse(text: &str) -> Result<ToolCall, ToolError> {
        serde_json::from_str(text.trim()).map_err(|e| {
            ToolError::InvalidInput(format!("not a tool call ({e}): {}", excerpt(text)))
        })
    }
}

/// A tool call that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    /// No tool has this name.
    #[error("unknown tool '{0}'")]
    UnknownTool(String),
    /// The arguments do not fit the tool's schema, or name something the tool refuses (a path outside
    /// the workspace).
    #[error("invalid tool input: {0}")]
    InvalidInput(String),
    /// The tool ran and failed (the sandbox refused, a file is missing, memory failed).
    #[error("{0}")]
    Failed(String),
    /// The tool could not run: what it needs is off or stayed busy (only from [`Tool::replay`], whose
    /// caller must not mistake it for the tool's own result).
    #[error("{0}")]
    Unavailable(crate::sandbox::SandboxError),
    /// The task was cancelled while it was paused before the tool ran.
    #[error("the task was cancelled before the tool ran")]
    Cancelled,
}

impl ToolError {
    /// A short stable name, for span attributes.
    pub fn kind(&self) -> &'static str {
        match self {
            ToolError::UnknownTool(_) => "unknown_tool",
            ToolError::InvalidInput(_) => "invalid_input",
            ToolError::Failed(_) => "failed",
            ToolError::Unavailable(_) => "unavailable",
            ToolError::Cancelled => "cancelled",
        }
    }
}

/// One tool.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description, input schema.
    fn spec(&self) -> ToolSpec;
    /// Runs the tool with arguments already checked against the schema.
    async fn call(&self, context: ToolContext, arguments: Value) -> Result<Value, ToolError>;
    /// Runs the tool again for a replay of a recorded call (arguments already checked), in `workspace` (a
    /// fresh copy of the task's workspace as it was at that call) instead of the task's own, with no effect
    /// on the task: no events, no memory bookkeeping. A resource that is off or stays busy is
    /// [`ToolError::Unavailable`], never a result.
    async fn replay(
        &self,
        context: ToolContext,
        workspace: &Workspaces,
        arguments: Value,
    ) -> Result<Value, ToolError>;
}

/// The JSON schema of a call to `tool` whose arguments fit `arguments` (a tool's input schema, or a
/// narrowing of it, such as one file that exists), for a grammar: `{"tool": "<tool>", "arguments": {...}}`.
pub fn call_schema(tool: &str, arguments: Value) -> Value {
    json!({
        "type": "object",
        "properties": {
            "tool": { "type": "string", "const": tool },
            "arguments": arguments,
        },
        "required": ["tool", "arguments"],
        "additionalProperties": false
    })
}

/// Sandbox runs a resumed task's dead process already made, by task and call id: `{"arguments": <the whole
/// arguments' JSON text>, "result": <the whole result>}`.
type RecordedRuns = Arc<Mutex<HashMap<TaskId, BTreeMap<String, Value>>>>;

/// Every tool, by name; cheap to clone.
#[derive(Clone)]
pub struct Tools {
    tools: Arc<BTreeMap<&'static str, Arc<dyn Tool>>>,
    events: EventLog,
    metrics: Metrics,
    sandbox: Sandbox,
    recorded: RecordedRuns,
    debugger: Debugger,
    workspaces: Workspaces,
}

impl Tools {
    /// The registry with Troupe's tools.
    pub fn new(
        sandbox: Sandbox,
        memory: Memory,
        workspaces: Workspaces,
        events: EventLog,
        metrics: Metrics,
        debugger: Debugger,
    ) -> Tools {
        let list: Vec<Arc<dyn Tool>> = vec![
            Arc::new(run_code::RunCode::new(
                sandbox.clone(),
                workspaces.clone(),
                events.clone(),
            )),
            Arc::new(search_memory::SearchMemory::new(memory)),
            Arc::new(workspace::ReadFile(workspaces.clone())),
            Arc::new(workspace::WriteFile(workspaces.clone())),
            Arc::new(workspace::ListFiles(workspaces.clone())),
        ];
        Tools {
            tools: Arc::new(
                list.into_iter()
                    .map(|tool| (tool.spec().name, tool))
                    .collect(),
            ),
            events,
            metrics,
            sandbox,
            recorded: RecordedRuns::default(),
            debugger,
            workspaces,
        }
    }

    /// Answers task `task_id`'s `run_code` calls with these recorded runs (a resumed task: call id ->
    /// `{"arguments", "result"}`) instead of running them again, when the arguments are the same.
    pub fn reuse_runs(&self, task_id: TaskId, runs: BTreeMap<String, Value>) {
        if runs.is_empty() {
            return;
        }
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.insert(task_id, runs);
        }
    }

    /// Forgets task `task_id`'s recorded runs (its flow ended).
    pub fn forget_runs(&self, task_id: TaskId) {
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.remove(&task_id);
        }
    }

    /// The recorded result of a resumed task's `run_code` call `call_id` with these arguments (their JSON
    /// text), taken out so that it answers once.
    fn recorded_run(&self, task_id: TaskId, call_id: &str, arguments: &str) -> Option<Value> {
        let mut recorded = self.recorded.lock().ok()?;
        let runs = recorded.get_mut(&task_id)?;
        let same = runs.get(call_id)?.get("arguments")?.as_str()? == arguments;
        if !same {
            // The call differs from the recorded one (the model answered differently): it runs.
            return None;
        }
        runs.remove(call_id)?.get("result").cloned()
    }

    /// `name` as a bounded metric or span label: the tool's own name, or `unknown` for a name no tool has.
    pub fn label(&self, name: &str) -> &'static str {
        self.tools
            .get(name)
            .map_or("unknown", |tool| tool.spec().name)
    }

    /// The sandbox `run_code` uses.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Every tool's spec, by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|tool| tool.spec()).collect()
    }

    /// The tasks' workspaces the file tools and sandbox runs use.
    pub fn workspaces(&self) -> &Workspaces {
        &self.workspaces
    }

    /// The debugger the tool calls pause at.
    pub fn debugger(&self) -> &Debugger {
        &self.debugger
    }

    /// Runs `call` for `context`: checks it, runs it in an `execute_tool` span, emits `tool.called` and
    /// counts it. `call_id` identifies the call in the span and the event. Before the tool runs the task
    /// may pause at a breakpoint (`on = "tool"`); an override of the arguments there is checked against the
    /// tool's schema and replaces them (`tool.called` then says `"overridden": true`). A task cancelled
    /// while paused here gets [`ToolError::Cancelled`].
    pub async fn invoke(
        &self,
        context: ToolContext,
        call_id: &str,
        mut call: ToolCall,
    ) -> Result<Value, ToolError> {
        let tool = self.tools.get(call.tool.as_str()).cloned();
        let mut overridden = false;
        if let Some(tool) = &tool {
            let spec = tool.spec();
            let point = || {
                let mut point = PausePoint::tool(context.agent, spec.name)
                    .with("arguments", call.arguments.clone());
                if context.step > 0 {
                    point = point.at_step(context.step);
                }
                Point {
                    key: format!("tool:{call_id}"),
                    point,
                    detail: json!({
                        "tool": spec.name,
                        "call_id": call_id,
                        "arguments": call.arguments,
                        "input_schema": spec.input_schema,
                    }),
                }
            };
            // A tool call holds no cancellation token of its own: a cancelled task's pause is released by
            // the service (`Debugger::release`).
            let resolution = self
                .debugger
                .at(
                    context.task_id,
                    point,
                    &tokio_util::sync::CancellationToken::new(),
                )
                .await
                .map_err(|_| ToolError::Cancelled)?;
            if let Resolution::Override(change) = resolution {
                let before = std::mem::replace(&mut call.arguments, change["arguments"].clone());
                overridden = true;
                self.events.emit(
                    context.task_id,
                    EventKind::DecisionOverridden,
                    Some(context.agent),
                    json!({
                        "what": "arguments",
                        "key": format!("tool:{call_id}"),
                        "tool": spec.name,
                        "step": context.step,
                        "before": before,
                        "after": call.arguments,
                    }),
                );
            }
        }
        // Bounded label: an unknown name from a model is counted as "unknown".
        let label = tool.as_ref().map_or("unknown", |tool| tool.spec().name);
        let span = tracing::info_span!(
            "execute_tool",
            otel.name = %format!("execute_tool {label}"),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = label,
            gen_ai.tool.call.id = call_id,
            gen_ai.tool.type = "function",
            gen_ai.agent.name = context.agent.as_str(),
            gen_ai.conversation.id = %context.task_id,
            error.type = tracing::field::Empty,
        );
        let started = Instant::now();
        let arguments = call.arguments.clone();
        let full_arguments = call.arguments.to_string();
        let shown_arguments = shorten(&full_arguments, EVENT_TEXT_CHARS);
        let reused = (label == "run_code")
            .then(|| self.recorded_run(context.task_id, call_id, &full_arguments))
            .flatten();
        let was_reused = reused.is_some();
        let result = async {
            if let Some(recorded) = reused {
                // A resumed task's run that its dead process made: the recorded result, not a second run.
                return Ok(recorded);
            }
            let tool = tool.ok_or_else(|| ToolError::UnknownTool(shorten(&call.tool, 60)))?;
            if let Some(problem) =
                schema::problem(&tool.spec().input_schema, &arguments, "arguments")
            {
                return Err(ToolError::InvalidInput(problem));
            }
            tool.call(context, arguments).await
        }
        .instrument(span.clone())
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .tool_calls
            .with_label_values(&[label, outcome])
            .inc();
        self.metrics
            .tool_call_duration
            .with_label_values(&[label])
            .observe(seconds);
        let mut data = json!({
            "tool": call.tool,
            "call_id": call_id,
            "arguments": shown_arguments,
            "outcome": outcome,
            "duration_seconds": seconds,
        });
        if was_reused {
            data["reused"] = json!(true);
        }
        if overridden {
            data["overridden"] = json!(true);
        }
        // A sandbox run's whole arguments and result are kept where the excerpts cut them, so that a task
        // resumed after a crash can tell the same run and reuse it instead of running it again (bounded by
        // the tool's input limit and the sandbox's output limits); a written file's whole arguments too, so
        // that a replay can rebuild the workspace as it was at any later call (bounded by the file limit).
        if matches!(label, "run_code" | "write_file") && shown_arguments != full_arguments {
            data["arguments_full"] = json!(full_arguments);
        }
        match &result {
            Ok(value) => {
                let text = value.to_string();
                let shown = shorten(&text, EVENT_TEXT_CHARS);
                if label == "run_code" && shown != text {
                    data["result_full"] = value.clone();
                }
                data["result"] = json!(shown);
            }
            Err(error) => {
                span.record("error.type", error.kind());
                data["error"] = json!(error.to_string());
            }
        }

        self.events.emit(
            context.task_id,
            EventKind::ToolCalled,
            Some(context.agent),
            data,
        );
        result
    }
}
