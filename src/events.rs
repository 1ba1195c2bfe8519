//! The per-task event log ([`EventLog`]), the live fan-out of committed events ([`Hub`]) and subscriptions
//! to it. The events themselves (`Event`, `EventKind`) are named in `domain`.
//!
//! An event is appended by sending it to the storage writer, which assigns the task's next `seq`, commits
//! it with the rest of its batch and only then publishes it on the task's channel in the [`Hub`] (one
//! channel per task with subscribers, so a subscriber wakes only for its own task's events). So every event a subscriber sees is already
//! durable, and a subscription that reads the stored history after subscribing to the broadcast can never
//! miss one (duplicates are dropped by `seq`).
//!
//! The hub fans out [`Shared`] events: one allocation per event however many subscribe, and its JSON
//! serialized once, on first use, then shared by every WebSocket that sends it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytestring::ByteString;

use tokio::sync::broadcast;

use crate::domain::{AgentKind, Event, EventKind, TaskId};

pub mod remote;
use crate::storage::writer::{Publish, Writer};
use crate::storage::{Storage, StorageError};

/// A committed event as the hub hands it out: shared by every subscriber, with its JSON text made once.
#[derive(Debug)]
pub struct Shared {
    event: Arc<Event>,
    json: OnceLock<ByteString>,
}

impl Shared {
    /// Wraps `event`.
    pub fn new(event: Arc<Event>) -> Arc<Shared> {
        Arc::new(Shared {
            event,
            json: OnceLock::new(),
        })
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The event as JSON (the API's shape), serialized on the first call and shared after (a cheap clone).
    pub fn json(&self) -> ByteString {
        self.json
            .get_or_init(|| {
                // An event is plain data: serializing it cannot fail (an empty text if it ever did).
                ByteString::from(serde_json::to_string(&*self.event).unwrap_or_default())
            })
            .clone()
    }
}

/// Live fan-out of committed events: one broadcast channel per task that has subscribers, and one channel of
/// every task's events except `llm.token` (the dashboard's live overview). Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<TaskId, broadcast::Sender<Arc<Shared>>>>>,
    all: broadcast::Sender<Arc<Shared>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            channels: Arc::default(),
            all: broadcast::channel(Self::CAPACITY).0,
        }
    }
}

impl Hub {
    /// Events a subscriber may fall behind by before it re-reads storage.
    const CAPACITY: usize = 1024;

    /// An empty hub.
    pub fn new() -> Self {
        Hub::default()
    }

    /// Publishes a committed event to its task's subscribers (a terminal event also retires the channel)
    /// and, unless it is an `llm.token`, to the subscribers of every task's events.
    pub fn publish(&self, event: Arc<Event>) {
        let event = Shared::new(event);
        if event.event.kind != EventKind::LlmToken {
            // No receiver is fine; a receiver that falls behind by more than the capacity is told it lagged.
            let _ = self.all.send(Arc::clone(&event));
        }
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sender = if event.event.kind.is_terminal() {
            channels.remove(&event.event.task_id)
        } else {
            channels.get(&event.event.task_id).cloned()
        };
        drop(channels);
        if let Some(sender) = sender {
            // No receiver left is fine: the event is stored.
            let _ = sender.send(event);
        }
    }

    fn subscribe(
        &self,
        task_id: TaskId,
    ) -> (
        broadcast::Sender<Arc<Shared>>,
        broadcast::Receiver<Arc<Shared>>,
    ) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sender = channels
            .entry(task_id)
            .or_insert_with(|| broadcast::channel(Self::CAPACITY).0)
            .clone();
        let receiver = sender.subscribe();
        (sender, receiver)
    }

    /// Drops the task's channel when `sender`'s channel is still the task's and its last receiver leaves.
    fn release(&self, task_id: TaskId, sender: &broadcast::Sender<Arc<Shared>>) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = channels.get(&task_id) {
            if current.same_channel(sender) && current.receiver_count() <= 1 {
                channels.remove(&task_id);
            }
        }
    }

    /// Every task's events from now on as they commit, except `llm.token`; not resumable: a receiver that
    /// falls more than 1024 events behind gets `Lagged` and should start over from stored state.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Shared>> {
        self.all.subscribe()
    }

    /// Whether anyone here listens for task `task_id`'s events (its own channel), and whether anyone
    /// listens for every task's.
    pub fn interest(&self, task_id: TaskId) -> (bool, bool) {
        let task = self
            .channels
            .lock()
            .is_ok_and(|channels| channels.contains_key(&task_id));
        (task, self.all.receiver_count() > 0)
    }

    /// Tasks with a live channel (for tests of the hub's bookkeeping).
    pub fn open_channels(&self) -> usize {
        self.channels.lock().map_or(0, |channels| channels.len())
    }
}

impl Publish for Hub {
    fn publish(&self, event: Arc<Event>) {
        Hub::publish(self, event);
    }
}

/// A task's event log: appends events (through the writer, which gives them their `seq`) and hands out
/// subscriptions. Other records go to the [`Writer`] directly. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    writer: Writer,
    hub: Hub,
    storage: Storage,
    poll: Option<std::time::Duration>,
}

impl EventLog {
    /// An event log writing through `writer` and reading history from `storage`; `hub` is where the
    /// writer publishes committed events.
    pub fn new(writer: Writer, hub: Hub, storage: Storage) -> Self {
        EventLog {
            writer,
            hub,
            storage,
            poll: None,
        }
    }

