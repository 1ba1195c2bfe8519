//! Running the tasks of the Redis queue (a `worker` or `all` node with `queue.backend = "redis"`).
//!
//! Three loops share what this worker holds (task -> entry):
//! - the reader takes a place among `director.max_concurrent_tasks`, reads new entries (`XREADGROUP`,
//!   after its own pending ones once at start) and starts each task ([`Consumer::deliver`]);
//! - the keeper, every `queue.renew_seconds`, renews the held entries (so no one takes them), takes the
//!   entries of workers that stopped renewing theirs (`XAUTOCLAIM` after `queue.claim_idle_seconds`),
//!   retries the entries it is waiting to claim, and samples the queue's depth;
//! - one small task per started task waits for its end (the writer's publish of its committed terminal
//!   event, through [`Ends`]) and then acknowledges and deletes the entry, retrying while Redis is away.
//!
//! A delivered task is claimed in the database first ([`Storage::claim_delivered`]): one owned by a live
//! process is left to it (this worker's own earlier incarnation, after a restart, is waited for until its
//! lease expires); one that ended already is acknowledged; one whose entry was delivered more than
//! `queue.max_deliveries` times fails with that reason and its entry goes to the dead-letter stream; the
//! rest start afresh (queued) or resume from their records (running, paused), as a take-over does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Addr;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::{durability, Breakpoints};
use crate::config::{DurabilitySettings, QueueSettings};
use crate::director::Director;
use crate::domain::{AgentKind, TaskId, TaskStatus};
use crate::messages::{Envelope, StartTask};
use crate::queue::{Delivery, QueueError, TaskQueue};
use crate::storage::writer::Writer;
use crate::storage::{Claim, Storage};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::propagation;

/// The tasks whose terminal event a consumer waits for: the writer's publish (see `Core::assemble`) fires
/// the task's sender once its end is committed. Cheap to clone.
#[derive(Clone, Default)]
pub struct Ends {
    waiting: Arc<Mutex<HashMap<TaskId, oneshot::Sender<()>>>>,
}

