//! Short-term memory: per task, a scratchpad (key -> value) and a window of recent conversation entries,
//! both expiring a while after the task's last write.
//!
//! Two stores with the same behaviour behind [`ShortTermStore`]: Redis through `deadpool-redis`
//! ([`redis::RedisStore`], when `redis.url` is set) and an in-process map ([`local::LocalStore`], when it is
//! empty). [`ShortTerm`] is what the rest of Troupe uses: it counts every operation (hits, misses, errors,
//! latency) and, when Redis fails, serves the operation from an in-process store instead (counted as
//! `outcome="fallback"`), so a Redis outage degrades memory without failing tasks. `/readyz` reports the
//! outage meanwhile.
//!
//! **One source of truth per task.** A task whose operation Redis failed is *stranded*: from then on every
//! operation of it, reads included, is served in-process, even once Redis answers again, until its
//! in-process memory is handed back: merged into Redis (each scratchpad key set over what Redis holds, the
//! window's entries appended after Redis's, one atomic pipeline) and dropped here. So a task never writes
//! to one store and reads from the other. The hand-back runs before the next operation once Redis
//! answers, on a `/readyz` ping, and every [`RETRY_AFTER`] in the background (`op="hand_back"` in the
//! metrics). During the outage a stranded task reads only what it wrote in-process, not what Redis held
//! before; a process that dies before the hand-back loses what it held in-process.

pub mod local;
pub mod redis;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
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
    /// Adds memory the task gathered elsewhere: each scratchpad key set over what is here, the window
    /// entries appended (then trimmed to the retention), the expiry renewed; at once where the store can.
    async fn absorb(
        &self,
        task: TaskId,
        scratchpad: &BTreeMap<String, String>,
        window: &[String],
    ) -> Result<(), ShortTermError>;
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
    outage: Arc<Outage>,
    metrics: Metrics,
}

/// What [`ShortTerm`] knows of a Redis outage.
#[derive(Default)]
struct Outage {
    /// After a failure the primary is skipped until then (a circuit breaker), so that a Redis that times
    /// out does not add its timeout to every operation.
    skip_until: Mutex<Option<Instant>>,
    /// How long the breaker stays open.
    retry_after: Duration,
    /// The tasks served in-process until their memory is handed back (see the module's doc).
    stranded: Mutex<HashSet<TaskId>>,
    /// One hand-back at a time.
    handing_back: tokio::sync::Mutex<()>,
}

