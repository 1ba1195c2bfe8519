//! The Code/QA loop of a code step: Code writes code and a test, QA runs the test in the sandbox, and a
//! failure goes back to Code with its output and the fixes learned for similar failures.

use std::sync::Arc;

use serde_json::json;

use super::{FlowError, TaskFlow};
use crate::director::DispatchError;
use crate::domain::{excerpt, shorten, AgentKind, EventKind, StepStatus};
use crate::llm::models::TaskModels;
use crate::memory::learning::FailedRun;
use crate::messages::{AgentError, Feedback, StepKind, StepOutput, StepSpec, TestResult};

/// Longest failure kept in a task's error, in characters.
const FAILURE_IN_ERROR_CHARS: usize = 400;
/// Learned fixes offered to Code after a failed attempt.
const KNOWN_FIXES: usize = 2;

/// One attempt of the Code/QA loop at a step, as recorded.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    idx: i32,
    revision: u32,
    attempts: u32,
    passed: bool,
    /// Learned fixes offered to Code with this attempt's feedback.
    fixes_offered: usize,
}

impl TaskFlow {
    /// Runs a code step: Code writes code and a test, QA runs the test in the sandbox, and a failure goes
    /// back to Code with its output (and fixes learned from similar failures) until the test passes or
    /// `director.code_attempts` are used up. Every attempt is a `code.attempt` event and counted by
    /// attempt number. A pass after a failure is learned as a pattern; a learned fix that was offered is
    /// scored by whether the next attempt passed. Without a working sandbox the code is not run, and the
    /// result says why.
    pub(super) async fn run_code_step(
        &mut self,
        position: usize,
        llm: &Arc<TaskModels>,
    ) -> Result<StepOutput, FlowError> {
        let idx = self.steps[position].idx;
        if let Err(error) = self.deps.agent.tools.sandbox().check_ready() {
            let output = self.run_step(position, llm, 1, None).await?;
            self.tests
                .push(json!({ "step": idx, "tested": false, "reason": error.to_string() }));
            return Ok(output);
        }
        let attempts = self.deps.settings.code_attempts.max(1);
        let memory = self.deps.agent.memory.clone();
        let learn = memory.enabled() && self.options.replay_of.is_none();
        let mut offered: Vec<String> = Vec::new();
        let mut known_fixes: Vec<String> = Vec::new();
        let mut last_failure: Option<FailedRun> = None;
        for revision in 1..=attempts {
            // After a failed attempt, Code gets that attempt's code and failure and the fixes found for it.
            let feedback = last_failure.as_ref().map(|failed| Feedback {
                code: failed.code.clone(),
                failure: failed.error.clone(),
                known_fixes: std::mem::take(&mut known_fixes),
            });
            let output = self.run_step(position, llm, revision, feedback).await?;
            let test = match &output.code {
                Some(submission) => Some(
                    self.run_test(position, revision, &submission.test_file, llm)
                        .await?,
                ),
                None => None,
            };
            let passed = test.as_ref().is_some_and(|test| test.passed);
            let failure = match &test {
                Some(TestResult { failure: Some(failure), .. }) => failure.clone(),
                Some(_) => String::new(),
                None => format!(
                    "the answer was not the JSON {{\"code\": ..., \"test\": ...}} asked for (cut off at the \
                     token budget?): {}",
                    excerpt(&output.text)
                ),
            };
            let fixes_offered = offered.len();
            for id in offered.drain(..) {
                memory.pattern_outcome(&id, passed);
            }
            let attempt = Attempt {
                idx,
                revision,
                attempts,
                passed,
                fixes_offered,
            };
            self.record_attempt(&attempt, &failure, test.as_ref());
            if passed {
                if let (Some(failed), Some(submission), true) = (&last_failure, &output.code, learn)
                {
                    if let Err(error) = memory
                        .learn_fix(
                            Some(self.task_id),
                            AgentKind::Code,
                            failed,
                            &submission.code,
                        )
                        .await
                    {
                        tracing::warn!(task_id = %self.task_id, %error, "learning the fix failed");
                    }
                }
                return Ok(output);
            }
            let code = output
                .code
                .as_ref()
                .map_or_else(|| output.text.clone(), |submission| submission.code.clone());
            let known = if learn && revision < attempts {
                memory
                    .patterns_for(&failure, KNOWN_FIXES)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::warn!(task_id = %self.task_id, %error, "looking up learned fixes failed");
                        Vec::new()
                    })
            } else {
                Vec::new()
            };
            offered = known.iter().map(|found| found.id.clone()).collect();
            known_fixes = known.into_iter().map(|found| found.fix).collect();
            last_failure = Some(FailedRun {
                code,
                error: failure,
            });
        }
        self.steps[position].status = StepStatus::Failed;
        self.update_step(position, false);
        Err(FlowError::CodeFailed {
            idx,
            attempts,
            failure: shorten(
                &last_failure.map(|failed| failed.error).unwrap_or_default(),
                FAILURE_IN_ERROR_CHARS,
            ),
        })
    }

    /// Announces and counts one attempt of the Code/QA loop, and keeps it for the result.
    fn record_attempt(&mut self, attempt: &Attempt, failure: &str, test: Option<&TestResult>) {
        let Attempt {
            idx,
            revision,
            attempts,
            passed,
            fixes_offered,
        } = *attempt;
        let outcome = if passed { "passed" } else { "failed" };
        self.deps
            .agent
            .metrics
            .code_attempts
            .with_label_values(&[&revision.to_string(), outcome])
            .inc();
        let report = test.map(|test| &test.report);
        let data = json!({
            "step": idx,
            "attempt": revision,
            "of": attempts,
            "passed": passed,
            "run_outcome": report.map_or("no_code", |report| report.outcome.as_str()),
            "failure": (!passed).then_some(failure),
            "known_fixes_offered": fixes_offered,
            "wall_seconds": report.map(|report| report.wall_seconds),
            "cpu_seconds": report.map(|report| report.cpu_seconds),
            "peak_rss_bytes": report.map(|report| report.peak_rss_bytes),
        });
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::CodeAttempt,
            Some(AgentKind::Director),
            data.clone(),
        );
        self.tests.push(data);
    }

    /// Has QA run the test file of attempt `revision` of step `position` (retrying after a restart as the
    /// policy allows).
    async fn run_test(
        &mut self,
        position: usize,
        revision: u32,
        test_file: &str,
        llm: &Arc<TaskModels>,
    ) -> Result<TestResult, FlowError> {
        let idx = self.steps[position].idx;
        let spec = StepSpec {
            test_file: Some(test_file.to_owned()),
            ..self.spec_for(position, StepKind::Test, revision)
        };
        let mut attempt = 0;
        let output = self
            .dispatch_retrying(position, AgentKind::Qa, spec, llm, |_| {
                attempt += 1;
                attempt
            })
            .await?;
        output.test.ok_or_else(|| FlowError::Step {
            idx,
            agent: AgentKind::Qa,
            source: DispatchError::Agent(AgentError::Tool("the test step returned no run".into())),
        })
    }
}