impl Ends {
    /// A receiver that resolves once task `id`'s end is committed.
    fn watch(&self, id: TaskId) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(id, sender);
        receiver
    }

    /// Task `id`'s end was committed.
    pub(super) fn ended(&self, id: TaskId) {
        if let Some(sender) = self.lock().remove(&id) {
            // A consumer that stopped waiting is fine.
            let _ = sender.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, oneshot::Sender<()>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What taking a delivery came to: the `outcome` label of `troupe_queue_deliveries_total`.
pub const DELIVERY_OUTCOMES: [&str; 5] =
    ["started", "resumed", "ended", "waiting", "dead_lettered"];

/// An entry this worker holds, and why.
#[derive(Debug, Clone)]
struct Held {
    entry: String,
    /// Set while the task has not started here (its owner's lease has not expired, or no place was free):
    /// the delivery, for a retry of the claim.
    delivery: Option<Delivery>,
}

/// Everything the loops need; cloned into each.
#[derive(Clone)]
pub(super) struct Consumer {
    pub(super) queue: TaskQueue,
    pub(super) settings: QueueSettings,
    pub(super) durability: DurabilitySettings,
    pub(super) me: String,
    pub(super) storage: Storage,
    pub(super) writer: Writer,
    pub(super) metrics: Metrics,
    pub(super) director: Addr<Director>,
    pub(super) ends: Ends,
    /// Reloaded before a task starts: breakpoints set with it on another node are in force from its first
    /// point.
    pub(super) breakpoints: Breakpoints,
    /// One permit per task this worker runs at once (`director.max_concurrent_tasks`).
    pub(super) places: Arc<Semaphore>,
    held: Arc<Mutex<HashMap<TaskId, Held>>>,
}

/// The running loops; dropping it stops them (the tasks they started go on).
pub struct ConsumerHandle {
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ConsumerHandle {
    fn drop(&mut self) {
        for handle in &self.loops {
            handle.abort();
        }
    }
}

/// Backoff while Redis is away.
const RETRY: Duration = Duration::from_secs(1);

impl Consumer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        queue: TaskQueue,
        settings: QueueSettings,
        durability: DurabilitySettings,
        me: String,
        storage: Storage,
        writer: Writer,
        metrics: Metrics,
        director: Addr<Director>,
        ends: Ends,
        breakpoints: Breakpoints,
        places: usize,
    ) -> Consumer {
        Consumer {
            queue,
            settings,
            durability,
            me,
            storage,
            writer,
            metrics,
            director,
            ends,
            breakpoints,
            places: Arc::new(Semaphore::new(places)),
            held: Arc::default(),
        }
    }

    /// Starts the reader and the keeper.
    pub(super) fn start(self) -> ConsumerHandle {
        let keeper = self.clone();
        ConsumerHandle {
            loops: vec![
                tokio::spawn(self.read_loop()),
                tokio::spawn(keeper.keep_loop()),
            ],
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.durability.lease_seconds)
    }

    fn up(&self, up: bool) {
        self.metrics.queue_up.set(i64::from(up));
    }

    async fn read_loop(self) {
        // The group first (idempotent), then what this consumer held when it last stopped.
        loop {
            match self.queue.ensure_group().await {
                Ok(()) => break,
                Err(error) => self.away(&error, "create the task queue's group").await,
            }
        }
        loop {
            let count = self.places.available_permits().max(1);
            match self
                .queue
                .take_own_pending(count, &self.held_entries())
                .await
            {
                Ok(own) => {
                    if !own.is_empty() {
                        tracing::info!(entries = own.len(), consumer = %self.queue.consumer(), "taking back this worker's pending entries");
                    }
                    self.deliver_all(own, false).await;
                    break;
                }
                Err(error) => {
                    self.away(&error, "read this worker's pending entries")
                        .await
                }
            }
        }
        let block = Duration::from_millis(self.settings.block_ms);
        let mut recover = false;
        loop {
            // Wait for a free place without keeping it: the keeper may need it for a reclaimed entry
            // while this read blocks. A delivery that finds no place left is held for the next round.
            match Arc::clone(&self.places).acquire_owned().await {
                Ok(place) => drop(place),
                Err(_) => return,
            }
            let count = self.places.available_permits().max(1);
            if recover {
                // A failed read may have been handed entries it never saw: they are this consumer's
                // pending ones that it does not hold.
                match self
                    .queue
                    .take_own_pending(count, &self.held_entries())
                    .await
                {
                    Ok(unseen) => {
                        recover = false;
                        self.deliver_all(unseen, false).await;
                    }
                    Err(error) => {
                        self.away(&error, "read this worker's pending entries")
                            .await;
                        continue;
                    }
                }
            }
            match self.queue.read_new(count, block).await {
                Ok(deliveries) => {
                    self.up(true);
                    self.metrics
                        .queue_last_read
                        .set(chrono::Utc::now().timestamp());
                    self.deliver_all(deliveries, false).await;
                }
                Err(error) => {
                    recover = true;
                    self.away(&error, "read the task queue").await;
                }
            }
        }
    }

    /// The entries this worker holds.
    fn held_entries(&self) -> std::collections::HashSet<String> {
        self.lock()
            .values()
            .map(|held| held.entry.clone())
            .collect()
    }

    /// Logs a failed queue operation and waits before the next.
    async fn away(&self, error: &QueueError, doing: &str) {
        self.up(false);
        tracing::warn!(%error, "{doing}; retrying");
        tokio::time::sleep(RETRY).await;
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .queue_deliveries
            .with_label_values(&[outcome])
            .inc();
    }

    /// Takes one delivery: claims its task and starts it in a free place.
    /// Takes `deliveries` side by side (each claim is a few database round trips), after reloading the
    /// breakpoints once: those set on another node with these tasks are in force from their first point.
    async fn deliver_all(&self, deliveries: Vec<Delivery>, retry: bool) {
        if deliveries.is_empty() {
            return;
        }
        if let Err(error) = self.breakpoints.load().await {
            tracing::warn!(%error, "reload the breakpoints before tasks start");
        }
        futures_util::future::join_all(
            deliveries
                .into_iter()
                .map(|delivery| self.deliver(delivery, retry)),
        )
        .await;
    }

    /// `retry`: a delivery held since an earlier round (not counted again). A task claimed when no place
    /// is free is held for the next round.
    async fn deliver(&self, delivery: Delivery, retry: bool) {
        let id = match &delivery.task {
            Ok(id) => *id,
            Err(reason) => {
                let reason = format!("malformed queue entry: {reason}");
                self.bury(&delivery, &reason).await;
                return;
            }
        };
        let claim = match self
            .storage
            .claim_delivered(id, &self.me, self.lease())
            .await
        {
            Ok(claim) => claim,
            Err(error) => {
                // Left pending: renewed while held, so it is retried by the keeper.
                tracing::warn!(task_id = %id, %error, "claim a delivered task; will retry");
                if !retry {
                    self.count("waiting");
                }
                self.hold(id, &delivery, false);
                return;
            }
        };
        match claim {
            Claim::Gone => {
                self.bury(
                    &delivery,
                    "its task does not exist (deleted, or never stored)",
                )
                .await;
            }
            Claim::Ended(status) => {
                tracing::info!(task_id = %id, %status, "a delivered task had ended already; acknowledging it");
                self.count("ended");
                self.release(id);
                self.acknowledge(id, delivery.entry.clone()).await;
            }
            Claim::Owned(owner) => {
                // A live process owns it: this worker's own earlier incarnation whose lease has not
                // expired yet (after a restart), or a worker that could not renew the entry. Hold the
                // entry (renewed, so it is not delivered again meanwhile) and ask again each round: the
                // owner's end is acknowledged by it or found here, its death lets this worker claim it.
                if !retry {
                    tracing::info!(task_id = %id, %owner, "a delivered task is owned by a live process; waiting");
                    self.count("waiting");
                }
                self.hold(id, &delivery, false);
            }
            Claim::Claimed(orphan) => {
                let max = u64::from(self.settings.max_deliveries);
                if delivery.deliveries > max {
                    let reason = format!(
                        "its queue entry was delivered {} times (queue.max_deliveries = {max}): its workers stopped each time; moved to the dead-letter stream",
                        delivery.deliveries
                    );
                    self.fail(id, &reason).await;
                    self.bury(&delivery, &reason).await;
                    return;
                }
                let start = match durability::start_for(&self.storage, &orphan).await {
                    Ok(start) => start,
                    Err(reason) => {
                        let reason =
                            format!("cannot resume the task after its worker stopped: {reason}");
                        self.fail(id, &reason).await;
                        self.release(id);
                        self.acknowledge(id, delivery.entry.clone()).await;
                        return;
                    }
                };
                let Ok(permit) = Arc::clone(&self.places).try_acquire_owned() else {
                    // Claimed for this worker; it starts when a place is free.
                    self.hold(id, &delivery, false);
                    return;
                };

                self.run(id, delivery, start, permit);
            }
        }
    }

    /// Fails task `id`, which this worker claimed and will not run, for `reason` (one commit).
    async fn fail(&self, id: TaskId, reason: &str) {
        let ended =
            durability::end_unstarted(&self.writer, &self.metrics, id, TaskStatus::Failed, reason)
                .await;
        if let Err(error) = ended {
            tracing::error!(task_id = %id, %error, %reason, "store the failure of a delivered task");
        }
    }

    /// Sends the task to the Director under a `process` span whose parent is the submission's context
    /// (so the worker's spans are in the submitting request's trace), and waits for its end to
    /// acknowledge the entry.
    fn run(
        &self,
        id: TaskId,
        delivery: Delivery,
        mut start: StartTask,
        permit: OwnedSemaphorePermit,
    ) {
        let resumed = start.resume.is_some();
        self.count(if resumed { "resumed" } else { "started" });
        if let Some(waited) = queued_for(&delivery.entry) {
            self.metrics.queue_wait.observe(waited.as_secs_f64());
        }
        let span = tracing::info_span!(
            "process",
            otel.name = %format!("process {}", self.queue.stream()),
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.operation.type = "process",
            messaging.destination.name = %self.queue.stream(),
            messaging.consumer.group.name = %self.settings.group,
            messaging.message.id = %delivery.entry,
            messaging.message.delivery_count = delivery.deliveries,
            task_id = %id,
        );
        propagation::set_parent(&span, propagation::from_w3c(&delivery.carrier));
        start.admission = Some(permit);
        let ended = self.ends.watch(id);
        self.hold(id, &delivery, true);
        let depth = self
            .metrics
            .mailbox_depth
            .with_label_values(&[AgentKind::Director.as_str()]);
        let envelope = span.in_scope(|| Envelope::new(id, start).counted(depth));
        self.director.do_send(envelope);
        let consumer = self.clone();
        let entry = delivery.entry;
        tokio::spawn(
            async move {
                // A dropped sender (the core is gone) ends the wait too; the entry is then left pending
                // and taken by the next worker, which finds the task ended or resumes it.
                if ended.await.is_ok() {
                    consumer.acknowledge(id, entry).await;
                }
            }
            .instrument(span),
        );
    }

    /// Acknowledges and deletes `entry`, retrying while Redis is away; then forgets the task.
    async fn acknowledge(&self, id: TaskId, entry: String) {
        loop {
            match self.queue.done(&entry).await {
                Ok(()) => break,
                Err(error) => {
                    self.away(&error, "acknowledge a finished task's entry")
                        .await
                }
            }
        }
        self.lock().remove(&id);
    }

    /// Moves a delivery to the dead-letter stream (retrying while Redis is away).
    async fn bury(&self, delivery: &Delivery, reason: &str) {
        tracing::warn!(entry = %delivery.entry, task = ?delivery.task, %reason, "queue entry moved to the dead-letter stream");
        self.count("dead_lettered");
        loop {
            match self.queue.dead_letter(delivery, reason).await {
                Ok(()) => break,
                Err(error) => {
                    self.away(&error, "move an entry to the dead-letter stream")
                        .await
                }
            }
        }
        if let Ok(id) = &delivery.task {
            self.release(*id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Held>> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hold(&self, id: TaskId, delivery: &Delivery, started: bool) {
        self.lock().insert(
            id,
            Held {
                entry: delivery.entry.clone(),
                delivery: (!started).then(|| delivery.clone()),
            },
        );
    }

    fn release(&self, id: TaskId) {
        self.lock().remove(&id);
    }

    async fn keep_loop(self) {
        let every = Duration::from_secs(self.settings.renew_seconds.max(1));
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(error) = self.keep().await {
                self.up(false);
                tracing::warn!(%error, "keep the task queue's entries");
            }
        }
    }

    /// One round of the keeper: renew, retry the waiting claims, reclaim the dead's, sample the depth.
    async fn keep(&self) -> Result<(), QueueError> {
        let (entries, waiting): (Vec<String>, Vec<Delivery>) = {
            let held = self.lock();
            (
                held.values().map(|held| held.entry.clone()).collect(),
                held.values()
                    .filter_map(|held| held.delivery.clone())
                    .collect(),
            )
        };
        let kept = self.queue.renew(&entries).await?;
        if kept.len() < entries.len() {
            tracing::warn!(
                held = entries.len(),
                kept = kept.len(),
                "some of this worker's queue entries are gone (acknowledged elsewhere, or deleted)"
            );
        }
        self.deliver_all(waiting, true).await;
        let free = self.places.available_permits();
        if free > 0 {
            let idle = Duration::from_secs(self.settings.claim_idle_seconds);
            let reclaimed = self.queue.reclaim(idle, free).await?;
            if !reclaimed.is_empty() {
                self.metrics.queue_reclaimed.inc_by(reclaimed.len() as u64);
                tracing::warn!(
                    entries = reclaimed.len(),
                    "took the queue entries of a worker that stopped"
                );
            }
            self.deliver_all(reclaimed, false).await;
        }
        let depth = self.queue.depth().await?;
        for (state, value) in [
            ("waiting", depth.waiting),
            ("pending", depth.pending),
            ("dead", depth.dead),
        ] {
            self.metrics
                .queue_entries
                .with_label_values(&[state])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.up(true);
        Ok(())
    }
}

/// How long the entry waited since it was added: a stream id is `<milliseconds>-<sequence>`.
fn queued_for(entry: &str) -> Option<Duration> {
    let millis: i64 = entry.split_once('-')?.0.parse().ok()?;
    let waited = chrono::Utc::now().timestamp_millis() - millis;
    u64::try_from(waited).ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_id_tells_how_long_it_waited() {
        let now = chrono::Utc::now().timestamp_millis();
        let waited = queued_for(&format!("{}-3", now - 1500)).unwrap();
        assert!(
            (1500..3000).contains(&(waited.as_millis() as i64)),
            "{waited:?}"
        );
        assert_eq!(queued_for("nonsense"), None);
    }

    #[test]
    fn ends_fire_once_for_the_watched_task_only() {
        let ends = Ends::default();
        let (watched, other) = (TaskId::new(), TaskId::new());
        let mut receiver = ends.watch(watched);
        ends.ended(other);
        assert!(receiver.try_recv().is_err());
        ends.ended(watched);
        assert!(receiver.try_recv().is_ok());
        assert!(ends.lock().is_empty());
    }
}
