//! Experiments (hypothesis testing, issue 18): `Core::create_experiment` checks every run of a specification
//! (each prompt under each variant, through the same checks as a submission), stores the experiment and
//! starts its runner; the runner submits the runs a few at a time (`director.max_concurrent_tasks` at once,
//! so that an experiment never fills the task queue) and records each run's task in the experiment; once
//! every task has ended the experiment is `completed`. The report (`Core::experiment_report`) is computed from
//! the runs' tasks whenever it is read, so a running experiment shows its figures so far:
//!
//! - per variant: runs ended, passes (a task that completed with QA's verdict `pass`, or none given) and the
//!   pass rate with its Wilson 95% interval, the code steps that passed their tests, tokens and cost (sums
//!   and means per run), latency (task start to end) p50 and p95;
//! - per pair of variants: Fisher's exact test (two-sided) on the pass counts with the difference in pass
//!   rate and Cohen's h, and the Mann-Whitney U test on the latencies with the rank-biserial correlation.
//!
//! A variant's settings are its task options: `max_steps`, `budget`, `consensus` and `director` (the
//! `[director]` settings a task may set for itself). A variant may also be a fork (`fork_of`): two variants
//! forking one finished task at the same decision with different overrides are a live A/B at that
//! decision, each repetition going live from the fork's step (give the source's prompt as the experiment's).
//!
//! A variant's `model` picks one of the process's named models (`[llm.models.<name>]`). Not built: other
//! `[llm]`/`[memory]` settings per variant.
//!
//! An experiment is owned by the lease of the process running it. When that process dies, another one
//! (`Core::take_over_experiments`, at start-up and every `durability.lease_seconds` while it serves) claims
//! the experiment with a compare-and-set on its owner and runs it on from its stored runs: the runs already
//! submitted are waited for (their tasks are taken over like any other), the others are submitted.

pub mod stats;

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::{Core, SubmitError};
use crate::domain::experiment::{
    Experiment, ExperimentId, ExperimentSpec, ExperimentStatus, MAX_PROMPTS, MAX_REPETITIONS,
    MAX_VARIANTS, PROMPT_SLOT,
};
use crate::domain::{EventKind, TaskId, TaskStatus};
use crate::storage::records::WriteOp;
use crate::storage::StorageError;

/// Longest variant name, in characters.
const MAX_NAME_CHARS: usize = 40;

/// Why an experiment was not created or cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The specification is not one that can run; says what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A run of it would be refused as a task.
    #[error("variant '{variant}', prompt {prompt}: {source}")]
    Run {
        /// The variant's name.
        variant: String,
        /// The prompt's number, from 1.
        prompt: usize,
        /// Why.
        #[source]
        source: SubmitError,
    },
    /// No experiment has this id.
    #[error("no experiment {0}")]
    NotFound(ExperimentId),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Checks what a specification asks for on its own (the runs are checked by the core, a fork's against its
/// source).
fn check_spec(spec: &ExperimentSpec) -> Result<(), ExperimentError> {
    let invalid = |message: String| Err(ExperimentError::Invalid(message));
    if spec.prompts.is_empty() || spec.prompts.len() > MAX_PROMPTS {
        return invalid(format!(
            "prompts must hold 1..={MAX_PROMPTS} prompts, got {}",
            spec.prompts.len()
        ));
    }
    if spec.variants.len() < 2 || spec.variants.len() > MAX_VARIANTS {
        return invalid(format!(
            "variants must hold 2..={MAX_VARIANTS} variants to compare, got {}",
            spec.variants.len()
        ));
    }
    if !(1..=MAX_REPETITIONS).contains(&spec.repetitions) {
        return invalid(format!(
            "repetitions must be within 1..={MAX_REPETITIONS}, got {}",
            spec.repetitions
        ));
    }
    let mut names = HashSet::new();
    for variant in &spec.variants {
        let chars = variant.name.trim().chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return invalid(format!(
                "a variant's name must have 1..={MAX_NAME_CHARS} characters, got '{}'",
                crate::domain::shorten(&variant.name, 60)
            ));
        }
        if !names.insert(variant.name.trim().to_owned()) {
            return invalid(format!("two variants are named '{}'", variant.name.trim()));
        }
        if let Some(template) = &variant.prompt_template {
            if !template.contains(PROMPT_SLOT) {
                return invalid(format!(
                    "variant '{}': prompt_template must contain {PROMPT_SLOT}, where the prompt goes",
                    variant.name
                ));
            }
        }
    }
    Ok(())
}

