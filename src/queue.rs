//! The task queue between processes (scale-out): a Redis Stream read through one consumer group.
//!
//! An entry is a task to run: its id and the W3C trace context of the request that submitted it
//! (`traceparent`, `tracestate`). [`TaskQueue::enqueue`] adds one (`XADD`); a worker reads its own pending
//! entries first after a restart ([`TaskQueue::take_own_pending`], `XCLAIM`, which counts a delivery) and
//! then new ones ([`TaskQueue::read_new`], `XREADGROUP ... >`); while it runs a task it renews the entry
//! ([`TaskQueue::renew`], `XCLAIM ... JUSTID`, which resets the idle time without counting a delivery); once
//! the task's end is committed it acknowledges and deletes it ([`TaskQueue::done`]). Entries whose worker
//! stopped renewing them are taken by another ([`TaskQueue::reclaim`], `XAUTOCLAIM`); an entry delivered
//! too often goes to the dead-letter stream with the reason ([`TaskQueue::dead_letter`]).
//!
//! This module speaks Redis only; what a delivery means for a task (claiming it in the database,
//! resuming it) is the service's.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

use crate::domain::TaskId;

/// Longest wait for a connection or a non-blocking reply: a down Redis must not stall a caller.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A stream entry as read: its id and its fields.
type Entry = (String, HashMap<String, String>);

/// The entry field holding the task id.
const TASK_FIELD: &str = "task";

/// A queue operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The pool could not be built from the settings.
    #[error("queue configuration: {0}")]
    Config(String),
    /// Redis did not answer, or answered with an error.
    #[error("the task queue (Redis) is unavailable: {0}")]
    Unavailable(String),
    /// Redis refused a command (an error reply: a wrong type at the key, a missing group).
    #[error("Redis refused {command}: {error}")]
    Refused {
        /// The command.
        command: &'static str,
        /// Redis's error.
        error: String,
    },
    /// Redis answered something this module does not understand.
    #[error("unexpected reply from Redis to {command}: {reply}")]
    Reply {
        /// The command.
        command: &'static str,
        /// What came back.
        reply: String,
    },
}

/// One entry handed to this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The entry's stream id.
    pub entry: String,
    /// The task it names, or why it names none (a malformed entry: it goes to the dead-letter stream).
    pub task: Result<TaskId, String>,
    /// Its other fields: the W3C trace context of the submission.
    pub carrier: HashMap<String, String>,
    /// How often it has been delivered, this time included.
    pub deliveries: u64,
}

/// What is in the queue, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Entries no worker has read yet.
    pub waiting: u64,
    /// Entries read and not yet acknowledged (running, or left by a worker that died).
    pub pending: u64,
    /// Entries in the dead-letter stream.
    pub dead: u64,
}

/// The task stream, its consumer group and this process's name in it. Cheap to clone.
#[derive(Clone)]
pub struct TaskQueue {
    pool: Pool,
    /// The connection blocking reads wait on: of its own, without the client's default half-second reply
    /// time-out (a read that times out on the client after Redis handed it entries would leave them
    /// pending and unseen). Opened on first use, dropped after a failure.
    reader: std::sync::Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    client: redis::Client,
    stream: String,
    dead: String,
    group: String,
    consumer: String,
}

