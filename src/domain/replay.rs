//! Re-running a recorded task: what a replay does when it diverges ([`OnDivergence`]), what a fork is
//! ([`ForkOf`], [`DecisionOverride`]), and which recorded model calls a fork answers from its source's
//! recording ([`replayed_in_fork`]).
//!
//! Only names and rules; the replay itself is `llm::models` (which call is answered from where) and the
//! fork's flow is `director::flow::fork`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::task::TaskId;

/// What a replay does when a call's request differs from the recorded one (or was never recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDivergence {
    /// The task fails with what differed: a replay either reproduces its source or says where it could not.
    Stop,
    /// That call and every later one are made live, on the task's normal model.
    Live,
}

impl OnDivergence {
    /// Both, in the order metrics list them.
    pub const ALL: [OnDivergence; 2] = [OnDivergence::Stop, OnDivergence::Live];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDivergence::Stop => "stop",
            OnDivergence::Live => "live",
        }
    }

    /// What a re-run does when it says nothing: a replay (`replay_of`) stops, since it exists to
    /// reproduce; a fork goes live, since it exists to go live (a divergence only moves the live point
    /// earlier).
    pub fn default_for(fork: bool) -> Self {
        if fork {
            OnDivergence::Live
        } else {
            OnDivergence::Stop
        }
    }
}

impl fmt::Display for OnDivergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision a person can impose instead of the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The Director's choice of the agent that works a step.
    AssignAgent,
}

impl DecisionKind {
    /// The stable name (as in `decision.made`'s `kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::AssignAgent => "assign_agent",
        }
    }
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision changed by a person: `{"decision": "assign_agent", "step": 2, "chosen": "research"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionOverride {
    /// Which kind of decision.
    pub decision: DecisionKind,
    /// The step it is about (a fork's: its `from_step` when left out).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_whole"
    )]
    pub step: Option<i32>,
    /// The option taken instead of the model's (for `assign_agent`, a specialist's name).
    pub chosen: String,
}

/// A fork: a new run of a finished task from one of its steps (`options.fork_of`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkOf {
    /// The source task.
    pub task: TaskId,
    /// The first step made live: the model calls before it are answered from the source's recording
    /// (see [`replayed_in_fork`]).
    #[serde(deserialize_with = "super::json_types::whole")]
    pub from_step: i32,
    /// A decision at the fork point taken differently.
    #[serde(
        default,
        rename = "override",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::json_types::optional_object"
    )]
    pub decision_override: Option<DecisionOverride>,
}

/// Where a model call's purpose sits in a task's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurposePlace {
    /// Before any step runs: the plan (`plan`) and the routing's content-free calibration
    /// (`assign.calibration`).
    Prelude,
    /// Part of work step `K` in QA's first round: its assignment `assign.K` and its attempts `work.K`,
    /// `test.K` with their `.rR` (attempt) and `.aA` (retry after a restart) suffixes.
    Step(i32),
    /// After the verification began: `verify*`, and every `.qQ` revision QA's verdict asked for; also any
    /// purpose this list does not know.
    Verification,
}

/// Where `purpose` sits in the flow (see [`PurposePlace`]).
pub fn purpose_place(purpose: &str) -> PurposePlace {
    if purpose == "plan" || purpose == "assign.calibration" {
        return PurposePlace::Prelude;
    }
    let mut parts = purpose.split('.');
    let kind = parts.next().unwrap_or_default();
    let Some(step) = parts
        .next()
        .and_then(|idx| idx.parse::<i32>().ok())
        .filter(|&step| step >= 1)
    else {
        return PurposePlace::Verification;
    };
    let suffixes: Vec<&str> = parts.collect();
    let own = match kind {
        // The Director's assignment is made once, with no suffix.
        "assign" => suffixes.is_empty(),
        // An attempt of the Code/QA loop (`.rR`) or a try after a restart (`.aA`) is still the step's
        // first round; `.qQ` (a revision QA's verdict asked for) and anything else is not.
        "work" | "test" => suffixes.iter().all(|suffix| {
            let (letter, number) = suffix.split_at(suffix.len().min(1));
            matches!(letter, "r" | "a") && number.parse::<u32>().is_ok_and(|n| n >= 2)
        }),
        _ => false,
    };
    if own {
        PurposePlace::Step(step)
    } else {
        PurposePlace::Verification
    }
}

/// Whether a fork from step `from_step` answers the model call `purpose` from its source's recording: the
/// prelude (`plan`, `assign.calibration`) always, a work step's calls (`assign.K`, `work.K*`, `test.K*`)
/// when `K < from_step`, the verification and QA's revisions never.
pub fn replayed_in_fork(purpose: &str, from_step: i32) -> bool {
    match purpose_place(purpose) {
        PurposePlace::Prelude => true,
        PurposePlace::Step(step) => step < from_step,
        PurposePlace::Verification => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_are_placed_in_the_flow() {
        assert_eq!(purpose_place("plan"), PurposePlace::Prelude);
        assert_eq!(purpose_place("assign.calibration"), PurposePlace::Prelude);
        assert_eq!(purpose_place("assign.3"), PurposePlace::Step(3));
        assert_eq!(purpose_place("work.2"), PurposePlace::Step(2));
        assert_eq!(purpose_place("work.2.r3"), PurposePlace::Step(2));
        assert_eq!(purpose_place("test.1.r2.a2"), PurposePlace::Step(1));
        assert_eq!(purpose_place("work.12.a3"), PurposePlace::Step(12));
        for after in [
            "verify",
            "verify.q2",
            "work.1.q2",
            "test.1.q2.r2",
            "work.x",
            "work",
            "work.0",
            "work.2.z2",
            "work.2.r1",
            "work.2.r",
            "assign.2.a2",
            "embed",
        ] {
            assert_eq!(purpose_place(after), PurposePlace::Verification, "{after}");
        }
    }

    #[test]
    fn a_fork_replays_what_comes_before_its_step() {
        assert!(replayed_in_fork("plan", 1));
        assert!(replayed_in_fork("assign.calibration", 1));
        assert!(!replayed_in_fork("assign.1", 1));
        assert!(replayed_in_fork("assign.1", 2));
        assert!(replayed_in_fork("work.1.r2", 2));
        assert!(!replayed_in_fork("assign.2", 2));
        assert!(!replayed_in_fork("work.2", 2));
        assert!(!replayed_in_fork("verify", 9));
        assert!(!replayed_in_fork("work.1.q2", 9));
    }

    #[test]
    fn fork_options_read_and_write_the_documented_shape() {
        let fork: ForkOf = serde_json::from_value(serde_json::json!({
            "task": "0190f000-0000-7000-8000-000000000000",
            "from_step": 2,
            "override": { "decision": "assign_agent", "step": 2, "chosen": "research" }
        }))
        .unwrap();
        let decision = fork.decision_override.clone().unwrap();
        assert_eq!(decision.decision, DecisionKind::AssignAgent);
        assert_eq!(decision.chosen, "research");
        let json = serde_json::to_value(&fork).unwrap();
        assert_eq!(json["override"]["decision"], "assign_agent");
        assert!(serde_json::from_value::<DecisionOverride>(
            serde_json::json!({ "decision": "verdict", "chosen": "pass" })
        )
        .is_err());
        assert_eq!(
            serde_json::to_value(OnDivergence::Live).unwrap(),
            serde_json::json!("live")
        );
        assert_eq!(OnDivergence::default_for(false), OnDivergence::Stop);
    }
}
