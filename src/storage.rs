//! Long-term storage through sea-orm: connecting (SQLite by default, PostgreSQL when `database.url` says so),
//! migrating, reading. Only this module talks to the database.
//!
//! Reads are methods on [`Storage`], one file per aggregate (`tasks.rs`, `events.rs`, `llm_calls.rs`,
//! `memories.rs`, which also holds the backend-specific SQL of embeddings; `stats.rs`, the dashboard's
//! aggregates over the event log; `leases.rs`, the processes' leases, task ownership and what a resumed
//! task is rebuilt from; `breakpoints.rs`, the debug mode's breakpoints);
//! every write goes through the single batching [`writer`], so that a task's records and its events commit
//! together and SQLite never sees two writers.

mod breakpoints;
mod decisions;
pub mod entities;
mod events;
mod experiments;
pub mod leases;
mod llm_calls;
pub mod memories;
pub mod notify;
pub mod records;
mod retention;
mod statement;
mod stats;
mod tasks;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};

pub use decisions::StoredDecision;
pub use leases::{Claim, Lease, OrphanedTask, ResumeRecords};
pub use llm_calls::{CallRecord, RecordedCall, Recording};
pub use stats::{Handoff, Scope};
pub use tasks::{StepRecord, TaskPage, TaskQuery, TaskRecord, TaskSummary, TaskUsage};

use crate::config::DatabaseSettings;
use crate::domain::redact_url;

/// The PostgreSQL advisory lock key migrations hold (any constant of Troupe's own: "troupe" in ASCII).
const MIGRATION_LOCK: i64 = 0x74_72_6f_75_70_65;

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be reached or opened.
    #[error("connect to database {url}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// Why.
        #[source]
        source: DbErr,
    },
    /// Migrations failed.
    #[error("migrate database")]
    Migrate(#[source] DbErr),
    /// A query failed.
    #[error("{action}")]
    Query {
        /// What was being done, e.g. "read task".
        action: &'static str,
        /// Why.
        #[source]
        source: DbErr,
    },
    /// A stored row does not parse (written by another version, or edited by hand).
    #[error("stored {what} does not parse: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// The problem.
        detail: String,
    },
    /// The writer task is gone (the application is shutting down).
    #[error("storage writer stopped")]
    WriterStopped,
    /// A notification could not be sent or listened for (`notify.rs`).
    #[error("database notifications: {0}")]
    Notify(String),
    /// The writer found the database unreachable and refused a request meanwhile (`writer.rs`, Outages).
    #[error("{0}")]
    Unavailable(String),
}

impl StorageError {
    fn query(action: &'static str) -> impl FnOnce(DbErr) -> StorageError {
        move |source| StorageError::Query { action, source }
    }

    /// Whether the database could not be reached (down, refusing connections, the pool timed out), as
    /// against a statement it refused: the first is worth a retry later (503), the second is a fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Connect { .. }
            | StorageError::WriterStopped
            | StorageError::Notify(_)
            | StorageError::Unavailable(_) => true,
            StorageError::Query { source, .. } | StorageError::Migrate(source) => {
                db_unreachable(source)
            }
            StorageError::Corrupt { .. } => false,
        }
    }
}

/// Whether `error` says the database could not be reached.
fn db_unreachable(error: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => {
            matches!(
                error.as_ref(),
                sea_orm::sqlx::Error::Io(_)
                    | sea_orm::sqlx::Error::PoolTimedOut
                    | sea_orm::sqlx::Error::PoolClosed
                    | sea_orm::sqlx::Error::WorkerCrashed
            )
        }
        _ => false,
    }
}

/// A connection pool and the reads Troupe makes. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: DatabaseConnection,
    /// What it was connected with, for [`Storage::connect_again`].
    settings: std::sync::Arc<DatabaseSettings>,
}

