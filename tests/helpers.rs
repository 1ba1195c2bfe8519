//! `spawn_app()` and typed helpers for the API.

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant};

use awc::ws::Frame;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use troupe::app::Application;
use troupe::config::Settings;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The set-up's cache outside the checkout (`scripts/setup.sh`): `TROUPE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/troupe`, else `~/.cache/troupe`; where llama-server and schemathesis are installed.
pub fn setup_cache() -> PathBuf {
    std::env::var_os("TROUPE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|dir| PathBuf::from(dir).join("troupe")))
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/troupe")))
        .expect("HOME, XDG_CACHE_HOME or TROUPE_CACHE_DIR is set")
}

/// Settings from `config/test.toml` with the SmolLM2 model file and the built `troupe` binary as model worker.
pub fn model_settings() -> Settings {
    let mut settings = Settings::load_from(&root().join("config"), Some("test")).unwrap();
    settings.llm.model = root()
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string();
    settings.llm.worker_command = env!("CARGO_BIN_EXE_troupe").into();
    settings
}

/// [`model_settings`] with a private SQLite file and a free port.
pub fn test_settings(dir: &tempfile::TempDir) -> Settings {
    let mut settings = model_settings();
    settings.database.url = format!("sqlite://{}/troupe.sqlite?mode=rwc", dir.path().display());
    settings.server.bind = "127.0.0.1:0".into();
    settings.memory.embedding_model = root().join("models/all-MiniLM-L6-v2");
    settings.sandbox.workspaces = dir.path().join("workspaces");
    // Tasks on the real (135M) model exercise the flow, traces, memory and supervision; whether its code
    // passes its test is not theirs to decide, so their code steps are not run. The Code/QA loop runs with
    // scripted answers in `self_correction.rs`, which turns the sandbox on.
    settings.sandbox.enabled = false;
    // Each app's sandbox gets user ids of its own: apps in one test process run at the same time, and a
    // sandbox kills whatever runs under its ids after each run.
    let apps = NEXT_SANDBOX_IDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    settings.sandbox.uid_base += 1000 + apps * 8;
    settings
}

static NEXT_SANDBOX_IDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

static TELEMETRY: Once = Once::new();

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: awc::Client,
    _dir: tempfile::TempDir,
}

/// Starts the application with the test settings, changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    TELEMETRY.call_once(|| {
        let settings = Settings::load_from(&root().join("config"), Some("test")).unwrap();
        std::mem::forget(troupe::telemetry::init(&settings.telemetry).unwrap());
    });
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&dir);
    adjust(&mut settings);
    let application = Application::build(settings)
        .await
        .expect("application starts");
    let port = application.port();
    actix_rt::spawn(application.run_until_stopped());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client,
        _dir: dir,
    }
}

/// A client of an application that already serves on 127.0.0.1:`port` (a test that assembles its own
/// core); `dir` (its database and workspaces) lives as long as the client.
pub fn client_for(port: u16, dir: tempfile::TempDir) -> TestApp {
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish(),
        _dir: dir,
    }
}

/// Starts the application with the test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

