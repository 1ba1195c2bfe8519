//! Experiments (issue 18): a set of prompts run under two or more variants, each several times. One row per
//! experiment: its specification (JSON), its runs (JSON: variant, prompt, repetition and the task of each,
//! once submitted), where it stands, when it was created and finished, and its owner: the lease of the process
//! running it, so that another process finishes an experiment whose process died. The report is computed
//! from the runs' tasks when read.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Experiments::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Experiments::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Experiments::Name).text().not_null())
                    .col(ColumnDef::new(Experiments::Spec).text().not_null())
                    .col(ColumnDef::new(Experiments::Runs).text().not_null())
                    .col(
                        ColumnDef::new(Experiments::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Experiments::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Experiments::FinishedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Experiments::Owner).string().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Experiments::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Experiments {
    Table,
    Id,
    Name,
    Spec,
    Runs,
    Status,
    CreatedAt,
    FinishedAt,
    Owner,
}
