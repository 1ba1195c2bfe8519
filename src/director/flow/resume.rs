//! Resuming a task whose process died (issue 15): the flow is rebuilt from what is stored of it. The plan
//! comes from the stored steps (with their dependencies); a step that was done, and all it depends on with
//! it, keeps its stored output and is not sent to an agent again; every other step (and QA's
//! verification, always) runs again, with each model
//! call already recorded for the task answered from the recording (`TaskModels::with_recording`) and each
//! sandbox run already recorded answered with its result (`Tools::reuse_runs`), so what was done is not
//! done twice and the flow reaches the same decisions it had reached. A crash before the steps were
//! stored plans again, the plan and assignment calls answered from the recording.
//!
//! What is not rebuilt: the memories a reused step wanted kept (its fact or snippet; the task's summary is
//! still written), since a step's drafts are not stored before the task ends.

use std::collections::BTreeSet;

use serde_json::json;

use super::code_loop::{review_line, StubCheck};
use super::{FlowError, PlannedStep, TaskFlow};
use crate::agents::EARLIER_OUTPUT_CHARS;
use crate::director::plan::{Plan, PlanStep};
use crate::domain::{shorten, AgentKind, EventKind, StepStatus, TaskStatus};
use crate::memory::short_term::WindowEntry;
use crate::messages::{Resume, StepKind};
use crate::storage::records::{PendingEvent, WriteOp};
use crate::storage::{ResumeRecords, StepRecord};

/// Whether a task's stored records can be continued from; `Err` says why not (see [`rebuild_steps`]).
pub fn resumable(records: &ResumeRecords) -> Result<(), String> {
    rebuild_steps(records).map(|_| ())
}

/// The plan and the steps of a resumed task as the flow continues them, from its stored records; `Err`
/// says why the records cannot be continued from.
pub(super) fn rebuild_steps(
    records: &ResumeRecords,
) -> Result<Option<(Plan, Vec<PlannedStep>)>, String> {
    let steps = &records.steps;
    if steps.is_empty() {
        return Ok(None);
    }
    if !records
        .recording
        .calls
        .iter()
        .any(|call| call.purpose == "plan")
    {
        return Err(
            "the plan's steps are stored but its model call (purpose \"plan\") is not".to_owned(),
        );
    }
    for (position, step) in steps.iter().enumerate() {
        let expected = i32::try_from(position + 1).unwrap_or(i32::MAX);
        if step.idx != expected {
            return Err(format!(
                "the stored steps are not numbered 1..{}: step {expected} is missing",
                steps.len()
            ));
        }
    }
    let Some((verify, work)) = steps.split_last() else {
        return Ok(None);
    };
    if work.is_empty() || verify.agent != AgentKind::Qa {
        return Err(
            "the stored steps do not end with QA's verification after at least one work step"
                .to_owned(),
        );
    }
    let mut planned = Vec::with_capacity(steps.len());
    // A step is kept when it was done and everything it depends on is kept (a step starts only after its
    // dependencies are done, so this holds of every done step unless records were lost); every other step
    // runs again.
    let mut kept = BTreeSet::new();
    for step in work {
        if let Some(wrong) = step
            .depends_on
            .iter()
            .find(|&&dependency| dependency < 1 || dependency >= step.idx)
        {
            return Err(format!(
                "step {} depends on step {wrong}, which is not an earlier step",
                step.idx
            ));
        }
        let reusing = step.status == StepStatus::Done
            && step
                .depends_on
                .iter()
                .all(|dependency| kept.contains(dependency));
        if reusing {
            if step.output.is_none() {
                return Err(format!(
                    "step {} is done but its output is not stored",
                    step.idx
                ));
            }
            kept.insert(step.idx);
        }
        planned.push(planned_step(step, StepKind::Work, reusing));
    }
    let mut verification = planned_step(verify, StepKind::Verify, false);
    verification.depends_on = work.iter().map(|step| step.idx).collect();
    planned.push(verification);
    let plan = Plan {
        steps: work
            .iter()
            .map(|step| PlanStep {
                instruction: step.instruction.clone(),
                depends_on: step.depends_on.clone(),
            })
            .collect(),
    };
    Ok(Some((plan, planned)))
}

/// A stored step as the resumed flow holds it: as stored when `reused`, else to be run from its start (its
/// attempts counted from 0 again, so that its model calls have the purposes they were recorded under).
fn planned_step(step: &StepRecord, kind: StepKind, reused: bool) -> PlannedStep {
    PlannedStep {
        idx: step.idx,
        agent: step.agent,
        instruction: step.instruction.clone(),
        depends_on: step.depends_on.clone(),
        kind,
        status: if reused {
            StepStatus::Done
        } else {
            StepStatus::Pending
        },
        attempts: if reused { step.attempts } else { 0 },
        output: if reused { step.output.clone() } else { None },
    }
}