impl std::fmt::Debug for TaskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskQueue")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl TaskQueue {
    /// A queue on Redis at `url`: stream `{prefix}:{stream}`, dead letters in `{prefix}:{stream}:dead`,
    /// read through `group` as `consumer`. Connections are opened on first use.
    pub fn connect(
        url: &str,
        prefix: &str,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<TaskQueue, QueueError> {
        let mut config = Config::from_url(url);
        let mut pool = PoolConfig::new(8);
        pool.timeouts = Timeouts {
            wait: Some(TIMEOUT),
            create: Some(TIMEOUT),
            recycle: Some(TIMEOUT),
        };
        config.pool = Some(pool);
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|error| QueueError::Config(error.to_string()))?;
        let client =
            redis::Client::open(url).map_err(|error| QueueError::Config(error.to_string()))?;
        let stream = format!("{prefix}:{stream}");
        Ok(TaskQueue {
            pool,
            reader: std::sync::Arc::default(),
            client,
            dead: format!("{stream}:dead"),
            stream,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        })
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The dead-letter stream's key.
    pub fn dead_letters(&self) -> &str {
        &self.dead
    }

    /// This process's name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    async fn query(
        &self,
        command: &redis::Cmd,
        name: &'static str,
        wait: Duration,
    ) -> Result<Value, QueueError> {
        let mut connection = self
            .pool
            .get()
            .await
            .map_err(|error| QueueError::Unavailable(error.to_string()))?;
        let reply = tokio::time::timeout(wait, command.query_async::<Value>(&mut connection))
            .await
            .map_err(|_| QueueError::Unavailable(format!("no reply to {name} within {wait:?}")))?;
        reply.map_err(|error| redis_error(name, &error))
    }

    /// Whether Redis answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.query(&redis::cmd("PING"), "PING", TIMEOUT)
            .await
            .map(drop)
    }

    /// Creates the stream and the group if they do not exist (idempotent).
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let created = self
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg("0")
                    .arg("MKSTREAM"),
                "XGROUP CREATE",
                TIMEOUT,
            )
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(QueueError::Refused { error, .. }) if error.contains("BUSYGROUP") => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Adds task `task` with the trace context `carrier`; returns the entry's id.
    pub async fn enqueue(
        &self,
        task: TaskId,
        carrier: &HashMap<String, String>,
    ) -> Result<String, QueueError> {
        let mut command = redis::cmd("XADD");
        command
            .arg(&self.stream)
            .arg("*")
            .arg(TASK_FIELD)
            .arg(task.to_string());
        // Sorted, so that an entry's fields do not depend on a hash map's order.
        let mut fields: Vec<_> = carrier.iter().collect();
        fields.sort();
        for (key, value) in fields {
            command.arg(key).arg(value);
        }
        match self.query(&command, "XADD", TIMEOUT).await? {
            Value::BulkString(id) => Ok(String::from_utf8_lossy(&id).into_owned()),
            Value::SimpleString(id) => Ok(id),
            other => Err(reply_error("XADD", &other)),
        }
    }

    /// Takes back the entries this consumer read and never acknowledged (after a restart: the tasks it was
    /// running when it stopped; after a failed read: what Redis handed it unseen), oldest first, at most
    /// `count`, leaving out the entries in `skip` (those it holds); each counts as a delivery.
    pub async fn take_own_pending(
        &self,
        count: usize,
        skip: &std::collections::HashSet<String>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut pending = self
            .pending(Some(&self.consumer), count + skip.len())
            .await?;
        pending.retain(|(id, _)| !skip.contains(id));
        pending.truncate(count.max(1));
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let command = self.claim_to_me(pending.iter().map(|(id, _)| id));
        let claimed = self.query(&command, "XCLAIM", TIMEOUT).await?;
        let entries = entries("XCLAIM", &claimed)?;
        self.delivered(entries).await
    }

    /// New entries for this consumer, at most `count`, waiting up to `block` for the first.
    pub async fn read_new(
        &self,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let millis = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(millis)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let reply = self.blocking(&command, block + TIMEOUT).await?;
        let entries = match &reply {
            Value::Nil => Vec::new(),
            Value::Array(streams) => match streams.first() {
                None => Vec::new(),
                Some(Value::Array(stream)) if stream.len() == 2 => {
                    entries("XREADGROUP", &stream[1])?
                }
                Some(other) => return Err(reply_error("XREADGROUP", other)),
            },
            Value::Map(streams) => match streams.first() {
                None => Vec::new(),
                Some((_, listed)) => entries("XREADGROUP", listed)?,
            },
            other => return Err(reply_error("XREADGROUP", other)),
        };
        // A first delivery: no need to ask Redis how often.
        Ok(entries
            .into_iter()
            .map(|(entry, fields)| delivery(entry, fields, 1))
            .collect())
    }

    /// Runs a blocking command on the reader connection, waiting up to `wait` for its reply.
    async fn blocking(&self, command: &redis::Cmd, wait: Duration) -> Result<Value, QueueError> {
        let mut reader = self.reader.lock().await;
        let connection = match reader.as_mut() {
            Some(connection) => connection,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(wait));
                let opened = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|error| redis_error("XREADGROUP", &error))?;
                reader.insert(opened)
            }
        };
        match command.query_async::<Value>(connection).await {
            Ok(reply) => Ok(reply),
            Err(error) => {
                // A broken or timed-out connection is not used again.
                *reader = None;
                Err(redis_error("XREADGROUP", &error))
            }
        }
    }

    /// `XCLAIM` of `entries` for this consumer, whatever their idle time.
    fn claim_to_me<'a>(&self, entries: impl IntoIterator<Item = &'a String>) -> redis::Cmd {
        let mut command = redis::cmd("XCLAIM");
        command
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0);
        for entry in entries {
            command.arg(entry);
        }
        command
    }

    /// Resets the idle time of these entries of this consumer (it is still running their tasks), without
    /// counting a delivery. Returns the entries it still holds: one missing was taken by another worker.
    pub async fn renew(&self, entries: &[String]) -> Result<Vec<String>, QueueError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut command = self.claim_to_me(entries);
        command.arg("JUSTID");
        let reply = self.query(&command, "XCLAIM", TIMEOUT).await?;
        ids("XCLAIM", &reply)
    }

    /// Takes up to `count` entries of any consumer left unrenewed for `min_idle` (their worker died), each
    /// counted as a delivery.
    pub async fn reclaim(
        &self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let reply = self
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count.max(1)),
                "XAUTOCLAIM",
                TIMEOUT,
            )
            .await?;
        let Value::Array(parts) = &reply else {
            return Err(reply_error("XAUTOCLAIM", &reply));
        };
        let Some(listed) = parts.get(1) else {
            return Err(reply_error("XAUTOCLAIM", &reply));
        };
        let claimed = entries("XAUTOCLAIM", listed)?;
        // Entries deleted from the stream while pending (parts[2], Redis 7) are dropped from the
        // pending list by XAUTOCLAIM itself.
        self.delivered(claimed).await
    }

    /// Acknowledges and deletes an entry whose task has ended (its end is committed).
    pub async fn done(&self, entry: &str) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(entry)
            .ignore();
        self.pipeline(&pipe, "XACK").await
    }

    /// Moves an entry to the dead-letter stream with `reason` (its fields, its delivery count and the
    /// reason in one entry there), acknowledging and deleting it here, in one transaction.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let task = match &delivery.task {
            Ok(task) => task.to_string(),
            Err(_) => String::new(),
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        let add = pipe
            .cmd("XADD")
            .arg(&self.dead)
            .arg("*")
            .arg("entry")
            .arg(&delivery.entry)
            .arg(TASK_FIELD)
            .arg(task)
            .arg("deliveries")
            .arg(delivery.deliveries)
            .arg("reason")
            .arg(reason);
        let mut fields: Vec<_> = delivery.carrier.iter().collect();
        fields.sort();
        for (key, value) in fields {
            add.arg(key).arg(value);
        }
        add.ignore();
        pipe.cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&delivery.entry)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(&delivery.entry)
            .ignore();
        self.pipeline(&pipe, "XADD (dead letter)").await
    }

    /// What the dead-letter stream holds, oldest first, at most `count`: each entry's fields.
    pub async fn dead(&self, count: usize) -> Result<Vec<HashMap<String, String>>, QueueError> {
        let reply = self
            .query(
                redis::cmd("XRANGE")
                    .arg(&self.dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count.max(1)),
                "XRANGE",
                TIMEOUT,
            )
            .await?;
        Ok(entries("XRANGE", &reply)?
            .into_iter()
            .map(|(_, fields)| fields)
            .collect())
    }

    /// How many entries wait, are pending, and are dead letters.
    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .cmd("XLEN")
            .arg(&self.dead);
        let replies: Vec<Value> = self.pipeline(&pipe, "XLEN").await?;
        let [length, pending, dead] = replies.as_slice() else {
            return Err(QueueError::Reply {
                command: "XLEN",
                reply: format!("{replies:?}"),
            });
        };
        let length = integer("XLEN", length)?;
        let pending = match pending {
            Value::Array(summary) => summary
                .first()
                .map_or(Ok(0), |count| integer("XPENDING", count))?,
            // No group yet (nothing was ever read): nothing is pending.
            Value::ServerError(_) => 0,
            other => return Err(reply_error("XPENDING", other)),
        };
        Ok(QueueDepth {
            waiting: length.saturating_sub(pending),
            pending,
            dead: integer("XLEN", dead)?,
        })
    }

    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        name: &'static str,
    ) -> Result<T, QueueError> {
        let mut connection = self
            .pool
            .get()
            .await
            .map_err(|error| QueueError::Unavailable(error.to_string()))?;
        tokio::time::timeout(TIMEOUT, pipe.query_async::<T>(&mut connection))
            .await
            .map_err(|_| QueueError::Unavailable(format!("no reply to {name} within {TIMEOUT:?}")))?
            .map_err(|error| redis_error(name, &error))
    }

    /// The pending entries (of `consumer`, or of all), oldest first, with their delivery counts.
    async fn pending(
        &self,
        consumer: Option<&str>,
        count: usize,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        let mut command = redis::cmd("XPENDING");
        command
            .arg(&self.stream)
            .arg(&self.group)
            .arg("-")
            .arg("+")
            .arg(count.max(1));
        if let Some(consumer) = consumer {
            command.arg(consumer);
        }
        let reply = self.query(&command, "XPENDING", TIMEOUT).await?;
        pending_counts(&reply)
    }

    /// Deliveries of entries just claimed, with their delivery counts from the pending list.
    async fn delivered(&self, entries: Vec<Entry>) -> Result<Vec<Delivery>, QueueError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts = HashMap::new();
        for (entry, _) in &entries {
            let reply = self
                .query(
                    redis::cmd("XPENDING")
                        .arg(&self.stream)
                        .arg(&self.group)
                        .arg(entry)
                        .arg(entry)
                        .arg(1),
                    "XPENDING",
                    TIMEOUT,
                )
                .await?;
            counts.extend(pending_counts(&reply)?);
        }
        Ok(entries
            .into_iter()
            .map(|(entry, fields)| {
                let deliveries = counts.get(&entry).copied().unwrap_or(1);
                delivery(entry, fields, deliveries)
            })
            .collect())
    }
}

