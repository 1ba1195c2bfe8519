//! The Code/QA loop of a code step: Code writes code and a test, QA runs the test in the sandbox, a passing
//! test is checked against a stub of the code (a test that cannot fail is rejected as vacuous), code that
//! passed is checked to be for the task (its similarity to the prompt or step, `director.min_code_relevance`),
//! and a rejection goes back to Code with why and the fixes learned for similar failures.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::dispatch::Ends;
use super::{FlowError, TaskFlow};
use crate::director::DispatchError;
use crate::domain::{excerpt, shorten, AgentKind, EventKind, StepStatus};
use crate::llm::models::TaskModels;
use crate::memory::learning::FailedRun;
use crate::messages::{
    AgentError, CodeSubmission, Feedback, FeedbackKind, StepKind, StepOutput, StepSpec, TestResult,
};
use crate::sandbox::{Outcome, RunReport};
use crate::storage::memories::cosine;
use crate::tools::{ToolCall, ToolContext};

/// Longest failure kept in a task's error, in characters.
const FAILURE_IN_ERROR_CHARS: usize = 400;
/// Learned fixes offered to Code after a failed attempt.
const KNOWN_FIXES: usize = 2;
/// The vacuous-test check, run in the sandbox after `CODE = ...` and `TEST = ...` (see the file).
const STUB_CHECK: &str = include_str!("stub_check.py");

/// One attempt of the Code/QA loop at a step, as recorded.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    idx: i32,
    revision: u32,
    attempts: u32,
    passed: bool,
    /// The test ran green but cannot fail.
    vacuous: bool,
    /// The code passed a real test but is not for the task.
    off_task: bool,
    /// The code's similarity to the task (prompt or step, the closer), when it was measured.
    relevance: Option<f32>,
    /// Learned fixes offered to Code with this attempt's feedback.
    fixes_offered: usize,
}

/// What the stub check found out about a code step's test.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub(super) struct StubCheck {
    /// The functions (with their parameters) and classes the code defines at its top level.
    pub functions: Vec<String>,
    /// Those of them the test calls.
    pub calls: Vec<String>,
    /// Whether the test holds an assertion.
    pub asserts: bool,
    /// Whether the test passed against the stub (every function body `raise NotImplementedError`).
    pub passes_against_stub: bool,
    /// Why the check could not look (a syntax error), if so.
    pub error: Option<String>,
}

impl StubCheck {
    /// Why the test is vacuous, if it is: it cannot fail whatever the code does.
    pub fn vacuous(&self) -> Option<String> {
        if self.error.is_some() {
            return None;
        }
        if self.functions.is_empty() {
            return Some(
                "the code defines no function, so the test has nothing to exercise; write the function \
                 the step asks for"
                    .to_owned(),
            );
        }
        let functions = self.functions.join(", ");
        if self.passes_against_stub {
            return Some(if self.calls.is_empty() {
                format!(
                    "the test passed against a stub of the code whose functions only raise \
                     NotImplementedError, because it never calls {functions}"
                )
            } else {
                format!(
                    "the test passed against a stub of the code whose functions ({functions}) only raise \
                     NotImplementedError: it catches what they raise or never checks what they return"
                )
            });
        }
        if !self.asserts {
            return Some(format!(
                "the test has no assert statement, so a wrong result of {functions} would not make it fail"
            ));
        }
        None
    }
}

/// A rejected attempt: why, and the run as learning sees it.
struct Rejected {
    kind: FeedbackKind,
    run: FailedRun,
}

