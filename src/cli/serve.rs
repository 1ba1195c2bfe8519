//! `troupe serve`: the HTTP and WebSocket API until Ctrl-C or SIGTERM.

use crate::app::Application;
use crate::config::Settings;

/// Builds the application and serves.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings).await?;
    tracing::info!(port = application.port(), "serving");
    eprintln!("troupe serving on port {}", application.port());
    application.run_until_stopped().await?;
    Ok(())
}
