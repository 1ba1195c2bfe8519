//! Confirmations a person gives: a task that would send a call to the cloud in `fallback_mode = "confirm"`
//! waits here until `POST /api/v1/tasks/{id}/confirm` (or `troupe run`'s y/N) answers, or its time runs out.
//! Bounded: at most one wait per task, and a wait ends with its timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::domain::TaskId;

/// How a wait for a confirmation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A person allowed it.
    Allowed,
    /// A person declined it.
    Declined,
    /// Nobody answered in time.
    TimedOut,
    /// The task was cancelled while it waited.
    Cancelled,
}

impl Answer {
    /// The stable name, for events and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Allowed => "allowed",
            Answer::Declined => "declined",
            Answer::TimedOut => "timed_out",
            Answer::Cancelled => "cancelled",
        }
    }
}

/// Nothing waits for an answer from this task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task {0} is not waiting for a confirmation")]
pub struct NotWaiting(pub TaskId);

/// The waits in progress, by task.
#[derive(Clone, Default)]
pub struct Confirmations(Arc<Mutex<HashMap<TaskId, oneshot::Sender<bool>>>>);

impl Confirmations {
    fn with_waits<T>(&self, f: impl FnOnce(&mut HashMap<TaskId, oneshot::Sender<bool>>) -> T) -> T {
        match self.0.lock() {
            Ok(mut waits) => f(&mut waits),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Opens `task_id`'s wait: from now on an answer is taken (and kept until [`Waiting::wait`] reads it),
    /// so the wait opens before anyone is told the task waits. A second wait of the same task replaces the
    /// first (which then ends as declined: its sender is gone).
    pub fn open(&self, task_id: TaskId) -> Waiting {
        let (answer, answered) = oneshot::channel();
        self.with_waits(|waits| waits.insert(task_id, answer));
        Waiting {
            confirmations: self.clone(),
            task_id,
            answered,
        }
    }

    /// Answers `task_id`'s wait.
    pub fn answer(&self, task_id: TaskId, allow: bool) -> Result<(), NotWaiting> {
        let waiting = self.with_waits(|waits| waits.remove(&task_id));
        match waiting {
            Some(sender) => sender.send(allow).map_err(|_| NotWaiting(task_id)),
            None => Err(NotWaiting(task_id)),
        }
    }

    /// Whether `task_id` waits for an answer now.
    pub fn is_waiting(&self, task_id: TaskId) -> bool {
        self.with_waits(|waits| {
            waits
                .get(&task_id)
                .is_some_and(|sender| !sender.is_closed())
        })
    }
}

/// A task's open wait for a confirmation ([`Confirmations::open`]).
pub struct Waiting {
    confirmations: Confirmations,
    task_id: TaskId,
    answered: oneshot::Receiver<bool>,
}

impl Waiting {
    /// Waits for the answer, at most `timeout`, or until `cancel` fires; an answer given since the wait
    /// opened counts.
    pub async fn wait(self, timeout: Duration, cancel: &CancellationToken) -> Answer {
        let Waiting {
            confirmations,
            task_id,
            answered,
        } = self;
        let outcome = tokio::select! {
            reply = answered => match reply {
                Ok(true) => Answer::Allowed,
                Ok(false) | Err(_) => Answer::Declined,
            },
            () = tokio::time::sleep(timeout) => Answer::TimedOut,
            () = cancel.cancelled() => Answer::Cancelled,
        };
        // The receiver is gone (consumed or dropped with the select): a sender still in the map is this
        // wait's, now closed.
        confirmations.with_waits(|waits| {
            if waits.get(&task_id).is_some_and(oneshot::Sender::is_closed) {
                waits.remove(&task_id);
            }
        });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_waiting(confirmations: &Confirmations, task_id: TaskId) {
        for _ in 0..1000 {
            if confirmations.is_waiting(task_id) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the wait never started");
    }

    #[tokio::test]
    async fn an_answer_ends_the_wait() {
        let confirmations = Confirmations::default();
        let task_id = TaskId::new();
        for (allow, expected) in [(true, Answer::Allowed), (false, Answer::Declined)] {
            let waiting = {
                let confirmations = confirmations.clone();
                tokio::spawn(async move {
                    confirmations
                        .open(task_id)
                        .wait(Duration::from_secs(60), &CancellationToken::new())
                        .await
                })
            };
            until_waiting(&confirmations, task_id).await;
            confirmations.answer(task_id, allow).unwrap();
            assert_eq!(waiting.await.unwrap(), expected);
            assert!(!confirmations.is_waiting(task_id));
        }
    }

    #[tokio::test]
    async fn nobody_answering_times_out_and_a_late_answer_is_refused() {
        let confirmations = Confirmations::default();
        let task_id = TaskId::new();
        let answer = confirmations
            .open(task_id)
            .wait(Duration::from_millis(20), &CancellationToken::new())
            .await;
        assert_eq!(answer, Answer::TimedOut);
        assert_eq!(
            confirmations.answer(task_id, true),
            Err(NotWaiting(task_id))
        );
    }

    #[tokio::test]
    async fn an_answer_given_before_the_wait_is_read_counts() {
        let confirmations = Confirmations::default();
        let task_id = TaskId::new();
        let waiting = confirmations.open(task_id);
        confirmations.answer(task_id, true).unwrap();
        let answer = waiting
            .wait(Duration::from_secs(60), &CancellationToken::new())
            .await;
        assert_eq!(answer, Answer::Allowed);
    }

    #[tokio::test]
    async fn cancelling_the_task_ends_the_wait() {
        let confirmations = Confirmations::default();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let answer = confirmations
            .open(TaskId::new())
            .wait(Duration::from_secs(60), &cancel)
            .await;
        assert_eq!(answer, Answer::Cancelled);
    }
}
