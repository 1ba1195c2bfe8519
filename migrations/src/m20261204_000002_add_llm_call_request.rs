//! Every model call records what was asked beside the prompt, so that a replay can tell whether it asks
//! the same (issue 16, divergence): `request` (JSON: `max_tokens`, the output spec with its schema or
//! options, and the model's configuration: provider, model, sampling) and `request_digest` (SHA-256 of
//! the whole request, prompt included, in hex). Both are null for calls recorded before: those are
//! replayed by purpose alone, as before.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(LlmCalls::Table)
                    .add_column(ColumnDef::new(LlmCalls::Request).text().null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(LlmCalls::Table)
                    .add_column(
                        ColumnDef::new(LlmCalls::RequestDigest)
                            .string_len(64)
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(LlmCalls::Table)
                    .drop_column(LlmCalls::RequestDigest)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(LlmCalls::Table)
                    .drop_column(LlmCalls::Request)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum LlmCalls {
    Table,
    Request,
    RequestDigest,
}
