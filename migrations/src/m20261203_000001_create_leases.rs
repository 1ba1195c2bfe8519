//! Leases (issue 15, tasks that survive a crash): one row per running Troupe process (`id`, `pid`, `host`,
//! `started_at`, `heartbeat_at`), and `tasks.owner`, the lease of the process running the task (indexed:
//! start-up looks for unfinished tasks by owner). A task whose owner's heartbeat is older than
//! `durability.lease_seconds` (or whose owner is unknown) is resumed by the next process that starts.
//! The same statements serve SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Leases::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Leases::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Leases::Pid).big_integer().not_null())
                    .col(ColumnDef::new(Leases::Host).string().not_null())
                    .col(
                        ColumnDef::new(Leases::StartedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Leases::HeartbeatAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(ColumnDef::new(Tasks::Owner).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tasks_owner")
                    .table(Tasks::Table)
                    .col(Tasks::Owner)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_tasks_owner")
                    .table(Tasks::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(Tasks::Owner)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Leases::Table).if_exists().to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Id,
    Pid,
    Host,
    StartedAt,
    HeartbeatAt,
}

#[derive(DeriveIden)]
enum Tasks {
    Table,
    Owner,
}
