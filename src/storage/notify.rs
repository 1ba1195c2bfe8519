//! PostgreSQL `LISTEN`/`NOTIFY` between the processes of one deployment (scale-out): a process announces
//! which events it committed ([`Storage::announce`]: task, `seq` range, its own node id), and the others
//! wake their subscribers and read those events from the database, which stays the source of truth. A
//! second channel carries control messages (cancel a task, reload the breakpoints) to the process that can
//! act on them.
//!
//! Notifications are not durable: one sent while a listener is reconnecting is lost. Their readers must not
//! depend on every one (the event subscriptions also look at the stored log when quiet).

use sea_orm::sqlx;
use sea_orm::sqlx::postgres::PgListener;

use super::{Storage, StorageError};
use crate::domain::TaskId;

/// The channel of committed-event announcements.
pub const EVENTS_CHANNEL: &str = "troupe_events";
/// The channel of control messages.
pub const CONTROL_CHANNEL: &str = "troupe_control";

/// Events of one task committed by one process: `seq` `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The announcing process (its lease id).
    pub node: String,
    /// The task.
    pub task: TaskId,
    /// The first `seq` committed.
    pub first: i64,
    /// The last.
    pub last: i64,
}

impl Committed {
    /// The notification's text: `node task first last`.
    pub fn payload(&self) -> String {
        format!("{} {} {} {}", self.node, self.task, self.first, self.last)
    }

    /// Reads a notification's text (`None` for one that is not an announcement).
    pub fn parse(payload: &str) -> Option<Committed> {
        let mut parts = payload.split(' ');
        let node = parts.next()?.to_owned();
        let task = parts.next()?.parse().ok()?;
        let first = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        if parts.next().is_some() || node.is_empty() || first > last {
            return None;
        }
        Some(Committed {
            node,
            task,
            first,
            last,
        })
    }
}

/// A listening connection.
pub struct Listener {
    inner: PgListener,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl Listener {
    /// The next notification's channel and text; `None` when the connection was lost (it reconnects on
    /// the next call, and notifications sent meanwhile are lost).
    pub async fn next(&mut self) -> Result<Option<(String, String)>, StorageError> {
        let notification = self
            .inner
            .try_recv()
            .await
            .map_err(|error| StorageError::Notify(error.to_string()))?;
        Ok(notification.map(|n| (n.channel().to_owned(), n.payload().to_owned())))
    }
}

impl Storage {
    /// Whether notifications can be sent and heard here (PostgreSQL; not SQLite, whose one file is one
    /// process's).
    pub fn can_notify(&self) -> bool {
        self.backend_name() == "postgres"
    }

    /// Sends each payload on `channel`, in one statement.
    pub async fn notify(&self, channel: &str, payloads: &[String]) -> Result<(), StorageError> {
        if payloads.is_empty() || !self.can_notify() {
            return Ok(());
        }
        let pool = self.connection().get_postgres_connection_pool();
        sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind(channel)
            .bind(payloads)
            .execute(pool)
            .await
            .map_err(|error| StorageError::Notify(error.to_string()))?;
        Ok(())
    }

    /// Announces committed events to the other processes.
    pub async fn announce(&self, committed: &[Committed]) -> Result<(), StorageError> {
        let payloads: Vec<String> = committed.iter().map(Committed::payload).collect();
        self.notify(EVENTS_CHANNEL, &payloads).await
    }

    /// A connection listening on `channels` (its own, outside the pool's count).
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener, StorageError> {
        if !self.can_notify() {
            return Err(StorageError::Notify(
                "notifications need PostgreSQL".to_owned(),
            ));
        }
        let pool = self.connection().get_postgres_connection_pool();
        let mut inner = PgListener::connect_with(pool)
            .await
            .map_err(|error| StorageError::Notify(error.to_string()))?;
        inner
            .listen_all(channels.iter().copied())
            .await
            .map_err(|error| StorageError::Notify(error.to_string()))?;
        Ok(Listener { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_reads_back_and_anything_else_is_refused() {
        let committed = Committed {
            node: "lease-1".into(),
            task: TaskId::new(),
            first: 3,
            last: 9,
        };
        assert_eq!(
            Committed::parse(&committed.payload()),
            Some(committed.clone())
        );
        for bad in [
            "",
            "lease-1",
            "lease-1 x 1 2",
            "a b c d e",
            "lease-1 00000000-0000-0000-0000-000000000000 5 4",
        ] {
            assert_eq!(Committed::parse(bad), None, "{bad}");
        }
    }
}
