//! Events: their kinds, the per-task event log ([`EventLog`]) and subscriptions to it.
//!
//! An event is appended by sending it to the storage writer, which assigns the task's next `seq`, commits
//! it with the rest of its batch and only then publishes it on the task's channel in the [`Hub`] (one
//! channel per task with subscribers, so a subscriber wakes only for its own task's events). So every event a subscriber sees is already
//! durable, and a subscription that reads the stored history after subscribing to the broadcast can never
//! miss one (duplicates are dropped by `seq`).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::agents::AgentKind;
use crate::storage::writer::{PendingEvent, WriteOp, Writer};
use crate::storage::{Storage, StorageError};
use crate::task::TaskId;
use crate::telemetry::propagation;

/// What happened. The names are stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// The task was accepted and stored.
    #[serde(rename = "task.queued")]
    TaskQueued,
    /// The Director started working on it.
    #[serde(rename = "task.started")]
    TaskStarted,
    /// The Director's plan: its steps.
    #[serde(rename = "plan.created")]
    PlanCreated,
    /// A choice, with the options weighed and their probabilities.
    #[serde(rename = "decision.made")]
    DecisionMade,
    /// An agent began a step.
    #[serde(rename = "agent.started")]
    AgentStarted,
    /// A piece of model output, streamed.
    #[serde(rename = "llm.token")]
    LlmToken,
    /// A model call ended, with usage.
    #[serde(rename = "llm.finished")]
    LlmFinished,
    /// An agent finished a step.
    #[serde(rename = "agent.finished")]
    AgentFinished,
    /// The supervisor restarted an agent.
    #[serde(rename = "agent.restarted")]
    AgentRestarted,
    /// QA's verdict on the work.
    #[serde(rename = "qa.verdict")]
    QaVerdict,
    /// An agent searched memory: the query, every hit with its similarity score, and which were used.
    #[serde(rename = "memory.read")]
    MemoryRead,
    /// An agent called a tool: which, with what, how it went, how long it took.
    #[serde(rename = "tool.called")]
    ToolCalled,
    /// The sandbox contained something a run tried (network, filesystem, fork bomb, memory, runaway, output).
    #[serde(rename = "sandbox.violation")]
    SandboxViolation,
    /// One attempt of the Code/QA loop: the step, the attempt number, whether the test passed, the feedback.
    #[serde(rename = "code.attempt")]
    CodeAttempt,
    /// Terminal: the task has a result.
    #[serde(rename = "task.completed")]
    TaskCompleted,
    /// Terminal: the task failed; `data.error` says why.
    #[serde(rename = "task.failed")]
    TaskFailed,
    /// Terminal: the task was cancelled.
    #[serde(rename = "task.cancelled")]
    TaskCancelled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 17] = [
        EventKind::TaskQueued,
        EventKind::TaskStarted,
        EventKind::PlanCreated,
        EventKind::DecisionMade,
        EventKind::AgentStarted,
        EventKind::LlmToken,
        EventKind::LlmFinished,
        EventKind::AgentFinished,
        EventKind::AgentRestarted,
        EventKind::QaVerdict,
        EventKind::MemoryRead,
        EventKind::ToolCalled,
        EventKind::SandboxViolation,
        EventKind::CodeAttempt,
        EventKind::TaskCompleted,
        EventKind::TaskFailed,
        EventKind::TaskCancelled,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TaskQueued => "task.queued",
            EventKind::TaskStarted => "task.started",
            EventKind::PlanCreated => "plan.created",
            EventKind::DecisionMade => "decision.made",
            EventKind::AgentStarted => "agent.started",
            EventKind::LlmToken => "llm.token",
            EventKind::LlmFinished => "llm.finished",
            EventKind::AgentFinished => "agent.finished",
            EventKind::AgentRestarted => "agent.restarted",
            EventKind::QaVerdict => "qa.verdict",
            EventKind::MemoryRead => "memory.read",
            EventKind::ToolCalled => "tool.called",
            EventKind::SandboxViolation => "sandbox.violation",
            EventKind::CodeAttempt => "code.attempt",
            EventKind::TaskCompleted => "task.completed",
            EventKind::TaskFailed => "task.failed",
            EventKind::TaskCancelled => "task.cancelled",
        }
    }

    /// Whether this kind ends a task's log.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::TaskCompleted | EventKind::TaskFailed | EventKind::TaskCancelled
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an event kind.
#[derive(Debug, thiserror::Error)]
#[error("unknown event kind '{0}'")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownEventKind(text.to_owned()))
    }
}

