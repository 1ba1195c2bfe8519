//! `troupe migrate`: apply the database migrations and exit.

use crate::config::Settings;
use crate::storage::Storage;

/// Connects and migrates.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let storage = Storage::connect(&settings.database).await?;
    storage.migrate().await?;
    println!("database migrated ({})", storage.backend_name());
    Ok(())
}