impl TaskFlow {
    /// Runs a code step: Code writes code and a test, QA runs the test in the sandbox, and a passing test is
    /// run against a stub of the code; a failure or a vacuous test goes back to Code with why (and fixes
    /// learned from similar failures) until a test passes for real or `director.code_attempts` are used up.
    /// `sent_back` is QA's feedback when its verdict sent the step back. Every attempt is a `code.attempt`
    /// event and counted by attempt number and outcome. A pass after a failure is learned as a pattern,
    /// kept with the task's memories; a learned fix that was offered is scored by whether the next attempt
    /// passed. Only the accepted attempt's code is kept as a snippet. Without a working sandbox the code is
    /// not run, and the result says why.
    pub(super) async fn run_code_step(
        &self,
        position: usize,
        llm: &Arc<TaskModels>,
        mut sent_back: Option<Feedback>,
    ) -> Result<StepOutput, FlowError> {
        let idx = self.step_at(position).idx;
        if let Err(error) = self.deps.agent.tools.sandbox().check_ready() {
            let output = self
                .run_step(position, llm, 1, sent_back, Ends::WithAnswer)
                .await?;
            self.board(|board| {
                board
                    .tests
                    .push(json!({ "step": idx, "tested": false, "reason": error.to_string() }));
            });
            return Ok(output);
        }
        let attempts = self.settings.code_attempts.max(1);
        let memory = self.deps.agent.memory.clone();
        // A replay or fork learns nothing and scores nothing (it repeats its source), but looks up the fixes
        // its source was offered (through its view of memory), so that Code is asked what was recorded.
        let learn = memory.enabled() && !self.options.is_rerun();
        let mut offered: Vec<String> = Vec::new();
        let mut known_fixes: Vec<String> = Vec::new();
        let mut last: Option<Rejected> = None;
        for revision in 1..=attempts {
            // After a rejected attempt, Code gets that attempt's code, why it was rejected and the fixes
            // found for it; the first attempt of a step QA sent back gets QA's feedback.
            let feedback = match &last {
                Some(rejected) => Some(Feedback {
                    kind: rejected.kind,
                    code: rejected.run.code.clone(),
                    failure: rejected.run.error.clone(),
                    known_fixes: std::mem::take(&mut known_fixes),
                }),
                None => sent_back.take(),
            };
            let output = self
                .run_step(position, llm, revision, feedback, Ends::WhenAccepted)
                .await?;
            let test = match &output.code {
                Some(submission) => Some(
                    self.run_test(position, revision, &submission.test_file, llm)
                        .await?,
                ),
                None => None,
            };
            let ran = test.as_ref().is_some_and(|test| test.passed);
            // A test that passed must also be able to fail.
            let check = match (&output.code, ran) {
                (Some(submission), true) => Some(self.check_test(idx, revision, submission).await),
                _ => None,
            };
            let vacuous = check.as_ref().and_then(StubCheck::vacuous);
            // A test that can fail, passed: the code must also be for the task.
            let relevance = match (&output.code, ran && vacuous.is_none()) {
                (Some(submission), true) => self.relevance(position, submission).await,
                _ => None,
            };
            let off_task = relevance.and_then(|score| {
                let bar = self.settings.min_code_relevance;
                (score < bar).then(|| {
                    let functions = check
                        .as_ref()
                        .map_or_else(String::new, |check| check.functions.join(", "));
                    format!(
                        "the code ({functions}) does not look like what the task asks: its similarity to the \
                         task and the step is {score:.2}, below director.min_code_relevance {bar:.2}; write the \
                         function the step asks for"
                    )
                })
            });
            let rejection = vacuous.clone().or_else(|| off_task.clone());
            let passed = ran && rejection.is_none();
            let failure = match (&rejection, &test) {
                (Some(reason), _) => reason.clone(),
                (None, Some(TestResult { failure: Some(failure), .. })) => failure.clone(),
                (None, Some(_)) => String::new(),
                (None, None) => format!(
                    "the answer was not the JSON {{\"code\": ..., \"test\": ...}} asked for (cut off at the \
                     token budget?): {}",
                    excerpt(&output.text)
                ),
            };
            let fixes_offered = offered.len();
            for id in offered.drain(..) {
                if learn {
                    memory.pattern_outcome(&id, passed);
                }
            }
            let attempt = Attempt {
                idx,
                revision,
                attempts,
                passed,
                vacuous: vacuous.is_some(),
                off_task: off_task.is_some(),
                relevance,
                fixes_offered,
            };
            self.record_attempt(&attempt, &failure, test.as_ref(), check.as_ref());
            if passed {
                let line = review_line(&self.step_at(position).instruction, check.as_ref());
                self.board(|board| {
                    board.reviews.insert(idx, line);
                    board.steps[position].status = StepStatus::Done;
                });
                self.update_step(position, false);
                if let (Some(rejected), Some(submission), true) = (&last, &output.code, learn) {
                    // Only a real test failure teaches a fix (a vacuous test is not an error of the code).
                    if rejected.kind == FeedbackKind::TestFailed {
                        if let Some(pattern) =
                            memory.learn_fix(AgentKind::Code, &rejected.run, &submission.code)
                        {
                            self.board(|board| board.drafts.push(pattern));
                        }
                    }
                }
                return Ok(output);
            }
            // A rejected attempt's code is not kept as a snippet: what this step's attempt wanted kept goes
            // (the step's earlier attempts kept nothing, and steps beside it keep theirs).
            self.board(|board| board.drafts.retain(|draft| draft.step != Some(idx)));
            let code = output
                .code
                .as_ref()
                .map_or_else(|| output.text.clone(), |submission| submission.code.clone());
            let kind = if vacuous.is_some() {
                FeedbackKind::VacuousTest
            } else if off_task.is_some() {
                FeedbackKind::OffTask
            } else {
                FeedbackKind::TestFailed
            };
            let known = if memory.enabled()
                && revision < attempts
                && kind == FeedbackKind::TestFailed
            {
                memory
                    .patterns_for_task(self.task_id, &failure, KNOWN_FIXES)
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
            last = Some(Rejected {
                kind,
                run: FailedRun {
                    code,
                    error: failure,
                },
            });
        }
        self.board(|board| board.steps[position].status = StepStatus::Failed);
        self.update_step(position, false);
        Err(FlowError::CodeFailed {
            idx,
            attempts,
            failure: shorten(
                &last.map(|rejected| rejected.run.error).unwrap_or_default(),
                FAILURE_IN_ERROR_CHARS,
            ),
        })
    }

    /// How close the accepted code of step `position` is to what was asked: the larger cosine similarity of
    /// the code to the task prompt and to the step instruction (all-MiniLM-L6-v2, one batch). `None` when
    /// the check is off (`director.min_code_relevance = 0`), memory's embedding model is not loaded, or the
    /// embedding failed (logged): the check then rejects nothing.
    async fn relevance(&self, position: usize, submission: &CodeSubmission) -> Option<f32> {
        let memory = &self.deps.agent.memory;
        if self.settings.min_code_relevance <= 0.0 || !memory.enabled() {
            return None;
        }
        let texts = vec![
            self.prompt.clone(),
            self.step_at(position).instruction,
            submission.code.clone(),
        ];
        match memory.embed(texts).await {
            Ok(vectors) if vectors.len() == 3 => {
                Some(cosine(&vectors[0], &vectors[2]).max(cosine(&vectors[1], &vectors[2])))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(task_id = %self.task_id, %error, "the code's relevance could not be measured");
                None
            }
        }
    }

    /// Runs the stub check of attempt `revision` of step `idx` in the sandbox through the `run_code` tool
    /// (a `tool.called` event of the Director). A check that could not run is logged and finds nothing
    /// vacuous: the test already passed, and a broken check must not reject good work.
    async fn check_test(&self, idx: i32, revision: u32, submission: &CodeSubmission) -> StubCheck {
        let literal = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "''".to_owned());
        // A JSON string is a valid Python string literal with the same value.
        let script = format!(
            "CODE = {}\nTEST = {}\n{STUB_CHECK}",
            literal(&submission.code),
            literal(&submission.test)
        );
        let call = ToolCall {
            tool: "run_code".into(),
            arguments: json!({ "language": "python", "code": script }),
        };
        let context = ToolContext {
            task_id: self.task_id,
            agent: AgentKind::Director,
            step: idx,
        };
        let call_id = format!(
            "{}.stub",
            crate::agents::attempt_purpose("test", idx, self.round, revision)
        );
        let checked = self
            .deps
            .agent
            .tools
            .invoke(context, &call_id, call)
            .await
            .map_err(|error| error.to_string())
            .and_then(|value| {
                serde_json::from_value::<RunReport>(value).map_err(|error| error.to_string())
            })
            .and_then(|report| {
                if report.outcome != Outcome::Ok {
                    return Err(format!(
                        "outcome {}: {}",
                        report.outcome.as_str(),
                        report.failure_output(300)
                    ));
                }
                let line = report.stdout.lines().last().unwrap_or_default().to_owned();
                serde_json::from_str::<StubCheck>(&line).map_err(|error| error.to_string())
            });
        checked.unwrap_or_else(|error| {
            tracing::warn!(task_id = %self.task_id, step = idx, %error, "the stub check of a test could not run");
            StubCheck {
                error: Some(shorten(&error, 300)),
                ..StubCheck::default()
            }
        })
    }

