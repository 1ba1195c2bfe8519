//! Short-term memory: per task, a scratchpad (key -> value) and a window of recent conversation entries,
//! both expiring a while after the task's last write.
//!
//! Two stores with the same behaviour behind [`ShortTermStore`]: Redis through `deadpool-redis`
//! ([`redis::RedisStore`], when `redis.url` is set) and an in-process map ([`local::LocalStore`], when it is
//! empty). [`ShortTerm`] is what the rest of Troupe uses: it counts every operation (hits, misses, errors,
//! latency) and, when Redis fails, serves the operation from an in-process store instead (counted as
//! `outcome="fallback"`), so a Redis outage degrades memory without failing tasks. `/readyz` reports the
//! outage meanwhile.

pub mod local;
pub mod redis;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{AgentKind, TaskId};
use crate::telemetry::metrics::Metrics;

/// The tier label of short-term operations in metrics.
pub const TIER: &str = "short_term";

/// A short-term store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShortTermError {
    /// Redis could not be reached or refused the command.
    #[error("redis: {0}")]
    Redis(String),
    /// The Redis URL does not parse.
    #[error("redis.url: {0}")]
    Config(String),
}

/// How long entries live and how much of the conversation is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// A task's short-term memory expires this long after its last write.
    pub ttl: Duration,
    /// Most recent window entries kept per task.
    pub window: usize,
}

/// One entry of a task's conversation window in short-term memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowEntry {
    /// Who said it.
    pub agent: AgentKind,
    /// In which step.
    pub step: i32,
    /// What, shortened.
    pub text: String,
}

/// A short-term memory backend.
#[async_trait]
pub trait ShortTermStore: Send + Sync {
    /// "redis" or "local".
    fn backend(&self) -> &'static str;
    /// Sets `key` in the task's scratchpad (and renews the task's expiry).
    async fn put(&self, task: TaskId, key: &str, value: &str) -> Result<(), ShortTermError>;
    /// Reads `key` from the task's scratchpad.
    async fn get(&self, task: TaskId, key: &str) -> Result<Option<String>, ShortTermError>;
    /// The task's whole scratchpad.
    async fn scratchpad(&self, task: TaskId) -> Result<BTreeMap<String, String>, ShortTermError>;
    /// Appends to the task's window, dropping the oldest beyond the retention (and renews the expiry).
    async fn push(&self, task: TaskId, entry: &str) -> Result<(), ShortTermError>;
    /// The task's window, oldest first.
    async fn window(&self, task: TaskId) -> Result<Vec<String>, ShortTermError>;
    /// Checks the store answers.
    async fn ping(&self) -> Result<(), ShortTermError>;
}

/// Short-term memory as Troupe uses it: a store, metered, with an in-process fallback when Redis fails.
/// Cheap to clone.
#[derive(Clone)]
pub struct ShortTerm {
    primary: Arc<dyn ShortTermStore>,
    /// Serves operations Redis failed; `None` when the primary is already in-process.
    fallback: Option<Arc<local::LocalStore>>,
    /// After a failure the primary is skipped until then (a circuit breaker), so that a Redis that times out
    /// does not add its timeout to every operation.
    skip_until: Arc<std::sync::Mutex<Option<Instant>>>,
    metrics: Metrics,
}