/// How long operations skip Redis after it failed one, and how often stranded memory is offered back.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Runs `f` on what `mutex` guards (a poisoned lock is taken over: the guarded values are plain data).
fn locked<T, R>(mutex: &Mutex<T>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut guard = mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

impl ShortTerm {
    /// The in-process store alone.
    pub fn local(retention: Retention, metrics: Metrics) -> Self {
        ShortTerm {
            primary: Arc::new(local::LocalStore::new(retention)),
            fallback: None,
            outage: Arc::default(),
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
        Ok(Self::with_fallback(
            Arc::new(store),
            retention,
            RETRY_AFTER,
            metrics,
        ))
    }

    /// `primary` with an in-process fallback, and a background hand-back of stranded tasks every
    /// `retry_after` (it stops once every clone is dropped).
    fn with_fallback(
        primary: Arc<dyn ShortTermStore>,
        retention: Retention,
        retry_after: Duration,
        metrics: Metrics,
    ) -> Self {
        let memory = ShortTerm {
            primary,
            fallback: Some(Arc::new(local::LocalStore::new(retention))),
            outage: Arc::new(Outage {
                retry_after,
                ..Outage::default()
            }),
            metrics,
        };
        let (primary, fallback, metrics) = (
            Arc::clone(&memory.primary),
            memory.fallback.clone(),
            memory.metrics.clone(),
        );
        let outage = Arc::downgrade(&memory.outage);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(retry_after).await;
                let Some(outage) = outage.upgrade() else {
                    return;
                };
                let memory = ShortTerm {
                    primary: Arc::clone(&primary),
                    fallback: fallback.clone(),
                    outage,
                    metrics: metrics.clone(),
                };
                if !memory.skipping() {
                    memory.hand_back().await;
                }
            }
        });
        memory
    }

    /// The configured backend ("redis" or "local").
    pub fn backend(&self) -> &'static str {
        self.primary.backend()
    }

    /// Checks the configured store answers (for `/readyz`); no fallback here. An answer closes the breaker
    /// and hands stranded memory back.
    pub async fn ping(&self) -> Result<(), ShortTermError> {
        let result = self.primary.ping().await;
        if result.is_ok() {
            self.set_skip(None);
            self.hand_back().await;
        }
        result
    }

    fn set_skip(&self, until: Option<Instant>) {
        locked(&self.outage.skip_until, |skip| *skip = until);
    }

    fn skipping(&self) -> bool {
        locked(&self.outage.skip_until, |skip| *skip).is_some_and(|until| Instant::now() < until)
    }

    fn is_stranded(&self, task: TaskId) -> bool {
        locked(&self.outage.stranded, |stranded| stranded.contains(&task))
    }

    /// Hands every stranded task's in-process memory back to Redis (see the module's doc); a failure opens
    /// the breaker again and leaves the rest stranded.
    async fn hand_back(&self) {
        let Some(fallback) = &self.fallback else {
            return;
        };
        if locked(&self.outage.stranded, |stranded| stranded.is_empty()) {
            return;
        }
        let _one_at_a_time = self.outage.handing_back.lock().await;
        let tasks: Vec<TaskId> = locked(&self.outage.stranded, |stranded| {
            stranded.iter().copied().collect()
        });
        for task in tasks {
            let started = Instant::now();
            // A stranded task's operations wait for this pass (they take `handing_back` too), so nothing
            // writes its in-process copy between the snapshot and the forgetting.
            let result = match fallback.snapshot(task) {
                None => Ok(()), // expired in-process: nothing to hand back
                Some(snapshot) => self
                    .primary
                    .absorb(task, &snapshot.scratchpad, &snapshot.window)
                    .await
                    .map(|()| fallback.forget(task)),
            };
            let outcome = if result.is_ok() { "ok" } else { "error" };
            self.metrics
                .observe_memory_op(TIER, "hand_back", outcome, started);
            match result {
                Ok(()) => {
                    locked(&self.outage.stranded, |stranded| stranded.remove(&task));
                    tracing::info!(task_id = %task, "short-term memory held in-process during a Redis outage was handed back");
                }
                Err(error) => {
                    tracing::warn!(task_id = %task, %error, "hand short-term memory back to Redis; it stays in-process");
                    self.set_skip(Some(Instant::now() + self.outage.retry_after));
                    return;
                }
            }
        }
    }

    /// Sets `key` in the task's scratchpad.
    pub async fn put(&self, task: TaskId, key: &str, value: &str) -> Result<(), ShortTermError> {
        self.run(
            "put",
            task,
            |store| async move { store.put(task, key, value).await },
            |_| "ok",
        )
        .await
    }

    /// Reads `key` from the task's scratchpad (`hit` or `miss` in metrics).
    pub async fn get(&self, task: TaskId, key: &str) -> Result<Option<String>, ShortTermError> {
        self.run(
            "get",
            task,
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
            task,
            |store| async move { store.scratchpad(task).await },
            |pad| if pad.is_empty() { "miss" } else { "hit" },
        )
        .await
    }

    /// Appends an entry to the task's conversation window.
    pub async fn push(&self, task: TaskId, entry: &str) -> Result<(), ShortTermError> {
        self.run(
            "push",
            task,
            |store| async move { store.push(task, entry).await },
            |_| "ok",
        )
        .await
    }

    /// The task's conversation window, oldest first (`hit` when not empty).
    pub async fn window(&self, task: TaskId) -> Result<Vec<String>, ShortTermError> {
        self.run(
            "window",
            task,
            |store| async move { store.window(task).await },
            |entries| if entries.is_empty() { "miss" } else { "hit" },
        )
        .await
    }

    /// Runs `op` of task `task` on the primary store, or in-process: when the primary fails (the task is
    /// then stranded), failed within the last [`RETRY_AFTER`], or the task is stranded already. Stranded
    /// memory is handed back first once the primary answers. Counts the outcome (`classify` of the value,
    /// `fallback`, or `error`) and the latency.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        task: TaskId,
        call: F,
        classify: impl Fn(&T) -> &'static str,
    ) -> Result<T, ShortTermError>
    where
        F: Fn(Arc<dyn ShortTermStore>) -> Fut,
        Fut: Future<Output = Result<T, ShortTermError>>,
    {
        let started = Instant::now();
        let result = match &self.fallback {
            None => call(Arc::clone(&self.primary))
                .await
                .map(|value| (classify(&value), value)),
            Some(fallback) => {
                if !self.skipping() {
                    self.hand_back().await;
                }
                // A stranded task waits for a hand-back in progress, then is served where its memory is.
                let _after_hand_back = if self.is_stranded(task) {
                    Some(self.outage.handing_back.lock().await)
                } else {
                    None
                };
                let primary = if self.skipping() || self.is_stranded(task) {
                    None
                } else {
                    match call(Arc::clone(&self.primary)).await {
                        Ok(value) => Some(value),
                        Err(error) => {
                            tracing::warn!(op, %error, "short-term memory op failed on Redis; the task's memory is served in-process until Redis takes it back");
                            self.set_skip(Some(Instant::now() + self.outage.retry_after));
                            None
                        }
                    }
                };
                match primary {
                    Some(value) => Ok((classify(&value), value)),
                    None => {
                        locked(&self.outage.stranded, |stranded| stranded.insert(task));
                        let store: Arc<dyn ShortTermStore> = Arc::clone(fallback) as _;
                        call(store).await.map(|value| ("fallback", value))
                    }
                }
            }
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

    /// A real Redis store that can be made to fail, as during an outage.
    struct Flaky {
        redis: redis::RedisStore,
        down: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        fn check(&self) -> Result<(), ShortTermError> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ShortTermError::Redis(
                    "connection refused (test outage)".into(),
                ));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl ShortTermStore for Flaky {
        fn backend(&self) -> &'static str {
            "redis"
        }
        async fn put(&self, task: TaskId, key: &str, value: &str) -> Result<(), ShortTermError> {
            self.check()?;
            self.redis.put(task, key, value).await
        }
        async fn get(&self, task: TaskId, key: &str) -> Result<Option<String>, ShortTermError> {
            self.check()?;
            self.redis.get(task, key).await
        }
        async fn scratchpad(
            &self,
            task: TaskId,
        ) -> Result<BTreeMap<String, String>, ShortTermError> {
            self.check()?;
            self.redis.scratchpad(task).await
        }
        async fn push(&self, task: TaskId, entry: &str) -> Result<(), ShortTermError> {
            self.check()?;
            self.redis.push(task, entry).await
        }
        async fn window(&self, task: TaskId) -> Result<Vec<String>, ShortTermError> {
            self.check()?;
            self.redis.window(task).await
        }
        async fn absorb(
            &self,
            task: TaskId,
            scratchpad: &BTreeMap<String, String>,
            window: &[String],
        ) -> Result<(), ShortTermError> {
            self.check()?;
            self.redis.absorb(task, scratchpad, window).await
        }
        async fn ping(&self) -> Result<(), ShortTermError> {
            self.check()?;
            self.redis.ping().await
        }
    }

    #[tokio::test]
    async fn a_task_stranded_by_an_outage_stays_in_process_until_its_memory_is_handed_back() {
        let url = std::env::var("TROUPE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("troupe-test-{}", uuid::Uuid::new_v4().simple());
        let retention = Retention {
            ttl: Duration::from_secs(60),
            window: 10,
        };
        let flaky = Arc::new(Flaky {
            redis: redis::RedisStore::connect(&url, &prefix, retention).unwrap(),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let metrics = Metrics::new().unwrap();
        let retry = Duration::from_millis(200);
        let memory = ShortTerm::with_fallback(
            Arc::clone(&flaky) as Arc<dyn ShortTermStore>,
            retention,
            retry,
            metrics.clone(),
        );
        let (task, other) = (TaskId::new(), TaskId::new());
        memory.put(task, "plan", "1. look").await.unwrap();
        memory.push(task, "step 1 said").await.unwrap();

        // The outage: the task's writes go in-process, and it is stranded.
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        memory.push(task, "step 2 said").await.unwrap();
        memory
            .put(task, "note", "written during the outage")
            .await
            .unwrap();
        assert!(memory.is_stranded(task));
        // Redis is back, but the breaker is still open: the task reads what it wrote in-process, not a
        // split state; a task Redis never failed reads Redis once the breaker closes.
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            memory.get(task, "note").await.unwrap().as_deref(),
            Some("written during the outage")
        );
        tokio::time::sleep(retry + Duration::from_millis(50)).await;
        memory.put(other, "plan", "other").await.unwrap();
        // That operation (or the background hand-back, whichever came first) handed the stranded memory
        // back: Redis holds both halves, in order, and the task is served from Redis again.
        assert!(!memory.is_stranded(task));
        assert_eq!(
            flaky.redis.window(task).await.unwrap(),
            vec!["step 1 said", "step 2 said"]
        );
        let pad = flaky.redis.scratchpad(task).await.unwrap();
        assert_eq!(pad["plan"], "1. look");
        assert_eq!(pad["note"], "written during the outage");
        assert!(memory.fallback.as_ref().unwrap().snapshot(task).is_none());
        memory.push(task, "step 3 said").await.unwrap();
        assert_eq!(
            memory.window(task).await.unwrap(),
            vec!["step 1 said", "step 2 said", "step 3 said"]
        );
        let handed_back = metrics
            .memory_operations
            .with_label_values(&[TIER, "hand_back", "ok"])
            .get();
        assert_eq!(handed_back, 1);
    }

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
