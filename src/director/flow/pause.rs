//! Debug mode's pause points in the Director's flow (see `debug.rs`): before a decision takes effect and
//! before a step is sent; a person's override of what is pending applied there.

use serde_json::{json, Value};

use super::{FlowError, TaskFlow};
use crate::debug::{self, Point, Resolution};
use crate::domain::{AgentKind, EventKind, PausePoint};
use crate::messages::StepSpec;

impl TaskFlow {
    /// The pause point before decision `kind` (`assign_agent`, `verdict`) of `agent` at step `step` takes
    /// effect: `options` (`[{name, probability, ..}]`), the `chosen` one and its `confidence`. Returns the
    /// option a person chose instead (a `decision.overridden` event with before and after), if any.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn at_decision(
        &self,
        agent: AgentKind,
        kind: &'static str,
        step: Option<i32>,
        key: String,
        options: &Value,
        chosen: &str,
        confidence: Option<f64>,
        context: Value,
    ) -> Result<Option<String>, FlowError> {
        let point = || {
            let mut point = PausePoint::decision(agent, kind)
                .with("chosen", json!(chosen))
                .with("round", json!(self.round));
            // The Director's decisions belong to a step; QA's verdict is about the whole result.
            if let Some(step) = step {
                point = point.at_step(step);
            }
            if let Some(confidence) = confidence {
                point = point
                    .with("confidence", json!(confidence))
                    .with("probability", json!(confidence));
            }
            Point {
                key: key.clone(),
                point,
                detail: json!({
                    "kind": kind,
                    "step": step,
                    "options": options,
                    "chosen": chosen,
                    "confidence": confidence,
                    "context": context,
                }),
            }
        };
        let resolution = self.debugger().at(self.task_id, point, &self.cancel).await;
        let Resolution::Override(change) = resolution.map_err(|_| FlowError::Cancelled)? else {
            return Ok(None);
        };
        let after = change["chosen"].as_str().unwrap_or(chosen).to_owned();
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::DecisionOverridden,
            Some(agent),
            json!({
                "what": "decision",
                "kind": kind,
                "key": key,
                "step": step,
                "before": chosen,
                "after": after,
            }),
        );
        Ok(Some(after))
    }

    /// The pause point before step `spec` is sent to `agent`: returns the instruction a person wrote instead
    /// (a `decision.overridden` event with before and after), if any.
    pub(super) async fn at_step(
        &self,
        agent: AgentKind,
        spec: &StepSpec,
    ) -> Result<Option<String>, FlowError> {
        let key = format!(
            "step:{}:{}:a{}:r{}:q{}",
            spec.idx,
            spec.kind.as_str(),
            spec.attempt,
            spec.revision,
            spec.round
        );
        let point = || {
            let point = PausePoint::step(agent, spec.idx)
                .with("attempt", json!(spec.attempt))
                .with("revision", json!(spec.revision))
                .with("round", json!(spec.round));
            Point {
                key: key.clone(),
                point,
                detail: json!({
                    "step": spec.idx,
                    "agent": agent,
                    "kind": spec.kind.as_str(),
                    "instruction": spec.instruction,
                    "attempt": spec.attempt,
                    "revision": spec.revision,
                    "round": spec.round,
                    "feedback": spec.feedback.as_ref().map(|f| &f.failure),
                }),
            }
        };
        let resolution = self.debugger().at(self.task_id, point, &self.cancel).await;
        let Resolution::Override(change) = resolution.map_err(|_| FlowError::Cancelled)? else {
            return Ok(None);
        };
        let Some(after) = change["instruction"].as_str().map(str::to_owned) else {
            return Ok(None);
        };
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::DecisionOverridden,
            Some(agent),
            json!({
                "what": "instruction",
                "key": key,
                "step": spec.idx,
                "before": spec.instruction,
                "after": after,
            }),
        );
        Ok(Some(after))
    }

    /// The debugger every pause point of the task reports to.
    pub(super) fn debugger(&self) -> &debug::Debugger {
        self.deps.agent.tools.debugger()
    }
}