impl TestApp {
    /// A client for an application a test started itself on `port`, keeping `dir` (its files) alive.
    pub fn at(port: u16, dir: tempfile::TempDir) -> TestApp {
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            _dir: dir,
        }
    }

    /// `POST /api/v1/tasks` with a JSON body; returns status and body.
    pub async fn post_task(&self, body: &Value) -> (u16, Value) {
        self.post_json("/api/v1/tasks", body).await
    }

    /// `POST path` with a JSON body; returns status and JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut response = self
            .client
            .post(format!("{}{path}", self.address))
            .send_json(body)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response
            .json::<Value>()
            .limit(1 << 20)
            .await
            .unwrap_or(Value::Null);
        (status, body)
    }

    /// Submits `prompt` and returns the task id (asserting 202).
    pub async fn submit(&self, prompt: &str) -> String {
        self.submit_with(json!({ "prompt": prompt })).await
    }

    /// Submits `body` and returns the task id (asserting 202).
    pub async fn submit_with(&self, body: Value) -> String {
        let (status, body) = self.post_task(&body).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "queued");
        body["id"].as_str().unwrap().to_owned()
    }

    /// `GET path`; returns status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response
            .json::<Value>()
            .limit(8 << 20)
            .await
            .unwrap_or(Value::Null);
        (status, body)
    }

    /// `DELETE path`; returns status and JSON body (null when empty).
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let mut response = self
            .client
            .delete(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// `POST path` without a body; returns status and JSON body.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        let mut response = self
            .client
            .post(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut response = self
            .client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        String::from_utf8(response.body().limit(8 << 20).await.unwrap().to_vec()).unwrap()
    }

    /// Follows the task's WebSocket from `after` until the server closes it (within `limit`).
    pub async fn follow(&self, id: &str, after: i64, limit: Duration) -> Vec<Value> {
        let url = format!(
            "ws://127.0.0.1:{}/api/v1/tasks/{id}/events?after={after}",
            self.port
        );
        let (_response, mut socket) = awc::Client::new().ws(url).connect().await.unwrap();
        let deadline = Instant::now() + limit;
        let mut events = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(remaining, socket.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("task {id} did not end within {limit:?}; events: {events:?}")
                });
            match frame {
                Some(Ok(Frame::Text(bytes))) => {
                    events.push(serde_json::from_slice(&bytes).unwrap())
                }
                Some(Ok(Frame::Ping(bytes))) => {
                    socket.send(awc::ws::Message::Pong(bytes)).await.unwrap();
                }
                Some(Ok(Frame::Close(_))) | None => return events,
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("websocket error: {error}"),
            }
        }
    }

    /// Opens the task's WebSocket and reads until the first `llm.token` event: the model is then working
    /// for this task. Returns the socket, positioned after that event.
    pub async fn socket_after_first_token(
        &self,
        id: &str,
    ) -> impl futures_util::Stream<Item = Result<Frame, awc::error::WsProtocolError>> + Unpin {
        let url = format!("ws://127.0.0.1:{}/api/v1/tasks/{id}/events", self.port);
        let (_response, mut socket) = awc::Client::new().ws(url).connect().await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), socket.next())
                .await
                .unwrap();
            let Some(Ok(Frame::Text(bytes))) = frame else {
                panic!("stream ended before any token")
            };
            let event: Value = serde_json::from_slice(&bytes).unwrap();
            if event["kind"] == "llm.token" {
                return socket;
            }
        }
    }

    /// Waits (at most a minute) for task `id` to end; returns it.
    pub async fn ended(&self, id: &str) -> Value {
        self.wait_for_task(id, Duration::from_secs(60), |task| {
            ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Task `id`'s events (`GET /api/v1/tasks/{id}/events`, the first page).
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/v1/tasks/{id}/events")).await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `GET /api/v1/tasks/{id}` until `done(task)` holds (bounded).
    pub async fn wait_for_task(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (status, task) = self.get(&format!("/api/v1/tasks/{id}")).await;
            assert_eq!(status, 200, "{task}");
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not as expected within {limit:?}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of a metric line `name{labels}` in a Prometheus text scrape (0 when absent).
pub fn metric_value(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The events of `kind` among `events`, in order.
pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// Kinds of `events`, in order.
pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| event["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks one token of the token view, `{text, p, top}` as the API serves it: `top` holds 1 to 5
/// alternatives, each with a probability in (0, 1], sorted most probable first, summing to at most 1; where
/// the piece's own text is among them, its entry's probability is the piece's `p` (a one-token piece).
/// Returns whether the piece's text was found among its alternatives.
pub fn check_token_view(token: &Value) -> bool {
    let top = token["top"]
        .as_array()
        .unwrap_or_else(|| panic!("no alternatives: {token}"));
    assert!(!top.is_empty() && top.len() <= 5, "{token}");
    let probabilities: Vec<f64> = top
        .iter()
        .map(|alternative| {
            assert!(alternative["text"].is_string(), "{token}");
            alternative["p"].as_f64().unwrap()
        })
        .collect();
    assert!(
        probabilities.iter().all(|p| *p > 0.0 && *p <= 1.0),
        "{token}"
    );
    assert!(
        probabilities.windows(2).all(|pair| pair[0] >= pair[1]),
        "not sorted: {token}"
    );
    assert!(probabilities.iter().sum::<f64>() <= 1.0 + 1e-6, "{token}");
    let p = token["p"]
        .as_f64()
        .unwrap_or_else(|| panic!("no p: {token}"));
    assert!(p > 0.0 && p <= 1.0, "{token}");
    match top
        .iter()
        .find(|alternative| alternative["text"] == token["text"])
    {
        Some(own) => {
            let own = own["p"].as_f64().unwrap();
            assert!((own - p).abs() <= 1e-9, "{token}");
            true
        }
        None => false,
    }
}