/// How long operations skip Redis after it failed one.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl ShortTerm {
    /// The in-process store alone.
    pub fn local(retention: Retention, metrics: Metrics) -> Self {
        ShortTerm {
            primary: Arc::new(local::LocalStore::new(retention)),
            fallback: None,
            skip_until: Arc::default(),
            metrics,
        }
    }

    /// Redis at `url` (keys under `prefix`), with an in-process fallback. Does not fail when Redis is down:
    /// the outage is logged here, reported by [`ShortTerm::ping`] (hence `/readyz`) and each operation
    /// falls back; a URL that does not parse is an error.
    pub async fn redis(
        url: &str,
        prefix: &str,
        retention: Retention,
        metrics: Metrics,
    ) -> Result<Self, ShortTermError> {
        let store = redis::RedisStore::connect(url, prefix, retention)?;
        if let Err(error) = store.ping().await {
            tracing::error!(
                redis.url = %crate::domain::redact_url(url),
                %error,
                "Redis is unreachable; short-term memory falls back to the in-process store until it answers"
            );
        }
        Ok(ShortTerm {
            primary: Arc::new(store),
            fallback: Some(Arc::new(local::LocalStore::new(retention))),
            skip_until: Arc::default(),
            metrics,
        })
    }

    /// The configured backend ("redis" or "local").
    pub fn backend(&self) -> &'static str {
        self.primary.backend()
    }

    /// Checks the configured store answers (for `/readyz`); no fallback here. An answer closes the breaker.
    pub async fn ping(&self) -> Result<(), ShortTermError> {
        let result = self.primary.ping().await;
        if result.is_ok() {
            self.set_skip(None);
        }
        result
    }

    fn set_skip(&self, until: Option<Instant>) {
        if let Ok(mut skip) = self.skip_until.lock() {
            *skip = until;
        }
    }

    fn skipping(&self) -> bool {
        self.skip_until
            .lock()
            .ok()
            .and_then(|skip| *skip)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Sets `key` in the task's scratchpad.
    pub async fn put(&self, task: TaskId, key: &str, value: &str) -> Result<(), ShortTermError> {
        self.run(
            "put",
            |store| async move { store.put(task, key, value).await },
            |_| "ok",
        )
        .await
    }

    /// Reads `key` from the task's scratchpad (`hit` or `miss` in metrics).
    pub async fn get(&self, task: TaskId, key: &str) -> Result<Option<String>, ShortTermError> {
        self.run(
            "get",
            |store| async move { store.get(task, key).await },
            |found| if found.is_some() { "hit" } else { "miss" },
        )
        .await
    }

    /// The task's scratchpad.
    pub async fn scratchpad(
        &self,
        task: TaskId,
    ) -> Result<BTreeMap<String, String>, ShortTermError> {
        self.run(
            "scratchpad",
            |store| async move { store.scratchpad(task).await },
            |pad| if pad.is_empty() { "miss" } else { "hit" },
        )
        .await
    }

    /// Appends an entry to the task's conversation window.
    pub async fn push(&self, task: TaskId, entry: &str) -> Result<(), ShortTermError> {
        self.run(
            "push",
            |store| async move { store.push(task, entry).await },
            |_| "ok",
        )
        .await
    }

    /// The task's conversation window, oldest first (`hit` when not empty).
    pub async fn window(&self, task: TaskId) -> Result<Vec<String>, ShortTermError> {
        self.run(
            "window",
            |store| async move { store.window(task).await },
            |entries| if entries.is_empty() { "miss" } else { "hit" },
        )
        .await
    }

    /// Runs `op` on the primary store, then on the fallback if the primary failed (or failed within the last
    /// [`RETRY_AFTER`]); counts the outcome (`classify` of the value, `fallback`, or `error`) and the latency.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        call: F,
        classify: impl Fn(&T) -> &'static str,
    ) -> Result<T, ShortTermError>
    where
        F: Fn(Arc<dyn ShortTermStore>) -> Fut,
        Fut: Future<Output = Result<T, ShortTermError>>,
    {
        let started = Instant::now();
        let primary = if self.fallback.is_some() && self.skipping() {
            Err(ShortTermError::Redis(
                "skipped after a recent failure".into(),
            ))
        } else {
            call(Arc::clone(&self.primary)).await
        };
        let result = match primary {
            Ok(value) => Ok((classify(&value), value)),
            Err(error) => match &self.fallback {
                Some(fallback) => {
                    if !self.skipping() {
                        tracing::warn!(op, %error, "short-term memory op failed on Redis; served in-process for {RETRY_AFTER:?}");
                        self.set_skip(Some(Instant::now() + RETRY_AFTER));
                    }
                    let store: Arc<dyn ShortTermStore> = Arc::clone(fallback) as _;
                    call(store).await.map(|value| ("fallback", value))
                }
                None => Err(error),
            },
        };
        let outcome = match &result {
            Ok((outcome, _)) => *outcome,
            Err(_) => "error",
        };
        self.metrics.observe_memory_op(TIER, op, outcome, started);
        result.map(|(_, value)| value)
    }
}

/// The behaviour both stores must share; run by each store's tests.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    /// Scratchpad, window trimming and isolation between tasks.
    pub async fn behaves(store: &dyn ShortTermStore) {
        let (a, b) = (TaskId::new(), TaskId::new());
        assert_eq!(store.get(a, "plan").await.unwrap(), None);
        store.put(a, "plan", "1. look 2. write").await.unwrap();
        store.put(a, "note", "x").await.unwrap();
        store.put(b, "plan", "other").await.unwrap();
        assert_eq!(
            store.get(a, "plan").await.unwrap().as_deref(),
            Some("1. look 2. write")
        );
        assert_eq!(
            store.get(b, "plan").await.unwrap().as_deref(),
            Some("other")
        );
        let pad = store.scratchpad(a).await.unwrap();
        assert_eq!(pad.len(), 2);
        assert_eq!(pad["note"], "x");
        for i in 0..5 {
            store.push(a, &format!("entry {i}")).await.unwrap();
        }
        // Retention keeps the last three, oldest first.
        assert_eq!(
            store.window(a).await.unwrap(),
            vec!["entry 2", "entry 3", "entry 4"]
        );
        assert!(store.window(b).await.unwrap().is_empty());
        store.ping().await.unwrap();
    }

    /// Everything of a task is gone once its TTL passes without writes.
    pub async fn expires(store: &dyn ShortTermStore, ttl: Duration) {
        let task = TaskId::new();
        store.put(task, "k", "v").await.unwrap();
        store.push(task, "said").await.unwrap();
        assert!(store.get(task, "k").await.unwrap().is_some());
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        assert_eq!(store.get(task, "k").await.unwrap(), None);
        assert!(store.window(task).await.unwrap().is_empty());
        assert!(store.scratchpad(task).await.unwrap().is_empty());
    }

    /// The retention the contract assumes.
    pub fn retention(ttl: Duration) -> Retention {
        Retention { ttl, window: 3 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_down_redis_is_skipped_for_a_while_and_operations_fall_back() {
        let metrics = Metrics::new().unwrap();
        let retention = Retention {
            ttl: Duration::from_secs(60),
            window: 4,
        };
        let memory = ShortTerm::redis("redis://127.0.0.1:1", "x", retention, metrics.clone())
            .await
            .unwrap();
        let task = TaskId::new();
        memory.put(task, "plan", "p").await.unwrap();
        assert_eq!(
            memory.get(task, "plan").await.unwrap().as_deref(),
            Some("p")
        );
        memory.push(task, "said").await.unwrap();
        assert_eq!(memory.window(task).await.unwrap(), vec!["said"]);
        assert!(memory.skipping(), "the breaker is open after a failure");
        assert!(memory.ping().await.is_err());
        let fallbacks = metrics
            .memory_operations
            .with_label_values(&[TIER, "put", "fallback"])
            .get();
        assert_eq!(fallbacks, 1);
    }
}
