//! Coalesced token rows: the streamed pieces of one model call are stored as one `llm.token` row that spans
//! `seq ..= seq_end` (its `data` holds `purpose` and the `pieces`), so a 300-piece answer is a handful of
//! rows, not 300. Every other row, and every row written before this step, leaves `seq_end` NULL: one row,
//! one event. Readers expand a spanning row back into its events.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .add_column(ColumnDef::new(Events::SeqEnd).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .drop_column(Events::SeqEnd)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    SeqEnd,
}
