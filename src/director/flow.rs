//! One task's flow, run by the Director: choose the model (default or replay), plan, assign each step to an
//! agent (a scored decision), run the steps on the specialists, have QA verify, and end the task with its
//! terminal status and event committed together.
//!
//! Every wait is raced against the task's cancellation, so a cancelled task ends at once; the specialists
//! and the model stop their own work for it through the same token.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::plan::{self, Plan};
use super::{Director, DirectorDeps, DispatchError};
use crate::agents::{call_llm, AgentKind};
use crate::events::{EventKind, EventLog};
use crate::llm::replay::ReplayProvider;
use crate::llm::{excerpt, shorten};
use crate::llm::{LlmError, LlmProvider};
use crate::memory::learning::FailedRun;
use crate::memory::{MemoryDraft, MemoryKind, NewMemory, RecallSpec, SearchFilter};
use crate::messages::{
    Dispatch, Envelope, Feedback, RunStep, StartTask, StepKind, StepOutput, StepSpec, TestResult,
};
use crate::storage::writer::{DecisionRecord, StepUpdate, TaskEnd, WriteOp};
use crate::storage::StorageError;
use crate::task::{TaskId, TaskOptions, TaskStatus};

/// Longest answer kept in a task's summary memory, in characters.
const SUMMARY_ANSWER_CHARS: usize = 600;

/// Why a flow did not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The user cancelled the task.
    #[error("cancelled")]
    Cancelled,
    /// A model call of the Director failed.
    #[error("{what}: {source}")]
    Llm {
        /// Which call.
        what: &'static str,
        /// Why.
        #[source]
        source: LlmError,
    },
    /// The plan could not be read.
    #[error(transparent)]
    Plan(#[from] plan::MalformedPlan),
    /// A model choice came back without its scored options.
    #[error("decision for step {0} has no scored options")]
    Unscored(i32),
    /// A step failed for good.
    #[error("step {idx} on {agent}: {source}")]
    Step {
        /// The step.
        idx: i32,
        /// Its agent.
        agent: AgentKind,
        /// Why.
        #[source]
        source: DispatchError,
    },
    /// Replay was asked for but is impossible.
    #[error("replay: {0}")]
    Replay(String),
    /// Reading a recording failed.
    #[error("read replay recording: {0}")]
    Storage(#[from] StorageError),
    /// The Director stopped (the application is shutting down).
    #[error("director stopped")]
    DirectorGone,
    /// A code step's test never passed.
    #[error(
        "step {idx}: the code failed its test after {attempts} attempts; last failure: {failure}"
    )]
    CodeFailed {
        /// The step.
        idx: i32,
        /// Attempts made.
        attempts: u32,
        /// The last failure output, shortened.
        failure: String,
    },
}

/// Longest failure kept in a task's error, in characters.
const FAILURE_IN_ERROR_CHARS: usize = 400;
/// Learned fixes offered to Code after a failed attempt.
const KNOWN_FIXES: usize = 2;

/// A planned step and where it stands.
struct PlannedStep {
    idx: i32,
    agent: AgentKind,
    instruction: String,
    kind: StepKind,
    status: &'static str,
    attempts: i32,
    output: Option<String>,
}

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

/// One task's flow.
pub struct TaskFlow {
    task_id: TaskId,
    prompt: String,
    options: TaskOptions,
    deps: DirectorDeps,
    director: Addr<Director>,
    cancel: CancellationToken,
    steps: Vec<PlannedStep>,
    /// What the steps want kept in long-term memory, stored with the end if the task completes.
    drafts: Vec<MemoryDraft>,
    /// The code steps' test attempts, for the result.
    tests: Vec<serde_json::Value>,
}

impl TaskFlow {
    /// A flow for the task `start` describes.
    pub fn new(
        task_id: TaskId,
        start: StartTask,
        deps: DirectorDeps,
        director: Addr<Director>,
        cancel: CancellationToken,
    ) -> Self {
        TaskFlow {
            task_id,
            prompt: start.prompt,
            options: start.options,
            deps,
            director,
            cancel,
            steps: Vec::new(),
            drafts: Vec::new(),
            tests: Vec::new(),
        }
    }

