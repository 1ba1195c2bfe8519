//! The application: the [`Core`] behind the HTTP server (`api`'s route table) on a bound listener. `serve`
//! and the black-box tests use it; the CLI's `run` uses the core alone.
//!
//! It must be built inside an actix `System`: the actors live on its arbiter.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;

use crate::api;
use crate::config::{Settings, AUTH_TOKEN_VARIABLE};
use crate::service::{Core, StartError};

/// Connections the listening socket queues before they are accepted.
const BACKLOG: i32 = 4096;

/// The core behind the HTTP server.
pub struct Application {
    port: u16,
    server: Server,
    core: Arc<Core>,
}

impl Application {
    /// Starts the core and binds `server.bind` (port 0 picks a free port). Refuses, before binding, an
    /// address beyond loopback when no auth token is set.
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let address = settings.server.bind.clone();
        if settings.server.auth_token.is_none() && !settings.server.binds_loopback() {
            return Err(StartError::Unprotected {
                address,
                variable: AUTH_TOKEN_VARIABLE,
            });
        }
        let listener = TcpListener::bind(&address).map_err(|source| StartError::Bind {
            address: address.clone(),
            source,
        })?;
        // std listens with a backlog of 128; bursts of connections (thousands of clients at once) need more
        // room while the workers accept them. The kernel caps it at net.core.somaxconn.
        socket2::SockRef::from(&listener)
            .listen(BACKLOG)
            .map_err(|source| StartError::Bind {
                address: address.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                address: address.clone(),
                source,
            })?
            .port();
        let core = Arc::new(Core::start(settings).await?);
        // The experiments of a process that died are run on by this one (their tasks are taken over by
        // `Core::start`).
        core.watch_experiments().await?;
        let server = api::server(listener, Arc::clone(&core))
            .map_err(|source| StartError::Bind { address, source })?;
        Ok(Application { port, server, core })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The core (for tests and in-process tooling).
    pub fn core(&self) -> Arc<Core> {
        Arc::clone(&self.core)
    }

    /// Serves until the server is stopped (Ctrl-C / SIGTERM stop it gracefully).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        // A clean stop releases the lease: the next process takes over what is unfinished at once.
        self.core.stop().await;
        served
    }
}
