//! Debug mode's pauses: a task stops where a breakpoint matches (before a decision takes effect, before a tool
//! runs, before a step is sent, before the model is called) and waits for a person's action
//! (`POST /api/v1/tasks/{id}/resume`): continue, step to the next point, abort, or an override of what is
//! pending (another option of the decision, the step's instruction, the tool call's arguments).
//!
//! [`Debugger::at`] is the one call every pause point makes. It is cheap when nothing can pause the task
//! (no breakpoint, not stepping, nothing restored): one atomic read. When a point pauses, the task's status
//! becomes `paused` with a `task.paused` event holding the breakpoint and what is pending; the flow's future
//! waits (holding no model slot, no sandbox slot: the points come before both; the wait does not count
//! against the step timeout, see [`Debugger::paused_for`]); the person's action is a `task.resumed` event (and
//! a `decision.overridden` one for an override, with before and after) and a span event in the current span.
//!
//! **Across a restart.** A paused task whose process stops is taken over and rebuilt like any unfinished
//! task (`director/flow/resume.rs`). Before its flow runs, [`Debugger::restore`] reads its log: every point
//! it paused at and the action taken there (answered again, silently, when the rebuilt flow retraces it:
//! an override is applied again), and the point it was paused at when the process stopped, where the rebuilt
//! flow pauses again (a second `task.paused`, `"again": true`). So the task is still paused at the same point
//! afterwards, and retracing what was already answered never stops twice.
//!
//! Each point has a key naming it within its task (`decision:assign_agent:2`, `step:2:a1:r1:q1`,
//! `tool:<call id>`, `llm:<purpose>`): the call ids and purposes are already unique per try.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    schema, AgentKind, BreakOn, Breakpoint, EventKind, PausePoint, TaskId, TaskStatus,
};
use crate::llm::LlmRequest;
use crate::storage::records::{PendingEvent, WriteOp};
use crate::storage::writer::Writer;
use crate::telemetry::metrics::Metrics;

/// Longest instruction an override may set, in characters.
pub const MAX_INSTRUCTION_CHARS: usize = 4000;

/// Where the debugger finds the breakpoints (the service's registry, kept in memory so that a check reads
/// no database).
pub trait BreakpointSource: Send + Sync + 'static {
    /// Whether there is no breakpoint at all (the fast path).
    fn is_empty(&self) -> bool;
    /// The first breakpoint matching `point` of task `task_id`.
    fn matching(&self, task_id: TaskId, point: &PausePoint) -> Option<Breakpoint>;
    /// Counts a breakpoint that paused a task.
    fn record_hit(&self, breakpoint: &Breakpoint);
}

/// What a person does at a pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Go on until the next breakpoint.
    Continue,
    /// Go on to the next point (decision, tool call, step or model call) and pause there.
    Step,
    /// End the task (cancelled).
    Abort,
    /// Change what is pending, then go on: `{"chosen": ..}` for a decision, `{"instruction": ..}` for a
    /// step, `{"arguments": {..}}` for a tool call.
    Override(Value),
}

impl Action {
    /// The stable name, for events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Step => "step",
            Action::Abort => "abort",
            Action::Override(_) => "override",
        }
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The task is not paused.
    #[error("task {0} is not paused at a breakpoint")]
    NotPaused(TaskId),
    /// The override does not fit what is pending.
    #[error("invalid override: {0}")]
    InvalidOverride(String),
}

/// What a pause point resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Go on as it was.
    Go,
    /// Go on with this change (`{"chosen"}`, `{"instruction"}` or `{"arguments"}`, checked).
    Override(Value),
}

/// The task was cancelled (or aborted) while it was paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the task was cancelled while paused")]
pub struct CancelledWhilePaused;