impl Core {
    /// Checks `spec` and every one of its runs, stores the experiment and starts its runner.
    pub async fn create_experiment(
        self: &Arc<Self>,
        spec: ExperimentSpec,
    ) -> Result<Experiment, ExperimentError> {
        check_spec(&spec)?;
        for variant in &spec.variants {
            let options = variant.options.clone().unwrap_or_default();
            for (index, prompt) in spec.prompts.iter().enumerate() {
                self.check_submission(&variant.prompt_for(prompt), &options)
                    .await
                    .map_err(|source| ExperimentError::Run {
                        variant: variant.name.clone(),
                        prompt: index + 1,
                        source,
                    })?;
            }
        }
        let mut experiment = Experiment::new(spec);
        experiment.owner = self.lease_id().map(str::to_owned);
        self.writer.create_experiment(experiment.clone()).await?;
        let core = Arc::clone(self);
        let running = experiment.clone();
        actix_rt::spawn(async move { core.run_experiment(running).await });
        Ok(experiment)
    }

    /// Runs `experiment` to its end: its runs submitted a few at a time, each recorded with its task. A run
    /// that already has a task (or a submission error) is not submitted again: its task is waited for.
    pub async fn run_experiment(self: Arc<Self>, mut experiment: Experiment) -> Experiment {
        let at_once = self.settings.director.max_concurrent_tasks.max(1);
        let mut in_flight: Vec<TaskId> = Vec::new();
        for position in 0..experiment.runs.len() {
            while in_flight.len() >= at_once {
                let first = in_flight.remove(0);
                self.wait_for_end(first).await;
            }
            let run = &experiment.runs[position];
            if run.error.is_some() {
                continue;
            }
            if let Some(task) = run.task {
                in_flight.push(task);
                continue;
            }
            let variant = &experiment.spec.variants[run.variant];
            let prompt = variant.prompt_for(&experiment.spec.prompts[run.prompt]);
            let options = variant.options.clone().unwrap_or_default();
            let submitted = loop {
                match self.submit(&prompt, options.clone()).await {
                    // The place taken by other work: wait and try again.
                    Err(SubmitError::Busy { .. } | SubmitError::QueueFull { .. }) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    other => break other,
                }
            };
            match submitted {
                Ok(task) => {
                    experiment.runs[position].task = Some(task);
                    in_flight.push(task);
                }
                Err(error) => {
                    tracing::warn!(experiment = %experiment.id, %error, "an experiment's run could not be submitted");
                    experiment.runs[position].error = Some(error.to_string());
                }
            }
            self.writer.send(WriteOp::PutExperiment {
                experiment: Box::new(experiment.clone()),
                reply: None,
            });
        }
        for task in in_flight {
            self.wait_for_end(task).await;
        }
        experiment.status = ExperimentStatus::Completed;
        experiment.finished_at = Some(Utc::now());
        self.writer.send(WriteOp::PutExperiment {
            experiment: Box::new(experiment.clone()),
            reply: None,
        });
        let _ = self.writer.flush().await;
        experiment
    }

    /// Claims the running experiments whose process died (see [`Storage::orphaned_experiments`]) and runs
    /// each on from its stored runs. The ids taken over; none for a core without a lease.
    ///
    /// [`Storage::orphaned_experiments`]: crate::storage::Storage::orphaned_experiments
    pub async fn take_over_experiments(
        self: &Arc<Self>,
    ) -> Result<Vec<ExperimentId>, StorageError> {
        let Some(me) = self.lease_id().map(str::to_owned) else {
            return Ok(Vec::new());
        };
        let lease = Duration::from_secs(self.settings.durability.lease_seconds);
        let mut taken = Vec::new();
        for mut experiment in self.storage.orphaned_experiments(&me, lease).await? {
            if !self
                .storage
                .claim_experiment(experiment.id, experiment.owner.as_deref(), &me)
                .await?
            {
                continue;
            }
            let submitted = experiment
                .runs
                .iter()
                .filter(|run| run.task.is_some())
                .count();
            tracing::info!(
                experiment = %experiment.id,
                previous_owner = experiment.owner.as_deref().unwrap_or("none"),
                runs = experiment.runs.len(),
                submitted,
                "an experiment whose process died is run on here"
            );
            experiment.owner = Some(me.clone());
            taken.push(experiment.id);
            let core = Arc::clone(self);
            actix_rt::spawn(async move { core.run_experiment(experiment).await });
        }
        Ok(taken)
    }

