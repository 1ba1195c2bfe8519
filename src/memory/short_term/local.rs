//! The in-process short-term store: a map per task, expired lazily on access and swept every so often.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;

use super::{Retention, ShortTermError, ShortTermStore};
use crate::domain::TaskId;

/// Writes between two sweeps of expired tasks.
const SWEEP_EVERY: u64 = 1024;

/// Most tasks whose memory the store keeps: beyond them a sweep drops the least recently written (their
/// expiry is the earliest), so a busy process does not hold an hour of finished tasks. A running task is
/// written at every step, so it is among the most recent. Between two sweeps the store may hold up to
/// `SWEEP_EVERY` more.
const MAX_TASKS: usize = 10_000;

#[derive(Default)]
struct TaskMemory {
    scratchpad: BTreeMap<String, String>,
    window: VecDeque<String>,
    expires: Option<Instant>,
}

#[derive(Default)]
struct State {
    tasks: HashMap<TaskId, TaskMemory>,
    writes: u64,
}

impl State {
    /// Drops the least recently written tasks beyond `most`.
    fn keep_most_recent(&mut self, most: usize) {
        if self.tasks.len() <= most {
            return;
        }
        let mut expiries: Vec<Option<Instant>> =
            self.tasks.values().map(|memory| memory.expires).collect();
        let cut = expiries.len() - most;
        // The `cut`-th earliest expiry (None, never written, sorts first): everything at or before it goes.
        let (_, &mut oldest_kept, _) = expiries.select_nth_unstable(cut - 1);
        let mut dropped = 0;
        self.tasks.retain(|_, memory| {
            if dropped < cut && memory.expires <= oldest_kept {
                dropped += 1;
                return false;
            }
            true
        });
    }
}

/// A copy of one task's memory in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its scratchpad.
    pub scratchpad: BTreeMap<String, String>,
    /// Its window, oldest first.
    pub window: Vec<String>,
}

/// Short-term memory in this process (used when `redis.url` is empty, and as Redis's fallback).
pub struct LocalStore {
    retention: Retention,
    state: Mutex<State>,
}

impl LocalStore {
    /// An empty store.
    pub fn new(retention: Retention) -> Self {
        LocalStore {
            retention,
            state: Mutex::new(State::default()),
        }
    }

    /// Runs `f` on the state (a poisoned lock is taken over: the maps stay consistent between statements).
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// The live memory of `task` for writing, renewing its expiry; sweeps expired tasks now and then.
    fn write<T>(&self, task: TaskId, f: impl FnOnce(&mut TaskMemory) -> T) -> T {
        let now = Instant::now();
        let expires = now + self.retention.ttl;
        self.with(|state| {
            state.writes += 1;
            if state.writes % SWEEP_EVERY == 0 {
                state
                    .tasks
                    .retain(|_, memory| memory.expires.is_none_or(|at| at > now));
                state.keep_most_recent(MAX_TASKS);
            }
            let memory = state.tasks.entry(task).or_default();
            if memory.expires.is_some_and(|at| at <= now) {
                *memory = TaskMemory::default();
            }
            memory.expires = Some(expires);
            f(memory)
        })
    }

    /// Reads the live memory of `task` (expired memory reads as empty and is dropped).
    fn read<T>(&self, task: TaskId, f: impl FnOnce(Option<&TaskMemory>) -> T) -> T {
        let now = Instant::now();
        self.with(|state| {
            let expired = state
                .tasks
                .get(&task)
                .is_some_and(|memory| memory.expires.is_some_and(|at| at <= now));
            if expired {
                state.tasks.remove(&task);
            }
            f(state.tasks.get(&task))
        })
    }

    /// Task `task`'s live memory (scratchpad and window, oldest first), if it has any.
    pub fn snapshot(&self, task: TaskId) -> Option<Snapshot> {
        self.read(task, |memory| {
            memory.map(|memory| Snapshot {
                scratchpad: memory.scratchpad.clone(),
                window: memory.window.iter().cloned().collect(),
            })
        })
    }

