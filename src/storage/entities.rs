//! sea-orm entities, one module per table created by `migrations/`. Rows only; queries live in
//! `storage/queries.rs` and writes in `storage/writer.rs`.
#![allow(missing_docs)]

/// `tasks`: one row per task.
pub mod task {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub prompt: String,
        pub status: String,
        pub options: Option<Json>,
        pub result: Option<Json>,
        pub error: Option<String>,
        pub trace_id: Option<String>,
        pub replay_of: Option<String>,
        pub created_at: DateTimeUtc,
        pub started_at: Option<DateTimeUtc>,
        pub finished_at: Option<DateTimeUtc>,
        /// The lease (`leases.id`) of the process running the task; `NULL` for rows from before leases.
        pub owner: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `leases`: one row per running Troupe process, its heartbeat kept fresh while it lives.
pub mod lease {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "leases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub pid: i64,
        pub host: String,
        pub started_at: DateTimeUtc,
        pub heartbeat_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `steps`: the plan's steps, keyed by `(task_id, idx)`.
pub mod step {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "steps")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        pub agent: String,
        pub instruction: String,
        pub status: String,
        pub output: Option<String>,
        pub attempts: i32,
        pub started_at: Option<DateTimeUtc>,
        pub finished_at: Option<DateTimeUtc>,
        /// JSON array of the earlier steps it depends on; null: stored before plans were graphs (it
        /// depends on the step before it).
        pub depends_on: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `events`: the per-task event log, keyed by `(task_id, seq)`.
pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub task_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub at: DateTimeUtc,
        pub kind: String,
        pub agent: Option<String>,
        pub trace_id: String,
        pub span_id: String,
        pub data: Json,
        /// The last `seq` of a coalesced `llm.token` row (its pieces span `seq..=seq_end`); NULL for a row
        /// that is one event.
        pub seq_end: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `decisions`: every choice the Director made, with the options it weighed.
pub mod decision {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "decisions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub task_id: String,
        pub step_idx: Option<i32>,
        pub kind: String,
        pub options: Json,
        pub chosen: String,
        pub confidence: f64,
        pub reasoning: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `llm_calls`: every model call with prompt, output and usage; the replay provider's source.
pub mod llm_call {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "llm_calls")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub task_id: String,
        pub purpose: String,
        pub agent: String,
        pub provider: String,
        pub model: String,
        pub prompt: String,
        pub output: String,
        pub choice: Option<Json>,
        pub prompt_tokens: i64,
        pub completion_tokens: i64,
        pub duration_seconds: f64,
        pub created_at: DateTimeUtc,
        pub cost_usd: f64,
        /// What was asked beside the messages (JSON: max_tokens, output, model); null before issue 16.
        pub request: Option<String>,
        /// SHA-256 (hex) of the whole request; null before issue 16.
        pub request_digest: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `breakpoints`: debug-mode breakpoints, kept until removed (`task_id` NULL: every task).
pub mod breakpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "breakpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub on: String,
        pub agent: Option<String>,
        pub kind: Option<String>,
        pub tool: Option<String>,
        pub step: Option<i32>,
        pub purpose: Option<String>,
        /// The condition's canonical text.
        pub when: Option<String>,
        pub task_id: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `memories`: facts, task summaries, snippets and patterns with provenance. The embedding column
/// (`vector(384)` on PostgreSQL, a BLOB on SQLite) is not part of the entity: `storage/memories.rs` writes and
/// searches it with backend-specific SQL.
pub mod memory {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "memories")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub kind: String,
        pub content: String,
        pub detail: Option<Json>,
        pub task_id: Option<String>,
        pub agent: Option<String>,
        pub step_idx: Option<i32>,
        pub uses: i32,
        pub successes: i32,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `experiments`: a set of prompts run under several variants (specification and runs as JSON).
pub mod experiment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "experiments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub name: String,
        pub spec: String,
        pub runs: String,
        pub status: String,
        pub created_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub owner: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