fn delivery(entry: String, mut fields: HashMap<String, String>, deliveries: u64) -> Delivery {
    let task = match fields.remove(TASK_FIELD) {
        Some(text) => text
            .parse::<TaskId>()
            .map_err(|error| format!("its task field '{text}' is not a task id: {error}")),
        None => Err("it has no task field".to_owned()),
    };
    Delivery {
        entry,
        task,
        carrier: fields,
        deliveries,
    }
}

/// A failed command: Redis unreachable (connection, time-out), or its error reply.
fn redis_error(command: &'static str, error: &redis::RedisError) -> QueueError {
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
    {
        QueueError::Unavailable(format!("{command}: {error}"))
    } else {
        QueueError::Refused {
            command,
            error: error.to_string(),
        }
    }
}

fn reply_error(command: &'static str, reply: &Value) -> QueueError {
    let mut reply = format!("{reply:?}");
    reply.truncate(200);
    QueueError::Reply { command, reply }
}

fn text(command: &'static str, value: &Value) -> Result<String, QueueError> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Ok(text.clone()),
        other => Err(reply_error(command, other)),
    }
}

fn integer(command: &'static str, value: &Value) -> Result<u64, QueueError> {
    match value {
        Value::Int(number) => Ok(u64::try_from(*number).unwrap_or(0)),
        Value::Nil => Ok(0),
        other => Err(reply_error(command, other)),
    }
}

