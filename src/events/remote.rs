//! Events across processes (scale-out): a task runs on a worker while its WebSocket is open on an API node.
//!
//! The process that commits events announces them ([`Announcer`]: per task, the `seq` range committed since
//! its last announcement, sent with `NOTIFY` in one statement per burst); every other process listens
//! ([`follow`]) and, for a task someone there subscribes to (or for the all-tasks stream, without tokens),
//! reads the announced events from the database and publishes them in its own [`Hub`]. The database stays
//! the source of truth: a subscription drops what it has seen (by `seq`), reads what it missed from
//! storage, and, when its task is quiet for a while, looks at the stored log in case an announcement was
//! lost ([`super::EventLog::polling`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Hub;
use crate::domain::{Event, EventKind, TaskId};
use crate::storage::notify::{Committed, CONTROL_CHANNEL, EVENTS_CHANNEL};
use crate::storage::Storage;

/// Collects the committed events of this process and announces them. Cheap to clone; the announcing
/// task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Announcer {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

/// Aborts a tokio task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    node: String,
    /// Per task, the `seq` range committed and not yet announced (bounded by the tasks in flight).
    pending: Mutex<HashMap<TaskId, (i64, i64)>>,
    wake: tokio::sync::Notify,
}

impl Announcer {
    /// Starts announcing, as `node`, on `storage` (a tokio task on the current runtime).
    pub fn start(storage: Storage, node: String) -> Announcer {
        let shared = Arc::new(Shared {
            node,
            pending: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        });
        let announcing = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let shared = announcing;
            loop {
                shared.wake.notified().await;
                let batch: Vec<Committed> = {
                    let mut pending = shared
                        .pending
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    pending
                        .drain()
                        .map(|(task, (first, last))| Committed {
                            node: shared.node.clone(),
                            task,
                            first,
                            last,
                        })
                        .collect()
                };
                if let Err(error) = storage.announce(&batch).await {
                    // The subscribers elsewhere find these events when their task is quiet.
                    tracing::warn!(%error, tasks = batch.len(), "announce committed events");
                }
            }
        });
        Announcer {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// `event` was committed here (called by the writer's publish, on its thread).
    pub fn committed(&self, event: &Event) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let range = pending
                .entry(event.task_id)
                .or_insert((event.seq, event.seq));
            range.0 = range.0.min(event.seq);
            range.1 = range.1.max(event.seq);
        }
        self.shared.wake.notify_one();
    }
}

/// Pause before listening again after the listener failed.
const RELISTEN: Duration = Duration::from_secs(1);

/// The listening task of [`follow`]; dropping it stops listening.
pub struct Following {
    _task: AbortOnDrop,
}

/// Listens for other processes' announcements and publishes their events in `hub` where someone here
/// subscribes to them, and hands every control message (`CONTROL_CHANNEL`) to `control`, until the
/// returned [`Following`] is dropped. One connection for both.
pub fn follow(
    storage: Storage,
    hub: Hub,
    node: String,
    control: impl Fn(String) + Send + 'static,
) -> Following {
    let task = tokio::spawn(async move {
        loop {
            let mut listener = match storage.listen(&[EVENTS_CHANNEL, CONTROL_CHANNEL]).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "listen for other processes' events; retrying");
                    tokio::time::sleep(RELISTEN).await;
                    continue;
                }
            };
            loop {
                match listener.next().await {
                    Ok(Some((channel, payload))) if channel == CONTROL_CHANNEL => control(payload),
                    Ok(Some((_, payload))) => {
                        let Some(committed) = Committed::parse(&payload) else {
                            continue;
                        };
                        if committed.node == node {
                            continue;
                        }
                        relay(&storage, &hub, &committed).await;
                    }
                    // Reconnected: what was sent meanwhile is found by the quiet subscriptions' look at
                    // the stored log.
                    Ok(None) => tracing::warn!("event announcements: connection lost and restored"),
                    Err(error) => {
                        tracing::warn!(%error, "event announcements: listening failed; listening again");
                        tokio::time::sleep(RELISTEN).await;
                        break;
                    }
                }
            }
        }
    });
    Following {
        _task: AbortOnDrop(task),
    }
}

/// Reads the announced events of one task and publishes those someone here wants.
async fn relay(storage: &Storage, hub: &Hub, committed: &Committed) {
    let (task, all) = hub.interest(committed.task);
    if !task && !all {
        return;
    }
    // Only the all-tasks stream listens: it takes no tokens.
    let exclude: &[EventKind] = if task { &[] } else { &[EventKind::LlmToken] };
    match storage
        .events_page(committed.task, committed.first - 1, None, exclude)
        .await
    {
        Ok((events, _)) => {
            for event in events
                .into_iter()
                .filter(|event| event.seq <= committed.last)
            {
                hub.publish(Arc::new(event));
            }
        }
        Err(error) => {
            tracing::warn!(%error, task_id = %committed.task, "read another process's events");
        }
    }
}
