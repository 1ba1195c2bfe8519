//! Control messages between the processes of one deployment (the Redis queue on PostgreSQL): an action
//! taken on one node for a task that runs on another reaches the node that holds it. Sent with `NOTIFY` on
//! the control channel to every process; each acts on what it holds and ignores the rest.
//!
//! - `cancel`: the node running the task cancels it (a task still waiting in the queue is cancelled by the
//!   node that was asked, see `Core::cancel`).
//! - `breakpoints`: the breakpoints changed on some node; every node reloads them from the database.

use actix::Addr;
use serde::{Deserialize, Serialize};

use super::Breakpoints;
use crate::director::Director;
use crate::domain::TaskId;
use crate::messages::{CancelTask, Envelope};
use crate::storage::notify::CONTROL_CHANNEL;
use crate::storage::{Storage, StorageError};

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Control {
    /// Cancel this task where it runs.
    Cancel(TaskId),
    /// Reload the breakpoints.
    Breakpoints,
}

impl Control {
    /// Sends it to every process.
    pub(super) async fn send(&self, storage: &Storage) -> Result<(), StorageError> {
        // A unit enum variant and a task id always serialize.
        let payload = serde_json::to_string(self).unwrap_or_default();
        storage.notify(CONTROL_CHANNEL, &[payload]).await
    }
}

/// What a process does with a control message: a closure for the event follower's listener.
pub(super) fn handler(
    director: Addr<Director>,
    breakpoints: Breakpoints,
) -> impl Fn(String) + Send + 'static {
    move |payload: String| {
        let control = match serde_json::from_str::<Control>(&payload) {
            Ok(control) => control,
            Err(error) => {
                tracing::warn!(%error, %payload, "a control message that does not parse; ignored");
                return;
            }
        };
        match control {
            Control::Cancel(id) => {
                let director = director.clone();
                tokio::spawn(async move {
                    // NotRunning: another node holds it, or it ended; either is fine.
                    if let Ok(Ok(())) = director.send(Envelope::new(id, CancelTask)).await {
                        tracing::info!(task_id = %id, "cancelled at another node's request");
                    }
                });
            }
            Control::Breakpoints => {
                let breakpoints = breakpoints.clone();
                tokio::spawn(async move {
                    if let Err(error) = breakpoints.load().await {
                        tracing::warn!(%error, "reload the breakpoints another node changed");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_as_json() {
        let id = TaskId::new();
        for control in [Control::Cancel(id), Control::Breakpoints] {
            let text = serde_json::to_string(&control).unwrap();
            assert_eq!(serde_json::from_str::<Control>(&text).unwrap(), control);
        }
        assert_eq!(
            serde_json::to_string(&Control::Cancel(id)).unwrap(),
            format!("{{\"cancel\":\"{id}\"}}")
        );
    }
}
