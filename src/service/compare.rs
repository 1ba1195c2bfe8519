//! Two runs side by side (`GET /api/v1/tasks/{a}/compare/{b}`, [`Core::compare`]): what differs between
//! them and what only one of them has, as structured JSON for the dashboard's side-by-side view.
//!
//! Compared: the status, prompt and error; the stored decisions by kind and step (the option taken and its
//! confidence); the model calls by purpose (the output text and the scored choice; whether the two asked
//! the same is said beside, from their request digests); the steps by index (agent, instruction, status,
//! output); and the result key by key. Not compared, because they describe how a run was produced rather
//! than what it produced: the result's `provider`, `model` and `models` (a replay is answered by
//! `replay`), and the measurements of test runs (`wall_seconds`, `cpu_seconds`, `peak_rss_bytes`), which
//! differ between any two runs.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use tracing::Instrument;

use super::Core;
use crate::domain::TaskId;
use crate::storage::{CallRecord, StepRecord, StorageError, StoredDecision, TaskRecord};

/// Result keys that say how a run was produced, not what it produced.
const PRODUCED_BY: [&str; 3] = ["provider", "model", "models"];
/// Measurements of a run, different in any two runs.
const MEASUREMENTS: [&str; 3] = ["wall_seconds", "cpu_seconds", "peak_rss_bytes"];
/// Two confidences this close are the same (a replay stores what it read back).
const CONFIDENCE_TOLERANCE: f64 = 1e-9;

/// Two runs could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// No such task.
    #[error("task {0} does not exist")]
    NotFound(TaskId),
    /// Reading failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What is compared of one run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The task row.
    pub task: TaskRecord,
    /// Its steps in plan order.
    pub steps: Vec<StepRecord>,
    /// Its stored decisions.
    pub decisions: Vec<StoredDecision>,
    /// Its model calls.
    pub calls: Vec<CallRecord>,
}

impl Core {
    /// Compares tasks `a` and `b` (see the module documentation).
    pub async fn compare(&self, a: TaskId, b: TaskId) -> Result<Value, CompareError> {
        let span = tracing::info_span!("task.compare", troupe.task.a = %a, troupe.task.b = %b);
        async move {
            let first = self.run_of(a).await?;
            let second = self.run_of(b).await?;
            Ok(compare_runs(&first, &second))
        }
        .instrument(span)
        .await
    }

    async fn run_of(&self, id: TaskId) -> Result<Run, CompareError> {
        let task = self
            .storage
            .task(id)
            .await?
            .ok_or(CompareError::NotFound(id))?;
        Ok(Run {
            task,
            steps: self.storage.steps(id).await?,
            decisions: self.storage.decisions(id).await?,
            calls: self.storage.llm_calls(id).await?,
        })
    }
}

/// Lines up entries of two runs by key: those that differ (by `differs`), those only in `a`, only in `b`.
fn line_up<K: Ord + Clone, T>(
    a: &[T],
    b: &[T],
    key: impl Fn(&T) -> K,
    differs: impl Fn(&T, &T) -> bool,
    show: impl Fn(&T) -> Value,
    show_key: impl Fn(&K) -> Value,
) -> Value {
    let index = |items: &[T]| {
        let mut map: BTreeMap<K, usize> = BTreeMap::new();
        for (position, item) in items.iter().enumerate() {
            // The first of a key counts (a resumed task that planned again stores a decision once).
            map.entry(key(item)).or_insert(position);
        }
        map
    };
    let (left, right) = (index(a), index(b));
    let mut different = Vec::new();
    let mut only_a = Vec::new();
    for (k, &i) in &left {
        match right.get(k) {
            Some(&j) if differs(&a[i], &b[j]) => {
                different.push(json!({ "key": show_key(k), "a": show(&a[i]), "b": show(&b[j]) }))
            }
            Some(_) => {}
            None => only_a.push(show(&a[i])),
        }
    }
    let only_b: Vec<Value> = right
        .iter()
        .filter(|(k, _)| !left.contains_key(*k))
        .map(|(_, &j)| show(&b[j]))
        .collect();
    json!({ "different": different, "only_a": only_a, "only_b": only_b })
}

/// Whether a [`line_up`] found nothing.
fn nothing_in(lined: &Value) -> bool {
    ["different", "only_a", "only_b"]
        .iter()
        .all(|list| lined[list].as_array().is_none_or(Vec::is_empty))
}

/// `value` without the measurements of runs, at any depth.
fn without_measurements(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(key, _)| !MEASUREMENTS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), without_measurements(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_measurements).collect()),
        other => other.clone(),
    }
}