impl Storage {
    /// Connects per `settings`; for a SQLite file, creates its folder and turns on WAL, full
    /// synchronisation (committed means on disk) and foreign keys.
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StorageError> {
        let url = settings.url.as_str();
        if let Some(path) = sqlite_path(url) {
            if let Some(parent) = Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| StorageError::Connect {
                    url: redact_url(url),
                    source: DbErr::Custom(format!("create folder {}: {e}", parent.display())),
                })?;
            }
        }
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(settings.max_connections)
            // Also the longest wait for a pooled connection: a database that cannot be reached answers 503
            // after this, not after sqlx's 30 s default.
            .connect_timeout(Duration::from_secs(5))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|sqlite| {
                sqlite
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10))
                    // 32 MiB of page cache per connection instead of SQLite's 2 MB: the writer's inserts
                    // walk the events table's and indexes' pages, and with the default cache every batch
                    // read most of them back from the OS (`pread`, 4% of a durable run's profile).
                    .pragma("cache_size", "-32768")
            });
        let db = Database::connect(options)
            .await
            .map_err(|source| StorageError::Connect {
                url: redact_url(url),
                source,
            })?;
        Ok(Storage {
            db,
            settings: std::sync::Arc::new(settings.clone()),
        })
    }

    /// A pool of its own on the same database, of at most `connections` (the storage writer's, on its own
    /// thread and runtime: connections are not shared across runtimes).
    pub async fn connect_again(&self, connections: u32) -> Result<Storage, StorageError> {
        Storage::connect(&DatabaseSettings {
            max_connections: connections.max(1),
            ..(*self.settings).clone()
        })
        .await
    }

    /// Applies pending migrations. On PostgreSQL several processes may start at once (an API node and its
    /// workers): each migrates on one connection of its own holding an advisory lock, so they take turns
    /// and the later ones find nothing left to do.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        if self.backend_name() != "postgres" {
            return Migrator::up(&self.db, None)
                .await
                .map_err(StorageError::Migrate);
        }
        let single = self.connect_again(1).await?;
        let lock = format!("SELECT pg_advisory_lock({MIGRATION_LOCK})");
        single
            .db
            .execute_unprepared(&lock)
            .await
            .map_err(StorageError::Migrate)?;
        let migrated = Migrator::up(&single.db, None).await;
        let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})");
        // Closing the connection releases the lock too, should the unlock fail.
        let _ = single.db.execute_unprepared(&unlock).await;
        let _ = single.db.close().await;
        migrated.map_err(StorageError::Migrate)
    }

    /// Checks the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.db
            .ping()
            .await
            .map_err(StorageError::query("ping database"))
    }

    /// The pool, for the writer.
    pub(crate) fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Which backend this is ("sqlite", "postgres").
    pub fn backend_name(&self) -> &'static str {
        match self.db.get_database_backend() {
            sea_orm::DatabaseBackend::Sqlite => "sqlite",
            sea_orm::DatabaseBackend::Postgres => "postgres",
            _ => "other",
        }
    }

    /// The connection pool's figures now.
    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle, max) = match self.db.get_database_backend() {
            sea_orm::DatabaseBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (
                    pool.size(),
                    pool.num_idle(),
                    pool.options().get_max_connections(),
                )
            }
            sea_orm::DatabaseBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (
                    pool.size(),
                    pool.num_idle(),
                    pool.options().get_max_connections(),
                )
            }
            _ => (0, 0, 0),
        };
        let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
        PoolStats {
            in_use: size - idle,
            idle,
            max,
        }
    }
}

/// A connection pool's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections lent out.
    pub in_use: u32,
    /// Connections open and waiting.
    pub idle: u32,
    /// The pool's limit.
    pub max: u32,
}

/// The file path of a `sqlite:` URL, if it names a file.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(":memory:")).then_some(path)
}

#[cfg(test)]
mod unavailable_tests {
    use super::*;

    #[test]
    fn a_connection_failure_is_unavailable_and_a_refused_statement_is_not() {
        let refused = StorageError::Query {
            action: "insert",
            source: DbErr::Custom("duplicate key".into()),
        };
        assert!(!refused.is_unavailable());
        let acquire = StorageError::Query {
            action: "read task",
            source: DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout),
        };
        assert!(acquire.is_unavailable());
        let io = StorageError::Query {
            action: "read task",
            source: DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(
                sea_orm::sqlx::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )),
            ))),
        };
        assert!(io.is_unavailable());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_are_found_in_urls() {
        assert_eq!(
            sqlite_path("sqlite://.troupe/t.sqlite?mode=rwc"),
            Some(".troupe/t.sqlite")
        );
        assert_eq!(sqlite_path("sqlite:data.db"), Some("data.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x/y"), None);
    }
}
