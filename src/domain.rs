//! The vocabulary every layer shares, and nothing else: ids and lifecycle states ([`TaskId`],
//! [`TaskStatus`], [`StepStatus`]), the agents' names ([`AgentKind`]), the event log's entries
//! ([`EventKind`], [`Event`]), replays and forks ([`replay`]), debug-mode breakpoints and the points they
//! match ([`breakpoint`]), the memory kinds, the text helpers, the grammar bounds and the JSON-schema check
//! that tool arguments and model outputs are held to ([`schema`]).
//!
//! The bottom layer: it names no other module of the crate (see `ARCHITECTURE.md`, "Layers").

pub mod agent;
pub mod breakpoint;
pub mod consensus;
pub mod event;
pub mod experiment;
pub mod json_types;
pub mod limits;
pub mod memory;
pub mod replay;
pub mod schema;
pub mod tables;
pub mod task;
pub mod text;

pub use agent::{AgentKind, UnknownAgent};
pub use breakpoint::{
    BreakOn, Breakpoint, BreakpointError, BreakpointId, BreakpointSpec, Condition, ConditionError,
    PausePoint,
};
pub use consensus::{ConsensusRule, ConsensusSpec};
pub use event::{Event, EventKind, UnknownEventKind};
pub use memory::{MemoryKind, UnknownKind, EMBEDDING_DIMENSIONS};
pub use replay::{DecisionKind, DecisionOverride, ForkOf, OnDivergence};
pub use task::{
    DirectorOptions, QaVerdictMode, StepStatus, TaskBudget, TaskId, TaskOptions, TaskStatus,
    UnknownStatus, UnknownStepStatus,
};
pub use text::{excerpt, redact_url, shorten};
