//! Every model call records its cost in US dollars (at the configured price of its model; 0 for local
//! models), so that a task's usage has `cost_usd`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(LlmCalls::Table)
                    .add_column(
                        ColumnDef::new(LlmCalls::CostUsd)
                            .double()
                            .not_null()
                            .default(0.0),
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
                    .drop_column(LlmCalls::CostUsd)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum LlmCalls {
    Table,
    CostUsd,
}
