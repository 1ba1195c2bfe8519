//! Troupe's database schema as sea-orm-migration steps.
//!
//! The same migrations serve SQLite (the embedded default) and PostgreSQL. Steps are listed in order below and
//! named `mYYYYMMDD_HHMMSS_<verb>_<thing>`. Nothing else in Troupe creates or alters tables.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_core_tables;
mod m20261125_000001_create_memories;
mod m20261201_000001_add_llm_call_cost;
mod m20261202_000001_add_dashboard_indexes;
mod m20261203_000001_create_leases;
mod m20261203_000002_add_event_seq_end;
mod m20261203_000003_add_finished_at_index;
mod m20261204_000001_create_breakpoints;
mod m20261204_000002_add_llm_call_request;
mod m20261205_000001_add_step_depends_on;
mod m20261205_000002_create_experiments;

/// Runs Troupe's migrations in order; used by `troupe migrate` and at start-up.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_core_tables::Migration),
            Box::new(m20261125_000001_create_memories::Migration),
            Box::new(m20261201_000001_add_llm_call_cost::Migration),
            Box::new(m20261202_000001_add_dashboard_indexes::Migration),
            Box::new(m20261203_000001_create_leases::Migration),
            Box::new(m20261203_000002_add_event_seq_end::Migration),
            Box::new(m20261203_000003_add_finished_at_index::Migration),
            Box::new(m20261204_000001_create_breakpoints::Migration),
            Box::new(m20261204_000002_add_llm_call_request::Migration),
            Box::new(m20261205_000001_add_step_depends_on::Migration),
            Box::new(m20261205_000002_create_experiments::Migration),
        ]
    }
}
