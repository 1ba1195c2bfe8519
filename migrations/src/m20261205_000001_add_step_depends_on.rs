//! Plans are graphs (issue 18): each step records the earlier steps it depends on, `depends_on`, as a JSON
//! array of step numbers (`[]`: none, it may start at once). Null for steps stored before: those plans ran
//! in order, so such a step depends on the one before it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Steps::Table)
                    .add_column(ColumnDef::new(Steps::DependsOn).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Steps::Table)
                    .drop_column(Steps::DependsOn)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Steps {
    Table,
    DependsOn,
}
