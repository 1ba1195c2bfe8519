//! Debug-mode breakpoints, as every layer names them: where a task may pause ([`BreakOn`]), what a
//! breakpoint asks for ([`BreakpointSpec`], checked by [`BreakpointSpec::validate`]), its condition
//! ([`Condition`], in `breakpoint/condition.rs`), the stored breakpoint ([`Breakpoint`]) and what the pause
//! engine describes at each point it could pause at ([`PausePoint`]), with the one matching rule
//! ([`Breakpoint::matches`]).
//!
//! Nothing here pauses anything, stores anything or knows the tools: the registry of the running system is
//! `service/breakpoints.rs`, the rows `storage/breakpoints.rs`; the list of tools is given to
//! [`BreakpointSpec::validate`] by its caller.

pub mod condition;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::agent::AgentKind;
use super::limits::MAX_PLAN_STEPS;
use super::task::TaskId;
use super::text::shorten;
pub use condition::{Comparison, Condition, ConditionError, Field, Literal, Op};

/// Longest `purpose`, in characters (the `llm_calls.purpose` column).
pub const MAX_PURPOSE_CHARS: usize = 64;

/// The highest step position there is: a plan's most steps plus QA's verification after them.
pub const MAX_STEP: i32 = MAX_PLAN_STEPS as i32 + 1;

/// The decisions that exist: their kind, the agent that makes them, and what they choose between.
pub const DECISION_KINDS: [DecisionKind; 2] = [
    DecisionKind {
        name: "assign_agent",
        agent: AgentKind::Director,
        per_step: true,
        scored: true,
        options: &["research", "code", "qa"],
        about: "the Director's choice of agent for a step, scored by the model's probabilities",
    },
    DecisionKind {
        name: "verdict",
        agent: AgentKind::Qa,
        per_step: false,
        scored: false,
        options: &["pass", "fail"],
        about: "QA's verdict on the work, pass or fail",
    },
];

/// A kind of decision (see [`DECISION_KINDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionKind {
    /// The kind's name, as decisions are stored and announced (`decision.made`'s `kind`).
    pub name: &'static str,
    /// The agent that makes it.
    pub agent: AgentKind,
    /// Whether it is about one step (its point has a `step`).
    pub per_step: bool,
    /// Whether its options are scored (its point has `confidence` and `probability`).
    pub scored: bool,
    /// The options it chooses between (`chosen` is one of them).
    pub options: &'static [&'static str],
    /// What it is, for people.
    pub about: &'static str,
}

impl DecisionKind {
    /// The kind named `name`.
    pub fn named(name: &str) -> Option<DecisionKind> {
        DECISION_KINDS.into_iter().find(|kind| kind.name == name)
    }
}

/// Where a task can pause: before a decision takes effect, before a tool runs, before a step is sent to
/// its agent, before a model is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakOn {
    /// A decision (an agent assignment, QA's verdict).
    Decision,
    /// A tool call.
    Tool,
    /// A step about to be sent to its agent.
    Step,
    /// A model call.
    Llm,
}

impl BreakOn {
    /// Every kind of point.
    pub const ALL: [BreakOn; 4] = [
        BreakOn::Decision,
        BreakOn::Tool,
        BreakOn::Step,
        BreakOn::Llm,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakOn::Decision => "decision",
            BreakOn::Tool => "tool",
            BreakOn::Step => "step",
            BreakOn::Llm => "llm",
        }
    }

    /// The fields of a [`BreakpointSpec`] that apply to breakpoints on this kind of point.
    pub fn spec_fields(self) -> &'static [&'static str] {
        match self {
            BreakOn::Decision => &["agent", "kind", "step", "when", "task_id"],
            BreakOn::Tool => &["agent", "tool", "step", "when", "task_id"],
            BreakOn::Step => &["agent", "step", "when", "task_id"],
            BreakOn::Llm => &["agent", "purpose", "step", "when", "task_id"],
        }
    }

    /// Whether a condition may read `field` at this kind of point (the generic fields `agent`, `step`,
    /// `attempt`, `revision` and `round` everywhere; the others only where they exist).
    pub fn has_field(self, field: &Field) -> bool {
        match field {
            Field::Agent | Field::Step | Field::Attempt | Field::Revision | Field::Round => true,
            Field::Confidence | Field::Probability | Field::Chosen | Field::Kind => {
                self == BreakOn::Decision
            }
            Field::Tool | Field::Argument(_) => self == BreakOn::Tool,
            Field::Purpose => self == BreakOn::Llm,
        }
    }
}

