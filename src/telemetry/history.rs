//! A bounded in-process history of a few of Troupe's own metrics, for the dashboard's charts
//! (`GET /api/v1/stats`): token burn rate, queue depth, running tasks, and task outcomes and model errors
//! per interval.
//!
//! It reads only the Prometheus registry it is given (no Prometheus server, no database): each
//! [`History::sample`] gathers the registry, takes the gauges as they are and the counters' increase since
//! the previous sample, and appends one [`Sample`] to a ring buffer that keeps the newest `capacity`. A tokio
//! interval task ([`History::start`]) samples every interval until its [`Sampler`] is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;
use serde::{Serialize, Serializer};

use super::metrics::names;

/// One point of the history: gauges at `t`, counters' increase since the previous point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When it was taken (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub t: DateTime<Utc>,
    /// Generated tokens (`troupe_llm_tokens_total{type="output"}`, all providers) per second since the
    /// previous sample. Counted when a call finishes, so a long call shows up in the interval it ends in.
    pub tokens_per_second: f64,
    /// Tasks waiting for a slot (`troupe_task_queue_depth`).
    pub queue_depth: i64,
    /// Tasks running (`troupe_tasks_running`).
    pub running_tasks: i64,
    /// Tasks completed since the previous sample.
    pub completed: u64,
    /// Tasks failed since the previous sample.
    pub failed: u64,
    /// Tasks cancelled since the previous sample.
    pub cancelled: u64,
    /// Failed model calls (`troupe_llm_errors_total`, all providers and kinds) since the previous sample.
    pub llm_errors: u64,
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The counters a sample takes differences of.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    output_tokens: f64,
    completed: f64,
    failed: f64,
    cancelled: f64,
    llm_errors: f64,
}

struct State {
    samples: VecDeque<Sample>,
    last: Totals,
    last_at: Instant,
}

/// The ring buffer of samples and the registry it reads. Cheap to clone (shared).
#[derive(Clone)]
pub struct History {
    registry: Registry,
    interval: Duration,
    capacity: usize,
    state: Arc<Mutex<State>>,
}

impl History {
    /// An empty history of at most `capacity` samples (at least 1) of `registry`, meant to be sampled every
    /// `interval`. The counters are taken from zero: the first sample counts everything since they started.
    pub fn new(registry: Registry, interval: Duration, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        History {
            registry,
            interval,
            capacity,
            state: Arc::new(Mutex::new(State {
                samples: VecDeque::with_capacity(capacity.min(4096)),
                last: Totals::default(),
                last_at: Instant::now(),
            })),
        }
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes one sample now and appends it, dropping the oldest beyond the capacity.
    pub fn sample(&self) {
        let families = self.registry.gather();
        let totals = Totals {
            output_tokens: sum(&families, names::LLM_TOKENS, Some(("type", "output"))),
            completed: sum(
                &families,
                names::TASKS_TOTAL,
                Some(("outcome", "completed")),
            ),
            failed: sum(&families, names::TASKS_TOTAL, Some(("outcome", "failed"))),
            cancelled: sum(
                &families,
                names::TASKS_TOTAL,
                Some(("outcome", "cancelled")),
            ),
            llm_errors: sum(&families, names::LLM_ERRORS, None),
        };
        let queue_depth = sum(&families, names::TASK_QUEUE_DEPTH, None) as i64;
        let running_tasks = sum(&families, names::TASKS_RUNNING, None) as i64;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.duration_since(state.last_at).as_secs_f64();
        let last = state.last;
        // Counters never go down in one registry; max(0) only guards against rounding.
        let delta = |now: f64, before: f64| (now - before).max(0.0).round() as u64;
        let tokens = (totals.output_tokens - last.output_tokens).max(0.0);
        let sample = Sample {
            t: Utc::now(),
            tokens_per_second: if elapsed > 0.0 { tokens / elapsed } else { 0.0 },
            queue_depth,
            running_tasks,
            completed: delta(totals.completed, last.completed),
            failed: delta(totals.failed, last.failed),
            cancelled: delta(totals.cancelled, last.cancelled),
            llm_errors: delta(totals.llm_errors, last.llm_errors),
        };
        state.last = totals;
        state.last_at = now;
        if state.samples.len() == self.capacity {
            state.samples.pop_front();
        }
        state.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.samples.iter().cloned().collect()
    }

    /// Takes a sample now and then one every interval on a tokio task, until the returned [`Sampler`] is
    /// dropped. Must be called within a tokio runtime.
    pub fn start(&self) -> Sampler {
        self.sample();
        let history = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(history.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the start-up sample is taken
            loop {
                ticks.tick().await;
                history.sample();
            }
        });
        Sampler(task)
    }
}