    /// Takes over experiments whose process died now and then every `durability.lease_seconds`, for as long
    /// as the core lives (the watch holds it weakly and ends with it).
    pub async fn watch_experiments(self: &Arc<Self>) -> Result<(), StorageError> {
        self.take_over_experiments().await?;
        let every = Duration::from_secs(self.settings.durability.lease_seconds.max(1));
        let core: Weak<Core> = Arc::downgrade(self);
        actix_rt::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(core) = core.upgrade() else { return };
                if let Err(error) = core.take_over_experiments().await {
                    tracing::warn!(%error, "look for the experiments of processes that died");
                }
            }
        });
        Ok(())
    }

    /// Waits until task `id` has ended (its log's terminal event), or its log cannot be read.
    async fn wait_for_end(&self, id: TaskId) {
        match self.events.subscribe(id, 0).await {
            Ok(mut subscription) => loop {
                match subscription.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(task_id = %id, %error, "follow an experiment's run");
                        return;
                    }
                }
            },
            Err(error) => tracing::warn!(task_id = %id, %error, "follow an experiment's run"),
        }
    }

    /// Experiment `id` with its report.
    pub async fn experiment_report(&self, id: ExperimentId) -> Result<Value, ExperimentError> {
        let experiment = self
            .storage
            .experiment(id)
            .await?
            .ok_or(ExperimentError::NotFound(id))?;
        let report = self.report(&experiment).await?;
        Ok(json!({
            "id": experiment.id,
            "name": experiment.spec.name,
            "status": experiment.status,
            "created_at": experiment.created_at,
            "finished_at": experiment.finished_at,
            "spec": experiment.spec,
            "runs": report.runs,
            "variants": report.variants,
            "pairs": report.pairs,
        }))
    }

    async fn report(&self, experiment: &Experiment) -> Result<Report, StorageError> {
        let mut samples: Vec<Sample> = vec![Sample::default(); experiment.spec.variants.len()];
        let mut runs = Vec::with_capacity(experiment.runs.len());
        for run in &experiment.runs {
            let mut shown = json!({
                "variant": experiment.spec.variants[run.variant].name,
                "prompt": run.prompt + 1,
                "repetition": run.repetition,
                "task": run.task,
                "status": null,
                "passed": null,
            });
            if let Some(error) = &run.error {
                shown["error"] = json!(error);
            }
            if let Some(task_id) = run.task {
                if let Some(task) = self.storage.task(task_id).await? {
                    shown["status"] = json!(task.status);
                    if task.status.is_terminal() {
                        let usage = self.storage.usage(task_id).await?;
                        let passed = task.status == TaskStatus::Completed
                            && task
                                .result
                                .as_ref()
                                .and_then(|result| result.pointer("/verdict/verdict"))
                                .and_then(Value::as_str)
                                .is_none_or(|verdict| verdict == "pass");
                        shown["passed"] = json!(passed);
                        let sample = &mut samples[run.variant];
                        sample.ended += 1;
                        sample.passed += u64::from(passed);
                        sample.tokens +=
                            u64::try_from(usage.prompt_tokens + usage.completion_tokens)
                                .unwrap_or(0);
                        sample.cost_usd += usage.cost_usd;
                        if let (Some(start), Some(end)) = (task.started_at, task.finished_at) {
                            sample
                                .latencies
                                .push((end - start).num_milliseconds() as f64 / 1000.0);
                        }
                        // From the attempts' events: a failed task has no result to read them from.
                        let attempts: Vec<Value> = self
                            .storage
                            .events_of_kind(task_id, EventKind::CodeAttempt, None, None)
                            .await?
                            .into_iter()
                            .map(|event| event.data)
                            .collect();
                        let (tested, tests_passed) = code_steps(&attempts);
                        sample.code_steps += tested;
                        sample.code_steps_passed += tests_passed;
                    }
                }
            }
            runs.push(shown);
        }
        let variants: Vec<Value> = experiment
            .spec
            .variants
            .iter()
            .zip(&mut samples)
            .enumerate()
            .map(|(index, (variant, sample))| {
                sample.latencies.sort_by(f64::total_cmp);
                let (low, high) = stats::wilson(sample.passed, sample.ended);
                let per_run = |total: f64| (sample.ended > 0).then(|| total / sample.ended as f64);
                json!({
                    "name": variant.name,
                    "runs": experiment.runs.iter().filter(|run| run.variant == index).count(),
                    "ended": sample.ended,
                    "passed": sample.passed,
                    "pass_rate": sample.rate(),
                    "pass_rate_ci95": [low, high],
                    "code_steps": sample.code_steps,
                    "code_steps_passed": sample.code_steps_passed,
                    "tokens": sample.tokens,
                    "tokens_per_run": per_run(sample.tokens as f64),
                    "cost_usd": sample.cost_usd,
                    "cost_usd_per_run": per_run(sample.cost_usd),
                    "latency_p50_seconds": stats::quantile(&sample.latencies, 0.5),
                    "latency_p95_seconds": stats::quantile(&sample.latencies, 0.95),
                })
            })
            .collect();
        let mut pairs = Vec::new();
        for a in 0..samples.len() {
            for b in (a + 1)..samples.len() {
                let (x, y) = (&samples[a], &samples[b]);
                let fisher =
                    stats::fisher_exact(x.passed, x.ended - x.passed, y.passed, y.ended - y.passed);
                let latency = stats::mann_whitney(&x.latencies, &y.latencies);
                let (rate_a, rate_b) = (x.rate().unwrap_or(0.0), y.rate().unwrap_or(0.0));
                pairs.push(json!({
                    "a": experiment.spec.variants[a].name,
                    "b": experiment.spec.variants[b].name,
                    "pass_rate": {
                        "test": "fisher_exact",
                        "p_value": fisher,
                        "difference": rate_a - rate_b,
                        "cohens_h": stats::cohens_h(rate_a, rate_b),
                        "significant_at_0_05": fisher < 0.05,
                    },
                    "latency": {
                        "test": "mann_whitney_u",
                        "u": latency.u,
                        "p_value": latency.p_value,
                        "rank_biserial": latency.rank_biserial,
                        "significant_at_0_05": latency.p_value < 0.05,
                    },
                }));
            }
        }
        Ok(Report {
            runs,
            variants,
            pairs,
        })
    }
}

