//! Learning curves (issue 18): how the Code/QA loop learns, from the `code.attempt` events of a time window.
//! A *loop* is one code step's attempts in one QA round of one task; its *signature* is the error signature
//! (`memory::learning::signature`) of its first failure. For each signature, and for each bucket of time:
//! loops, how many passed, attempts until the pass, and, among the attempts after a failure, those offered a
//! learned fix (`known_fixes_offered` > 0) against those offered none, with how often each passed: a fix
//! that helps shows as a higher pass rate with it than without.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{json, Value};

use super::Core;
use crate::memory::learning::signature;
use crate::storage::StorageError;

/// Most signatures listed (the ones with the most loops).
const TOP_SIGNATURES: usize = 20;
/// Most buckets of the curve.
const MAX_BUCKETS: i64 = 200;

/// One loop: its first failure's signature, its attempts (passed?, fixes offered) in order, when it began.
#[derive(Debug, Default)]
struct Loop {
    began: Option<DateTime<Utc>>,
    signature: Option<String>,
    attempts: Vec<(bool, u64)>,
}

impl Loop {
    /// Attempts until the first pass, if it passed.
    fn attempts_to_pass(&self) -> Option<usize> {
        self.attempts
            .iter()
            .position(|(passed, _)| *passed)
            .map(|at| at + 1)
    }
}

/// Counts of a set of loops.
#[derive(Debug, Default, Clone)]
struct Tally {
    loops: u64,
    passed: u64,
    attempts_to_pass: u64,
    first_attempt_passed: u64,
    with_fix: (u64, u64),
    without_fix: (u64, u64),
}

impl Tally {
    fn add(&mut self, run: &Loop) {
        self.loops += 1;
        if let Some(attempts) = run.attempts_to_pass() {
            self.passed += 1;
            self.attempts_to_pass += attempts as u64;
        }
        if run.attempts.first().is_some_and(|(passed, _)| *passed) {
            self.first_attempt_passed += 1;
        }
        // The attempts after a failure: offered a fix, or not.
        for &(passed, offered) in run.attempts.iter().skip(1) {
            let side = if offered > 0 {
                &mut self.with_fix
            } else {
                &mut self.without_fix
            };
            side.0 += 1;
            side.1 += u64::from(passed);
        }
    }

    fn json(&self) -> Value {
        let rate = |(n, passed): (u64, u64)| (n > 0).then(|| passed as f64 / n as f64);
        json!({
            "loops": self.loops,
            "passed": self.passed,
            "mean_attempts_to_pass": (self.passed > 0).then(|| self.attempts_to_pass as f64 / self.passed as f64),
            "first_attempt_pass_rate": (self.loops > 0).then(|| self.first_attempt_passed as f64 / self.loops as f64),
            "with_fix": { "attempts": self.with_fix.0, "passed": self.with_fix.1, "pass_rate": rate(self.with_fix) },
            "without_fix": { "attempts": self.without_fix.0, "passed": self.without_fix.1, "pass_rate": rate(self.without_fix) },
        })
    }
}

/// The loops in `attempts` (task, time, `code.attempt` data), in the order they began.
fn loops(attempts: &[(String, DateTime<Utc>, Value)]) -> Vec<Loop> {
    let mut by_key: BTreeMap<(String, i64, i64), Loop> = BTreeMap::new();
    let mut order = Vec::new();
    for (task, at, data) in attempts {
        let number = |key: &str| data.get(key).and_then(Value::as_i64).unwrap_or(0);
        let key = (task.clone(), number("step"), number("round").max(1));
        let entry = by_key.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Loop::default()
        });
        entry.began.get_or_insert(*at);
        let passed = data.get("passed").and_then(Value::as_bool) == Some(true);
        if !passed && entry.signature.is_none() {
            entry.signature = data
                .get("failure")
                .and_then(Value::as_str)
                .and_then(signature);
        }
        let offered = data
            .get("known_fixes_offered")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        entry.attempts.push((passed, offered));
    }
    order
        .into_iter()
        .filter_map(|key| by_key.remove(&key))
        .collect()
}

