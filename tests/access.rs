//! Who may use the server: refusing to serve beyond loopback without a token, the token (bearer and the login
//! form's cookie), the Host and Origin checks, no CORS; and the series exported at 0 from the start.

use std::process::Command;

use awc::http::header;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe::app::Application;
use troupe::config::Secret;

use crate::helpers::{root, spawn_app, spawn_app_with, test_settings, TestApp};

const TOKEN: &str = "test-token-0123456789abcdef";

/// A client that shows redirects instead of following them.
fn client() -> awc::Client {
    awc::Client::builder()
        .disable_redirects()
        .timeout(std::time::Duration::from_secs(30))
        .finish()
}

/// Status, headers and body text of `request`.
async fn send(request: awc::ClientRequest) -> (u16, header::HeaderMap, String) {
    send_body(request, None).await
}

/// [`send`] with a form body.
async fn send_body(
    request: awc::ClientRequest,
    form: Option<&[(&str, &str)]>,
) -> (u16, header::HeaderMap, String) {
    let mut response = match form {
        Some(form) => request.send_form(&form).await,
        None => request.send().await,
    }
    .expect("request is answered");
    let status = response.status().as_u16();
    let mut headers = header::HeaderMap::new();
    for (name, value) in response.headers() {
        headers.append(name.clone(), value.clone());
    }
    let body = response.body().limit(1 << 20).await.expect("body is read");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Asserts a JSON error of `status` and `code`.
fn assert_error(status: u16, body: &str, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    let body: Value = serde_json::from_str(body).expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
}

fn location(headers: &header::HeaderMap) -> &str {
    headers
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

fn no_cors(headers: &header::HeaderMap) {
    let cors: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "CORS headers sent: {cors:?}");
}

async fn spawn_exposed(metrics_public: bool) -> TestApp {
    spawn_app_with(|settings| {
        settings.server.bind = "0.0.0.0:0".into();
        settings.server.auth_token = Some(Secret::new(TOKEN));
        settings.server.metrics_public = metrics_public;
    })
    .await
}

#[actix_rt::test]
async fn a_non_loopback_bind_without_a_token_is_refused_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(&dir);
    settings.server.bind = "0.0.0.0:0".into();
    let error = match Application::build(settings).await {
        Ok(_) => panic!("an unprotected server beyond loopback started"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("0.0.0.0:0"), "{error}");
    assert!(error.contains("TROUPE__SERVER__AUTH_TOKEN"), "{error}");
    // Nothing was opened: the database file was never created.
    assert!(!dir.path().join("troupe.sqlite").exists());
}

#[actix_rt::test]
async fn with_a_token_the_api_needs_it_as_bearer_or_login_cookie() {
    let app = spawn_exposed(true).await;
    let client = client();
    let url = |path: &str| format!("{}{path}", app.address);

    // No credentials: 401 JSON with a challenge; a wrong token likewise.
    let (status, headers, body) = send(client.get(url("/api/v1/tasks"))).await;
    assert_error(status, &body, 401, "unauthorized");
    assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    let (status, _, body) = send(
        client
            .get(url("/api/v1/tasks"))
            .bearer_auth("test-token-0123456789abcdeX"),
    )
    .await;
    assert_error(status, &body, 401, "unauthorized");

    // The bearer token.
    let (status, _, body) = send(client.get(url("/api/v1/tasks")).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{body}");

    // The login form: a page with a token field and the next location.
    let (status, headers, page) = send(
        client
            .get(url("/login?next=/tasks/x"))
            .insert_header((header::ACCEPT, "text/html")),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(headers
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.contains("name=\"token\""), "{page}");
    assert!(page.contains("value=\"/tasks/x\""), "{page}");
    assert!(!page.contains("<script"), "{page}");

    // A wrong token: 401 with the form and a message, and no cookie.
    let (status, headers, page) = send_body(
        client.post(url("/login")),
        Some(&[("token", "nope"), ("next", "/")]),
    )
    .await;
    assert_eq!(status, 401, "{page}");
    assert!(
        page.contains("name=\"token\"") && page.contains("not the server"),
        "{page}"
    );
    assert!(headers.get(header::SET_COOKIE).is_none());

    // The right token: a cookie, and on to `next`.
    let (status, headers, _) = send_body(
        client.post(url("/login")),
        Some(&[("token", TOKEN), ("next", "/api/v1/tasks?limit=5")]),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/api/v1/tasks?limit=5");
    let set_cookie = headers
        .get(header::SET_COOKIE)
        .expect("a cookie is set")
        .to_str()
        .unwrap()
        .to_owned();
    for part in [
        format!("troupe_token={TOKEN}"),
        "HttpOnly".into(),
        "SameSite=Strict".into(),
        "Path=/".into(),
    ] {
        assert!(set_cookie.contains(&part), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let (status, _, body) = send(
        client
            .get(url("/api/v1/tasks"))
            .insert_header((header::COOKIE, cookie.clone())),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // `next` never leaves the server.
    for outside in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
    ] {
        let (status, headers, _) = send_body(
            client.post(url("/login")),
            Some(&[("token", TOKEN), ("next", outside)]),
        )
        .await;
        assert_eq!(status, 303);
        assert_eq!(location(&headers), "/", "{outside}");
    }

    // Logging out clears the cookie.
    let (status, headers, _) = send(client.post(url("/logout"))).await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/login");
    let cleared = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(
        cleared.starts_with("troupe_token=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );

    // Probes and (by default) the metrics stay open.
    for path in ["/healthz", "/metrics"] {
        let (status, _, body) = send(client.get(url(path))).await;
        assert_eq!(status, 200, "{path}: {body}");
    }

    // A person's page request goes to the login form and back; a script's gets 401.
    let (status, headers, _) = send(
        client
            .get(url("/"))
            .insert_header((header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/login?next=/");
    let (status, headers, _) = send(
        client
            .get(url("/tasks/abc?panel=tree"))
            .insert_header((header::ACCEPT, "text/html")),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/login?next=/tasks/abc%3Fpanel%3Dtree");
    let (status, _, body) = send(client.get(url("/"))).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, _, body) = send(
        client
            .get(url("/api/v1/tasks"))
            .insert_header((header::ACCEPT, "text/html")),
    )
    .await;
    assert_error(status, &body, 401, "unauthorized");

    // WebSockets need it too.
    let ws = format!(
        "ws://127.0.0.1:{}/api/v1/tasks/{}/events",
        app.port,
        uuid::Uuid::now_v7()
    );
    match awc::Client::new().ws(ws.as_str()).connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 401)
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a WebSocket opened without the token"),
    }
    match awc::Client::new()
        .ws(ws.as_str())
        .bearer_auth(TOKEN)
        .connect()
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_ne!(status.as_u16(), 401, "the token is accepted")
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => {}
    }
}

#[actix_rt::test]
async fn metrics_need_the_token_when_not_public() {
    let app = spawn_exposed(false).await;
    let client = client();
    let (status, headers, body) = send(client.get(format!("{}/metrics", app.address))).await;
    assert_error(status, &body, 401, "unauthorized");
    assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    let (status, _, body) = send(
        client
            .get(format!("{}/metrics", app.address))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("troupe_build_info"));
    let (status, _, _) = send(client.get(format!("{}/readyz", app.address))).await;
    assert_ne!(status, 401);
}

#[actix_rt::test]
async fn on_loopback_foreign_hosts_and_origins_are_refused_and_no_cors_is_sent() {
    let app = spawn_app_with(|settings| {
        settings.server.allowed_hosts = vec!["troupe.lan".into()];
    })
    .await;
    let client = client();
    let url = |path: &str| format!("{}{path}", app.address);
    let port = app.port;

    // Host: a rebinding page's name is refused, a missing Host too; loopback names and the configured one
    // are served; probes answer whatever the Host.
    let (status, headers, body) = send(
        client
            .get(url("/api/v1/tasks"))
            .insert_header((header::HOST, "evil.example")),
    )
    .await;
    assert_error(status, &body, 403, "forbidden_host");
    assert!(
        body.contains("evil.example") && body.contains("allowed_hosts"),
        "{body}"
    );
    no_cors(&headers);
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("app.localhost:{port}"),
        format!("troupe.lan:{port}"),
        "troupe.lan".to_owned(),
    ] {
        let (status, _, body) = send(
            client
                .get(url("/api/v1/tasks"))
                .insert_header((header::HOST, host.as_str())),
        )
        .await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in ["troupe.lan.evil.example", "localhost.evil.example:80"] {
        let (status, _, body) = send(
            client
                .get(url("/api/v1/tasks"))
                .insert_header((header::HOST, host)),
        )
        .await;
        assert_error(status, &body, 403, "forbidden_host");
    }
    let (status, _, _) = send(
        client
            .get(url("/healthz"))
            .insert_header((header::HOST, "evil.example")),
    )
    .await;
    assert_eq!(status, 200);
    // HTTP/1.0 without a Host header.
    let mut stream = actix_rt::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /api/v1/tasks HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 403"), "{answer}");
    assert!(
        answer.contains("forbidden_host") && answer.contains("(none)"),
        "{answer}"
    );

    // Origin: another site's page cannot submit a task; nothing is stored.
    let (status, headers, body) = send(
        client
            .post(url("/api/v1/tasks"))
            .insert_header((header::ORIGIN, "http://evil.example"))
            .insert_header((header::CONTENT_TYPE, "application/json")),
    )
    .await;
    assert_error(status, &body, 403, "forbidden_origin");
    no_cors(&headers);
    let (status, _, body) = send(
        client
            .post(url("/api/v1/tasks"))
            .insert_header((header::ORIGIN, "null"))
            .insert_header((header::CONTENT_TYPE, "application/json")),
    )
    .await;
    assert_error(status, &body, 403, "forbidden_origin");
    let (status, tasks) = app.get("/api/v1/tasks").await;
    assert_eq!(status, 200);
    assert!(tasks["tasks"].as_array().unwrap().is_empty(), "{tasks}");
    // The server's own origin passes the check (and the handler then judges the body).
    let own = format!("http://127.0.0.1:{port}");
    let mut response = client
        .post(url("/api/v1/tasks"))
        .insert_header((header::ORIGIN, own.as_str()))
        .send_json(&serde_json::json!({ "prompt": "  " }))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "empty_prompt");
    // A read from another origin is answered, but without CORS headers the page cannot read it.
    let (status, headers, _) = send(
        client
            .get(url("/api/v1/tasks"))
            .insert_header((header::ORIGIN, "http://evil.example")),
    )
    .await;
    assert_eq!(status, 200);
    no_cors(&headers);
    // A preflight gets no permission either.
    let (_, headers, _) = send(
        client
            .request(awc::http::Method::OPTIONS, url("/api/v1/tasks"))
            .insert_header((header::ORIGIN, "http://evil.example"))
            .insert_header((header::ACCESS_CONTROL_REQUEST_METHOD, "POST"))
            .insert_header((header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")),
    )
    .await;
    no_cors(&headers);

    // WebSocket upgrades: another origin is refused, the server's own is accepted.
    let id = app.submit("Name three prime numbers").await;
    let ws = format!("ws://127.0.0.1:{port}/api/v1/tasks/{id}/events");
    match awc::Client::new()
        .ws(ws.as_str())
        .origin("http://evil.example")
        .connect()
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 403)
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a foreign page opened a WebSocket"),
    }
    let (response, _socket) = awc::Client::new()
        .ws(ws.as_str())
        .origin(own.as_str())
        .connect()
        .await
        .expect("the server's own page opens a WebSocket");
    assert_eq!(response.status().as_u16(), 101);
    no_cors(response.headers());
    let (status, _) = app.post(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert!(status == 202 || status == 409, "{status}");
}

#[actix_rt::test]
async fn without_a_token_login_goes_to_the_overview() {
    let app = spawn_app().await;
    let client = client();
    let (status, headers, _) = send(client.get(format!("{}/login", app.address))).await;
    assert_eq!(status, 303);
    assert_eq!(location(&headers), "/");
}

#[test]
fn troupe_serve_beyond_loopback_without_a_token_exits_with_the_reason() {
    let run = |token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_troupe"));
        command
            .arg("serve")
            .env("TROUPE_PROFILE", "test")
            .env("TROUPE_CONFIG_DIR", root().join("config"))
            .env("TROUPE__SERVER__BIND", "0.0.0.0:0")
            .env_remove("TROUPE__SERVER__AUTH_TOKEN");
        if let Some(token) = token {
            command.env("TROUPE__SERVER__AUTH_TOKEN", token);
        }
        let output = command.output().expect("troupe runs");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, stderr) = run(None);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0:0") && stderr.contains("TROUPE__SERVER__AUTH_TOKEN"),
        "{stderr}"
    );
    // The token is read from the environment (and judged there, before anything starts).
    let (status, stderr) = run(Some("short"));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("server.auth_token: too short"), "{stderr}");
    assert!(
        !stderr.contains("short\n") && !stderr.contains("'short'"),
        "{stderr}"
    );
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[actix_rt::test]
async fn troupe_serve_beyond_loopback_takes_its_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .arg("serve")
        .env("TROUPE_PROFILE", "test")
        .env("TROUPE_CONFIG_DIR", root().join("config"))
        .env("TROUPE__SERVER__BIND", "0.0.0.0:0")
        .env("TROUPE__SERVER__AUTH_TOKEN", TOKEN)
        .env(
            "TROUPE__DATABASE__URL",
            format!("sqlite://{}/troupe.sqlite?mode=rwc", dir.path().display()),
        )
        .env(
            "TROUPE__LLM__MODEL",
            root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        )
        .env("TROUPE__MEMORY__ENABLED", "false")
        .env("TROUPE__SANDBOX__ENABLED", "false")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("troupe starts");
    let stderr = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line.strip_prefix("troupe serving on port ") {
                let _ = sender.send(port.trim().parse::<u16>().ok());
            }
        }
    });
    let port = actix_rt::task::spawn_blocking(move || {
        receiver.recv_timeout(std::time::Duration::from_secs(120))
    })
    .await
    .unwrap()
    .expect("troupe serve says its port")
    .expect("the port is a number");
    let client = client();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let (status, _, _) = send(client.get(url("/healthz"))).await;
    assert_eq!(status, 200);
    let (status, _, body) = send(client.get(url("/api/v1/tasks"))).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, _, body) = send(client.get(url("/api/v1/tasks")).bearer_auth(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    drop(child);
}

/// Whether the scrape has a sample of `name` carrying every one of `labels` (`key="value"`) at 0.
fn has_zero(scrape: &str, name: &str, labels: &[&str]) -> bool {
    scrape.lines().any(|line| {
        let Some(rest) = line.strip_prefix(name) else {
            return false;
        };
        let Some((set, value)) = rest.rsplit_once(' ') else {
            return false;
        };
        set.starts_with('{') && labels.iter().all(|label| set.contains(label)) && value == "0"
    })
}

#[actix_rt::test]
async fn a_fresh_server_exports_its_known_series_at_zero() {
    let app = spawn_app().await;
    let scrape = app.metrics().await;
    let expected: &[(&str, &[&str])] = &[
        (
            "troupe_supervisor_restarts_total",
            &["agent=\"code\"", "reason=\"panic\""],
        ),
        (
            "troupe_supervisor_restarts_total",
            &["agent=\"qa\"", "reason=\"timeout\""],
        ),
        (
            "troupe_supervisor_restarts_total",
            &["agent=\"model_worker\"", "reason=\"crash\""],
        ),
        ("troupe_mailbox_depth", &["agent=\"code\""]),
        ("troupe_mailbox_depth", &["agent=\"research\""]),
        ("troupe_agent_in_flight", &["agent=\"qa\""]),
        ("troupe_tasks_total", &["outcome=\"completed\""]),
        ("troupe_tasks_total", &["outcome=\"failed\""]),
        ("troupe_tasks_total", &["outcome=\"cancelled\""]),
        ("troupe_events_total", &["kind=\"task.queued\""]),
        ("troupe_events_total", &["kind=\"llm.token\""]),
        ("troupe_store_write_errors_total", &["op=\"batch\""]),
        (
            "troupe_decisions_total",
            &["agent=\"director\"", "kind=\"assign_agent\""],
        ),
        (
            "troupe_decisions_total",
            &["agent=\"qa\"", "kind=\"verdict\""],
        ),
        ("troupe_budget_exceeded_total", &["action=\"fail\""]),
        (
            "troupe_code_attempts_total",
            &["attempt=\"1\"", "outcome=\"passed\""],
        ),
        (
            "troupe_code_attempts_total",
            &["attempt=\"3\"", "outcome=\"off_task\""],
        ),
        ("troupe_qa_revisions_total", &["outcome=\"advisory\""]),
        (
            "troupe_sandbox_runs_total",
            &["language=\"python\"", "outcome=\"ok\""],
        ),
        (
            "troupe_sandbox_runs_total",
            &["language=\"shell\"", "outcome=\"refused\""],
        ),
        ("troupe_sandbox_violations_total", &["kind=\"network\""]),
        (
            "troupe_tool_calls_total",
            &["tool=\"run_code\"", "outcome=\"error\""],
        ),
        (
            "troupe_tool_calls_total",
            &["tool=\"search_memory\"", "outcome=\"ok\""],
        ),
        ("troupe_memory_reuses_total", &["kind=\"snippet\""]),
        ("troupe_embeddings_total", &["model=\"all-MiniLM-L6-v2\""]),
        (
            "troupe_memory_pattern_extractions_total",
            &["outcome=\"extracted\""],
        ),
        (
            "troupe_memory_pattern_outcomes_total",
            &["outcome=\"failed\""],
        ),
        (
            "troupe_llm_tokens_total",
            &["provider=\"llama.cpp\"", "type=\"output\""],
        ),
        ("troupe_llm_cost_usd_total", &["provider=\"llama.cpp\""]),
        (
            "troupe_llm_errors_total",
            &["provider=\"llama.cpp\"", "kind=\"worker_crashed\""],
        ),
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|(name, labels)| !has_zero(&scrape, name, labels))
        .collect();
    assert!(missing.is_empty(), "not exported at 0: {missing:#?}");
    // Label values that are not known in advance stay absent until used.
    assert!(!scrape.contains("troupe_llm_rate_limit_remaining{"));
    assert!(
        !scrape.contains("troupe_llm_retries_total{"),
        "no remote provider"
    );
}
