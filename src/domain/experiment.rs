//! Experiments (hypothesis testing, issue 18): a set of prompts run under two or more variants, each several
//! times, so that the variants' pass rates, usage and latency can be compared with statistics. The vocabulary
//! only: the runner and the report are `service/experiments.rs`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::task::{TaskId, TaskOptions};

/// Most prompts an experiment runs.
pub const MAX_PROMPTS: usize = 20;
/// Most variants it compares.
pub const MAX_VARIANTS: usize = 4;
/// Most repetitions of each prompt under each variant.
pub const MAX_REPETITIONS: u32 = 10;
/// Where a variant's template puts the prompt.
pub const PROMPT_SLOT: &str = "{prompt}";

/// An experiment's id: a UUIDv7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExperimentId(pub Uuid);

impl ExperimentId {
    /// A fresh id.
    pub fn new() -> Self {
        ExperimentId(Uuid::now_v7())
    }
}

impl Default for ExperimentId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ExperimentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ExperimentId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(ExperimentId)
    }
}

/// One way of running the prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Its name in the report (unique within the experiment).
    pub name: String,
    /// The task's prompt, with `{prompt}` where the experiment's prompt goes (default: the prompt alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_template: Option<String>,
    /// The task options every run of this variant gets: `max_steps`, `budget`, `consensus`, `director` (its
    /// own `[director]` settings: code attempts, QA's verdict and revisions, calibration, code relevance),
    /// `replay_of` and `on_divergence` (a replay of a recording per variant gives known figures).
    #[serde(
        default,
        deserialize_with = "super::json_types::optional_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub options: Option<TaskOptions>,
}

impl Variant {
    /// The prompt a run of this variant gets for `prompt`.
    pub fn prompt_for(&self, prompt: &str) -> String {
        match &self.prompt_template {
            Some(template) => template.replace(PROMPT_SLOT, prompt),
            None => prompt.to_owned(),
        }
    }
}

/// What an experiment runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// A name for people (default: empty).
    #[serde(default)]
    pub name: String,
    /// The prompts, 1..=[`MAX_PROMPTS`].
    pub prompts: Vec<String>,
    /// The variants, 2..=[`MAX_VARIANTS`].
    pub variants: Vec<Variant>,
    /// Runs of each prompt under each variant, 1..=[`MAX_REPETITIONS`] (default 1).
    #[serde(default = "one", deserialize_with = "super::json_types::whole")]
    pub repetitions: u32,
}

fn one() -> u32 {
    1
}

/// One run of an experiment: a prompt under a variant, one repetition, and its task once submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRun {
    /// Index into the variants.
    pub variant: usize,
    /// Index into the prompts.
    pub prompt: usize,
    /// From 1.
    pub repetition: u32,
    /// The task, once submitted.
    pub task: Option<TaskId>,
    /// Why it could not be submitted, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where an experiment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentStatus {
    /// Its runs are being submitted or are running.
    Running,
    /// Every run's task has ended.
    Completed,
}

impl ExperimentStatus {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentStatus::Running => "running",
            ExperimentStatus::Completed => "completed",
        }
    }
}

impl FromStr for ExperimentStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "running" => Ok(ExperimentStatus::Running),
            "completed" => Ok(ExperimentStatus::Completed),
            other => Err(format!("unknown experiment status '{other}'")),
        }
    }
}

/// An experiment as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    /// Its id.
    pub id: ExperimentId,
    /// What it runs.
    pub spec: ExperimentSpec,
    /// Every run, in submission order (prompt by prompt, repetition by repetition, variant by variant).
    pub runs: Vec<ExperimentRun>,
    /// Where it stands.
    pub status: ExperimentStatus,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last run ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The lease of the process running it (`None`: no process yet, or a core without a lease); a process
    /// whose owner died takes it over and finishes it.
    #[serde(skip)]
    pub owner: Option<String>,
}

impl Experiment {
    /// A new experiment of `spec`, its runs interleaved so that the variants see the same conditions over
    /// time: for each prompt and repetition, one run of each variant.
    pub fn new(spec: ExperimentSpec) -> Self {
        let mut runs = Vec::new();
        for prompt in 0..spec.prompts.len() {
            for repetition in 1..=spec.repetitions {
                for variant in 0..spec.variants.len() {
                    runs.push(ExperimentRun {
                        variant,
                        prompt,
                        repetition,
                        task: None,
                        error: None,
                    });
                }
            }
        }
        Experiment {
            id: ExperimentId::new(),
            spec,
            runs,
            status: ExperimentStatus::Running,
            created_at: Utc::now(),
            finished_at: None,
            owner: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_interleave_the_variants_and_templates_place_the_prompt() {
        let spec: ExperimentSpec = serde_json::from_str(
            r#"{"prompts": ["a", "b"], "repetitions": 2, "variants": [
                {"name": "plain"}, {"name": "careful", "prompt_template": "Be careful. {prompt}"}]}"#,
        )
        .unwrap();
        let experiment = Experiment::new(spec);
        assert_eq!(experiment.runs.len(), 8);
        let order: Vec<(usize, usize, u32)> = experiment
            .runs
            .iter()
            .take(4)
            .map(|run| (run.prompt, run.variant, run.repetition))
            .collect();
        assert_eq!(order, vec![(0, 0, 1), (0, 1, 1), (0, 0, 2), (0, 1, 2)]);
        assert_eq!(experiment.spec.variants[1].prompt_for("b"), "Be careful. b");
        assert_eq!(experiment.spec.variants[0].prompt_for("b"), "b");
        assert!(serde_json::from_str::<ExperimentSpec>(
            r#"{"prompts": [], "variants": [], "model": "x"}"#
        )
        .is_err());
    }
}