impl fmt::Display for BreakOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a kind of point.
#[derive(Debug, thiserror::Error)]
#[error("unknown breakpoint point '{0}'; breakpoints are on decision, tool, step or llm")]
pub struct UnknownBreakOn(pub String);

impl FromStr for BreakOn {
    type Err = UnknownBreakOn;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BreakOn::ALL
            .into_iter()
            .find(|on| on.as_str() == text)
            .ok_or_else(|| UnknownBreakOn(shorten(text, 40)))
    }
}

/// A breakpoint's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BreakpointId(pub Uuid);

impl BreakpointId {
    /// A fresh id.
    pub fn new() -> Self {
        BreakpointId(Uuid::now_v7())
    }
}

impl Default for BreakpointId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for BreakpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BreakpointId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(BreakpointId)
    }
}

/// What a breakpoint asks for: pause at points of kind `on` that have every field given here, where the
/// condition holds, in the one task `task_id` or (without it) in every task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakpointSpec {
    /// The kind of point.
    pub on: BreakOn,
    /// Only points of this agent (the deciding agent, the calling agent, the step's agent).
    pub agent: Option<AgentKind>,
    /// Only decisions of this kind (`on = decision`; see [`DECISION_KINDS`]).
    pub kind: Option<String>,
    /// Only calls of this tool (`on = tool`).
    pub tool: Option<String>,
    /// Only points of this step (its position, from 1).
    #[serde(default, deserialize_with = "super::json_types::optional_whole")]
    pub step: Option<i32>,
    /// Only model calls of this purpose or below it (`on = llm`): `work` matches `work.2` and `work.2.r2`,
    /// `work.2` matches `work.2` and `work.2.r2`, not `work.20`.
    pub purpose: Option<String>,
    /// Only where this condition holds.
    pub when: Option<Condition>,
    /// Only in this task (it goes with the task when the task is deleted).
    pub task_id: Option<TaskId>,
}

impl BreakpointSpec {
    /// A spec on `on` with nothing else given: every such point of every task.
    pub fn on(on: BreakOn) -> BreakpointSpec {
        BreakpointSpec {
            on,
            agent: None,
            kind: None,
            tool: None,
            step: None,
            purpose: None,
            when: None,
            task_id: None,
        }
    }

    /// What is wrong with this spec, if anything (the first problem found). `tools` are the names of the
    /// registered tools (the tool registry is above this layer, so its caller says).
    pub fn validate(&self, tools: &[&str]) -> Result<(), BreakpointError> {
        let on = self.on;
        let given = [
            ("kind", self.kind.is_some()),
            ("tool", self.tool.is_some()),
            ("purpose", self.purpose.is_some()),
        ];
        for (field, present) in given {
            if present && !on.spec_fields().contains(&field) {
                return Err(BreakpointError::NotApplicable {
                    field,
                    on,
                    fields: on.spec_fields().join(", "),
                });
            }
        }
        let kind = match &self.kind {
            None => None,
            Some(name) => {
                Some(
                    DecisionKind::named(name).ok_or_else(|| BreakpointError::UnknownKind {
                        kind: shorten(name, 40),
                        known: known_kinds(),
                    })?,
                )
            }
        };
        if let Some(tool) = &self.tool {
            if !tools.contains(&tool.as_str()) {
                return Err(BreakpointError::UnknownTool {
                    tool: shorten(tool, 40),
                    known: tools.join(", "),
                });
            }
        }
        if let Some(agent) = self.agent {
            self.check_agent(agent, kind)?;
        }
        if let Some(step) = self.step {
            if !(1..=MAX_STEP).contains(&step) {
                return Err(BreakpointError::StepOutOfRange {
                    step,
                    max: MAX_STEP,
                });
            }
            if let Some(kind) = kind.filter(|kind| !kind.per_step) {
                return Err(BreakpointError::Inconsistent(format!(
                    "step does not apply to {} decisions ({}): they are about the whole task, not one step",
                    kind.name, kind.about
                )));
            }
        }
        if let Some(purpose) = &self.purpose {
            check_purpose(purpose)?;
        }
        if let Some(condition) = &self.when {
            self.check_condition(condition, kind, tools)?;
        }
        Ok(())
    }