impl TaskFlow {
    /// For a resumed task with stored steps: rebuilds the plan and the steps (see [`rebuild_steps`]),
    /// restores what the reused steps left behind (their code attempts and review lines for the result and
    /// the verification, their outputs in the conversation window), installs the recorded sandbox runs,
    /// and announces the resumption (`task.resumed`, status `running`). `None` when the task must plan
    /// (no resumption, or no stored steps; the plan's calls are then answered from the recording).
    pub(super) async fn rebuild(&mut self) -> Result<Option<Plan>, FlowError> {
        let Some(resume) = self.resume.take() else {
            return Ok(None);
        };
        let rebuilt = rebuild_steps(&resume.records).map_err(FlowError::Unresumable)?;
        let plan = match rebuilt {
            Some((plan, steps)) => {
                self.board.get_mut().steps = steps;
                self.restore_attempts(&resume.records);
                self.restore_window().await;
                Some(plan)
            }
            None => None,
        };
        self.decided = resume.records.decided.iter().copied().collect();
        self.deps
            .agent
            .tools
            .reuse_runs(self.task_id, resume.records.sandbox_runs.clone());
        // A task paused in debug mode pauses again at the same point; what was answered before is answered
        // again as it was (see `debug.rs`).
        self.debugger()
            .restore(self.task_id, &resume.records.pauses);
        self.announce_resume(&resume);
        Ok(plan)
    }

    /// The reused code steps' attempts (each once, in log order: a resumption before this one may have
    /// announced some again) go back into the result, and the accepted ones' review lines into what the
    /// verification is told.
    fn restore_attempts(&mut self, records: &ResumeRecords) {
        let board = self.board.get_mut();
        let reused: BTreeSet<i64> = board
            .steps
            .iter()
            .filter(|step| step.status == StepStatus::Done)
            .map(|step| i64::from(step.idx))
            .collect();
        let mut seen = BTreeSet::new();
        for attempt in &records.code_attempts {
            let number = |key: &str| attempt.get(key).and_then(serde_json::Value::as_i64);
            let Some(step) = number("step").filter(|step| reused.contains(step)) else {
                continue;
            };
            if !seen.insert((step, number("round"), number("attempt"))) {
                continue;
            }
            board.tests.push(attempt.clone());
            let passed = attempt.get("passed").and_then(serde_json::Value::as_bool) == Some(true);
            let Some(position) = board.steps.iter().position(|s| i64::from(s.idx) == step) else {
                continue;
            };
            if passed {
                let check = attempt
                    .get("stub_check")
                    .cloned()
                    .and_then(|check| serde_json::from_value::<StubCheck>(check).ok());
                let idx = board.steps[position].idx;
                let line = review_line(&board.steps[position].instruction, check.as_ref());
                board.reviews.insert(idx, line);
            }
        }
    }

    /// Puts the reused steps' outputs back in the task's conversation window (and the plan in its
    /// scratchpad) when short-term memory lost them with the process (the in-process store); a window
    /// that survived (Redis) is left as it is.
    async fn restore_window(&self) {
        let short_term = self.deps.agent.memory.short_term();
        let steps = self.board(|board| board.steps.clone());
        let plan: Vec<&str> = steps
            .iter()
            .filter(|step| step.kind == StepKind::Work)
            .map(|step| step.instruction.as_str())
            .collect();
        let _ = short_term
            .put(self.task_id, "plan", &json!(plan).to_string())
            .await;
        if !short_term
            .window(self.task_id)
            .await
            .is_ok_and(|window| window.is_empty())
        {
            return;
        }
        for step in steps.iter().filter(|step| step.status == StepStatus::Done) {
            let entry = WindowEntry {
                agent: step.agent,
                step: step.idx,
                text: shorten(step.output.as_deref().unwrap_or(""), EARLIER_OUTPUT_CHARS),
            };
            if let Ok(entry) = serde_json::to_string(&entry) {
                // A failed push is counted and logged by the short-term tier.
                let _ = short_term.push(self.task_id, &entry).await;
            }
        }
    }