/// The result keys that differ, each `{key, a, b}` (a missing result or key is `null`).
fn result_differences(a: Option<&Value>, b: Option<&Value>) -> Vec<Value> {
    let keys = |result: Option<&Value>| -> Vec<String> {
        result
            .and_then(Value::as_object)
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut all: Vec<String> = keys(a);
    all.extend(keys(b));
    all.sort();
    all.dedup();
    if a.is_some() != b.is_some() && all.is_empty() {
        return vec![json!({ "key": null, "a": a, "b": b })];
    }
    all.into_iter()
        .filter(|key| !PRODUCED_BY.contains(&key.as_str()))
        .filter_map(|key| {
            let pick = |result: Option<&Value>| {
                result
                    .and_then(|result| result.get(&key))
                    .map(without_measurements)
                    .unwrap_or(Value::Null)
            };
            let (left, right) = (pick(a), pick(b));
            (left != right).then(|| json!({ "key": key, "a": left, "b": right }))
        })
        .collect()
}

/// A pair that differs, or `null`.
fn pair_if_different(a: &Value, b: &Value) -> Value {
    if a == b {
        Value::Null
    } else {
        json!({ "a": a, "b": b })
    }
}

fn summary(task: &TaskRecord) -> Value {
    json!({
        "id": task.id,
        "prompt": task.prompt,
        "status": task.status,
        "replay_of": task.options.replay_of,
        "fork_of": task.options.fork_of,
        "finished_at": task.finished_at,
    })
}

/// Compares two runs (see the module documentation). `same` is true when nothing differs.
pub fn compare_runs(a: &Run, b: &Run) -> Value {
    let decisions = line_up(
        &a.decisions,
        &b.decisions,
        |decision| (decision.kind.clone(), decision.step),
        |x, y| x.chosen != y.chosen || (x.confidence - y.confidence).abs() > CONFIDENCE_TOLERANCE,
        |decision| {
            json!({
                "kind": decision.kind,
                "step": decision.step,
                "chosen": decision.chosen,
                "confidence": decision.confidence,
                "reasoning": decision.reasoning,
            })
        },
        |(kind, step)| json!({ "kind": kind, "step": step }),
    );
    let calls_a = &a.calls;
    let calls_b = &b.calls;
    let mut model_outputs = line_up(
        calls_a,
        calls_b,
        |call| call.purpose.clone(),
        |x, y| x.output != y.output || x.choice != y.choice,
        |call| {
            json!({
                "purpose": call.purpose,
                "agent": call.agent,
                "provider": call.provider,
                "output": call.output,
                "choice": call.choice,
                "request_digest": call.request_digest,
            })
        },
        |purpose| json!(purpose),
    );
    if let Some(different) = model_outputs["different"].as_array_mut() {
        for entry in different {
            let digest = |side: &str| entry[side]["request_digest"].as_str().map(str::to_owned);
            // Whether the two calls asked the same; unknown for calls recorded without their request.
            entry["request_same"] = match (digest("a"), digest("b")) {
                (Some(x), Some(y)) => json!(x == y),
                _ => Value::Null,
            };
        }
    }
    let steps = line_up(
        &a.steps,
        &b.steps,
        |step| step.idx,
        |x, y| {
            x.agent != y.agent
                || x.instruction != y.instruction
                || x.status != y.status
                || x.output != y.output
                || x.depends_on != y.depends_on
        },
        |step| {
            json!({
                "idx": step.idx,
                "agent": step.agent,
                "instruction": step.instruction,
                "depends_on": step.depends_on,
                "status": step.status,
                "output": step.output,
                "attempts": step.attempts,
            })
        },
        |idx| json!(idx),
    );
    let result = result_differences(a.task.result.as_ref(), b.task.result.as_ref());
    let status = pair_if_different(&json!(a.task.status), &json!(b.task.status));
    let prompt = pair_if_different(&json!(a.task.prompt), &json!(b.task.prompt));
    let error = pair_if_different(&json!(a.task.error), &json!(b.task.error));
    let same = status.is_null()
        && prompt.is_null()
        && error.is_null()
        && result.is_empty()
        && nothing_in(&decisions)
        && nothing_in(&model_outputs)
        && nothing_in(&steps);
    json!({
        "a": summary(&a.task),
        "b": summary(&b.task),
        "same": same,
        "status": status,
        "prompt": prompt,
        "error": error,
        "decisions": decisions,
        "model_outputs": model_outputs,
        "steps": steps,
        "result": { "different": result },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentKind, StepStatus, TaskOptions, TaskStatus};

    fn run(answer: &str, chosen: &str, work: &str) -> Run {
        let now = chrono::Utc::now();
        let call = |purpose: &str, output: &str| CallRecord {
            purpose: purpose.to_owned(),
            agent: AgentKind::Research,
            provider: "script".into(),
            model: "m".into(),
            prompt: json!([]),
            output: output.to_owned(),
            choice: None,
            input_tokens: 1,
            output_tokens: 1,
            cost_usd: 0.0,
            duration_seconds: 0.1,
            created_at: now,
            request_digest: Some(format!("digest of {purpose}")),
        };
        Run {
            task: TaskRecord {
                id: TaskId::new(),
                prompt: "p".into(),
                status: TaskStatus::Completed,
                options: TaskOptions::default(),
                result: Some(json!({
                    "answer": answer,
                    "provider": "whoever",
                    "tests": [{ "step": 1, "passed": true, "wall_seconds": now.timestamp_subsec_nanos() }],
                })),
                error: None,
                trace_id: None,
                replay_of: None,
                created_at: now,
                started_at: Some(now),
                finished_at: Some(now),
                owner: None,
            },
            steps: vec![StepRecord {
                idx: 1,
                agent: chosen.parse().unwrap(),
                instruction: "do".into(),
                status: StepStatus::Done,
                output: Some(work.to_owned()),
                attempts: 1,
                depends_on: Vec::new(),
                started_at: None,
                finished_at: None,
            }],
            decisions: vec![StoredDecision {
                kind: "assign_agent".into(),
                step: Some(1),
                chosen: chosen.to_owned(),
                confidence: 0.5,
                options: json!([]),
                reasoning: "r".into(),
            }],
            calls: vec![call("plan", "the plan"), call("work.1", work)],
        }
    }

    #[test]
    fn two_runs_that_did_the_same_are_the_same() {
        let a = run("42", "research", "facts");
        let b = run("42", "research", "facts");
        let compared = compare_runs(&a, &b);
        assert_eq!(compared["same"], true, "{compared:#}");
        assert_eq!(compared["result"]["different"], json!([]));
    }

    #[test]
    fn what_differs_and_what_only_one_has_are_listed() {
        let a = run("42", "research", "facts");
        let mut b = run("43", "code", "other facts");
        b.calls.push(CallRecord {
            purpose: "verify".into(),
            ..b.calls[0].clone()
        });
        let compared = compare_runs(&a, &b);
        assert_eq!(compared["same"], false);
        let decisions = &compared["decisions"]["different"];
        assert_eq!(decisions.as_array().unwrap().len(), 1, "{compared:#}");
        assert_eq!(
            decisions[0]["key"],
            json!({ "kind": "assign_agent", "step": 1 })
        );
        assert_eq!(decisions[0]["a"]["chosen"], "research");
        assert_eq!(decisions[0]["b"]["chosen"], "code");
        let outputs = &compared["model_outputs"];
        assert_eq!(outputs["different"].as_array().unwrap().len(), 1);
        assert_eq!(outputs["different"][0]["key"], "work.1");
        assert_eq!(outputs["different"][0]["request_same"], true);
        assert_eq!(outputs["only_b"][0]["purpose"], "verify");
        assert_eq!(outputs["only_a"], json!([]));
        let steps = &compared["steps"]["different"];
        assert_eq!(steps[0]["a"]["output"], "facts");
        assert_eq!(steps[0]["b"]["agent"], "code");
        // The answer differs; who produced it and how long tests took do not count.
        assert_eq!(
            compared["result"]["different"],
            json!([{ "key": "answer", "a": "42", "b": "43" }])
        );
        assert_eq!(compared["status"], Value::Null);
    }

    #[test]
    fn a_failed_run_against_a_completed_one() {
        let a = run("42", "research", "facts");
        let mut b = run("42", "research", "facts");
        b.task.status = TaskStatus::Failed;
        b.task.result = None;
        b.task.error = Some("replay diverged".into());
        let compared = compare_runs(&a, &b);
        assert_eq!(
            compared["status"],
            json!({ "a": "completed", "b": "failed" })
        );
        assert_eq!(compared["error"]["b"], "replay diverged");
        let keys: Vec<&Value> = compared["result"]["different"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| &entry["key"])
            .collect();
        assert_eq!(keys, vec!["answer", "tests"]);
    }
}
