//! Long-term and semantic memory: one `memories` table for facts, task summaries, code snippets and learned
//! patterns, each with its provenance (task, agent, step) and its embedding.
//!
//! The embedding column differs by backend. On PostgreSQL it is pgvector's `vector(384)` with an HNSW index
//! for cosine distance (the `vector` extension is created here and must be installed on the server); on
//! SQLite it is a BLOB of 384 little-endian f32 and searches scan exactly. sea-orm's SQLite backend cannot
//! even describe a vector column, hence the branch.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Dimensions of the stored embeddings (all-MiniLM-L6-v2).
const DIMENSIONS: usize = 384;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == DatabaseBackend::Postgres;
        if postgres {
            manager
                .get_connection()
                .execute_unprepared("CREATE EXTENSION IF NOT EXISTS vector")
                .await
                .map_err(|e| {
                    DbErr::Migration(format!(
                        "the PostgreSQL server has no usable pgvector extension (CREATE EXTENSION vector: {e}); \
                         install pgvector on the server (scripts/setup.sh test builds it)"
                    ))
                })?;
        }
        let embedding = if postgres {
            ColumnDef::new(Memories::Embedding)
                .custom(Alias::new(format!("vector({DIMENSIONS})")))
                .not_null()
                .to_owned()
        } else {
            blob(Memories::Embedding)
        };
        manager
            .create_table(
                Table::create()
                    .table(Memories::Table)
                    .if_not_exists()
                    .col(string_len(Memories::Id, 36).primary_key())
                    .col(string_len(Memories::Kind, 16))
                    .col(text(Memories::Content))
                    .col(json_null(Memories::Detail))
                    .col(string_len_null(Memories::TaskId, 36))
                    .col(string_len_null(Memories::Agent, 16))
                    .col(integer_null(Memories::StepIdx))
                    .col(integer(Memories::Uses).default(0))
                    .col(integer(Memories::Successes).default(0))
                    .col(timestamp_with_time_zone(Memories::CreatedAt))
                    .col(embedding)
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_memories_task")
                            .from(Memories::Table, Memories::TaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_memories_task", Memories::TaskId),
            ("idx_memories_kind", Memories::Kind),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Memories::Table)
                        .col(column)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        if postgres {
            manager
                .get_connection()
                .execute_unprepared(
                    "CREATE INDEX IF NOT EXISTS idx_memories_embedding_hnsw \
                     ON memories USING hnsw (embedding vector_cosine_ops)",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Memories::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Memories {
    Table,
    Id,
    Kind,
    Content,
    Detail,
    TaskId,
    Agent,
    StepIdx,
    Uses,
    Successes,
    CreatedAt,
    Embedding,
}
