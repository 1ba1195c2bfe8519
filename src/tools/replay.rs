//! Tool-call replay: a recorded call (its `tool.called` event) run again with the same arguments in a fresh
//! temporary workspace rebuilt as the task's was at that call (from the successful `write_file` calls
//! before it, by `seq`: a later attempt may have overwritten a file), and what came out compared with what
//! was recorded.
//!
//! What is compared: for `run_code`, what the run's judge and its readers see: `passed` (outcome `ok`), the
//! outcome, exit code, signal, stdout, stderr, whether the output was cut and the kinds of the violations
//! the sandbox contained; not wall or CPU time or memory. For the other tools, each field of the result.
//! An error against a result, or two different errors, differ; a result the event kept cut is compared cut
//! the same way. The replay never touches the task: no event, no file of its workspace, no memory
//! bookkeeping (its caller decides about its own `tool.replayed` event).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use tracing::Instrument;

use super::{ToolContext, ToolError, Tools, Workspaces, EVENT_TEXT_CHARS};
use crate::domain::{schema, shorten, AgentKind, Event};
use crate::sandbox::{SandboxError, WorkspaceFile};

/// A recorded call could not be replayed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplayError {
    /// What the replay needs was not recorded whole (arguments, or a file written before the call, cut
    /// in the event by a build that kept only excerpts).
    #[error("{0}")]
    NotReplayable(String),
    /// The recorded event is not of the shape `Tools::invoke` writes.
    #[error("tool.called event {seq} is malformed: {detail}")]
    Corrupt {
        /// The event.
        seq: i64,
        /// What is wrong.
        detail: String,
    },
    /// The sandbox is off, cannot run code here, or stayed busy.
    #[error("{0}")]
    Sandbox(SandboxError),
    /// The temporary workspace could not be made.
    #[error("prepare the replay's workspace: {0}")]
    Workspace(String),
}

/// A recorded tool call, read from its `tool.called` event.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    /// The event's `seq`.
    pub seq: i64,
    /// The call's id.
    pub call_id: String,
    /// The tool's name, as the call named it.
    pub tool: String,
    /// The agent that made it.
    pub agent: Option<AgentKind>,
    /// Its whole arguments.
    pub arguments: Value,
    /// What it gave.
    pub outcome: Outcome,
}

/// What a tool call gave, recorded or replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// `ok` or `error`.
    pub outcome: &'static str,
    /// The result, for `ok` (a string of its JSON cut to the event's excerpt when `truncated`).
    pub result: Option<Value>,
    /// The error, for `error`.
    pub error: Option<String>,
    /// Whether `result` is the event's cut excerpt, not the whole result.
    pub truncated: bool,
}

impl Outcome {
    fn of(result: &Result<Value, ToolError>) -> Self {
        match result {
            Ok(value) => Outcome {
                outcome: "ok",
                result: Some(value.clone()),
                error: None,
                truncated: false,
            },
            Err(error) => Outcome {
                outcome: "error",
                result: None,
                error: Some(error.to_string()),
                truncated: false,
            },
        }
    }
}