    /// Runs the task to its end and stores the end (status and terminal event in one commit).
    pub async fn run(mut self) {
        let started = Instant::now();
        let task_id = self.task_id;
        self.writer().send(WriteOp::StartTask(EventLog::pending(
            task_id,
            EventKind::TaskStarted,
            Some(AgentKind::Director),
            json!({ "options": self.options }),
        )));
        let span = tracing::info_span!(
            "invoke_agent",
            otel.name = "invoke_agent director",
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = "director",
            gen_ai.agent.id = "director",
            gen_ai.conversation.id = %task_id,
        );
        let outcome = self.work().instrument(span).await;
        let (status, result, error, kind, data) = match outcome {
            Ok(result) => (
                TaskStatus::Completed,
                Some(result.clone()),
                None,
                EventKind::TaskCompleted,
                json!({ "result": result }),
            ),
            Err(FlowError::Cancelled) => (
                TaskStatus::Cancelled,
                None,
                None,
                EventKind::TaskCancelled,
                json!({}),
            ),
            Err(error) => {
                let message = error.to_string();
                tracing::warn!(task_id = %task_id, error = %message, "task failed");
                (
                    TaskStatus::Failed,
                    None,
                    Some(message.clone()),
                    EventKind::TaskFailed,
                    json!({ "error": message }),
                )
            }
        };
        self.close_open_steps(status);
        let metrics = &self.deps.agent.metrics;
        metrics
            .tasks_total
            .with_label_values(&[status.as_str()])
            .inc();
        metrics
            .task_duration
            .with_label_values(&[status.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let memories = match &result {
            Some(result) => self.memories(result).await,
            None => Vec::new(),
        };
        let stored = memories.len();
        let mut data = data;
        if stored > 0 {
            data["memories"] = json!(memories
                .iter()
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>());
        }
        let end = TaskEnd {
            task_id,
            status,
            result,
            error,
            event: EventLog::pending(task_id, kind, Some(AgentKind::Director), data),
            memories,
        };
        let commit_started = Instant::now();
        let committed = self.writer().finish_task(end).await;
        if stored > 0 {
            self.deps
                .agent
                .memory
                .count_task_write(commit_started, committed.is_ok());
        }
        if let Err(error) = committed {
            tracing::error!(task_id = %task_id, %error, "store the end of a task");
        }
    }

    /// The memories a completed task leaves: what its steps asked to keep and the Director's summary of
    /// the task, embedded in one batch. None for replays (they would repeat the original's) or when memory
    /// is off; an embedding failure is logged and keeps none (all or nothing).
    async fn memories(&mut self, result: &serde_json::Value) -> Vec<NewMemory> {
        let memory = &self.deps.agent.memory;
        if !memory.enabled() || self.options.replay_of.is_some() {
            return Vec::new();
        }
        let answer = result
            .get("answer")
            .and_then(|answer| answer.as_str())
            .unwrap_or("");
        let mut drafts = std::mem::take(&mut self.drafts);
        drafts.push(MemoryDraft {
            kind: MemoryKind::Summary,
            content: format!(
                "Task: {}\nResult: {}",
                self.prompt,
                shorten(answer, SUMMARY_ANSWER_CHARS)
            ),
            detail: Some(json!({
                "verdict": result.get("verdict"),
                "plan": result.get("plan"),
            })),
            agent: AgentKind::Director,
            step: None,
        });
        let started = Instant::now();
        match memory.prepare(Some(self.task_id), drafts).await {
            Ok(memories) => memories,
            Err(error) => {
                tracing::warn!(task_id = %self.task_id, %error, "the task's memories could not be embedded; none are kept");
                memory.count_task_write(started, false);
                Vec::new()
            }
        }
    }

    fn writer(&self) -> &crate::storage::writer::Writer {
        self.deps.agent.events.writer()
    }

    async fn work(&mut self) -> Result<serde_json::Value, FlowError> {
        let llm = self.provider().await?;
        let plan = self.plan(llm.as_ref()).await?;
        for (position, instruction) in plan.steps.iter().enumerate() {
            let idx = i32::try_from(position + 1).unwrap_or(i32::MAX);
            let agent = self.assign(llm.as_ref(), idx, instruction).await?;
            self.steps.push(PlannedStep {
                idx,
                agent,
                instruction: instruction.clone(),
                kind: StepKind::Work,
                status: "pending",
                attempts: 0,
                output: None,
            });
        }
        self.steps.push(PlannedStep {
            idx: i32::try_from(plan.steps.len() + 1).unwrap_or(i32::MAX),
            agent: AgentKind::Qa,
            instruction: "Check the work against the task".to_owned(),
            kind: StepKind::Verify,
            status: "pending",
            attempts: 0,
            output: None,
        });
        self.writer().send(WriteOp::InsertSteps {
            task_id: self.task_id,
            steps: self
                .steps
                .iter()
                .map(|step| (step.idx, step.agent, step.instruction.clone()))
                .collect(),
        });

        let mut verdict = None;
        for position in 0..self.steps.len() {
            let step = &self.steps[position];
            let output = if step.agent == AgentKind::Code && step.kind == StepKind::Work {
                self.run_code_step(position, &llm).await?
            } else {
                self.run_step(position, &llm, 1, None).await?
            };
            if let Some(found) = output.verdict {
                // QA's decision, as a span event like the Director's. A verdict is generated under a grammar,
                // not scored, so it has no confidence.
                tracing::debug!(
                    decision.kind = "verdict",
                    decision.agent = AgentKind::Qa.as_str(),
                    decision.options = r#"["pass","fail"]"#,
                    decision.chosen = %found.verdict,
                    "decision made"
                );
                self.deps
                    .agent
                    .metrics
                    .decisions
                    .with_label_values(&[AgentKind::Qa.as_str(), "verdict"])
                    .inc();
                self.deps.agent.events.emit(
                    self.task_id,
                    EventKind::QaVerdict,
                    Some(AgentKind::Qa),
                    json!({ "verdict": found.verdict, "feedback": found.feedback }),
                );
                verdict = Some(found);
            }
        }
        let work: Vec<_> = self
            .steps
            .iter()
            .filter(|step| step.kind == StepKind::Work)
            .map(|step| json!({ "idx": step.idx, "agent": step.agent, "instruction": step.instruction, "output": step.output }))
            .collect();
        let answer = self
            .steps
            .iter()
            .rev()
            .find(|step| step.kind == StepKind::Work)
            .and_then(|step| step.output.clone());
        Ok(json!({
            "answer": answer,
            "plan": plan.steps,
            "steps": work,
            "verdict": verdict,
            "tests": self.tests,
            "provider": llm.provider_name(),
            "model": llm.model_name(),
        }))
    }

    /// The task's model: the default provider, or a replay of the task named by `options.replay_of`.
    async fn provider(&self) -> Result<Arc<dyn LlmProvider>, FlowError> {
        let Some(source) = self.options.replay_of else {
            return Ok(Arc::clone(&self.deps.llm));
        };
        if let Some(cached) = self.deps.replays.get(source) {
            return Ok(cached);
        }
        let recording = self.deps.storage.recording(source).await?;
        if recording.outputs.is_empty() {
            return Err(FlowError::Replay(format!(
                "task {source} has no recorded model calls"
            )));
        }
        // A recording that holds the final verification belongs to a task that got to its end: it will not
        // change, so later replays of it can skip the read.
        let complete = recording.outputs.contains_key("verify");
        let provider = Arc::new(ReplayProvider::new(
            source,
            recording.model,
            recording.outputs,
        ));
        if complete {
            self.deps.replays.insert(source, Arc::clone(&provider));
        }
        Ok(provider)
    }

    async fn plan(&self, llm: &dyn LlmProvider) -> Result<Plan, FlowError> {
        let max_steps = self
            .options
            .max_steps
            .map_or(self.deps.settings.max_steps, |asked| {
                asked.min(self.deps.settings.max_steps)
            });
        // Summaries of earlier related tasks, for the plan (a `memory.read` event of the Director).
        let recall = RecallSpec {
            purpose: "earlier related tasks",
            query: self.prompt.clone(),
            filter: SearchFilter {
                kinds: vec![MemoryKind::Summary],
                ..SearchFilter::default()
            },
        };
        let recalled = self
            .deps
            .agent
            .memory
            .recall(self.task_id, AgentKind::Director, 0, &recall)
            .await;
        let request =
            plan::plan_request(&self.prompt, max_steps, &self.deps.agent.limits, &recalled);
        let output = self.llm_call(llm, request, "plan").await?;
        let plan = plan::parse_plan(&output.text, max_steps)?;
        // The plan is the task's working state: kept in its short-term scratchpad for the agents and for
        // inspection (a failure is counted and logged there; the flow keeps its own copy).
        let _ = self
            .deps
            .agent
            .memory
            .short_term()
            .put(self.task_id, "plan", &json!(plan.steps).to_string())
            .await;
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::PlanCreated,
            Some(AgentKind::Director),
            json!({ "steps": plan.steps }),
        );
        Ok(plan)
    }

    /// Chooses the agent for step `idx` from the model's probabilities; records and announces the decision.
    async fn assign(
        &self,
        llm: &dyn LlmProvider,
        idx: i32,
        instruction: &str,
    ) -> Result<AgentKind, FlowError> {
        let request = plan::assign_request(&self.prompt, idx, instruction, &self.deps.agent.limits);
        let output = self.llm_call(llm, request, "assign agent").await?;
        let choice = output.choice.ok_or(FlowError::Unscored(idx))?;
        let agent: AgentKind = choice.chosen.parse().map_err(|_| {
            FlowError::Plan(plan::MalformedPlan(format!(
                "step {idx} assigned to unknown agent '{}'",
                excerpt(&choice.chosen)
            )))
        })?;
        let confidence = choice.confidence();
        let options = json!(choice.options);
        // A span event on the Director's span (the OpenTelemetry layer records it at every log level).
        tracing::debug!(
            decision.kind = "assign_agent",
            decision.step = idx,
            decision.options = %options,
            decision.chosen = %agent,
            decision.confidence = confidence,
            decision.reasoning = %choice.reasoning,
            "decision made"
        );
        self.deps
            .agent
            .metrics
            .decisions
            .with_label_values(&[AgentKind::Director.as_str(), "assign_agent"])
            .inc();
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::DecisionMade,
            Some(AgentKind::Director),
            json!({
                "kind": "assign_agent",
                "step": idx,
                "instruction": instruction,
                "options": options,
                "chosen": agent,
                "confidence": confidence,
                "reasoning": choice.reasoning,
                "tokens": output.usage.input_tokens + output.usage.output_tokens,
            }),
        );
        self.writer().send(WriteOp::Decision(DecisionRecord {
            task_id: self.task_id,
            step_idx: Some(idx),
            kind: "assign_agent".to_owned(),
            options,
            chosen: agent.as_str().to_owned(),
            confidence,
            reasoning: choice.reasoning,
        }));
        Ok(agent)
    }