impl Core {
    /// The learning report over the last `hours` hours, in buckets of `bucket_hours`.
    pub async fn learning(&self, hours: i64, bucket_hours: i64) -> Result<Value, StorageError> {
        let now = Utc::now();
        let since = now - Duration::hours(hours);
        let attempts = self.storage.code_attempts_since(since).await?;
        let loops = loops(&attempts);
        let bucket = Duration::hours(bucket_hours.max(1));
        let mut total = Tally::default();
        let mut signatures: BTreeMap<String, Tally> = BTreeMap::new();
        let mut curve: BTreeMap<DateTime<Utc>, Tally> = BTreeMap::new();
        for run in &loops {
            total.add(run);
            let name = run
                .signature
                .clone()
                .unwrap_or_else(|| "(passed at once)".to_owned());
            signatures.entry(name).or_default().add(run);
            if let Some(began) = run.began {
                let start = began.duration_trunc(bucket).unwrap_or(began);
                curve.entry(start).or_default().add(run);
            }
        }
        let mut ranked: Vec<(String, Tally)> = signatures.into_iter().collect();
        ranked.sort_by(|a, b| b.1.loops.cmp(&a.1.loops).then_with(|| a.0.cmp(&b.0)));
        let listed: Vec<Value> = ranked
            .iter()
            .take(TOP_SIGNATURES)
            .map(|(name, tally)| {
                let mut value = tally.json();
                value["signature"] = json!(name);
                value
            })
            .collect();
        let points: Vec<Value> = curve
            .iter()
            .rev()
            .take(usize::try_from(MAX_BUCKETS).unwrap_or(200))
            .rev()
            .map(|(start, tally)| {
                let mut value = tally.json();
                value["start"] = json!(start);
                value
            })
            .collect();
        Ok(json!({
            "since": since,
            "hours": hours,
            "bucket_hours": bucket_hours,
            "attempts": attempts.len(),
            "total": total.json(),
            "signatures": listed,
            "curve": points,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(
        task: &str,
        step: i64,
        n: i64,
        passed: bool,
        offered: u64,
        failure: &str,
    ) -> (String, DateTime<Utc>, Value) {
        (
            task.to_owned(),
            Utc::now(),
            json!({ "step": step, "attempt": n, "round": 1, "passed": passed, "known_fixes_offered": offered,
                    "failure": (!passed).then_some(failure) }),
        )
    }

    #[test]
    fn loops_count_attempts_to_pass_and_what_a_fix_did() {
        let error = "Traceback ...\nNameError: name 'x' is not defined";
        let attempts = vec![
            // Task a: failed, then passed without a fix (3 attempts).
            attempt("a", 1, 1, false, 0, error),
            attempt("a", 1, 2, false, 0, error),
            attempt("a", 1, 3, true, 0, ""),
            // Task b: failed, then passed with a learned fix offered.
            attempt("b", 1, 1, false, 0, error),
            attempt("b", 1, 2, true, 1, ""),
            // Task c: passed at once.
            attempt("c", 1, 1, true, 0, ""),
        ];
        let found = loops(&attempts);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].attempts_to_pass(), Some(3));
        assert_eq!(found[1].attempts_to_pass(), Some(2));
        assert_eq!(found[0].signature, found[1].signature);
        assert!(found[2].signature.is_none());
        let mut tally = Tally::default();
        for run in &found {
            tally.add(run);
        }
        let value = tally.json();
        assert_eq!(value["loops"], 3);
        assert_eq!(value["mean_attempts_to_pass"], 2.0);
        assert_eq!(
            value["with_fix"],
            json!({ "attempts": 1, "passed": 1, "pass_rate": 1.0 })
        );
        assert_eq!(
            value["without_fix"],
            json!({ "attempts": 2, "passed": 1, "pass_rate": 0.5 })
        );
    }
}