/// The running sampler task; dropping it stops the sampling.
pub struct Sampler(tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sum of family `name`'s counters or gauges, over the series whose label matches `label` (all when
/// `None`); 0 when the family has no series yet.
fn sum(families: &[MetricFamily], name: &str, label: Option<(&str, &str)>) -> f64 {
    families
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            label.is_none_or(|(key, value)| {
                metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == key && pair.value() == value)
            })
        })
        .map(|metric| metric.get_counter().value() + metric.get_gauge().value())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Metrics;

    #[test]
    fn samples_hold_gauges_and_the_counters_increase_since_the_previous_sample() {
        let metrics = Metrics::new().unwrap();
        let history = History::new(metrics.registry().clone(), Duration::from_secs(2), 3);
        history.sample();
        let first = history.samples();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].completed, 0);
        assert_eq!(first[0].tokens_per_second, 0.0);

        metrics
            .tasks_total
            .with_label_values(&["completed"])
            .inc_by(2);
        metrics.tasks_total.with_label_values(&["failed"]).inc();
        metrics.tasks_total.with_label_values(&["cancelled"]).inc();
        metrics
            .llm_errors
            .with_label_values(&["embedded", "timeout"])
            .inc();
        metrics
            .llm_errors
            .with_label_values(&["openai", "http"])
            .inc();
        metrics
            .llm_tokens
            .with_label_values(&["embedded", "m", "output"])
            .inc_by(40);
        metrics
            .llm_tokens
            .with_label_values(&["embedded", "m", "input"])
            .inc_by(1000);
        metrics.task_queue_depth.set(3);
        metrics.tasks_running.set(2);
        std::thread::sleep(Duration::from_millis(20));
        history.sample();
        let second = history.samples()[1].clone();
        assert_eq!(
            (
                second.completed,
                second.failed,
                second.cancelled,
                second.llm_errors
            ),
            (2, 1, 1, 2)
        );
        assert_eq!((second.queue_depth, second.running_tasks), (3, 2));
        // 40 output tokens (input tokens are not generated) within the ~20 ms since the first sample.
        assert!(
            second.tokens_per_second > 40.0 && second.tokens_per_second <= 40.0 / 0.02,
            "{second:?}"
        );

        // Nothing new: the next interval counts nothing, the gauges stay.
        history.sample();
        let third = history.samples()[2].clone();
        assert_eq!((third.completed, third.failed, third.llm_errors), (0, 0, 0));
        assert_eq!(third.tokens_per_second, 0.0);
        assert_eq!(third.queue_depth, 3);

        // Bounded: the oldest goes.
        history.sample();
        let samples = history.samples();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0], second);
    }

    #[test]
    fn a_sample_serialises_its_time_as_rfc3339() {
        let metrics = Metrics::new().unwrap();
        let history = History::new(metrics.registry().clone(), Duration::from_secs(1), 10);
        history.sample();
        let json = serde_json::to_value(&history.samples()[0]).unwrap();
        let t = json["t"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
        assert!(json["tokens_per_second"].is_number());
    }

    // Real time (tokio's paused clock needs its test-util feature, which this crate does not build).
    #[tokio::test]
    async fn the_sampler_samples_at_start_and_every_interval_until_dropped() {
        let metrics = Metrics::new().unwrap();
        let history = History::new(metrics.registry().clone(), Duration::from_millis(20), 100);
        let sampler = history.start();
        assert_eq!(history.samples().len(), 1, "a sample at start-up");
        let deadline = Instant::now() + Duration::from_secs(10);
        while history.samples().len() < 3 {
            assert!(Instant::now() < deadline, "the sampler does not sample");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(sampler);
        tokio::task::yield_now().await;
        let stopped = history.samples().len();
        // Ten intervals later nothing more was taken.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            history.samples().len(),
            stopped,
            "no sample after the sampler is dropped"
        );
    }
}