    /// Subscriptions that, when their task has been quiet for `every`, look at the stored log (its events
    /// may be committed by another process, whose announcement can be lost; see `remote`).
    pub fn polling(mut self, every: std::time::Duration) -> Self {
        self.poll = Some(every);
        self
    }

    /// Appends an event (fire and forget: it becomes visible once its batch commits).
    pub fn emit(
        &self,
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) {
        self.writer.emit(task_id, kind, agent, data);
    }

    /// Every task's live events except `llm.token` ([`Hub::subscribe_all`]).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Shared>> {
        self.hub.subscribe_all()
    }

    /// Subscribes to task `task_id`'s events with `seq > after`: stored history first, then live events,
    /// ending after the terminal event.
    pub async fn subscribe(
        &self,
        task_id: TaskId,
        after: i64,
    ) -> Result<Subscription, StorageError> {
        // Subscribe before reading history: an event committed in between is then in one or the other.
        let (sender, live) = self.hub.subscribe(task_id);
        // Built before the history read, so that a failed read still releases the channel (Drop).
        let mut subscription = Subscription {
            task_id,
            last_seq: after,
            backlog: VecDeque::new(),
            live,
            sender,
            hub: self.hub.clone(),
            storage: self.storage.clone(),
            finished: false,
            poll: self.poll,
        };
        subscription.backlog = stored(self.storage.events_after(task_id, after).await?);
        Ok(subscription)
    }
}

/// A task's events in `seq` order, without gaps or duplicates, ending after the terminal event.
pub struct Subscription {
    task_id: TaskId,
    last_seq: i64,
    backlog: VecDeque<Arc<Shared>>,
    live: broadcast::Receiver<Arc<Shared>>,
    /// Keeps the task's channel identifiable (and open) while this subscription lives.
    sender: broadcast::Sender<Arc<Shared>>,
    hub: Hub,
    storage: Storage,
    finished: bool,
    poll: Option<std::time::Duration>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.release(self.task_id, &self.sender);
    }
}

impl Subscription {
    /// The next event, or `None` after the terminal event (or when the log is shutting down).
    pub async fn next(&mut self) -> Result<Option<Event>, StorageError> {
        Ok(self
            .next_shared()
            .await?
            .map(|shared| shared.event().clone()))
    }

    /// The next event as the hub shares it (its JSON made once for every subscriber), or `None` after the
    /// terminal event (or when the log is shutting down).
    pub async fn next_shared(&mut self) -> Result<Option<Arc<Shared>>, StorageError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(shared) = self.backlog.pop_front() {
                let event = shared.event();
                if event.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = event.seq;
                self.finished = event.kind.is_terminal();
                return Ok(Some(shared));
            }
            let received = match self.poll {
                None => self.live.recv().await,
                Some(every) => match tokio::time::timeout(every, self.live.recv()).await {
                    Ok(received) => received,
                    Err(_quiet) => {
                        self.refill().await?;
                        continue;
                    }
                },
            };
            match received {
                Ok(shared) => {
                    let seq = shared.event().seq;
                    if seq <= self.last_seq {
                        continue;
                    }
                    if seq > self.last_seq + 1 {
                        // Something between is missing from what we saw: take it from storage.
                        self.refill().await?;
                        continue;
                    }
                    self.backlog.push_back(shared);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.refill().await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }

    async fn refill(&mut self) -> Result<(), StorageError> {
        let events = self
            .storage
            .events_after(self.task_id, self.last_seq)
            .await?;
        self.backlog = stored(events);
        Ok(())
    }
}

/// Stored events as the hub would share them.
fn stored(events: Vec<Event>) -> VecDeque<Arc<Shared>> {
    events
        .into_iter()
        .map(|event| Shared::new(Arc::new(event)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(task_id: TaskId, seq: i64, kind: EventKind) -> Arc<Event> {
        Arc::new(Event {
            seq,
            task_id,
            at: chrono::Utc::now(),
            kind,
            agent: None,
            trace_id: "0".repeat(32),
            span_id: "0".repeat(16),
            data: serde_json::json!({}),
        })
    }

    #[test]
    fn the_all_tasks_channel_has_every_task_but_no_tokens_and_says_when_it_lagged() {
        let hub = Hub::new();
        let mut all = hub.subscribe_all();
        let (first, second) = (TaskId::new(), TaskId::new());
        hub.publish(event(first, 1, EventKind::TaskQueued));
        hub.publish(event(first, 2, EventKind::LlmToken));
        hub.publish(event(second, 1, EventKind::TaskQueued));
        hub.publish(event(first, 3, EventKind::TaskCompleted));
        let seen: Vec<(TaskId, i64)> = std::iter::from_fn(|| all.try_recv().ok())
            .map(|shared| (shared.event().task_id, shared.event().seq))
            .collect();
        assert_eq!(seen, [(first, 1), (second, 1), (first, 3)]);
        // No per-task channel was opened for it.
        assert_eq!(hub.open_channels(), 0);

        for seq in 0..(Hub::CAPACITY as i64 + 10) {
            hub.publish(event(second, seq + 2, EventKind::ToolCalled));
        }
        assert!(matches!(
            all.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