/// The code steps of a task that were tested (from its `code.attempt` events' data), and those whose last
/// attempt passed.
fn code_steps(tests: &[Value]) -> (u64, u64) {
    let mut last: std::collections::BTreeMap<i64, bool> = std::collections::BTreeMap::new();
    for attempt in tests {
        if let Some(step) = attempt.get("step").and_then(Value::as_i64) {
            if attempt.get("tested").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let passed = attempt.get("passed").and_then(Value::as_bool) == Some(true);
            last.insert(step, passed);
        }
    }
    let passed = last.values().filter(|passed| **passed).count();
    (last.len() as u64, passed as u64)
}

/// What a variant's ended runs came to.
#[derive(Debug, Clone, Default)]
struct Sample {
    ended: u64,
    passed: u64,
    tokens: u64,
    cost_usd: f64,
    latencies: Vec<f64>,
    code_steps: u64,
    code_steps_passed: u64,
}

impl Sample {
    fn rate(&self) -> Option<f64> {
        (self.ended > 0).then(|| self.passed as f64 / self.ended as f64)
    }
}

struct Report {
    runs: Vec<Value>,
    variants: Vec<Value>,
    pairs: Vec<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_says_what_is_wrong_with_it() {
        let spec = |text: &str| serde_json::from_str::<ExperimentSpec>(text).unwrap();
        let message = |text: &str| check_spec(&spec(text)).unwrap_err().to_string();
        assert!(
            message(r#"{"prompts": [], "variants": [{"name": "a"}, {"name": "b"}]}"#)
                .contains("1..=20 prompts")
        );
        assert!(
            message(r#"{"prompts": ["p"], "variants": [{"name": "a"}]}"#)
                .contains("2..=4 variants")
        );
        assert!(
            message(r#"{"prompts": ["p"], "variants": [{"name": "a"}, {"name": "a"}]}"#)
                .contains("two variants are named 'a'")
        );
        assert!(message(r#"{"prompts": ["p"], "variants": [{"name": "a"}, {"name": "b", "prompt_template": "no slot"}]}"#).contains("{prompt}"));
        assert!(message(
            r#"{"prompts": ["p"], "repetitions": 11, "variants": [{"name": "a"}, {"name": "b"}]}"#
        )
        .contains("1..=10"));
        assert!(check_spec(&spec(
            r#"{"prompts": ["p"], "variants": [{"name": "a"}, {"name": "b"}]}"#
        ))
        .is_ok());
    }

    #[test]
    fn a_code_step_counts_by_its_last_attempt() {
        let attempts = [
            json!({ "step": 1, "passed": false }),
            json!({ "step": 1, "passed": true }),
            json!({ "step": 2, "passed": false }),
            json!({ "step": 3, "tested": false, "reason": "sandbox off" }),
        ];
        assert_eq!(code_steps(&attempts), (2, 1));
        assert_eq!(code_steps(&[]), (0, 0));
    }
}
