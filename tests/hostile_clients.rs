//! Clients that do not play by the rules (issue 17, hardening), against the real app on a random port: a
//! body that trickles in and stops gets 408 within `server.body_timeout_seconds`; two thousand connections
//! that never send a request neither stop the server from answering others nor stay open for long;
//! malformed `traceparent` headers start a fresh trace instead of failing the request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::spawn_app_with;

/// Reads what the server sends until it closes the connection or `limit` passes.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) => {
                panic!("the server neither answered nor closed within {limit:?}: {error}")
            }
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[actix_rt::test]
async fn a_trickling_body_gets_408_and_the_server_keeps_serving() {
    let app = spawn_app_with(|settings| settings.server.body_timeout_seconds = 1).await;
    let port = app.port;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(
                b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro",
            )
            .unwrap();
        read_until_closed(&mut stream, Duration::from_secs(20))
    });
    // Meanwhile the server answers others.
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let (answer, after) = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(after < Duration::from_secs(10), "answered after {after:?}");
    // Nothing was stored for it.
    let (_, tasks) = app.get("/api/v1/tasks").await;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "{tasks}");
}

#[actix_rt::test]
async fn thousands_of_idle_connections_neither_block_others_nor_stay_open() {
    let app = spawn_app_with(|_| {}).await;
    let port = app.port;
    let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..2000)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect()
    })
    .await
    .unwrap();
    let started = Instant::now();
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let answered = started.elapsed();
    assert_eq!(
        response.map(|response| response.status().as_u16()).ok(),
        Some(200),
        "/healthz beside 2,000 idle connections (after {answered:?})"
    );
    // The server closes a connection that sends no request head (actix-web: 5 s).
    let closed = tokio::task::spawn_blocking(move || {
        idle.into_iter()
            .map(|mut stream| read_until_closed(&mut stream, Duration::from_secs(30)).1)
            .max()
            .unwrap_or_default()
    })
    .await
    .unwrap();
    assert!(closed < Duration::from_secs(30), "{closed:?}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_malformed_traceparent_starts_a_fresh_trace() {
    let app = spawn_app_with(|_| {}).await;
    for header in [
        "garbage",
        "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        &"0".repeat(1_000),
    ] {
        let mut response = app
            .client
            .post(format!("{}/api/v1/tasks", app.address))
            .insert_header(("traceparent", header))
            .send_json(&json!({ "prompt": "What is 2 + 2?" }))
            .await
            .unwrap();
        let shown = &header[..header.len().min(60)];
        assert_eq!(response.status().as_u16(), 202, "traceparent {shown}");
        let body: Value = response.json().await.unwrap();
        let id = body["id"].as_str().unwrap();
        let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
        let trace = task["trace_id"].as_str().unwrap_or_default();
        assert_eq!(trace.len(), 32, "traceparent {shown}: {task}");
        assert!(
            trace.chars().all(|c| c.is_ascii_hexdigit()) && trace != "0".repeat(32),
            "traceparent {shown}: trace {trace}"
        );
        assert_ne!(
            trace, "4bf92f3577b34da6a3ce929d0e0e4736",
            "an invalid header was honoured"
        );
    }
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn a_method_a_route_does_not_take_gets_405_with_the_allowed_ones() {
    let app = spawn_app_with(|_| {}).await;
    let id = "0193a1f2-7c4e-7b8a-9d3e-5f6a7b8c9d0e";
    for (path, allowed) in troupe::api::allowed_methods() {
        // Every path parameter as an id (a task, a breakpoint, a call or a purpose all accept one).
        let concrete: String = path
            .split('/')
            .map(|part| if part.starts_with('{') { id } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let response = app
            .client
            .request(
                actix_web::http::Method::from_bytes(b"TRACE").unwrap(),
                format!("{}{concrete}", app.address),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 405, "TRACE {path}");
        let header = response
            .headers()
            .get("allow")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        assert_eq!(header, allowed, "TRACE {path}: Allow");
    }
}

/// A WebSocket upgrade of `path` on a raw socket whose receive buffer is as small as the kernel allows, and
/// which is then never read.
fn websocket_that_never_reads(port: u16, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut stream: TcpStream = socket.into();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    stream
}

#[actix_rt::test]
async fn a_websocket_client_that_never_reads_is_dropped_and_its_place_freed() {
    let app = spawn_app_with(|settings| {
        settings.server.websocket_send_timeout_seconds = 1;
        settings.server.max_websockets = 1;
    })
    .await;
    // A recording on the real model; its replays then make events fast (no model time).
    let recorded = app.submit("What is 2 + 2?").await;
    app.wait_for_task(&recorded, Duration::from_secs(300), |task| {
        ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or_default())
    })
    .await;

    // The all-tasks stream, never read, while replays commit far more than a socket's buffers hold.
    let slow = websocket_that_never_reads(app.port, "/api/v1/events");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut submitted = 0;
    loop {
        let (status, body) = app
            .post_task(&json!({ "prompt": "What is 2 + 2?", "options": { "replay_of": recorded } }))
            .await;
        assert!(status == 202 || status == 429, "{status} {body}");
        submitted += usize::from(status == 202);
        let scrape = app.metrics().await;
        if crate::helpers::metric_value(&scrape, "troupe_websocket_slow_clients_total") == 1.0 {
            assert_eq!(
                crate::helpers::metric_value(&scrape, "troupe_websocket_connections"),
                0.0,
                "{scrape}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a client that never read was not dropped after {submitted} tasks"
        );
        if status == 429 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Meanwhile others were served, and its place is free again (max_websockets = 1): a reading client
    // gets a task's whole log.
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let (_, page) = app.get(&format!("/api/v1/tasks/{recorded}/events")).await;
    let events = app.follow(&recorded, 0, Duration::from_secs(30)).await;
    assert_eq!(
        events.len(),
        page["events"].as_array().map_or(0, Vec::len),
        "the stream after the dropped one"
    );
    drop(slow);
}