/// Stream entries: `[[id, [field, value, ...]], ...]`; an entry deleted meanwhile comes as `[id, nil]`
/// and is skipped.
fn entries(command: &'static str, reply: &Value) -> Result<Vec<Entry>, QueueError> {
    let Value::Array(listed) = reply else {
        return Err(reply_error(command, reply));
    };
    let mut out = Vec::with_capacity(listed.len());
    for entry in listed {
        let Value::Array(parts) = entry else {
            // XCLAIM answers nil for an id that no longer exists.
            if matches!(entry, Value::Nil) {
                continue;
            }
            return Err(reply_error(command, entry));
        };
        let [id, fields] = parts.as_slice() else {
            return Err(reply_error(command, entry));
        };
        let id = text(command, id)?;
        let fields = match fields {
            Value::Nil => continue,
            Value::Array(flat) => {
                let mut map = HashMap::with_capacity(flat.len() / 2);
                for pair in flat.chunks(2) {
                    if let [key, value] = pair {
                        map.insert(text(command, key)?, text(command, value)?);
                    }
                }
                map
            }
            Value::Map(pairs) => {
                let mut map = HashMap::with_capacity(pairs.len());
                for (key, value) in pairs {
                    map.insert(text(command, key)?, text(command, value)?);
                }
                map
            }
            other => return Err(reply_error(command, other)),
        };
        out.push((id, fields));
    }
    Ok(out)
}