    /// Drops task `task`'s memory.
    pub fn forget(&self, task: TaskId) {
        self.with(|state| state.tasks.remove(&task));
    }

    /// Tasks held (live or not yet swept), for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.with(|state| state.tasks.len())
    }
}

#[async_trait]
impl ShortTermStore for LocalStore {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn put(&self, task: TaskId, key: &str, value: &str) -> Result<(), ShortTermError> {
        self.write(task, |memory| {
            memory.scratchpad.insert(key.to_owned(), value.to_owned());
        });
        Ok(())
    }

    async fn get(&self, task: TaskId, key: &str) -> Result<Option<String>, ShortTermError> {
        Ok(self.read(task, |memory| {
            memory.and_then(|memory| memory.scratchpad.get(key).cloned())
        }))
    }

    async fn scratchpad(&self, task: TaskId) -> Result<BTreeMap<String, String>, ShortTermError> {
        Ok(self.read(task, |memory| {
            memory
                .map(|memory| memory.scratchpad.clone())
                .unwrap_or_default()
        }))
    }

    async fn push(&self, task: TaskId, entry: &str) -> Result<(), ShortTermError> {
        let keep = self.retention.window;
        self.write(task, |memory| {
            memory.window.push_back(entry.to_owned());
            while memory.window.len() > keep {
                memory.window.pop_front();
            }
        });
        Ok(())
    }

    async fn window(&self, task: TaskId) -> Result<Vec<String>, ShortTermError> {
        Ok(self.read(task, |memory| {
            memory
                .map(|memory| memory.window.iter().cloned().collect())
                .unwrap_or_default()
        }))
    }

    async fn absorb(
        &self,
        task: TaskId,
        scratchpad: &BTreeMap<String, String>,
        window: &[String],
    ) -> Result<(), ShortTermError> {
        let keep = self.retention.window;
        self.write(task, |memory| {
            for (key, value) in scratchpad {
                memory.scratchpad.insert(key.clone(), value.clone());
            }
            memory.window.extend(window.iter().cloned());
            while memory.window.len() > keep {
                memory.window.pop_front();
            }
        });
        Ok(())
    }

    async fn ping(&self) -> Result<(), ShortTermError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::contract;
    use super::*;

    #[tokio::test]
    async fn keeps_the_short_term_contract() {
        let store = LocalStore::new(contract::retention(Duration::from_secs(60)));
        contract::behaves(&store).await;
    }

    #[test]
    fn keeps_only_the_most_recently_written_tasks_beyond_the_bound() {
        let mut state = State::default();
        let start = Instant::now();
        let ids: Vec<TaskId> = (0..10).map(|_| TaskId::new()).collect();
        for (n, id) in ids.iter().enumerate() {
            state.tasks.insert(
                *id,
                TaskMemory {
                    expires: Some(start + Duration::from_secs(n as u64)),
                    ..TaskMemory::default()
                },
            );
        }
        state.keep_most_recent(4);
        assert_eq!(state.tasks.len(), 4);
        for id in &ids[6..] {
            assert!(state.tasks.contains_key(id), "a recent task was dropped");
        }
        state.keep_most_recent(10);
        assert_eq!(state.tasks.len(), 4);
    }

    #[tokio::test]
    async fn forgets_a_task_after_its_ttl() {
        let ttl = Duration::from_millis(200);
        let store = LocalStore::new(contract::retention(ttl));
        contract::expires(&store, ttl).await;
    }

    #[tokio::test]
    async fn expired_tasks_are_swept() {
        let store = LocalStore::new(contract::retention(Duration::from_millis(1)));
        for _ in 0..SWEEP_EVERY - 1 {
            store.push(TaskId::new(), "x").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.push(TaskId::new(), "x").await.unwrap();
        assert_eq!(store.held(), 1);
    }
}