    fn check_agent(
        &self,
        agent: AgentKind,
        kind: Option<DecisionKind>,
    ) -> Result<(), BreakpointError> {
        match self.on {
            BreakOn::Decision => {
                if let Some(kind) = kind {
                    if kind.agent != agent {
                        return Err(BreakpointError::Inconsistent(format!(
                            "{} decisions are made by {}, not {agent}",
                            kind.name, kind.agent
                        )));
                    }
                } else if !DECISION_KINDS.iter().any(|kind| kind.agent == agent) {
                    return Err(BreakpointError::Inconsistent(format!(
                        "{agent} makes no decisions; decisions are made by {}",
                        DECISION_KINDS
                            .iter()
                            .map(|kind| format!("{} ({})", kind.agent, kind.name))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    )));
                }
            }
            BreakOn::Step if !agent.is_specialist() => {
                return Err(BreakpointError::Inconsistent(format!(
                    "the director runs no steps; steps are run by {}",
                    AgentKind::SPECIALISTS.map(AgentKind::as_str).join(", ")
                )));
            }
            BreakOn::Step | BreakOn::Tool | BreakOn::Llm => {}
        }
        Ok(())
    }

    fn check_condition(
        &self,
        condition: &Condition,
        kind: Option<DecisionKind>,
        tools: &[&str],
    ) -> Result<(), BreakpointError> {
        let on = self.on;
        let problem = |text: String| Err(BreakpointError::Condition(text));
        for comparison in condition.comparisons() {
            let field = &comparison.field;
            if !on.has_field(field) {
                return problem(format!(
                    "'{field}' is not known at {on} points (at {on} points: {})",
                    fields_at(on)
                ));
            }
            if let Some(kind) = kind {
                let absent = match field {
                    Field::Confidence | Field::Probability => !kind.scored,
                    Field::Step => !kind.per_step,
                    _ => false,
                };
                if absent {
                    return problem(format!(
                        "{} decisions have no '{field}' ({})",
                        kind.name, kind.about
                    ));
                }
            }
            let Literal::Text(value) = &comparison.literal else {
                continue;
            };
            let known: Vec<&str> = match field {
                Field::Agent => AgentKind::ALL.map(AgentKind::as_str).to_vec(),
                Field::Tool => tools.to_vec(),
                Field::Kind => DECISION_KINDS.iter().map(|kind| kind.name).collect(),
                Field::Chosen => match kind {
                    Some(kind) => kind.options.to_vec(),
                    None => continue,
                },
                _ => continue,
            };
            if !known.contains(&value.as_str()) {
                let value = shorten(value, 40);
                let what = match field {
                    Field::Agent => format!("there is no agent '{value}'"),
                    Field::Tool => format!("there is no tool '{value}'"),
                    Field::Kind => format!("there is no decision kind '{value}'"),
                    _ => format!("'{value}' is not a possible choice"),
                };
                return problem(format!("{what} ({field} is one of {})", known.join(", ")));
            }
        }
        Ok(())
    }
}