/// What a paused task waits on, as `/state` and `task.paused` show it.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// The point's key within its task.
    pub key: String,
    /// The point.
    pub point: PausePoint,
    /// The breakpoint that matched (none when stepping or paused again after a restart).
    pub breakpoint: Option<Breakpoint>,
    /// Why it paused: `breakpoint`, `step` or `restart`.
    pub reason: &'static str,
    /// What is pending: the decision's options and probabilities, the tool call's arguments (and its input
    /// schema), the step's instruction, the model request.
    pub detail: Value,
    /// When it paused.
    pub since: DateTime<Utc>,
}

/// One point of a task, as [`Debugger::at`] is told it.
pub struct Point {
    /// The point's key within its task (see the module's docs).
    pub key: String,
    /// What the breakpoints match on.
    pub point: PausePoint,
    /// What is pending (see [`Pending::detail`]).
    pub detail: Value,
}

#[derive(Default)]
struct TaskState {
    /// Pause at the next point, whatever it is.
    stepping: bool,
    /// Points answered before a restart: the override given there, if any.
    answered: HashMap<String, Option<Value>>,
    /// The point the task was paused at when its process stopped.
    primed: Option<String>,
    /// The pause in progress and where its answer goes.
    paused: Option<(Pending, oneshot::Sender<Action>)>,
    paused_since: Option<Instant>,
    paused_total: Duration,
}

impl TaskState {
    /// Nothing to remember: not stepping, nothing restored, not paused (nor answered and not yet woken).
    fn idle(&self) -> bool {
        !self.stepping
            && self.answered.is_empty()
            && self.primed.is_none()
            && self.paused.is_none()
            && self.paused_since.is_none()
    }
}

struct Inner {
    /// Set once, by [`Debugger::watch`]; none before (nothing pauses at a breakpoint).
    breakpoints: OnceLock<Arc<dyn BreakpointSource>>,
    writer: Writer,
    metrics: Metrics,
    tasks: Mutex<HashMap<TaskId, TaskState>>,
    /// Tasks in `tasks` (the fast path reads it without the lock).
    watched: AtomicUsize,
    /// Told when a pause ends, so that a point of the same task waiting for it goes on.
    ended: tokio::sync::Notify,
}

/// The pauses of every task; cheap to clone.
#[derive(Clone)]
pub struct Debugger(Arc<Inner>);

impl Debugger {
    /// A debugger writing pauses and actions through `writer`; it pauses at breakpoints once given their
    /// registry ([`Debugger::watch`]).
    pub fn new(writer: Writer, metrics: Metrics) -> Self {
        Debugger(Arc::new(Inner {
            breakpoints: OnceLock::new(),
            writer,
            metrics,
            tasks: Mutex::new(HashMap::new()),
            watched: AtomicUsize::new(0),
            ended: tokio::sync::Notify::new(),
        }))
    }

    /// Pauses tasks at the breakpoints of `source` from now on (the registry is built after the tools,
    /// which hold the debugger, because it checks breakpoints against the tools' names). A second call
    /// changes nothing.
    pub fn watch(&self, source: Arc<dyn BreakpointSource>) {
        let _ = self.0.breakpoints.set(source);
    }

    fn breakpoints(&self) -> Option<&dyn BreakpointSource> {
        self.0.breakpoints.get().map(|source| source.as_ref())
    }

