//! `troupe serve`: the web dashboard, the HTTP and WebSocket API until Ctrl-C or SIGTERM.

use std::net::IpAddr;

use crate::app::Application;
use crate::config::{ServerSettings, Settings};

/// Builds the application and serves.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let host = browser_host(&settings.server);
    let application = Application::build(settings).await?;
    tracing::info!(port = application.port(), "serving");
    eprintln!("troupe serving on port {}", application.port());
    eprintln!(
        "dashboard: http://{host}:{}/  (API: /api/v1, metrics: /metrics)",
        application.port()
    );
    application.run_until_stopped().await?;
    Ok(())
}

/// The host a browser (or a client) on this machine reaches the server by: the bind address, or loopback
/// when it binds every address.
pub(crate) fn browser_host(server: &ServerSettings) -> String {
    match server.bind_ip() {
        Some(ip) if ip.is_unspecified() => "127.0.0.1".into(),
        Some(IpAddr::V6(ip)) => format!("[{ip}]"),
        Some(ip) => ip.to_string(),
        None => server
            .bind
            .rsplit_once(':')
            .map_or("127.0.0.1", |(host, _)| host)
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_link_names_a_host_a_local_browser_reaches() {
        let mut server = Settings::load_from(std::path::Path::new("config"), None)
            .expect("defaults load")
            .server;
        for (bind, host) in [
            ("127.0.0.1:8080", "127.0.0.1"),
            ("0.0.0.0:8080", "127.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("192.168.1.5:8080", "192.168.1.5"),
            ("localhost:8080", "localhost"),
        ] {
            server.bind = bind.into();
            assert_eq!(browser_host(&server), host, "{bind}");
        }
    }
}