    /// Announces and counts one attempt of the Code/QA loop, and keeps it for the result.
    fn record_attempt(
        &self,
        attempt: &Attempt,
        failure: &str,
        test: Option<&TestResult>,
        check: Option<&StubCheck>,
    ) {
        let Attempt {
            idx,
            revision,
            attempts,
            passed,
            vacuous,
            off_task,
            relevance,
            fixes_offered,
        } = *attempt;
        let outcome = match (passed, vacuous, off_task) {
            (true, _, _) => "passed",
            (false, true, _) => "vacuous",
            (false, false, true) => "off_task",
            (false, false, false) => "failed",
        };
        self.deps
            .agent
            .metrics
            .code_attempts
            .with_label_values(&[&revision.to_string(), outcome])
            .inc();
        if revision > 1 {
            let offered = if fixes_offered > 0 { "true" } else { "false" };
            let ended = if passed { "passed" } else { "failed" };
            self.deps
                .agent
                .metrics
                .code_fix_outcomes
                .with_label_values(&[offered, ended])
                .inc();
        }
        let report = test.map(|test| &test.report);
        let data = json!({
            "step": idx,
            "attempt": revision,
            "of": attempts,
            "round": self.round,
            "passed": passed,
            "vacuous": vacuous,
            "off_task": off_task,
            "relevance": relevance,
            "stub_check": check,
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
        self.board(|board| board.tests.push(data));
    }

    /// Has QA run the test file of attempt `revision` of step `position` (retrying after a restart as the
    /// policy allows).
    async fn run_test(
        &self,
        position: usize,
        revision: u32,
        test_file: &str,
        llm: &Arc<TaskModels>,
    ) -> Result<TestResult, FlowError> {
        let idx = self.step_at(position).idx;
        let spec = StepSpec {
            test_file: Some(test_file.to_owned()),
            ..self.spec_for(position, StepKind::Test, revision)
        };
        let mut attempt = 0;
        let output = self
            .dispatch_retrying(position, AgentKind::Qa, spec, llm, |_: &Self| {
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

/// What QA's verification is told about an accepted code step: what it asked, the functions the code
/// defines and those its test calls.
pub(super) fn review_line(instruction: &str, check: Option<&StubCheck>) -> String {
    match check {
        Some(check) if check.error.is_none() => format!(
            "Step \"{instruction}\": the code defines {}; its test calls {}.",
            list_or_none(&check.functions),
            list_or_none(&check.calls)
        ),
        _ => format!("Step \"{instruction}\": the code's functions could not be read."),
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(functions: &[&str], calls: &[&str], asserts: bool, passes: bool) -> StubCheck {
        StubCheck {
            functions: functions.iter().map(|f| (*f).to_owned()).collect(),
            calls: calls.iter().map(|f| (*f).to_owned()).collect(),
            asserts,
            passes_against_stub: passes,
            error: None,
        }
    }

    #[test]
    fn only_a_test_that_can_fail_is_accepted() {
        assert_eq!(check(&["f(x)"], &["f"], true, false).vacuous(), None);
        let never_calls = check(&["f(x)"], &[], true, true).vacuous().unwrap();
        assert!(never_calls.contains("never calls f(x)"), "{never_calls}");
        let swallows = check(&["f(x)"], &["f"], false, true).vacuous().unwrap();
        assert!(swallows.contains("catches"), "{swallows}");
        let no_assert = check(&["f(x)"], &["f"], false, false).vacuous().unwrap();
        assert!(no_assert.contains("no assert"), "{no_assert}");
        assert!(check(&[], &[], true, true)
            .vacuous()
            .unwrap()
            .contains("no function"));
        // A check that could not look rejects nothing.
        let broken = StubCheck {
            error: Some("timeout".into()),
            ..StubCheck::default()
        };
        assert_eq!(broken.vacuous(), None);
    }
}