    /// `task.resumed` (and the status back to `running`): whose the task was, which steps are reused, and
    /// how many recorded model calls and sandbox runs it starts with (none of them is made again).
    fn announce_resume(&self, resume: &Resume) {
        let steps_reused: Vec<i32> = self.board(|board| {
            board
                .steps
                .iter()
                .filter(|step| step.status == StepStatus::Done)
                .map(|step| step.idx)
                .collect()
        });
        self.deps.agent.writer.send(WriteOp::SetStatus {
            status: TaskStatus::Running,
            event: PendingEvent::now(
                self.task_id,
                EventKind::TaskResumed,
                Some(AgentKind::Director),
                json!({
                    "reason": "after_crash",
                    "after_crash": true,
                    "owner_was": resume.owner_was,
                    "status_was": resume.status_was,
                    "steps_reused": steps_reused,
                    "llm_calls_reused": resume.records.recording.calls.len(),
                    "sandbox_runs_reused": resume.records.sandbox_runs.len(),
                }),
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::storage::{RecordedCall, Recording};

    fn step(idx: i32, agent: AgentKind, status: StepStatus, output: Option<&str>) -> StepRecord {
        StepRecord {
            idx,
            agent,
            instruction: format!("step {idx}"),
            status,
            output: output.map(str::to_owned),
            attempts: 2,
            // As a step stored before plans were graphs reads: after the one before it.
            depends_on: (idx > 1).then_some(idx - 1).into_iter().collect(),
            started_at: None,
            finished_at: None,
        }
    }

    fn records(steps: Vec<StepRecord>, purposes: &[&str]) -> ResumeRecords {
        ResumeRecords {
            steps,
            decided: Vec::new(),
            recording: Recording {
                model: "m".into(),
                calls: purposes
                    .iter()
                    .map(|purpose| RecordedCall {
                        purpose: (*purpose).to_owned(),
                        prompt: "[]".into(),
                        request: None,
                        request_digest: None,
                        output: String::new(),
                        choice: None,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        duration_seconds: 0.0,
                    })
                    .collect(),
            },
            sandbox_runs: BTreeMap::new(),
            code_attempts: Vec::new(),
            pauses: Vec::new(),
        }
    }

    #[test]
    fn done_leading_steps_are_kept_and_the_rest_run_again() {
        let stored = records(
            vec![
                step(1, AgentKind::Research, StepStatus::Done, Some("facts")),
                step(2, AgentKind::Code, StepStatus::Running, None),
                step(3, AgentKind::Research, StepStatus::Done, Some("later")),
                step(4, AgentKind::Qa, StepStatus::Done, Some("pass")),
            ],
            &["plan", "work.1"],
        );
        let (plan, steps) = rebuild_steps(&stored).unwrap().unwrap();
        assert_eq!(plan.instructions(), vec!["step 1", "step 2", "step 3"]);
        let shape: Vec<_> = steps
            .iter()
            .map(|s| (s.idx, s.status, s.attempts, s.output.as_deref(), s.kind))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, StepStatus::Done, 2, Some("facts"), StepKind::Work),
                (2, StepStatus::Pending, 0, None, StepKind::Work),
                // After the first step that was not done, every step runs again, and so does QA's
                // verification, whatever it said before.
                (3, StepStatus::Pending, 0, None, StepKind::Work),
                (4, StepStatus::Pending, 0, None, StepKind::Verify),
            ]
        );
    }

    #[test]
    fn a_done_step_beside_one_that_was_not_is_kept() {
        let mut stored = vec![
            step(1, AgentKind::Research, StepStatus::Done, Some("facts")),
            step(2, AgentKind::Code, StepStatus::Running, None),
            step(3, AgentKind::Research, StepStatus::Done, Some("beside")),
            step(4, AgentKind::Research, StepStatus::Done, Some("after both")),
            step(5, AgentKind::Qa, StepStatus::Pending, None),
        ];
        // 2 and 3 both follow 1; 4 follows 2 and 3.
        stored[2].depends_on = vec![1];
        stored[3].depends_on = vec![2, 3];
        let (plan, steps) = rebuild_steps(&records(stored, &["plan"])).unwrap().unwrap();
        assert_eq!(
            plan.dependencies(),
            vec![vec![], vec![1], vec![1], vec![2, 3]]
        );
        let statuses: Vec<_> = steps.iter().map(|s| (s.idx, s.status)).collect();
        assert_eq!(
            statuses,
            vec![
                (1, StepStatus::Done),
                (2, StepStatus::Pending),
                (3, StepStatus::Done),
                // Done, but after a step that runs again: it runs again too.
                (4, StepStatus::Pending),
                (5, StepStatus::Pending),
            ]
        );
        assert_eq!(steps[4].depends_on, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_stored_dependency_on_a_later_step_cannot_be_continued_from() {
        let mut stored = vec![
            step(1, AgentKind::Research, StepStatus::Done, Some("x")),
            step(2, AgentKind::Qa, StepStatus::Pending, None),
        ];
        stored[0].depends_on = vec![1];
        let error = rebuild_steps(&records(stored, &["plan"])).unwrap_err();
        assert!(error.contains("not an earlier step"), "{error}");
    }

    #[test]
    fn no_stored_steps_means_planning_again() {
        assert!(rebuild_steps(&records(Vec::new(), &["plan"]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn records_the_flow_cannot_continue_from_say_why() {
        let two = || {
            vec![
                step(1, AgentKind::Research, StepStatus::Done, Some("x")),
                step(2, AgentKind::Qa, StepStatus::Pending, None),
            ]
        };
        let no_plan = rebuild_steps(&records(two(), &["work.1"])).unwrap_err();
        assert!(no_plan.contains("\"plan\""), "{no_plan}");
        let mut gap = two();
        gap[1].idx = 3;
        assert!(rebuild_steps(&records(gap, &["plan"]))
            .unwrap_err()
            .contains("step 2 is missing"));
        let mut no_output = two();
        no_output[0].output = None;
        assert!(rebuild_steps(&records(no_output, &["plan"]))
            .unwrap_err()
            .contains("output is not stored"));
        let no_verify = vec![
            step(1, AgentKind::Research, StepStatus::Done, Some("x")),
            step(2, AgentKind::Code, StepStatus::Pending, None),
        ];
        assert!(rebuild_steps(&records(no_verify, &["plan"]))
            .unwrap_err()
            .contains("verification"));
    }
}