impl RecordedCall {
    /// Reads the call from its `tool.called` event. Arguments cut in the event (no `arguments_full`: a
    /// long one recorded before whole arguments were kept) make it [`ReplayError::NotReplayable`].
    pub fn from_event(event: &Event) -> Result<Self, ReplayError> {
        let corrupt = |detail: &str| ReplayError::Corrupt {
            seq: event.seq,
            detail: detail.to_owned(),
        };
        let data = &event.data;
        let text = |key: &str| data.get(key).and_then(Value::as_str);
        let call_id = text("call_id").ok_or_else(|| corrupt("no call_id"))?;
        let tool = text("tool").ok_or_else(|| corrupt("no tool"))?;
        let arguments = text("arguments_full")
            .or_else(|| text("arguments"))
            .ok_or_else(|| corrupt("no arguments"))?;
        let arguments = serde_json::from_str(arguments).map_err(|_| {
            ReplayError::NotReplayable(format!(
                "the arguments of call '{call_id}' ({tool}) were recorded cut to {EVENT_TEXT_CHARS} \
                 characters, not whole"
            ))
        })?;
        let outcome = match text("outcome") {
            Some("ok") => {
                let (result, truncated) = match data.get("result_full") {
                    Some(whole) => (whole.clone(), false),
                    None => {
                        let shown = text("result").ok_or_else(|| corrupt("no result"))?;
                        match serde_json::from_str(shown) {
                            Ok(whole) => (whole, false),
                            // Longer than the excerpt: kept cut (a `run_code` result never is).
                            Err(_) => (Value::String(shown.to_owned()), true),
                        }
                    }
                };
                Outcome {
                    outcome: "ok",
                    result: Some(result),
                    error: None,
                    truncated,
                }
            }
            Some("error") => Outcome {
                outcome: "error",
                result: None,
                error: Some(text("error").unwrap_or_default().to_owned()),
                truncated: false,
            },
            _ => return Err(corrupt("no outcome")),
        };
        Ok(RecordedCall {
            seq: event.seq,
            call_id: call_id.to_owned(),
            tool: tool.to_owned(),
            agent: event.agent,
            arguments,
            outcome,
        })
    }
}

/// The task's workspace as it was when the call at `seq` ran: every successful `write_file` among `calls`
/// (the task's `tool.called` events, in order) before it, applied in order. A file whose content was not
/// recorded whole makes the workspace [`ReplayError::NotReplayable`].
pub fn workspace_at(calls: &[Event], seq: i64) -> Result<Vec<WorkspaceFile>, ReplayError> {
    let mut files = BTreeMap::new();
    for event in calls.iter().filter(|event| event.seq < seq) {
        let data = &event.data;
        if data.get("tool").and_then(Value::as_str) != Some("write_file")
            || data.get("outcome").and_then(Value::as_str) != Some("ok")
        {
            continue;
        }
        let write = RecordedCall::from_event(event).map_err(|error| match error {
            ReplayError::NotReplayable(why) => ReplayError::NotReplayable(format!(
                "the workspace at that call cannot be rebuilt: {why}"
            )),
            other => other,
        })?;
        let field = |key: &str| {
            write.arguments[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ReplayError::Corrupt {
                    seq: event.seq,
                    detail: format!("write_file without {key}"),
                })
        };
        files.insert(field("path")?, field("content")?);
    }
    Ok(files
        .into_iter()
        .map(|(name, content)| WorkspaceFile { name, content })
        .collect())
}

/// One field that differs between the recorded and the replayed call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// The field (`passed`, `exit_code`, `stdout`, `content`, `outcome`, `error`, ...).
    pub field: String,
    /// Its recorded value (strings shortened to the event's excerpt).
    pub recorded: Value,
    /// Its replayed value (likewise).
    pub replayed: Value,
}

/// A replayed call beside its recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolReplay {
    /// The call's id.
    pub call_id: String,
    /// The recorded `tool.called` event's `seq`.
    pub seq: i64,
    /// The tool.
    pub tool: String,
    /// The arguments both ran with.
    pub arguments: Value,
    /// The files of the rebuilt workspace the replay ran in.
    pub workspace: Vec<String>,
    /// What the call gave then.
    pub recorded: Outcome,
    /// What it gives now.
    pub replayed: Outcome,
    /// Seconds the replayed call took.
    pub duration_seconds: f64,
    /// Whether nothing compared differs.
    pub same: bool,
    /// What differs.
    pub differences: Vec<Difference>,
}

/// A temporary folder, removed when dropped.
struct TempRoot(PathBuf);

