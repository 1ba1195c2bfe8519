//! Control messages between the processes of one deployment (the Redis queue on PostgreSQL): an action
//! taken on one node for a task that runs on another reaches the node that holds it. Sent with `NOTIFY` on
//! the control channel to every process; each acts on what it holds and ignores the rest.
//!
//! - `cancel`: the node running the task cancels it (a task still waiting in the queue is cancelled by the
//!   node that was asked, see `Core::cancel`).
//! - `breakpoints`: the breakpoints changed on some node; every node reloads them from the database.

//! - `ask`/`answered`: an action at a pause that another node holds (a debug action, a confirmation) or a
//!   look at what it is paused on: the node that holds the pause takes it and answers under the ask's
//!   id; the asking node waits up to [`ASK_TIMEOUT`] for the answer. Only the holder answers (a node
//!   without the pause ignores the ask), so a pause nobody holds any more goes unanswered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Breakpoints;
use crate::debug::{Action, ActionError, Debugger};
use crate::director::Director;
use crate::domain::TaskId;
use crate::llm::confirm::Confirmations;
use crate::messages::{CancelTask, Envelope};
use crate::storage::notify::CONTROL_CHANNEL;
use crate::storage::{Storage, StorageError};

/// Longest a node waits for the answer of the node holding a pause.
pub(super) const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// One control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Control {
    /// Cancel this task where it runs.
    Cancel(TaskId),
    /// Reload the breakpoints.
    Breakpoints,
    /// To the node holding `task`'s pause: take `ask`, answer under `id`.
    Ask {
        /// Names the answer.
        id: Uuid,
        /// The paused task.
        task: TaskId,
        /// What is asked.
        ask: Ask,
    },
    /// The holder's answer to the ask `id`.
    Answered {
        /// The ask's id.
        id: Uuid,
        /// The answer.
        answer: Answer,
    },
}

/// What a node asks the holder of a pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Ask {
    /// A person's action at the task's breakpoint.
    Resume(Action),
    /// The answer to the task's wait for a confirmation.
    Confirm(bool),
    /// What the task is paused on.
    Pending,
}

/// The holder's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Answer {
    /// The action or the confirmation was taken.
    Done,
    /// The override does not fit what is pending (the reason).
    Refused(String),
    /// What the task is paused on (`/state`'s `pending`).
    Pending(Value),
}

impl Control {
    /// Sends it to every process.
    pub(super) async fn send(&self, storage: &Storage) -> Result<(), StorageError> {
        // Task ids, uuids, actions (JSON values) and strings always serialize.
        let payload = serde_json::to_string(self).unwrap_or_default();
        storage.notify(CONTROL_CHANNEL, &[payload]).await
    }
}

/// The asks of this process that wait for their answer.
#[derive(Clone, Default)]
pub(super) struct Asks(Arc<Mutex<HashMap<Uuid, oneshot::Sender<Answer>>>>);

impl Asks {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Uuid, oneshot::Sender<Answer>>) -> T) -> T {
        let mut waiting = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut waiting)
    }

    /// Asks the node holding `task`'s pause, and waits for its answer: `Ok(None)` when none came within
    /// [`ASK_TIMEOUT`] (nobody holds the pause any more, or its node is gone).
    pub(super) async fn ask(
        &self,
        storage: &Storage,
        task: TaskId,
        ask: Ask,
    ) -> Result<Option<Answer>, StorageError> {
        let id = Uuid::new_v4();
        let (reply, answer) = oneshot::channel();
        self.with(|waiting| waiting.insert(id, reply));
        let sent = Control::Ask { id, task, ask }.send(storage).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(ASK_TIMEOUT, answer)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        self.with(|waiting| waiting.remove(&id));
        sent.map(|()| answer)
    }

    fn answered(&self, id: Uuid, answer: Answer) {
        if let Some(reply) = self.with(|waiting| waiting.remove(&id)) {
            let _ = reply.send(answer);
        }
    }
}

/// What a process acts on: its Director, breakpoints, pauses, confirmation waits and asks.
#[derive(Clone)]
pub(super) struct Holder {
    pub(super) director: Addr<Director>,
    pub(super) breakpoints: Breakpoints,
    pub(super) debugger: Debugger,
    pub(super) confirmations: Confirmations,
    pub(super) storage: Storage,
    pub(super) asks: Asks,
}

impl Holder {
    /// What this process answers to `ask` about `task`; `None` when it does not hold the pause.
    fn take(&self, task: TaskId, ask: Ask) -> Option<Answer> {
        match ask {
            Ask::Resume(action) => {
                let abort = action == Action::Abort;
                match self.debugger.answer(task, action) {
                    Ok(()) => {
                        if abort {
                            // As on the node that runs it: the abort stops whatever else the task runs.
                            self.cancel(task);
                        }
                        Some(Answer::Done)
                    }
                    Err(ActionError::NotPaused(_)) => None,
                    Err(ActionError::InvalidOverride(why)) => Some(Answer::Refused(why)),
                }
            }
            Ask::Confirm(allow) => self
                .confirmations
                .answer(task, allow)
                .ok()
                .map(|()| Answer::Done),
            Ask::Pending => self
                .debugger
                .pending(task)
                .and_then(|pending| serde_json::to_value(pending).ok())
                .map(Answer::Pending),
        }
    }

    fn cancel(&self, task: TaskId) {
        let director = self.director.clone();
        tokio::spawn(async move {
            // NotRunning: another node holds it, or it ended; either is fine.
            if let Ok(Ok(())) = director.send(Envelope::new(task, CancelTask)).await {
                tracing::info!(task_id = %task, "cancelled at another node's request");
            }
        });
    }
}

/// What a process does with a control message: a closure for the event follower's listener.
pub(super) fn handler(holder: Holder) -> impl Fn(String) + Send + 'static {
    move |payload: String| {
        let control = match serde_json::from_str::<Control>(&payload) {
            Ok(control) => control,
            Err(error) => {
                tracing::warn!(%error, "a control message that does not parse; ignored");
                return;
            }
        };
        match control {
            Control::Cancel(id) => holder.cancel(id),
            Control::Breakpoints => {
                let breakpoints = holder.breakpoints.clone();
                tokio::spawn(async move {
                    if let Err(error) = breakpoints.load().await {
                        tracing::warn!(%error, "reload the breakpoints another node changed");
                    }
                });
            }
            Control::Ask { id, task, ask } => {
                if let Some(answer) = holder.take(task, ask) {
                    let storage = holder.storage.clone();
                    tokio::spawn(async move {
                        if let Err(error) = (Control::Answered { id, answer }).send(&storage).await
                        {
                            tracing::warn!(%error, task_id = %task, "answer another node's ask");
                        }
                    });
                }
            }
            Control::Answered { id, answer } => holder.asks.answered(id, answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_as_json() {
        let id = TaskId::new();
        for control in [
            Control::Cancel(id),
            Control::Breakpoints,
            Control::Ask {
                id: Uuid::nil(),
                task: id,
                ask: Ask::Resume(Action::Override(serde_json::json!({ "chosen": "qa" }))),
            },
            Control::Ask {
                id: Uuid::nil(),
                task: id,
                ask: Ask::Confirm(true),
            },
            Control::Answered {
                id: Uuid::nil(),
                answer: Answer::Refused("no".into()),
            },
        ] {
            let text = serde_json::to_string(&control).unwrap();
            assert_eq!(serde_json::from_str::<Control>(&text).unwrap(), control);
        }
        assert_eq!(
            serde_json::to_string(&Control::Cancel(id)).unwrap(),
            format!("{{\"cancel\":\"{id}\"}}")
        );
    }
}