/// Ids: `[id, ...]` (`XCLAIM ... JUSTID`).
fn ids(command: &'static str, reply: &Value) -> Result<Vec<String>, QueueError> {
    let Value::Array(listed) = reply else {
        return Err(reply_error(command, reply));
    };
    listed.iter().map(|id| text(command, id)).collect()
}

/// `XPENDING ... - + count`: `[[id, consumer, idle ms, deliveries], ...]` as (id, deliveries).
fn pending_counts(reply: &Value) -> Result<Vec<(String, u64)>, QueueError> {
    let Value::Array(listed) = reply else {
        return Err(reply_error("XPENDING", reply));
    };
    listed
        .iter()
        .map(|row| match row {
            Value::Array(parts) if parts.len() == 4 => Ok((
                text("XPENDING", &parts[0])?,
                integer("XPENDING", &parts[3])?,
            )),
            other => Err(reply_error("XPENDING", other)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn entries_are_read_with_their_fields_and_deleted_ones_are_skipped() {
        let task = TaskId::new();
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("task"),
                    bulk(&task.to_string()),
                    bulk("traceparent"),
                    bulk("00-abc-def-01"),
                ]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
            Value::Nil,
        ]);
        let listed = entries("XCLAIM", &reply).unwrap();
        assert_eq!(listed.len(), 1);
        let delivered = delivery(listed[0].0.clone(), listed[0].1.clone(), 2);
        assert_eq!(delivered.entry, "1-0");
        assert_eq!(delivered.task, Ok(task));
        assert_eq!(delivered.carrier["traceparent"], "00-abc-def-01");
        assert_eq!(delivered.deliveries, 2);
    }

    #[test]
    fn an_entry_without_a_task_id_says_why() {
        let bad = delivery(
            "1-0".into(),
            HashMap::from([("task".into(), "x".into())]),
            1,
        );
        assert!(bad.task.unwrap_err().contains("'x' is not a task id"));
        let none = delivery("1-0".into(), HashMap::new(), 1);
        assert_eq!(none.task.unwrap_err(), "it has no task field");
    }

    #[test]
    fn pending_rows_give_each_entry_its_delivery_count_and_odd_replies_are_errors() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("5-1"),
            bulk("worker-a"),
            Value::Int(1200),
            Value::Int(3),
        ])]);
        assert_eq!(pending_counts(&reply).unwrap(), [("5-1".to_owned(), 3)]);
        let odd = pending_counts(&Value::Int(1)).unwrap_err();
        assert!(
            matches!(
                odd,
                QueueError::Reply {
                    command: "XPENDING",
                    ..
                }
            ),
            "{odd}"
        );
        assert!(entries("XRANGE", &Value::Array(vec![Value::Int(4)])).is_err());
    }
}