impl Drop for TempRoot {
    fn drop(&mut self) {
        // A few small files; leaving them behind would be worse than this short blocking removal.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Tools {
    /// Runs `call` again for task `context.task_id` in a fresh temporary workspace holding `files` (as
    /// [`workspace_at`] rebuilt them), checked against the tool's schema like any call, in an
    /// `execute_tool {tool}` span; returns it beside its recording. The task's own workspace, log and
    /// memory are not touched; the temporary workspace is removed afterwards.
    pub async fn replay(
        &self,
        context: ToolContext,
        call: &RecordedCall,
        files: Vec<WorkspaceFile>,
    ) -> Result<ToolReplay, ReplayError> {
        let root = TempRoot(
            std::env::temp_dir().join(format!("troupe-replay-{}", uuid::Uuid::new_v4().simple())),
        );
        let workspace = Workspaces::new(&root.0);
        // The task folder exists even when no file was written before the call.
        tokio::fs::create_dir_all(workspace.dir(context.task_id))
            .await
            .map_err(|e| ReplayError::Workspace(e.to_string()))?;
        let names: Vec<String> = files.iter().map(|file| file.name.clone()).collect();
        for file in files {
            workspace
                .write(context.task_id, &file.name, &file.content)
                .await
                .map_err(|e| ReplayError::Workspace(e.to_string()))?;
        }
        let label = self.label(&call.tool);
        let span = tracing::info_span!(
            "execute_tool",
            otel.name = %format!("execute_tool {label}"),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = label,
            gen_ai.tool.call.id = %call.call_id,
            gen_ai.tool.type = "function",
            gen_ai.conversation.id = %context.task_id,
            troupe.tool.replay = true,
            error.type = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = async {
            let tool = self
                .tools
                .get(call.tool.as_str())
                .ok_or_else(|| ToolError::UnknownTool(shorten(&call.tool, 60)))?;
            if let Some(problem) =
                schema::problem(&tool.spec().input_schema, &call.arguments, "arguments")
            {
                return Err(ToolError::InvalidInput(problem));
            }
            tool.replay(context, &workspace, call.arguments.clone())
                .await
        }
        .instrument(span.clone())
        .await;
        let duration_seconds = started.elapsed().as_secs_f64();
        drop(root);
        if let Err(error) = &result {
            span.record("error.type", error.kind());
        }
        if let Err(ToolError::Unavailable(error)) = result {
            return Err(ReplayError::Sandbox(error));
        }
        let replayed = Outcome::of(&result);
        let differences = differences(&call.tool, &call.outcome, &replayed);
        Ok(ToolReplay {
            call_id: call.call_id.clone(),
            seq: call.seq,
            tool: call.tool.clone(),
            arguments: call.arguments.clone(),
            workspace: names,
            recorded: call.outcome.clone(),
            replayed,
            duration_seconds,
            same: differences.is_empty(),
            differences,
        })
    }
}

/// `value` with long strings shortened to the event's excerpt (a difference names what differs; both
/// wholes are in the replay's `recorded` and `replayed`).
fn bounded(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(shorten(text, EVENT_TEXT_CHARS)),
        other => other.clone(),
    }
}

fn difference(field: &str, recorded: &Value, replayed: &Value) -> Option<Difference> {
    (recorded != replayed).then(|| Difference {
        field: field.to_owned(),
        recorded: bounded(recorded),
        replayed: bounded(replayed),
    })
}

/// What differs between a call's recorded and replayed outcomes (see the module documentation).
pub fn differences(tool: &str, recorded: &Outcome, replayed: &Outcome) -> Vec<Difference> {
    let null = Value::Null;
    if recorded.outcome != replayed.outcome {
        let error = |outcome: &Outcome| outcome.error.as_ref().map_or(Value::Null, |e| json!(e));
        return [
            difference(
                "outcome",
                &json!(recorded.outcome),
                &json!(replayed.outcome),
            ),
            difference("error", &error(recorded), &error(replayed)),
        ]
        .into_iter()
        .flatten()
        .collect();
    }
    let (Some(then), Some(now)) = (&recorded.result, &replayed.result) else {
        let error = |outcome: &Outcome| outcome.error.clone().unwrap_or_default();
        return difference("error", &json!(error(recorded)), &json!(error(replayed)))
            .into_iter()
            .collect();
    };
    if recorded.truncated {
        // Only the event's excerpt is known: the replayed result is cut the same way to compare.
        let now = Value::String(shorten(&now.to_string(), EVENT_TEXT_CHARS));
        return difference("result", then, &now).into_iter().collect();
    }
    if tool == "run_code" {
        let passed = |report: &Value| json!(report["outcome"] == "ok");
        let kinds = |report: &Value| {
            let mut kinds: Vec<Value> = report["violations"]
                .as_array()
                .map(|violations| violations.iter().map(|v| v["kind"].clone()).collect())
                .unwrap_or_default();
            kinds.sort_by_key(|kind| kind.to_string());
            Value::Array(kinds)
        };
        let mut found: Vec<Difference> = difference("passed", &passed(then), &passed(now))
            .into_iter()
            .collect();
        for field in [
            "outcome",
            "exit_code",
            "signal",
            "stdout",
            "stderr",
            "truncated",
        ] {
            let value = |report: &Value| report.get(field).cloned().unwrap_or(Value::Null);
            found.extend(difference(field, &value(then), &value(now)));
        }
        found.extend(difference("violations", &kinds(then), &kinds(now)));
        return found;
    }
    match (then.as_object(), now.as_object()) {
        (Some(then), Some(now)) => {
            let fields: std::collections::BTreeSet<&String> =
                then.keys().chain(now.keys()).collect();
            fields
                .into_iter()
                .filter_map(|field| {
                    difference(
                        field,
                        then.get(field).unwrap_or(&null),
                        now.get(field).unwrap_or(&null),
                    )
                })
                .collect()
        }
        _ => difference("result", then, now).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, TaskId};

    fn event(seq: i64, data: Value) -> Event {
        Event {
            seq,
            task_id: TaskId::new(),
            at: chrono::Utc::now(),
            kind: EventKind::ToolCalled,
            agent: Some(AgentKind::Code),
            trace_id: String::new(),
            span_id: String::new(),
            data,
        }
    }

    fn write(seq: i64, path: &str, content: &str) -> Event {
        let arguments = json!({ "path": path, "content": content }).to_string();
        event(
            seq,
            json!({
                "tool": "write_file", "call_id": format!("w{seq}"), "outcome": "ok",
                "arguments": shorten(&arguments, EVENT_TEXT_CHARS),
                "result": json!({ "path": path, "bytes": content.len() }).to_string(),
            }),
        )
    }

    fn report(stdout: &str, exit_code: i32, wall: f64) -> Value {
        json!({
            "language": "python", "outcome": if exit_code == 0 { "ok" } else { "error" },
            "exit_code": exit_code, "signal": null, "wall_seconds": wall, "cpu_seconds": wall,
            "peak_rss_bytes": 1000, "stdout": stdout, "stderr": "", "truncated": false, "violations": []
        })
    }

    fn ok(result: Value) -> Outcome {
        Outcome::of(&Ok(result))
    }

    #[test]
    fn the_workspace_is_rebuilt_from_the_writes_before_the_call() {
        let calls = vec![
            write(3, "step1.py", "return a - b"),
            write(4, "step1_test.py", "test"),
            event(
                5,
                json!({ "tool": "run_code", "call_id": "test.1", "outcome": "ok",
                        "arguments": "{\"language\":\"python\",\"file\":\"step1_test.py\"}",
                        "result": report("", 1, 0.1).to_string() }),
            ),
            write(7, "step1.py", "return a + b"),
            event(
                8,
                json!({ "tool": "write_file", "call_id": "bad", "outcome": "error",
                        "arguments": "{}", "error": "invalid" }),
            ),
        ];
        let then = workspace_at(&calls, 5).unwrap();
        assert_eq!(
            then,
            vec![
                WorkspaceFile {
                    name: "step1.py".into(),
                    content: "return a - b".into()
                },
                WorkspaceFile {
                    name: "step1_test.py".into(),
                    content: "test".into()
                },
            ]
        );
        let later = workspace_at(&calls, 9).unwrap();
        assert_eq!(later[0].content, "return a + b");
        assert!(workspace_at(&calls, 1).unwrap().is_empty());

        let recorded = RecordedCall::from_event(&calls[2]).unwrap();
        assert_eq!(recorded.call_id, "test.1");
        assert_eq!(recorded.arguments["file"], "step1_test.py");
        assert_eq!(recorded.outcome.result, Some(report("", 1, 0.1)));
        assert!(!recorded.outcome.truncated);
    }

    #[test]
    fn a_file_or_arguments_recorded_cut_cannot_be_replayed() {
        let long = "x".repeat(EVENT_TEXT_CHARS * 2);
        let calls = vec![write(2, "big.py", &long)];
        match workspace_at(&calls, 3) {
            Err(ReplayError::NotReplayable(why)) => {
                assert!(
                    why.contains("cannot be rebuilt") && why.contains("w2"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Kept whole (`arguments_full`, as `Tools::invoke` now writes for write_file): rebuilt.
        let mut whole = write(2, "big.py", &long);
        whole.data["arguments_full"] =
            json!(json!({ "path": "big.py", "content": long }).to_string());
        assert_eq!(workspace_at(&[whole], 3).unwrap()[0].content, long);
        // A malformed event says which.
        assert!(matches!(
            RecordedCall::from_event(&event(9, json!({ "tool": "x" }))),
            Err(ReplayError::Corrupt { seq: 9, .. })
        ));
    }

    #[test]
    fn runs_differ_by_what_the_judge_sees_not_by_their_timings() {
        assert!(differences(
            "run_code",
            &ok(report("1\n", 0, 0.1)),
            &ok(report("1\n", 0, 0.9))
        )
        .is_empty());
        let found = differences(
            "run_code",
            &ok(report("1\n", 0, 0.1)),
            &ok(report("2\n", 1, 0.1)),
        );
        let fields: Vec<&str> = found.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["passed", "outcome", "exit_code", "stdout"]);
        assert_eq!(found[0].recorded, json!(true));
        assert_eq!(found[0].replayed, json!(false));
        let mut contained = report("", 1, 0.1);
        contained["outcome"] = json!("violation");
        contained["violations"] = json!([{ "kind": "network", "detail": "connect 1.2.3.4:80" }]);
        let found = differences("run_code", &ok(report("", 1, 0.1)), &ok(contained));
        let fields: Vec<&str> = found.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["outcome", "violations"]);
    }

    #[test]
    fn other_results_differ_field_by_field_and_errors_by_message() {
        let listed = |files: Value| ok(json!({ "files": files }));
        assert!(differences("list_files", &listed(json!(["a"])), &listed(json!(["a"]))).is_empty());
        let found = differences(
            "list_files",
            &listed(json!(["a"])),
            &listed(json!(["a", "b"])),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "files");
        let failed = Outcome::of(&Err(ToolError::Failed(
            "'a' is not in the task's workspace".into(),
        )));
        let found = differences("read_file", &ok(json!({ "content": "x" })), &failed);
        let fields: Vec<&str> = found.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["outcome", "error"]);
        assert!(differences("read_file", &failed, &failed).is_empty());
        let other = Outcome::of(&Err(ToolError::Failed("other".into())));
        assert_eq!(differences("read_file", &failed, &other)[0].field, "error");
        // A result the event kept cut is compared cut.
        let content = "y".repeat(EVENT_TEXT_CHARS * 2);
        let whole = json!({ "path": "a", "content": content });
        let cut = Outcome {
            outcome: "ok",
            result: Some(json!(shorten(&whole.to_string(), EVENT_TEXT_CHARS))),
            error: None,
            truncated: true,
        };
        assert!(differences("read_file", &cut, &ok(whole)).is_empty());
        assert_eq!(
            differences(
                "read_file",
                &cut,
                &ok(json!({ "path": "a", "content": "z" }))
            )[0]
            .field,
            "result"
        );
    }
}
