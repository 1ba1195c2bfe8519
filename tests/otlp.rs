//! One task, one trace, over the real OTLP wire format: `troupe serve` runs as its own process (telemetry is
//! process-wide) with JSON logs and an OTLP endpoint pointing at a receiver inside this test, which decodes
//! the protobuf export requests. Spans are only flushed at shutdown here (the batch delay is a minute), so the
//! test also proves the flush on SIGTERM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};

use crate::helpers::root;

/// Export requests as received: (resource attributes, spans).
pub(crate) type Received = Arc<Mutex<Vec<(Vec<KeyValue>, Vec<Span>)>>>;

/// Starts an OTLP/HTTP receiver on a free port; returns its base URL and what it receives.
pub(crate) fn start_receiver() -> (String, Received, actix_web::dev::ServerHandle) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let server = HttpServer::new(move || {
        let sink = sink.clone();
        // Batches of 512 spans exceed actix-web's default 256 KiB body limit.
        App::new()
            .app_data(web::PayloadConfig::new(64 << 20))
            .route(
                "/v1/traces",
                web::post().to(move |request: actix_web::HttpRequest, body: web::Bytes| {
                    let sink = sink.clone();
                    async move {
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        assert_eq!(content_type, "application/x-protobuf");
                        let export =
                            ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        let mut sink = sink.lock().unwrap();
                        for resource_spans in export.resource_spans {
                            let resource = resource_spans
                                .resource
                                .map(|r| r.attributes)
                                .unwrap_or_default();
                            let spans = resource_spans
                                .scope_spans
                                .into_iter()
                                .flat_map(|scope| scope.spans)
                                .collect();
                            sink.push((resource, spans));
                        }
                        HttpResponse::Ok()
                            .content_type("application/x-protobuf")
                            .body(ExportTraceServiceResponse::default().encode_to_vec())
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), received, handle)
}

/// A `troupe serve` process; killed if the test fails before it stops.
struct Served {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(dir: &tempfile::TempDir, otlp: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_troupe"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("TROUPE_PROFILE", "test")
            .env("TROUPE_CONFIG_DIR", root().join("config"))
            .env(
                "TROUPE__DATABASE__URL",
                format!("sqlite://{}/troupe.sqlite?mode=rwc", dir.path().display()),
            )
            .env(
                "TROUPE__LLM__MODEL",
                root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            )
            .env(
                "TROUPE__MEMORY__EMBEDDING_MODEL",
                root().join("models/all-MiniLM-L6-v2"),
            )
            .env("TROUPE__TELEMETRY__LOG_FORMAT", "json")
            // A task on the real model: its code steps are not run (see helpers::test_settings).
            .env("TROUPE__SANDBOX__ENABLED", "false")
            // QA's verification by three voters: the consensus span and its links are checked too.
            .env("TROUPE__DIRECTOR__CONSENSUS__VOTERS", "3")
            .env("TROUPE__TELEMETRY__LOG_LEVEL", "info,troupe=debug")
            .env("TROUPE__TELEMETRY__OTLP_ENDPOINT", otlp)
            .env(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=test",
            )
            // Nothing is exported before shutdown unless a batch fills up: the flush on SIGTERM delivers.
            .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Served { child, lines }
    }

    /// JSON log lines so far (every stdout line must be one).
    fn logs(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    async fn port(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let port = self.logs().iter().find_map(|line| {
                (line["message"] == "serving").then(|| line["fields"]["port"].as_u64())?
            });
            if let Some(port) = port {
                return u16::try_from(port).unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("troupe serve exited with {status} before serving");
            }
            assert!(Instant::now() < deadline, "no 'serving' log line");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "troupe serve exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "troupe serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub(crate) fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        AnyValue::StringValue(text) => Some(text.clone()),
        _ => None,
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        AnyValue::IntValue(value) => Some(*value),
        _ => None,
    }
}

#[actix_rt::test]
async fn one_task_is_one_trace_exported_over_otlp_and_its_logs_carry_the_trace_id() {
    let (otlp, received, receiver) = start_receiver();
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(&dir, &otlp);
    let address = format!("http://127.0.0.1:{}", served.port().await);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();

    let mut response = client
        .post(format!("{address}/api/v1/tasks"))
        .send_json(&json!({ "prompt": "Write a Python function that reverses a string" }))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let task = loop {
        let task: Value = client
            .get(format!("{address}/api/v1/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .limit(1 << 20)
            .await
            .unwrap();
        if task["status"] == "completed" || task["status"] == "failed" {
            break task;
        }
        assert!(Instant::now() < deadline, "task did not end: {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(task["status"], "completed", "{task}");
    let trace_id = task["trace_id"].as_str().unwrap().to_owned();
    assert!(
        received.lock().unwrap().is_empty(),
        "exported before shutdown"
    );

    served.terminate();
    receiver.stop(true).await;

    let received = received.lock().unwrap().clone();
    let (resource, _) = received.first().expect("spans exported at shutdown");
    assert_eq!(
        string_attribute(resource, "service.name").as_deref(),
        Some("troupe")
    );
    assert_eq!(
        string_attribute(resource, "deployment.environment.name").as_deref(),
        Some("test")
    );
    let spans: Vec<Span> = received
        .into_iter()
        .flat_map(|(_, spans)| spans)
        .filter(|span| hex(&span.trace_id) == trace_id)
        .collect();
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();

    // One root: the HTTP request that created the task; every other span's parent is in the trace.
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "roots: {names:?}");
    assert!(roots[0].name.contains("/api/v1/tasks"), "{}", roots[0].name);
    for span in &spans {
        if !span.parent_span_id.is_empty() {
            assert!(
                by_id.contains_key(&hex(&span.parent_span_id)),
                "{} has a parent outside the trace",
                span.name
            );
        }
    }
    let parent_of = |span: &Span| by_id[&hex(&span.parent_span_id)].name.clone();

    let workflow = named("invoke_workflow troupe");
    assert_eq!(workflow.len(), 1, "{names:?}");
    assert_eq!(parent_of(workflow[0]), roots[0].name);
    assert_eq!(
        string_attribute(&workflow[0].attributes, "gen_ai.conversation.id").as_deref(),
        Some(id.as_str())
    );
    let director = named("invoke_agent director");
    assert_eq!(director.len(), 1, "{names:?}");
    assert_eq!(director[0].parent_span_id, workflow[0].span_id);

    // The verification went to three voters at once: each a `vote N` span under the Director's, and one
    // `consensus verify` span, also under it, linked to each of them.
    let votes: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("vote "))
        .collect();
    assert_eq!(votes.len(), 3, "{names:?}");
    for vote in &votes {
        assert_eq!(vote.parent_span_id, director[0].span_id, "{}", vote.name);
    }
    let consensus = named("consensus verify");
    assert_eq!(consensus.len(), 1, "{names:?}");
    assert_eq!(consensus[0].parent_span_id, director[0].span_id);
    let mut linked: Vec<String> = consensus[0]
        .links
        .iter()
        .map(|link| hex(&link.span_id))
        .collect();
    let mut voted: Vec<String> = votes.iter().map(|vote| hex(&vote.span_id)).collect();
    linked.sort();
    voted.sort();
    assert_eq!(linked, voted, "the consensus span links each vote");
    assert!(consensus[0]
        .links
        .iter()
        .all(|link| hex(&link.trace_id) == trace_id));

    // Every specialist that worked has its invoke_agent span under the Director's (a voter's under its vote).
    let agents: Vec<String> = task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["agent"].as_str().unwrap().to_owned())
        .collect();
    assert!(agents.contains(&"qa".to_owned()), "{task}");
    for agent in &agents {
        let invoked = named(&format!("invoke_agent {agent}"));
        assert!(!invoked.is_empty(), "no span for {agent}: {names:?}");
        for span in invoked {
            let parent = by_id[&hex(&span.parent_span_id)];
            assert!(
                span.parent_span_id == director[0].span_id
                    || (parent.name.starts_with("vote ")
                        && parent.parent_span_id == director[0].span_id),
                "{agent} under {}",
                parent.name
            );
            assert_eq!(
                string_attribute(&span.attributes, "gen_ai.agent.name").as_deref(),
                Some(agent.as_str())
            );
            assert_eq!(
                string_attribute(&span.attributes, "gen_ai.operation.name").as_deref(),
                Some("invoke_agent")
            );
            assert_eq!(
                string_attribute(&span.attributes, "gen_ai.conversation.id").as_deref(),
                Some(id.as_str())
            );
        }
    }

    // Model calls: `chat {model}` spans with usage, under an agent.
    let chats: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert!(chats.len() >= agents.len(), "{names:?}");
    for chat in &chats {
        let attributes = &chat.attributes;
        assert_eq!(
            string_attribute(attributes, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            string_attribute(attributes, "gen_ai.provider.name").as_deref(),
            Some("llama.cpp")
        );
        let model = string_attribute(attributes, "gen_ai.request.model").unwrap();
        assert_eq!(chat.name, format!("chat {model}"));
        let usage = |key: &str| {
            int_attribute(attributes, key).unwrap_or_else(|| panic!("{key} missing: {chat:?}"))
        };
        assert!(usage("gen_ai.usage.input_tokens") > 0, "{chat:?}");
        assert!(usage("gen_ai.usage.output_tokens") > 0, "{chat:?}");
        assert!(
            parent_of(chat).starts_with("invoke_agent "),
            "{}",
            parent_of(chat)
        );
    }

    // Memory reads: `search_memory` spans (with the query and the number of hits, and the hits with their
    // scores as a span event) under the agent that searched (Research's through its tool call), each with its `embeddings {model}` child. The
    // Director searches before planning, so there is at least one.
    let searches = named("search_memory");
    assert!(!searches.is_empty(), "{names:?}");
    for search in &searches {
        assert_eq!(
            string_attribute(&search.attributes, "gen_ai.operation.name").as_deref(),
            Some("search_memory")
        );
        assert!(string_attribute(&search.attributes, "troupe.memory.query").is_some());
        assert!(
            int_attribute(&search.attributes, "troupe.memory.hits").is_some(),
            "{search:?}"
        );
        // Research searches through the tool registry: its search is the child of an
        // `execute_tool search_memory` span, itself a child of the agent's span.
        let parent = parent_of(search);
        let tool_call = parent == "execute_tool search_memory";
        assert!(parent.starts_with("invoke_agent ") || tool_call, "{parent}");
        if tool_call {
            let tool = by_id.get(&hex(&search.parent_span_id)).unwrap();
            assert_eq!(parent_of(tool), "invoke_agent research");
        }
        assert!(
            search.events.iter().any(|event| event.name == "memory read"
                && string_attribute(&event.attributes, "memory.hits").is_some()),
            "{:?}",
            search.events
        );
    }
    let embeddings = named("embeddings all-MiniLM-L6-v2");
    assert!(embeddings.len() >= searches.len(), "{names:?}");
    assert!(embeddings.iter().any(|span| by_id
        .get(&hex(&span.parent_span_id))
        .is_some_and(|parent| parent.name == "search_memory")));

    // Each agent assignment is an event on the Director's span with its options, choice and confidence.
    let decisions: Vec<_> = director[0]
        .events
        .iter()
        .filter(|event| {
            string_attribute(&event.attributes, "decision.kind").as_deref() == Some("assign_agent")
        })
        .collect();
    let plan_steps = agents.len() - 1; // the last step is QA's verification
    assert_eq!(decisions.len(), plan_steps, "{:?}", director[0].events);
    for decision in decisions {
        let options = string_attribute(&decision.attributes, "decision.options")
            .unwrap_or_else(|| panic!("{:?}", decision.attributes));
        let chosen = string_attribute(&decision.attributes, "decision.chosen").unwrap();
        assert!(
            options.contains("research") && options.contains("code"),
            "{options}"
        );
        assert!(options.contains(&chosen), "{chosen} not in {options}");
        let Some(AnyValue::DoubleValue(confidence)) =
            attribute(&decision.attributes, "decision.confidence").cloned()
        else {
            panic!("no confidence: {:?}", decision.attributes);
        };
        assert!((0.0..=1.0).contains(&confidence));
    }

    // QA's verdict is a decision event too (generated under a grammar, so without a confidence).
    let verdicts: Vec<_> = director[0]
        .events
        .iter()
        .filter(|event| {
            string_attribute(&event.attributes, "decision.kind").as_deref() == Some("verdict")
        })
        .collect();
    assert_eq!(verdicts.len(), 1, "{:?}", director[0].events);
    let chosen = string_attribute(&verdicts[0].attributes, "decision.chosen").unwrap();
    assert!(chosen == "pass" || chosen == "fail", "{chosen}");

    // The task's JSON log lines carry the trace id of its spans.
    let logs = served.logs();
    let task_lines: Vec<&Value> = logs
        .iter()
        .filter(|line| line["task_id"] == id.as_str())
        .collect();
    assert!(!task_lines.is_empty(), "no log line names the task");
    for line in &task_lines {
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
        assert!(
            line["span_id"].as_str().is_some_and(|s| s.len() == 16),
            "{line}"
        );
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "{key} missing: {line}");
        }
    }
    assert!(
        task_lines
            .iter()
            .any(|line| line["message"] == "decision made" && line["agent"] == "director"),
        "{task_lines:?}"
    );
}
