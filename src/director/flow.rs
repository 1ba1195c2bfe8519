//! One task's flow, run by the Director: choose the model (default or replay), plan, assign each step to an
//! agent (a scored decision), run the steps on the specialists, have QA verify, and end the task with its
//! terminal status and event committed together.
//!
//! Every wait is raced against the task's cancellation, so a cancelled task ends at once; the specialists
//! and the model stop their own work for it through the same token.
//!
//! This file holds the flow itself (start, plan, assign, the steps in order, the verdict and the revisions
//! it asks for); the Code/QA loop (with the vacuous-test check, `flow/stub_check.py`) is in
//! `flow/code_loop.rs`, sending a step to its agent with the retry policy in `flow/dispatch.rs`, and
//! the end of the task (result, memories, the terminal commit) in `flow/finish.rs`, rebuilding the flow
//! of a task taken over from a process that died in `flow/resume.rs`, and what replays and forks change
//! (their models, their view of memory, a decision override) in `flow/fork.rs`.

mod code_loop;
mod consensus;
mod dispatch;
mod finish;
mod fork;
mod pause;
mod resume;

pub use resume::resumable;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::calibration::{self, CalibrationKey};
use super::plan::{self, Plan};
use super::{Director, DirectorDeps, DispatchError};
use crate::config::QaVerdictMode;
use crate::domain::{
    excerpt, AgentKind, DecisionKind, EventKind, MemoryKind, StepStatus, TaskId, TaskOptions,
};
use crate::llm::budget::Limits;
use crate::llm::divergence::RequestPrint;
use crate::llm::models::TaskModels;
use crate::llm::replay::ReplayProvider;
use crate::llm::{Choice, LlmError, LlmOutput, LlmRequest, ScoredOption};
use crate::memory::{MemoryDraft, RecallSpec, SearchFilter};
use crate::messages::{Feedback, FeedbackKind, Resume, StartTask, StepKind, Verdict};
use crate::storage::records::{DecisionRecord, LlmCallRecord, NewStep, PendingEvent, WriteOp};
use crate::storage::StorageError;
use dispatch::Ends;
use fork::Overridden;

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
    /// The task picked a named model this process does not configure (submitted to another node).
    #[error("the task asks for the model '{0}', which this process does not configure ([llm.models.{0}])")]
    UnknownModel(String),
    /// Replay was asked for but is impossible.
    #[error("replay: {0}")]
    Replay(String),
    /// Reading a recording failed.
    #[error("read replay recording: {0}")]
    Storage(#[from] StorageError),
    /// A task taken over from a dead process cannot be continued from what is stored of it.
    #[error("cannot resume the task after its process died: {0}")]
    Unresumable(String),
    /// The Director stopped (the application is shutting down).
    #[error("director stopped")]
    DirectorGone,
    /// QA's final verdict stayed `fail` after the revisions it sent the work back for.
    #[error("QA's verdict is fail after {revisions} revision(s): {feedback}")]
    QaRejected {
        /// Revisions made.
        revisions: u32,
        /// QA's last feedback.
        feedback: String,
    },
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

/// A planned step and where it stands.
#[derive(Debug, Clone)]
struct PlannedStep {
    idx: i32,
    agent: AgentKind,
    instruction: String,
    /// The steps it waits for (the verification waits for every work step).
    depends_on: Vec<i32>,
    kind: StepKind,
    status: StepStatus,
    attempts: i32,
    output: Option<String>,
}

/// What the flow's steps change as they run. Steps whose dependencies are done run at once (as futures
/// of the one flow, polled by one task), so this is shared through a `RefCell`: every change is made in
/// one synchronous call ([`TaskFlow::board`]) and no borrow is held across an `.await`.
#[derive(Debug, Default)]
struct Board {
    steps: Vec<PlannedStep>,
    /// What the steps want kept in long-term memory, stored with the end if the task completes.
    drafts: Vec<MemoryDraft>,
    /// The code steps' test attempts, for the result.
    tests: Vec<serde_json::Value>,
    /// What the verification is told about each accepted code step, by step.
    reviews: BTreeMap<i32, String>,
}

/// A decision, as [`TaskFlow::announce_decision`] announces it.
struct Decision<'a> {
    /// Who decided.
    agent: AgentKind,
    /// What kind of decision ("assign_agent", "verdict").
    kind: &'static str,
    /// The step it is about, if any.
    step: Option<i32>,
    /// The options weighed (JSON).
    options: String,
    /// The option taken.
    chosen: &'a str,
    /// Its probability, for a scored choice.
    confidence: Option<f64>,
    /// The stated reason, when there is one.
    reasoning: Option<&'a str>,
}

