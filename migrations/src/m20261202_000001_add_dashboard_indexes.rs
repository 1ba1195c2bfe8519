//! Indexes behind the dashboard's reads: the task list filtered by status (newest first, keyset-paged on
//! `(created_at, id)`), and the collaboration graph, which counts events of a few kinds over a time window.
//! The same statements serve SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_created_at_id")
                    .table(Tasks::Table)
                    .col(Tasks::CreatedAt)
                    .col(Tasks::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_status_created_at")
                    .table(Tasks::Table)
                    .col(Tasks::Status)
                    .col(Tasks::CreatedAt)
                    .col(Tasks::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_events_kind_at")
                    .table(Events::Table)
                    .col(Events::Kind)
                    .col(Events::At)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            ("idx_events_kind_at", Events::Table.into_iden()),
            ("idx_tasks_status_created_at", Tasks::Table.into_iden()),
            ("idx_tasks_created_at_id", Tasks::Table.into_iden()),
        ] {
            manager
                .drop_index(Index::drop().name(name).table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Id,
    Status,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Kind,
    At,
}
