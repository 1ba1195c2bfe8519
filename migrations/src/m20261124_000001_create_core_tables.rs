//! The foundation's tables: tasks, their steps, the per-task event log, decisions and recorded LLM calls.
//!
//! Identifiers are UUIDs stored as 36-character strings so that SQLite and PostgreSQL hold them the same way.
//! Every child table cascades on task deletion; events are keyed by `(task_id, seq)`, which makes a duplicate
//! sequence number impossible rather than merely unlikely.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .if_not_exists()
                    .col(string_len(Tasks::Id, 36).primary_key())
                    .col(text(Tasks::Prompt))
                    .col(string_len(Tasks::Status, 16))
                    .col(json_null(Tasks::Options))
                    .col(json_null(Tasks::Result))
                    .col(text_null(Tasks::Error))
                    .col(string_len_null(Tasks::TraceId, 32))
                    .col(string_len_null(Tasks::ReplayOf, 36))
                    .col(timestamp_with_time_zone(Tasks::CreatedAt))
                    .col(timestamp_with_time_zone_null(Tasks::StartedAt))
                    .col(timestamp_with_time_zone_null(Tasks::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_created_at")
                    .table(Tasks::Table)
                    .col(Tasks::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Steps::Table)
                    .if_not_exists()
                    .col(string_len(Steps::TaskId, 36))
                    .col(integer(Steps::Idx))
                    .col(string_len(Steps::Agent, 16))
                    .col(text(Steps::Instruction))
                    .col(string_len(Steps::Status, 16))
                    .col(text_null(Steps::Output))
                    .col(integer(Steps::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(Steps::StartedAt))
                    .col(timestamp_with_time_zone_null(Steps::FinishedAt))
                    .primary_key(Index::create().col(Steps::TaskId).col(Steps::Idx))
                    .foreign_key(&mut task_fk("fk_steps_task", Steps::Table, Steps::TaskId))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .if_not_exists()
                    .col(string_len(Events::TaskId, 36))
                    .col(big_integer(Events::Seq))
                    .col(timestamp_with_time_zone(Events::At))
                    .col(string_len(Events::Kind, 32))
                    .col(string_len_null(Events::Agent, 16))
                    .col(string_len(Events::TraceId, 32))
                    .col(string_len(Events::SpanId, 16))
                    .col(json(Events::Data))
                    .primary_key(Index::create().col(Events::TaskId).col(Events::Seq))
                    .foreign_key(&mut task_fk(
                        "fk_events_task",
                        Events::Table,
                        Events::TaskId,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Decisions::Table)
                    .if_not_exists()
                    .col(string_len(Decisions::Id, 36).primary_key())
                    .col(string_len(Decisions::TaskId, 36))
                    .col(integer_null(Decisions::StepIdx))
                    .col(string_len(Decisions::Kind, 32))
                    .col(json(Decisions::Options))
                    .col(string_len(Decisions::Chosen, 64))
                    .col(double(Decisions::Confidence))
                    .col(text(Decisions::Reasoning))
                    .col(timestamp_with_time_zone(Decisions::CreatedAt))
                    .foreign_key(&mut task_fk(
                        "fk_decisions_task",
                        Decisions::Table,
                        Decisions::TaskId,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(LlmCalls::Table)
                    .if_not_exists()
                    .col(string_len(LlmCalls::Id, 36).primary_key())
                    .col(string_len(LlmCalls::TaskId, 36))
                    .col(string_len(LlmCalls::Purpose, 64))
                    .col(string_len(LlmCalls::Agent, 16))
                    .col(string_len(LlmCalls::Provider, 32))
                    .col(string_len(LlmCalls::Model, 128))
                    .col(text(LlmCalls::Prompt))
                    .col(text(LlmCalls::Output))
                    .col(json_null(LlmCalls::Choice))
                    .col(big_integer(LlmCalls::PromptTokens))
                    .col(big_integer(LlmCalls::CompletionTokens))
                    .col(double(LlmCalls::DurationSeconds))
                    .col(timestamp_with_time_zone(LlmCalls::CreatedAt))
                    .foreign_key(&mut task_fk(
                        "fk_llm_calls_task",
                        LlmCalls::Table,
                        LlmCalls::TaskId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_llm_calls_task_purpose")
                    .table(LlmCalls::Table)
                    .col(LlmCalls::TaskId)
                    .col(LlmCalls::Purpose)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LlmCalls::Table.into_iden(),
            Decisions::Table.into_iden(),
            Events::Table.into_iden(),
            Steps::Table.into_iden(),
            Tasks::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

/// A foreign key from `table.column` to `tasks.id` that goes away with its task.
fn task_fk<T: IntoIden, C: IntoIden>(name: &str, table: T, column: C) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(table, column)
        .to(Tasks::Table, Tasks::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    Prompt,
    Status,
    Options,
    Result,
    Error,
    TraceId,
    ReplayOf,
    CreatedAt,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Steps {
    Table,
    TaskId,
    Idx,
    Agent,
    Instruction,
    Status,
    Output,
    Attempts,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    TaskId,
    Seq,
    At,
    Kind,
    Agent,
    TraceId,
    SpanId,
    Data,
}

#[derive(DeriveIden)]
enum Decisions {
    Table,
    Id,
    TaskId,
    StepIdx,
    Kind,
    Options,
    Chosen,
    Confidence,
    Reasoning,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LlmCalls {
    Table,
    Id,
    TaskId,
    Purpose,
    Agent,
    Provider,
    Model,
    Prompt,
    Output,
    Choice,
    PromptTokens,
    CompletionTokens,
    DurationSeconds,
    CreatedAt,
}
