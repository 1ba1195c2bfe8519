//! A raw statement under construction, shared by the storage modules that write SQL by hand (memory search,
//! the writer's multi-row statements): placeholders in the backend's syntax and their values, in order.
//! Each user adds its own clause builders in an `impl Sql` beside its SQL.

use sea_orm::{DbBackend, Value};

/// A statement under construction: placeholders in the backend's syntax and their values.
pub(super) struct Sql {
    pub(super) backend: DbBackend,
    pub(super) values: Vec<Value>,
}

impl Sql {
    pub(super) fn new(backend: DbBackend) -> Self {
        Sql {
            backend,
            values: Vec::new(),
        }
    }

    /// Adds a value; returns its placeholder (`$n` on PostgreSQL, `?` on SQLite).
    pub(super) fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_owned(),
        }
    }
}
