//! Breakpoints (issue 16, debug mode): one row per breakpoint, kept until removed, so that a breakpoint
//! set once applies to every later task and survives restarts. `on` is the kind of point (`decision`,
//! `tool`, `step`, `llm`); `agent`, `kind`, `tool`, `step` and `purpose` narrow it (NULL: any); `when` is
//! the condition's canonical text; `task_id` attaches it to one task (NULL: every task), indexed and removed
//! with its task (`ON DELETE CASCADE`, and the writer's task deletion removes it explicitly too).
//! The same statements serve SQLite and PostgreSQL (`on` and `when` are quoted identifiers).

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
                    .table(Breakpoints::Table)
                    .if_not_exists()
                    .col(string_len(Breakpoints::Id, 36).primary_key())
                    .col(string_len(Breakpoints::On, 16))
                    .col(string_len_null(Breakpoints::Agent, 16))
                    .col(string_len_null(Breakpoints::Kind, 64))
                    .col(string_len_null(Breakpoints::Tool, 64))
                    .col(integer_null(Breakpoints::Step))
                    .col(string_len_null(Breakpoints::Purpose, 64))
                    .col(text_null(Breakpoints::When))
                    .col(string_len_null(Breakpoints::TaskId, 36))
                    .col(timestamp_with_time_zone(Breakpoints::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_breakpoints_task")
                            .from(Breakpoints::Table, Breakpoints::TaskId)
                            .to(Tasks::Table, Tasks::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_breakpoints_task")
                    .table(Breakpoints::Table)
                    .col(Breakpoints::TaskId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_breakpoints_task")
                    .table(Breakpoints::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(Breakpoints::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Breakpoints {
    Table,
    Id,
    On,
    Agent,
    Kind,
    Tool,
    Step,
    Purpose,
    When,
    TaskId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
}