/// The decision kinds, for error messages.
fn known_kinds() -> String {
    DECISION_KINDS
        .iter()
        .map(|kind| format!("{} ({})", kind.name, kind.about))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The condition fields known at `on` points, for error messages.
fn fields_at(on: BreakOn) -> String {
    let mut names: Vec<&str> = condition::FIELD_NAMES
        .into_iter()
        .filter(|name| Field::named(name).is_some_and(|field| on.has_field(&field)))
        .collect();
    if on.has_field(&Field::Argument(Vec::new())) {
        names.push("arguments.<name>");
    }
    names.join(", ")
}

/// Whether `purpose` can name model calls: 1 to [`MAX_PURPOSE_CHARS`] characters of letters, digits, `.`,
/// `_` and `-`.
fn check_purpose(purpose: &str) -> Result<(), BreakpointError> {
    let chars = purpose.chars().count();
    if chars > MAX_PURPOSE_CHARS {
        return Err(BreakpointError::PurposeTooLong {
            chars,
            max: MAX_PURPOSE_CHARS,
        });
    }
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if purpose.is_empty() || !purpose.chars().all(fits) {
        return Err(BreakpointError::InvalidPurpose(shorten(purpose, 40)));
    }
    Ok(())
}

/// What is wrong with a [`BreakpointSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakpointError {
    /// A field that breakpoints on this kind of point do not have.
    #[error("'{field}' does not apply to breakpoints on {on} (they take: on, {fields})")]
    NotApplicable {
        /// The field.
        field: &'static str,
        /// The kind of point.
        on: BreakOn,
        /// The fields that apply.
        fields: String,
    },
    /// `kind` names no decision kind.
    #[error("unknown decision kind '{kind}'; the decision kinds are {known}")]
    UnknownKind {
        /// The kind given.
        kind: String,
        /// The known kinds.
        known: String,
    },
    /// `tool` names no registered tool.
    #[error("unknown tool '{tool}'; the tools are {known}")]
    UnknownTool {
        /// The tool given.
        tool: String,
        /// The registered tools.
        known: String,
    },
    /// `step` is outside the positions a step can have.
    #[error("step must be within 1..={max} (a plan's steps and QA's verification), got {step}")]
    StepOutOfRange {
        /// The step given.
        step: i32,
        /// The highest position.
        max: i32,
    },
    /// `purpose` is longer than a stored purpose can be.
    #[error("purpose has {chars} characters; at most {max} are allowed")]
    PurposeTooLong {
        /// Its length.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// `purpose` is empty or has characters no purpose has.
    #[error("purpose '{0}' is not a model call purpose (letters, digits, '.', '_' and '-', such as work.2 or verify)")]
    InvalidPurpose(String),
    /// Fields that contradict each other (an agent that makes no such decision, a step for a decision about
    /// the whole task, the Director on a step).
    #[error("{0}")]
    Inconsistent(String),
    /// The condition does not parse.
    #[error("when: {0}")]
    Syntax(#[from] ConditionError),
    /// The condition parses but reads a field the point does not have or names something that does not
    /// exist.
    #[error("when: {0}")]
    Condition(String),
}

/// What the pause engine describes at a point where a task could pause: the fields breakpoints match on
/// and the values their conditions read. A field the point does not have makes a comparison on it false.
///
/// Values by kind of point, as the engine fills them (names a condition can read):
/// - decision: `kind`, `step` (per-step kinds), `confidence` and `probability` (scored kinds), `chosen`,
///   `round` (QA's verdict);
/// - tool: `tool`, `step`, `attempt`, `arguments` (the call's arguments object: `arguments.<name>`);
/// - step: `step`, `attempt`, `revision`, `round`;
/// - llm: `purpose`, `step`, `attempt`, `revision`, `round`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PausePoint {
    /// The kind of point.
    pub on: BreakOn,
    /// The agent (deciding, calling, the step's).
    pub agent: AgentKind,
    /// The decision's kind.
    pub kind: Option<String>,
    /// The tool called.
    pub tool: Option<String>,
    /// The step's position, from 1.
    pub step: Option<i32>,
    /// The model call's purpose.
    pub purpose: Option<String>,
    /// The values conditions read (`confidence`, `probability`, `chosen`, `attempt`, `revision`, `round`,
    /// `arguments`).
    pub values: BTreeMap<String, serde_json::Value>,
}

impl PausePoint {
    fn new(on: BreakOn, agent: AgentKind) -> PausePoint {
        PausePoint {
            on,
            agent,
            kind: None,
            tool: None,
            step: None,
            purpose: None,
            values: BTreeMap::new(),
        }
    }

    /// A decision of `kind` made by `agent`.
    pub fn decision(agent: AgentKind, kind: &str) -> PausePoint {
        PausePoint {
            kind: Some(kind.to_owned()),
            ..Self::new(BreakOn::Decision, agent)
        }
    }

    /// A call of `tool` by `agent`.
    pub fn tool(agent: AgentKind, tool: &str) -> PausePoint {
        PausePoint {
            tool: Some(tool.to_owned()),
            ..Self::new(BreakOn::Tool, agent)
        }
    }

    /// Step `step`, about to be sent to `agent`.
    pub fn step(agent: AgentKind, step: i32) -> PausePoint {
        Self::new(BreakOn::Step, agent).at_step(step)
    }

    /// A model call of `purpose` by `agent`.
    pub fn llm(agent: AgentKind, purpose: &str) -> PausePoint {
        PausePoint {
            purpose: Some(purpose.to_owned()),
            ..Self::new(BreakOn::Llm, agent)
        }
    }

    /// The same point in step `step`.
    pub fn at_step(mut self, step: i32) -> PausePoint {
        self.step = Some(step);
        self
    }

    /// The same point with value `name` (what a condition's field `name` reads).
    pub fn with(mut self, name: &str, value: serde_json::Value) -> PausePoint {
        self.values.insert(name.to_owned(), value);
        self
    }
}

/// A stored breakpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "BreakpointWire", into = "BreakpointWire")]
pub struct Breakpoint {
    /// Its id.
    pub id: BreakpointId,
    /// What it asks for.
    pub spec: BreakpointSpec,
    /// When it was set (microsecond precision, as stored).
    pub created_at: DateTime<Utc>,
}

impl Breakpoint {
    /// Whether a task `task_id` at `point` should pause for this breakpoint: the point is of the
    /// breakpoint's kind, in its task (if it has one), has every field the breakpoint gives (equal; a purpose
    /// also matches the purposes below it, see [`BreakpointSpec::purpose`]) and the condition holds there.
    pub fn matches(&self, task_id: TaskId, point: &PausePoint) -> bool {
        let spec = &self.spec;
        spec.on == point.on
            && spec.task_id.is_none_or(|id| id == task_id)
            && spec.agent.is_none_or(|agent| agent == point.agent)
            && same(spec.kind.as_deref(), point.kind.as_deref())
            && same(spec.tool.as_deref(), point.tool.as_deref())
            && spec.step.is_none_or(|step| point.step == Some(step))
            && spec.purpose.as_deref().is_none_or(|purpose| {
                point.purpose.as_deref().is_some_and(|called| {
                    called == purpose
                        || called
                            .strip_prefix(purpose)
                            .is_some_and(|rest| rest.starts_with('.'))
                })
            })
            && spec
                .when
                .as_ref()
                .is_none_or(|condition| condition.holds(point))
    }
}

/// Whether a wanted field (`None`: any) is the point's.
fn same(wanted: Option<&str>, actual: Option<&str>) -> bool {
    wanted.is_none_or(|wanted| actual == Some(wanted))
}

/// A breakpoint as JSON: one flat object `{id, on, agent, kind, tool, step, purpose, when, task_id,
/// created_at}` (every key present, null when not given).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BreakpointWire {
    id: BreakpointId,
    on: BreakOn,
    agent: Option<AgentKind>,
    kind: Option<String>,
    tool: Option<String>,
    step: Option<i32>,
    purpose: Option<String>,
    when: Option<Condition>,
    task_id: Option<TaskId>,
    created_at: DateTime<Utc>,
}

impl From<BreakpointWire> for Breakpoint {
    fn from(wire: BreakpointWire) -> Self {
        Breakpoint {
            id: wire.id,
            spec: BreakpointSpec {
                on: wire.on,
                agent: wire.agent,
                kind: wire.kind,
                tool: wire.tool,
                step: wire.step,
                purpose: wire.purpose,
                when: wire.when,
                task_id: wire.task_id,
            },
            created_at: wire.created_at,
        }
    }
}

impl From<Breakpoint> for BreakpointWire {
    fn from(breakpoint: Breakpoint) -> Self {
        let spec = breakpoint.spec;
        BreakpointWire {
            id: breakpoint.id,
            on: spec.on,
            agent: spec.agent,
            kind: spec.kind,
            tool: spec.tool,
            step: spec.step,
            purpose: spec.purpose,
            when: spec.when,
            task_id: spec.task_id,
            created_at: breakpoint.created_at,
        }
    }
}

#[cfg(test)]
mod tests;