/// One entry of a task's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the task's log: 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// The task.
    pub task_id: TaskId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub kind: EventKind,
    /// The agent it concerns, if any.
    pub agent: Option<AgentKind>,
    /// The task's trace (hex).
    pub trace_id: String,
    /// The span that emitted it (hex).
    pub span_id: String,
    /// Kind-specific details.
    pub data: serde_json::Value,
}

/// Live fan-out of committed events: one broadcast channel per task that has subscribers. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<HashMap<TaskId, broadcast::Sender<Arc<Event>>>>>,
}

impl Hub {
    /// Events a subscriber may fall behind by before it re-reads storage.
    const CAPACITY: usize = 1024;

    /// An empty hub.
    pub fn new() -> Self {
        Hub::default()
    }

    /// Publishes a committed event to its task's subscribers; a terminal event also retires the channel.
    pub fn publish(&self, event: Arc<Event>) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sender = if event.kind.is_terminal() {
            channels.remove(&event.task_id)
        } else {
            channels.get(&event.task_id).cloned()
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
        broadcast::Sender<Arc<Event>>,
        broadcast::Receiver<Arc<Event>>,
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
    fn release(&self, task_id: TaskId, sender: &broadcast::Sender<Arc<Event>>) {
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

    /// Tasks with a live channel (for tests of the hub's bookkeeping).
    pub fn open_channels(&self) -> usize {
        self.channels.lock().map_or(0, |channels| channels.len())
    }
}

/// Appends events and hands out subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    writer: Writer,
    hub: Hub,
    storage: Storage,
}

impl EventLog {
    /// An event log writing through `writer` and reading history from `storage`; `hub` is where the
    /// writer publishes committed events.
    pub fn new(writer: Writer, hub: Hub, storage: Storage) -> Self {
        EventLog {
            writer,
            hub,
            storage,
        }
    }

    /// The writer, for other durable records that belong with events (steps, decisions, model calls).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Builds an event stamped now, with the trace and span of the current `tracing` span.
    pub fn pending(
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) -> PendingEvent {
        Self::pending_in(&propagation::current(), task_id, kind, agent, data)
    }

    /// Builds an event stamped now, with the trace and span of `cx` (for code that acts for a task
    /// outside the task's spans, like a supervisor).
    pub fn pending_in(
        cx: &opentelemetry::Context,
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) -> PendingEvent {
        let (trace_id, span_id) = propagation::ids(cx);
        PendingEvent {
            task_id,
            at: Utc::now(),
            kind,
            agent,
            trace_id,
            span_id,
            data,
        }
    }

    /// Appends an event (fire and forget: it becomes visible once its batch commits).
    pub fn emit(
        &self,
        task_id: TaskId,
        kind: EventKind,
        agent: Option<AgentKind>,
        data: serde_json::Value,
    ) {
        self.writer
            .send(WriteOp::Event(Self::pending(task_id, kind, agent, data)));
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
        };
        subscription.backlog = self.storage.events_after(task_id, after).await?.into();
        Ok(subscription)
    }
}

/// A task's events in `seq` order, without gaps or duplicates, ending after the terminal event.
pub struct Subscription {
    task_id: TaskId,
    last_seq: i64,
    backlog: VecDeque<Event>,
    live: broadcast::Receiver<Arc<Event>>,
    /// Keeps the task's channel identifiable (and open) while this subscription lives.
    sender: broadcast::Sender<Arc<Event>>,
    hub: Hub,
    storage: Storage,
    finished: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.release(self.task_id, &self.sender);
    }
}

impl Subscription {
    /// The next event, or `None` after the terminal event (or when the log is shutting down).
    pub async fn next(&mut self) -> Result<Option<Event>, StorageError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(event) = self.backlog.pop_front() {
                if event.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = event.seq;
                self.finished = event.kind.is_terminal();
                return Ok(Some(event));
            }
            match self.live.recv().await {
                Ok(event) => {
                    if event.seq <= self.last_seq {
                        continue;
                    }
                    if event.seq > self.last_seq + 1 {
                        // Something between is missing from what we saw: take it from storage.
                        self.refill().await?;
                        continue;
                    }
                    self.backlog.push_back((*event).clone());
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.refill().await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(None),
            }
        }
    }

    async fn refill(&mut self) -> Result<(), StorageError> {
        let stored = self
            .storage
            .events_after(self.task_id, self.last_seq)
            .await?;
        self.backlog = stored.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_names_and_serde() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
    }

    #[test]
    fn exactly_three_kinds_are_terminal() {
        let terminal: Vec<_> = EventKind::ALL
            .into_iter()
            .filter(|k| k.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            vec![
                EventKind::TaskCompleted,
                EventKind::TaskFailed,
                EventKind::TaskCancelled
            ]
        );
    }
}