    fn with_tasks<T>(&self, f: impl FnOnce(&mut HashMap<TaskId, TaskState>) -> T) -> T {
        let mut tasks = match self.0.tasks.lock() {
            Ok(tasks) => tasks,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = f(&mut tasks);
        tasks.retain(|_, state| !state.idle() || state.paused_total > Duration::ZERO);
        self.0.watched.store(tasks.len(), Ordering::Release);
        result
    }

    /// Whether no point of any task can pause now (no breakpoint, nobody stepping, nothing restored).
    pub fn is_quiet(&self) -> bool {
        self.breakpoints().is_none_or(|source| source.is_empty())
            && self.0.watched.load(Ordering::Acquire) == 0
    }

    /// A pause point of task `task_id`: returns at once unless a breakpoint matches, the task is stepping,
    /// or the task was paused here before a restart; otherwise pauses the task until a person acts (or the
    /// task is cancelled). An answer recorded before a restart for this point is applied again without
    /// pausing.
    pub async fn at(
        &self,
        task_id: TaskId,
        point: impl FnOnce() -> Point,
        cancel: &CancellationToken,
    ) -> Result<Resolution, CancelledWhilePaused> {
        if self.is_quiet() {
            return Ok(Resolution::Go);
        }
        let point = point();
        enum Next {
            Go(Resolution),
            Pause(&'static str, Option<Breakpoint>),
        }
        let next = self.with_tasks(|tasks| {
            if let Some(state) = tasks.get_mut(&task_id) {
                if let Some(answer) = state.answered.remove(&point.key) {
                    return Next::Go(answer.map_or(Resolution::Go, Resolution::Override));
                }
                if state.primed.as_deref() == Some(point.key.as_str()) {
                    state.primed = None;
                    state.answered.clear();
                    return Next::Pause("restart", None);
                }
                if state.primed.is_some() {
                    // Retracing what happened before a restart: nothing pauses before the point the task
                    // was paused at.
                    return Next::Go(Resolution::Go);
                }
                if state.stepping {
                    state.stepping = false;
                    return Next::Pause("step", None);
                }
            }
            match self
                .breakpoints()
                .and_then(|source| source.matching(task_id, &point.point))
            {
                Some(breakpoint) => Next::Pause("breakpoint", Some(breakpoint)),
                None => Next::Go(Resolution::Go),
            }
        });
        let (reason, breakpoint) = match next {
            Next::Go(resolution) => return Ok(resolution),
            Next::Pause(reason, breakpoint) => (reason, breakpoint),
        };
        if let (Some(breakpoint), Some(source)) = (&breakpoint, self.breakpoints()) {
            source.record_hit(breakpoint);
        }
        self.pause(task_id, point, reason, breakpoint, cancel).await
    }

    async fn pause(
        &self,
        task_id: TaskId,
        point: Point,
        reason: &'static str,
        breakpoint: Option<Breakpoint>,
        cancel: &CancellationToken,
    ) -> Result<Resolution, CancelledWhilePaused> {
        let pending = Pending {
            key: point.key,
            point: point.point,
            breakpoint,
            reason,
            detail: point.detail,
            since: Utc::now(),
        };
        let agent = pending.point.agent;
        let on = pending.point.on;
        let (answer, answered) = oneshot::channel();
        let mut answer = Some(answer);
        // One pause at a time per task: a step running beside a paused one that reaches a point where it
        // pauses too waits for that pause to end, then pauses (all-stop, as a debugger stops every thread
        // of a program at a breakpoint; points where nothing pauses go on meanwhile). The wait opens before
        // the pause is told, so an answer to `task.paused` always finds it.
        loop {
            let ended = self.0.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let opened = self.with_tasks(|tasks| {
                let state = tasks.entry(task_id).or_default();
                if state.paused_since.is_some() {
                    return false;
                }
                state.paused = answer.take().map(|answer| (pending.clone(), answer));
                state.paused_since = Some(Instant::now());
                true
            });
            if opened {
                break;
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(CancelledWhilePaused),
                () = &mut ended => {}
            }
        }
        self.0
            .metrics
            .debug_pauses
            .with_label_values(&[on.as_str(), reason])
            .inc();
        tracing::info!(
            task_id = %task_id,
            troupe.pause.key = %pending.key,
            troupe.pause.reason = reason,
            "task paused"
        );
        self.0.writer.send(WriteOp::SetStatus {
            status: TaskStatus::Paused,
            event: PendingEvent::now(
                task_id,
                EventKind::TaskPaused,
                Some(agent),
                json!({
                    "reason": reason,
                    "again": reason == "restart",
                    "key": pending.key,
                    "point": pending.point,
                    "breakpoint": pending.breakpoint,
                    "pending": pending.detail,
                    "resume": format!(
                        "POST /api/v1/tasks/{task_id}/resume {{\"action\": \"continue\" | \"step\" | \"abort\" | \"override\", ...}}"
                    ),
                }),
            ),
        });
        let action = tokio::select! {
            biased;
            () = cancel.cancelled() => None,
            action = answered => action.ok(),
        };
        let key = pending.key.clone();
        self.with_tasks(|tasks| {
            let state = tasks.entry(task_id).or_default();
            state.paused = None;
            if let Some(since) = state.paused_since.take() {
                state.paused_total += since.elapsed();
            }
            state.stepping = action == Some(Action::Step);
        });
        self.0.ended.notify_waiters();
        let Some(action) = action else {
            return Err(CancelledWhilePaused);
        };
        self.0
            .metrics
            .debug_actions
            .with_label_values(&[action.as_str()])
            .inc();
        tracing::info!(
            task_id = %task_id,
            troupe.pause.key = %key,
            troupe.debug.action = action.as_str(),
            "a person resumed the task"
        );
        let overridden = match &action {
            Action::Override(change) => Some(change.clone()),
            _ => None,
        };
        self.0.writer.send(WriteOp::SetStatus {
            status: TaskStatus::Running,
            event: PendingEvent::now(
                task_id,
                EventKind::TaskResumed,
                Some(agent),
                json!({
                    "reason": "debug",
                    "action": action.as_str(),
                    "key": key,
                    "override": overridden,
                }),
            ),
        });
        match action {
            Action::Abort => Err(CancelledWhilePaused),
            Action::Override(change) => Ok(Resolution::Override(change)),
            Action::Continue | Action::Step => Ok(Resolution::Go),
        }
    }

    /// Answers task `task_id`'s pause; an override is checked against what is pending first.
    pub fn answer(&self, task_id: TaskId, action: Action) -> Result<(), ActionError> {
        self.with_tasks(|tasks| {
            let state = tasks
                .get_mut(&task_id)
                .filter(|state| state.paused.is_some())
                .ok_or(ActionError::NotPaused(task_id))?;
            if let (Action::Override(change), Some((pending, _))) = (&action, &state.paused) {
                check_override(pending, change).map_err(ActionError::InvalidOverride)?;
            }
            let Some((_, answer)) = state.paused.take() else {
                return Err(ActionError::NotPaused(task_id));
            };
            answer
                .send(action)
                .map_err(|_| ActionError::NotPaused(task_id))
        })
    }

    /// What task `task_id` is paused on, if it is.
    pub fn pending(&self, task_id: TaskId) -> Option<Pending> {
        self.with_tasks(|tasks| {
            tasks
                .get(&task_id)
                .and_then(|state| state.paused.as_ref())
                .map(|(pending, _)| pending.clone())
        })
    }

    /// How long task `task_id` has spent paused at breakpoints so far (including a pause in progress): a
    /// step's timeout does not count it.
    pub fn paused_for(&self, task_id: TaskId) -> Duration {
        if self.0.watched.load(Ordering::Acquire) == 0 {
            return Duration::ZERO;
        }
        self.with_tasks(|tasks| {
            tasks.get(&task_id).map_or(Duration::ZERO, |state| {
                state.paused_total + state.paused_since.map_or(Duration::ZERO, |s| s.elapsed())
            })
        })
    }

    /// Prepares a task rebuilt after a restart from its log (its `task.paused` and `task.resumed` events'
    /// kinds and data, in `seq` order): the points it paused at and how each was answered, and the point it
    /// was still paused at.
    pub fn restore(&self, task_id: TaskId, events: &[(EventKind, Value)]) {
        let (answered, primed, stepping) = history(events);
        if answered.is_empty() && primed.is_none() && !stepping {
            return;
        }
        self.with_tasks(|tasks| {
            let state = tasks.entry(task_id).or_default();
            state.answered = answered;
            state.primed = primed;
            // A task that stepped just before it stopped pauses at the next point it reaches anew.
            state.stepping = stepping;
        });
    }

    /// Ends task `task_id`'s pause, if it is paused, as a cancellation does (the task was cancelled: its
    /// wait returns [`CancelledWhilePaused`] even where the waiting code holds no cancellation token, such as
    /// a tool call).
    pub fn release(&self, task_id: TaskId) {
        self.with_tasks(|tasks| {
            if let Some(state) = tasks.get_mut(&task_id) {
                state.paused = None;
            }
        });
    }

    /// Forgets task `task_id` (its flow ended).
    pub fn forget(&self, task_id: TaskId) {
        self.with_tasks(|tasks| {
            tasks.remove(&task_id);
        });
    }
}

/// From a task's log: the points answered (with their overrides), the point still paused at, and whether
/// the last answer was `step`.
fn history(
    events: &[(EventKind, Value)],
) -> (HashMap<String, Option<Value>>, Option<String>, bool) {
    let mut answered = HashMap::new();
    let mut open: Option<String> = None;
    let mut stepping = false;
    for (kind, data) in events {
        let key = data.get("key").and_then(Value::as_str);
        match kind {
            EventKind::TaskPaused => {
                if let Some(key) = key.filter(|_| data.get("point").is_some()) {
                    open = Some(key.to_owned());
                }
            }
            EventKind::TaskResumed
                if data.get("reason").and_then(Value::as_str) == Some("debug") =>
            {
                if let Some(key) = key {
                    let change = data.get("override").filter(|v| !v.is_null()).cloned();
                    answered.insert(key.to_owned(), change);
                    stepping = data.get("action").and_then(Value::as_str) == Some("step");
                    if open.as_deref() == Some(key) {
                        open = None;
                    }
                }
            }
            _ => {}
        }
    }
    if open.is_some() {
        stepping = false;
    }
    (answered, open, stepping)
}

/// Whether `change` is an override that fits `pending`; `Err` says what is wrong.
fn check_override(pending: &Pending, change: &Value) -> Result<(), String> {
    let Some(fields) = change.as_object() else {
        return Err("an override is an object".to_owned());
    };
    let only = |name: &str| -> Result<&Value, String> {
        if let Some(other) = fields.keys().find(|key| key.as_str() != name) {
            return Err(format!(
                "a {} pause takes an override of '{name}' only, not '{other}'",
                pending.point.on.as_str()
            ));
        }
        fields
            .get(name)
            .ok_or_else(|| format!("the override needs '{name}'"))
    };
    match pending.point.on {
        BreakOn::Decision => {
            let chosen = only("chosen")?
                .as_str()
                .ok_or("'chosen' is the name of one of the options")?;
            let options: Vec<&str> = pending.detail["options"]
                .as_array()
                .map(|options| options.iter().filter_map(|o| o["name"].as_str()).collect())
                .unwrap_or_default();
            if options.contains(&chosen) {
                Ok(())
            } else {
                Err(format!(
                    "'{}' is not an option of this decision (options: {})",
                    crate::domain::excerpt(chosen),
                    options.join(", ")
                ))
            }
        }
        BreakOn::Step => {
            let instruction = only("instruction")?
                .as_str()
                .ok_or("'instruction' is text")?;
            let chars = instruction.trim().chars().count();
            if chars == 0 || chars > MAX_INSTRUCTION_CHARS {
                return Err(format!(
                    "'instruction' must have 1..={MAX_INSTRUCTION_CHARS} characters, got {chars}"
                ));
            }
            Ok(())
        }
        BreakOn::Tool => {
            let arguments = only("arguments")?;
            match schema::problem(&pending.detail["input_schema"], arguments, "arguments") {
                Some(problem) => Err(problem),
                None => Ok(()),
            }
        }
        BreakOn::Llm => Err(
            "a model call's pause takes continue, step or abort; override the step's instruction at a \
             step breakpoint instead"
                .to_owned(),
        ),
    }
}

/// The pause point before `agent` calls the model with `request` for step `step`: `llm:<purpose>`, the
/// request as what is pending.
pub fn llm_point(agent: AgentKind, step: Option<i32>, request: &LlmRequest) -> Point {
    let mut point = PausePoint::llm(agent, &request.purpose);
    if let Some(step) = step {
        point = point.at_step(step);
    }
    Point {
        key: format!("llm:{}", request.purpose),
        point,
        detail: json!({
            "purpose": request.purpose,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "output": request.output,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(on: BreakOn, detail: Value) -> Pending {
        Pending {
            key: "k".into(),
            point: match on {
                BreakOn::Decision => PausePoint::decision(AgentKind::Director, "assign_agent"),
                BreakOn::Tool => PausePoint::tool(AgentKind::Code, "write_file"),
                BreakOn::Step => PausePoint::step(AgentKind::Code, 1),
                BreakOn::Llm => PausePoint::llm(AgentKind::Code, "work.1"),
            },
            breakpoint: None,
            reason: "breakpoint",
            detail,
            since: Utc::now(),
        }
    }

    #[test]
    fn a_decision_override_must_name_one_of_its_options() {
        let decision = pending(
            BreakOn::Decision,
            json!({ "options": [{ "name": "code" }, { "name": "research" }] }),
        );
        assert_eq!(
            check_override(&decision, &json!({ "chosen": "research" })),
            Ok(())
        );
        let wrong = check_override(&decision, &json!({ "chosen": "qa" })).unwrap_err();
        assert!(
            wrong.contains("not an option") && wrong.contains("code, research"),
            "{wrong}"
        );
        let other = check_override(&decision, &json!({ "instruction": "x" })).unwrap_err();
        assert!(other.contains("'chosen' only"), "{other}");
        assert!(check_override(&decision, &json!("research")).is_err());
    }

    #[test]
    fn a_tool_override_is_checked_against_the_tool_schema() {
        let tool = pending(
            BreakOn::Tool,
            json!({ "input_schema": {
                "type": "object",
                "properties": { "path": { "type": "string" } },
                "required": ["path"],
                "additionalProperties": false
            } }),
        );
        assert_eq!(
            check_override(&tool, &json!({ "arguments": { "path": "a.py" } })),
            Ok(())
        );
        assert!(check_override(&tool, &json!({ "arguments": { "path": 3 } })).is_err());
        assert!(check_override(&tool, &json!({ "arguments": {} })).is_err());
    }

    #[test]
    fn a_step_override_needs_an_instruction_and_a_model_call_takes_none() {
        let step = pending(BreakOn::Step, json!({}));
        assert_eq!(
            check_override(&step, &json!({ "instruction": "Do it" })),
            Ok(())
        );
        assert!(check_override(&step, &json!({ "instruction": "  " })).is_err());
        let llm = pending(BreakOn::Llm, json!({}));
        assert!(check_override(&llm, &json!({ "instruction": "x" })).is_err());
    }

    #[test]
    fn the_history_holds_the_answers_and_the_open_pause() {
        let paused = |key: &str| (EventKind::TaskPaused, json!({ "key": key, "point": {} }));
        let resumed = |key: &str, action: &str, change: Value| {
            (
                EventKind::TaskResumed,
                json!({ "reason": "debug", "key": key, "action": action, "override": change }),
            )
        };
        let events = vec![
            paused("decision:assign_agent:1"),
            resumed(
                "decision:assign_agent:1",
                "override",
                json!({ "chosen": "qa" }),
            ),
            paused("step:1:work:a1:r1:q1"),
            resumed("step:1:work:a1:r1:q1", "step", Value::Null),
            // A cloud-fallback pause is not debug mode's.
            (EventKind::TaskPaused, json!({ "reason": "cloud_fallback" })),
            paused("llm:work.1"),
        ];
        let (answered, open, stepping) = history(&events);
        assert_eq!(
            answered.get("decision:assign_agent:1"),
            Some(&Some(json!({ "chosen": "qa" })))
        );
        assert_eq!(answered.get("step:1:work:a1:r1:q1"), Some(&None));
        assert_eq!(open.as_deref(), Some("llm:work.1"));
        assert!(!stepping, "paused again after the step: no stepping left");
        let (_, open, stepping) = history(&events[..4]);
        assert_eq!(open, None);
        assert!(stepping, "the last answer was step: the next point pauses");
    }
}