    async fn llm_call(
        &self,
        llm: &dyn LlmProvider,
        request: crate::llm::LlmRequest,
        what: &'static str,
    ) -> Result<crate::llm::LlmOutput, FlowError> {
        // Not raced against cancellation: the provider stops at the next token when the task's token
        // fires, and letting the call end records it (a `cancelled` model error) instead of dropping it.
        let result = call_llm(
            &self.deps.agent,
            llm,
            self.task_id,
            AgentKind::Director,
            request,
            self.cancel.clone(),
        )
        .await;
        match result {
            Ok(_) if self.cancel.is_cancelled() => Err(FlowError::Cancelled),
            Ok(output) => Ok(output),
            Err(LlmError::Cancelled) => Err(FlowError::Cancelled),
            Err(source) => Err(FlowError::Llm { what, source }),
        }
    }

    /// Runs a code step: Code writes code and a test, QA runs the test in the sandbox, and a failure goes
    /// back to Code with its output (and fixes learned from similar failures) until the test passes or
    /// `director.code_attempts` are used up. Every attempt is a `code.attempt` event and counted by
    /// attempt number. A pass after a failure is learned as a pattern; a learned fix that was offered is
    /// scored by whether the next attempt passed. Without a working sandbox the code is not run, and the
    /// result says why.
    async fn run_code_step(
        &mut self,
        position: usize,
        llm: &Arc<dyn LlmProvider>,
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
        self.steps[position].status = "failed";
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
        llm: &Arc<dyn LlmProvider>,
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
            source: DispatchError::Agent(crate::agents::AgentError::Tool(
                "the test step returned no run".into(),
            )),
        })
    }

    /// What an agent is sent for step `position` as `kind`, in attempt `revision` of the Code/QA loop (1
    /// outside it); the agent fills in earlier work and recalled memories.
    fn spec_for(&self, position: usize, kind: StepKind, revision: u32) -> StepSpec {
        let step = &self.steps[position];
        StepSpec {
            idx: step.idx,
            kind,
            prompt: self.prompt.clone(),
            instruction: step.instruction.clone(),
            earlier: Vec::new(),
            recalled: Vec::new(),
            attempt: 1,
            revision,
            feedback: None,
            test_file: None,
        }
    }

    /// Dispatches `spec` to `agent` for step `position`, again after a restart while `director.step_retries`
    /// allows. `next_attempt` runs before each try and numbers it (it may also record the try on the step).
    /// A failure other than a restart or a cancellation marks the step failed.
    async fn dispatch_retrying(
        &mut self,
        position: usize,
        agent: AgentKind,
        mut spec: StepSpec,
        llm: &Arc<dyn LlmProvider>,
        mut next_attempt: impl FnMut(&mut Self) -> u32,
    ) -> Result<StepOutput, FlowError> {
        let retries = self.deps.settings.step_retries;
        loop {
            spec.attempt = next_attempt(self);
            match self.dispatch(agent, spec.clone(), llm).await? {
                Ok(output) => return Ok(output),
                Err(DispatchError::Restarted { .. }) if spec.attempt <= retries => {}
                Err(DispatchError::Cancelled) => return Err(FlowError::Cancelled),
                Err(source) => {
                    self.steps[position].status = "failed";
                    self.update_step(position, false);
                    return Err(FlowError::Step {
                        idx: self.steps[position].idx,
                        agent,
                        source,
                    });
                }
            }
        }
    }

    /// Sends one step to `agent` through the Director and waits for the answer (or the task's cancellation).
    async fn dispatch(
        &self,
        agent: AgentKind,
        spec: StepSpec,
        llm: &Arc<dyn LlmProvider>,
    ) -> Result<Result<StepOutput, DispatchError>, FlowError> {
        let dispatch = Envelope::new(
            self.task_id,
            Dispatch {
                agent,
                run: RunStep {
                    step: spec,
                    llm: Arc::clone(llm),
                    cancel: self.cancel.clone(),
                },
            },
        );
        let reply = self.director.send(dispatch);
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(FlowError::Cancelled),
            reply = reply => reply.map_err(|_| FlowError::DirectorGone),
        }
    }

    /// Runs step `position` on its agent (attempt `revision` of a code step, with the feedback of the
    /// previous one), retrying after a restart as the policy allows.
    async fn run_step(
        &mut self,
        position: usize,
        llm: &Arc<dyn LlmProvider>,
        revision: u32,
        feedback: Option<Feedback>,
    ) -> Result<StepOutput, FlowError> {
        let step = &self.steps[position];
        let agent = step.agent;
        let spec = StepSpec {
            feedback,
            ..self.spec_for(position, step.kind, revision)
        };
        let mut output = self
            .dispatch_retrying(position, agent, spec, llm, |flow| {
                let step = &mut flow.steps[position];
                step.attempts += 1;
                step.status = "running";
                let attempt = u32::try_from(step.attempts).unwrap_or(u32::MAX);
                flow.update_step(position, true);
                attempt
            })
            .await?;
        self.drafts.append(&mut output.memories);
        let step = &mut self.steps[position];
        step.status = "done";
        step.output = Some(output.text.clone());
        self.update_step(position, false);
        Ok(output)
    }

    fn update_step(&self, position: usize, starting: bool) {
        let step = &self.steps[position];
        let now = chrono::Utc::now();
        self.writer().send(WriteOp::UpdateStep(StepUpdate {
            task_id: self.task_id,
            idx: step.idx,
            agent: step.agent,
            status: step.status,
            output: step.output.clone(),
            attempts: step.attempts,
            started_at: starting.then_some(now),
            finished_at: (!starting && step.status != "running").then_some(now),
        }));
    }

    /// Steps still pending or running when the task ends are marked `cancelled` or `skipped`.
    fn close_open_steps(&mut self, status: TaskStatus) {
        let closing = if status == TaskStatus::Cancelled {
            "cancelled"
        } else {
            "skipped"
        };
        for position in 0..self.steps.len() {
            if matches!(self.steps[position].status, "pending" | "running") {
                self.steps[position].status = closing;
                self.update_step(position, false);
            }
        }
    }
}