/// One task's flow.
pub struct TaskFlow {
    task_id: TaskId,
    prompt: String,
    options: TaskOptions,
    deps: DirectorDeps,
    director: Addr<Director>,
    cancel: CancellationToken,
    /// The steps and what they leave behind.
    board: RefCell<Board>,
    /// The current round of QA's verification: 1, then one more for each revision its `fail` asked for.
    round: u32,
    /// The `[director]` settings of this task: the configured ones with its `options.director` over them.
    settings: crate::config::DirectorSettings,
    /// The routing decision's content-free scores, fetched at the task's first assignment.
    content_free: Option<Result<Vec<ScoredOption>, &'static str>>,
    /// What is stored of a task taken over from a dead process, until the flow is rebuilt from it.
    resume: Option<Resume>,
    /// The steps whose agent decision is already stored (a resumed task that plans again).
    decided: BTreeSet<i32>,
}

/// An agent choice after calibration.
struct Routing {
    /// The options with the probabilities the choice is made by (calibrated where calibrated, then with
    /// the model's own as `raw_probability`).
    options: Vec<ScoredOption>,
    /// The content-free scores, where calibrated.
    content_free: Option<Vec<ScoredOption>>,
    /// The option taken.
    chosen: String,
    /// `calibrated`, or why not: `off` (setting), `unscored` (the provider's choice has no probabilities),
    /// `unrecorded` (a replay of a task recorded without a content-free call), `mismatch`.
    calibration: &'static str,
    /// The model's reason, with the calibration's figures.
    reasoning: String,
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
        let settings = deps.settings.for_task(start.options.director.as_ref());
        TaskFlow {
            task_id,
            settings,
            prompt: start.prompt,
            options: start.options,
            deps,
            director,
            cancel,
            board: RefCell::new(Board::default()),
            round: 1,
            content_free: None,
            resume: start.resume,
            decided: BTreeSet::new(),
        }
    }

    /// Runs the task to its end and stores the end (status and terminal event in one commit).
    pub async fn run(mut self) {
        let started = Instant::now();
        let task_id = self.task_id;
        // A resumed task started long ago: its `task.resumed` (from `rebuild`) takes the place of this.
        if self.resume.is_none() {
            self.deps
                .agent
                .writer
                .send(WriteOp::MarkRunning(PendingEvent::now(
                    task_id,
                    EventKind::TaskStarted,
                    Some(AgentKind::Director),
                    json!({ "options": self.options }),
                )));
        }
        let span = tracing::info_span!(
            "invoke_agent",
            otel.name = "invoke_agent director",
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = "director",
            gen_ai.agent.id = "director",
            gen_ai.conversation.id = %task_id,
        );
        let outcome = self.work().instrument(span).await;
        self.finish(outcome, started).await;
        self.deps.agent.tools.forget_runs(task_id);
        self.leave_rerun();
        self.debugger().forget(task_id);
    }

    async fn work(&mut self) -> Result<serde_json::Value, FlowError> {
        self.enter_rerun().await;
        let llm = self.provider().await?;
        let plan = match self.rebuild().await? {
            Some(plan) => plan,
            None => self.plan_and_assign(&llm).await?,
        };
        let verdict = self.run_graph(&llm).await?;
        let verdict = self.settle_verdict(verdict, &llm).await?;
        Ok(self.result(&plan, verdict, llm.as_ref()))
    }

    /// Changes (or reads) what the steps share, in one synchronous call.
    fn board<R>(&self, change: impl FnOnce(&mut Board) -> R) -> R {
        change(&mut self.board.borrow_mut())
    }

    /// A copy of step `position` as it stands.
    fn step_at(&self, position: usize) -> PlannedStep {
        self.board(|board| board.steps[position].clone())
    }

    /// Runs the plan as a graph: every step whose dependencies are done starts at once (each its own
    /// future, sent to its own agent instance by the Director), and a step starts as soon as the last of its
    /// dependencies is done; the verification waits for every work step. A step a resumed task's dead
    /// process finished keeps its stored output and is not run. The first step that fails for good ends
    /// the run (the others in flight are dropped: their tries' tokens stop their agents); returns QA's
    /// verdict.
    async fn run_graph(&self, llm: &Arc<TaskModels>) -> Result<Option<Verdict>, FlowError> {
        let mut launched: BTreeSet<usize> = self.board(|board| {
            (0..board.steps.len())
                .filter(|&position| board.steps[position].status == StepStatus::Done)
                .collect()
        });
        let mut running = FuturesUnordered::new();
        let mut verdict = None;
        loop {
            for position in self.ready(&launched) {
                launched.insert(position);
                running.push(self.run_position(position, llm, None));
            }
            let Some(outcome) = running.next().await else {
                break;
            };
            if let Some(found) = outcome? {
                verdict = Some(found);
            }
        }
        Ok(verdict)
    }

    /// The steps not launched yet whose dependencies are all done.
    fn ready(&self, launched: &BTreeSet<usize>) -> Vec<usize> {
        self.board(|board| {
            let done: BTreeSet<i32> = board
                .steps
                .iter()
                .filter(|step| step.status == StepStatus::Done)
                .map(|step| step.idx)
                .collect();
            (0..board.steps.len())
                .filter(|position| !launched.contains(position))
                .filter(|&position| {
                    board.steps[position]
                        .depends_on
                        .iter()
                        .all(|dependency| done.contains(dependency))
                })
                .collect()
        })
    }

    /// Plans the task, assigns each step an agent and stores the steps.
    async fn plan_and_assign(&mut self, llm: &Arc<TaskModels>) -> Result<Plan, FlowError> {
        let plan = self.plan(llm.as_ref()).await?;
        let mut steps = Vec::with_capacity(plan.steps.len() + 1);
        for (position, planned) in plan.steps.iter().enumerate() {
            let idx = i32::try_from(position + 1).unwrap_or(i32::MAX);
            let agent = self.assign(llm.as_ref(), idx, &planned.instruction).await?;
            steps.push(PlannedStep {
                idx,
                agent,
                instruction: planned.instruction.clone(),
                depends_on: planned.depends_on.clone(),
                kind: StepKind::Work,
                status: StepStatus::Pending,
                attempts: 0,
                output: None,
            });
        }
        steps.push(PlannedStep {
            idx: i32::try_from(plan.steps.len() + 1).unwrap_or(i32::MAX),
            agent: AgentKind::Qa,
            instruction: "Check the work against the task".to_owned(),
            depends_on: steps.iter().map(|step| step.idx).collect(),
            kind: StepKind::Verify,
            status: StepStatus::Pending,
            attempts: 0,
            output: None,
        });
        self.deps.agent.writer.send(WriteOp::InsertSteps {
            task_id: self.task_id,
            steps: steps
                .iter()
                .map(|step| NewStep {
                    idx: step.idx,
                    agent: step.agent,
                    instruction: step.instruction.clone(),
                    depends_on: step.depends_on.clone(),
                })
                .collect(),
        });
        self.board.get_mut().steps = steps;
        Ok(plan)
    }

    /// Runs step `position` (a code step as the Code/QA loop), with `feedback` when QA's verdict sent it
    /// back; for the verification, announces QA's verdict and returns it.
    async fn run_position(
        &self,
        position: usize,
        llm: &Arc<TaskModels>,
        feedback: Option<Feedback>,
    ) -> Result<Option<Verdict>, FlowError> {
        let step = self.step_at(position);
        let consensus = self.consensus();
        let output = if step.agent == AgentKind::Code && step.kind == StepKind::Work {
            self.run_code_step(position, llm, feedback).await?
        } else if step.kind == StepKind::Verify && consensus.voters > 1 {
            self.run_consensus(position, llm, consensus).await?
        } else {
            self.run_step(position, llm, 1, feedback, Ends::WithAnswer)
                .await?
        };
        let Some(mut found) = output.verdict else {
            return Ok(None);
        };
        // Debug mode: QA's verdict may pause before it takes effect, and a person may give the other one.
        // The verdict is about the whole result, so its point has no step.
        if let Some(chosen) = self
            .at_decision(
                AgentKind::Qa,
                "verdict",
                None,
                format!("decision:verdict:q{}", self.round),
                &json!([{ "name": "pass" }, { "name": "fail" }]),
                &found.verdict,
                None,
                json!({ "feedback": found.feedback, "round": self.round }),
            )
            .await?
        {
            found.verdict = chosen;
        }
        // QA's decision, announced like the Director's. A verdict is generated under a grammar, not scored,
        // so it has no confidence.
        self.announce_decision(&Decision {
            agent: AgentKind::Qa,
            kind: "verdict",
            step: None,
            options: r#"["pass","fail"]"#.to_owned(),
            chosen: &found.verdict,
            confidence: None,
            reasoning: None,
        });
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::QaVerdict,
            Some(AgentKind::Qa),
            json!({ "verdict": found.verdict, "feedback": found.feedback, "round": self.round }),
        );
        Ok(Some(found))
    }

    /// Acts on QA's verdict. With `director.qa_verdict = "decides"`, a `fail` sends the last work step (whose
    /// output is the answer) back with QA's feedback and has QA verify again, up to `director.qa_revisions`
    /// times; a verdict still `fail` after them fails the task with QA's feedback. With `"advisory"` the
    /// verdict is only recorded. Each revision is a `qa.revision` event and counted by how its
    /// re-verification ended (`troupe_qa_revisions_total`).
    async fn settle_verdict(
        &mut self,
        mut verdict: Option<Verdict>,
        llm: &Arc<TaskModels>,
    ) -> Result<Option<Verdict>, FlowError> {
        let revisions = self.settings.qa_revisions;
        let counter = self.deps.agent.metrics.qa_revisions.clone();
        loop {
            let Some(failed) = verdict.clone().filter(|found| found.verdict == "fail") else {
                return Ok(verdict);
            };
            if self.settings.qa_verdict == QaVerdictMode::Advisory {
                counter.with_label_values(&["advisory"]).inc();
                return Ok(verdict);
            }
            let steps = &self.board.get_mut().steps;
            let work = steps.iter().rposition(|step| step.kind == StepKind::Work);
            let verify = steps.iter().rposition(|step| step.kind == StepKind::Verify);
            let done = self.round - 1;
            let (Some(work), Some(verify), true) = (work, verify, done < revisions) else {
                self.deps.agent.events.emit(
                    self.task_id,
                    EventKind::QaRevision,
                    Some(AgentKind::Director),
                    json!({
                        "round": self.round,
                        "of": revisions,
                        "feedback": failed.feedback,
                        "outcome": "task_failed",
                    }),
                );
                return Err(FlowError::QaRejected {
                    revisions: done,
                    feedback: failed.feedback,
                });
            };
            self.round += 1;
            let board = self.board.get_mut();
            let idx = board.steps[work].idx;
            self.deps.agent.events.emit(
                self.task_id,
                EventKind::QaRevision,
                Some(AgentKind::Director),
                json!({
                    "round": self.round,
                    "of": revisions,
                    "step": idx,
                    "feedback": failed.feedback,
                    "outcome": "revising",
                }),
            );
            // The rejected work leaves nothing in memory: its snippet or fact is dropped, the revision's
            // takes its place.
            let board = self.board.get_mut();
            let agent = board.steps[work].agent;
            board
                .drafts
                .retain(|draft| draft.step != Some(idx) || draft.agent != agent);
            board.reviews.remove(&idx);
            let feedback = Feedback {
                kind: FeedbackKind::QaVerdict,
                code: board.steps[work].output.clone().unwrap_or_default(),
                failure: failed.feedback,
                known_fixes: Vec::new(),
            };
            self.run_position(work, llm, Some(feedback)).await?;
            verdict = self.run_position(verify, llm, None).await?;
            let outcome = match &verdict {
                Some(found) if found.verdict == "pass" => "passed",
                _ => "failed",
            };
            counter.with_label_values(&[outcome]).inc();
        }
    }

    /// What the verification is told about the accepted code steps, in step order.
    fn review_lines(&self) -> Vec<String> {
        self.board(|board| board.reviews.values().cloned().collect())
    }

    /// The task's model: the default provider, or a replay of the task named by `options.replay_of`; for a
    /// resumed task, the calls recorded for it are answered from its recording first.
    async fn provider(&self) -> Result<Arc<TaskModels>, FlowError> {
        let models = self.models().await?;
        let Some(resume) = &self.resume else {
            return Ok(Arc::new(models));
        };
        let recording =
            ReplayProvider::from_recording(self.task_id, resume.records.recording.clone())
                .map_err(|error| FlowError::Unresumable(error.to_string()))?;
        Ok(Arc::new(models.with_recording(Arc::new(recording))))
    }

    /// The models the task calls: the default provider under the task's budget, with a replay's or fork's
    /// source recording answering first (`flow/fork.rs`).
    async fn models(&self) -> Result<TaskModels, FlowError> {
        let mut policy = self.deps.model_policy.clone();
        if let Some(budget) = self.options.budget {
            policy.limits = Limits {
                max_tokens: budget.max_tokens.or(policy.limits.max_tokens),
                max_cost_usd: budget.max_cost_usd.or(policy.limits.max_cost_usd),
            };
        }
        // A task that picked a named model runs every agent on it (an experiment's variant).
        let models = match &self.options.model {
            Some(name) => self
                .deps
                .llm
                .picking(name)
                .ok_or_else(|| FlowError::UnknownModel(name.clone()))?,
            None => self.deps.llm.clone(),
        };
        self.with_rerun(TaskModels::new(models, policy)).await
    }

    async fn plan(&self, llm: &TaskModels) -> Result<Plan, FlowError> {
        // `Core::submit` refuses more steps than `director.max_steps`; a task submitted to a node configured
        // with a larger bound and run here is planned within this node's bound (the grammar's).
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
            .put(
                self.task_id,
                "plan",
                &json!(plan.instructions()).to_string(),
            )
            .await;
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::PlanCreated,
            Some(AgentKind::Director),
            json!({ "steps": plan.instructions(), "depends_on": plan.dependencies() }),
        );
        Ok(plan)
    }

    /// Chooses the agent for step `idx` from the model's probabilities, calibrated (see [`Self::route`]);
    /// records and announces the decision.
    async fn assign(
        &mut self,
        llm: &TaskModels,
        idx: i32,
        instruction: &str,
    ) -> Result<AgentKind, FlowError> {
        let request = plan::assign_request(&self.prompt, idx, instruction, &self.deps.agent.limits);
        let output = self.llm_call(llm, request, "assign agent").await?;
        let choice = output.choice.ok_or(FlowError::Unscored(idx))?;
        // A server without logprobs gives a choice without probabilities: the decision says so and shows no
        // confidence rather than an invented one.
        let scored = choice.scored;
        let mut routing = self.route(llm, choice).await?;
        let options = options_json(&routing);
        let probability_of = |routing: &Routing| {
            routing
                .options
                .iter()
                .find(|option| option.name == routing.chosen)
                .map_or(0.0, |option| option.probability)
        };
        // A fork's override takes the place of the model's choice; the decision says so.
        let mut overridden = self.overridden(DecisionKind::AssignAgent, idx, &routing.chosen);
        if let Some(imposed) = &overridden {
            routing.reasoning = format!(
                "overridden: {} instead of the model's {} ({})",
                imposed.chosen, routing.chosen, routing.reasoning
            );
            routing.chosen = imposed.chosen.clone();
        }
        // Debug mode: the decision may pause before it takes effect, and a person may choose another option.
        let person = self
            .at_decision(
                AgentKind::Director,
                "assign_agent",
                Some(idx),
                format!("decision:assign_agent:{idx}"),
                &options,
                &routing.chosen,
                scored.then(|| probability_of(&routing)),
                json!({ "instruction": instruction }),
            )
            .await?;
        if let Some(chosen) = person {
            let before = std::mem::replace(&mut routing.chosen, chosen);
            routing.reasoning = format!(
                "overridden at a pause: {} instead of {before} ({})",
                routing.chosen, routing.reasoning
            );
            overridden = Some(Overridden {
                chosen: routing.chosen.clone(),
                detail: json!({ "before": before, "after": routing.chosen, "by": "person" }),
            });
        }
        let agent: AgentKind = routing.chosen.parse().map_err(|_| {
            FlowError::Plan(plan::MalformedPlan(format!(
                "step {idx} assigned to unknown agent '{}'",
                excerpt(&routing.chosen)
            )))
        })?;
        let confidence = probability_of(&routing);
        self.announce_decision(&Decision {
            agent: AgentKind::Director,
            kind: "assign_agent",
            step: Some(idx),
            options: options.to_string(),
            chosen: agent.as_str(),
            confidence: scored.then_some(confidence),
            reasoning: Some(&routing.reasoning),
        });
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
                "confidence": scored.then_some(confidence),
                "scored": scored,
                "calibration": routing.calibration,
                "reasoning": routing.reasoning,
                "tokens": output.usage.input_tokens + output.usage.output_tokens,
                "overridden": overridden.is_some(),
                "override": overridden.map(|imposed| imposed.detail),
            }),
        );
        // A resumed task that plans again makes the same decisions (from its recording); one already stored
        // is not stored twice.
        if !self.decided.contains(&idx) {
            self.deps
                .agent
                .writer
                .send(WriteOp::Decision(DecisionRecord {
                    task_id: self.task_id,
                    step_idx: Some(idx),
                    kind: "assign_agent".to_owned(),
                    options,
                    chosen: agent.as_str().to_owned(),
                    confidence,
                    reasoning: routing.reasoning,
                }));
        }
        Ok(agent)
    }

    /// Calibrates the model's agent choice (contextual calibration, `director.calibrate_routing`): each
    /// option's probability divided by its probability for the content-free assignment, renormalised, and
    /// the most probable calibrated option taken. An unscored choice (a server without logprobs) is taken
    /// as the model wrote it, with a note.
    async fn route(&mut self, llm: &TaskModels, choice: Choice) -> Result<Routing, FlowError> {
        let uncalibrated = |choice: Choice, why: &'static str| Routing {
            chosen: choice.chosen,
            options: choice.options,
            content_free: None,
            calibration: why,
            reasoning: choice.reasoning,
        };
        if !self.settings.calibrate_routing {
            return Ok(uncalibrated(choice, "off"));
        }
        if !choice.scored {
            return Ok(uncalibrated(choice, "unscored"));
        }
        let names: Vec<String> = choice.options.iter().map(|o| o.name.clone()).collect();
        let content_free = match self.content_free(llm, &names).await? {
            Ok(scores) => scores,
            Err(why) => return Ok(uncalibrated(choice, why)),
        };
        let Some(options) = calibration::calibrate(&choice.options, &content_free) else {
            return Ok(uncalibrated(choice, "mismatch"));
        };
        let Some(chosen) = calibration::most_probable(&options).map(|o| o.name.clone()) else {
            return Ok(uncalibrated(choice, "mismatch"));
        };
        let figures = |name: &str| {
            options
                .iter()
                .find(|option| option.name == name)
                .map_or((0.0, 0.0), |option| {
                    (option.probability, option.raw_probability.unwrap_or(0.0))
                })
        };
        let (calibrated, raw) = figures(&chosen);
        // The model's reason was written after its own (raw) pick; where calibration changed the pick the
        // reason is kept, but said to be the raw pick's.
        let reasoning = if chosen == choice.chosen {
            format!(
                "{} (calibrated {calibrated:.2}, raw {raw:.2})",
                choice.reasoning
            )
        } else {
            let (raw_pick_calibrated, raw_pick_raw) = figures(&choice.chosen);
            format!(
                "calibrated choice {chosen} ({calibrated:.2}, raw {raw:.2}) over the model's raw pick {} \
                 (raw {raw_pick_raw:.2}, calibrated {raw_pick_calibrated:.2}); the model's reason for {}: {}",
                choice.chosen, choice.chosen, choice.reasoning
            )
        };
        Ok(Routing {
            options,
            content_free: Some(content_free),
            chosen,
            calibration: "calibrated",
            reasoning,
        })
    }

    /// The content-free scores of the assignment for this task's Director model: from the process cache
    /// (then recorded in this task as a call of 0 tokens and 0 seconds, so that a replay of this task
    /// answers it like any other call), or from a recorded `assign.calibration` call. A replay never uses
    /// the cache: it answers the call from the recording, and a recording without one (made before
    /// calibration existed) is replayed uncalibrated, as it was made. `Err` says why there are no scores.
    async fn content_free(
        &mut self,
        llm: &TaskModels,
        options: &[String],
    ) -> Result<Result<Vec<ScoredOption>, &'static str>, FlowError> {
        if let Some(known) = &self.content_free {
            return Ok(known.clone());
        }
        let provider = llm.for_agent(AgentKind::Director);
        let key = CalibrationKey {
            provider: provider.provider_name().to_owned(),
            model: provider.model_name().to_owned(),
            template: plan::assign_template(),
            options: options.to_vec(),
        };
        // A replay or fork answers the call from its source's recording (or says it diverges).
        let replay = self.options.is_rerun();
        let cached = if replay {
            None
        } else {
            self.deps.calibrations.get(&key)
        };
        let fresh = cached.is_none();
        let output = match cached {
            Some(output) => {
                self.record_cached_calibration(&key, provider.model_config(), &output);
                output
            }
            None => {
                let request = plan::calibration_request(&self.deps.agent.limits);
                match self.llm_call(llm, request, "calibrate routing").await {
                    Ok(output) => output,
                    Err(FlowError::Llm {
                        source: LlmError::ReplayMissing { .. },
                        ..
                    }) => {
                        self.content_free = Some(Err("unrecorded"));
                        return Ok(Err("unrecorded"));
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        let scores = match &output.choice {
            Some(choice) if choice.scored => Ok(choice.options.clone()),
            _ => Err("unscored"),
        };
        if scores.is_ok() && !replay && fresh {
            self.deps.calibrations.insert(key, output);
        }
        self.content_free = Some(scores.clone());
        Ok(scores)
    }

    /// Records a cached content-free output as this task's `assign.calibration` call: no model ran (0
    /// tokens, 0 seconds, no cost; the provider is marked cached), but the task's recording is complete.
    fn record_cached_calibration(
        &self,
        key: &CalibrationKey,
        model: serde_json::Value,
        output: &LlmOutput,
    ) {
        let request = plan::calibration_request(&self.deps.agent.limits);
        // What was asked, as if the model had been called: a replay of this task compares against it.
        let print = RequestPrint::of(&request, model);
        self.deps.agent.writer.send(WriteOp::LlmCall(LlmCallRecord {
            task_id: self.task_id,
            purpose: request.purpose,
            agent: AgentKind::Director,
            provider: format!("{} (cached)", key.provider),
            model: key.model.clone(),
            prompt: serde_json::to_string(&request.messages).unwrap_or_default(),
            output: output.text.clone(),
            choice: output
                .choice
                .as_ref()
                .and_then(|choice| serde_json::to_value(choice).ok()),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            duration_seconds: 0.0,
            request: Some(print.asked_json()),
            request_digest: Some(print.digest()),
        }));
    }

    /// Announces a decision as a span event on the current (Director's) span, which the OpenTelemetry
    /// layer records at every log level, and counts it.
    fn announce_decision(&self, decision: &Decision<'_>) {
        tracing::debug!(
            decision.kind = decision.kind,
            decision.agent = decision.agent.as_str(),
            decision.step = decision.step,
            decision.options = %decision.options,
            decision.chosen = %decision.chosen,
            decision.confidence = decision.confidence,
            decision.reasoning = decision.reasoning,
            "decision made"
        );
        self.deps
            .agent
            .metrics
            .decisions
            .with_label_values(&[decision.agent.as_str(), decision.kind])
            .inc();
    }

    async fn llm_call(
        &self,
        llm: &TaskModels,
        request: LlmRequest,
        what: &'static str,
    ) -> Result<LlmOutput, FlowError> {
        // Debug mode: the task may pause before the model is called (`on = "llm"`).
        let at_call = || crate::debug::llm_point(AgentKind::Director, None, &request);
        if self
            .debugger()
            .at(self.task_id, at_call, &self.cancel)
            .await
            .is_err()
        {
            return Err(FlowError::Cancelled);
        }
        // Not raced against cancellation: the provider stops at the next token when the task's token
        // fires, and letting the call end records it (a `cancelled` model error) instead of dropping it.
        let result = self
            .deps
            .agent
            .recorder()
            .call(
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
}

/// A routing decision's options as recorded: name, the probability the choice was made by, the model's
/// own (`raw_probability`) and the content-free one, where calibrated.
fn options_json(routing: &Routing) -> serde_json::Value {
    let options: Vec<serde_json::Value> = routing
        .options
        .iter()
        .map(|option| {
            let mut value = json!({ "name": option.name, "probability": option.probability });
            if let Some(raw) = option.raw_probability {
                value["raw_probability"] = json!(raw);
            }
            if let Some(free) = routing
                .content_free
                .as_ref()
                .and_then(|free| free.iter().find(|free| free.name == option.name))
            {
                value["content_free_probability"] = json!(free.probability);
            }
            value
        })
        .collect();
    json!(options)
}
