//! The `openai` provider against real servers: llama.cpp's own `llama-server` (one per test binary, shared,
//! on the SmolLM2 GGUF from `models/`) for streaming, structured output, scored decisions, usage,
//! cancellation and a whole task over the API; and an in-test server speaking Groq's wire format (its
//! headers, `service_tier`, `x_groq`, its 429 body) for retries, errors and rate-limit gauges.
//!
//! `llama-server` is found through `TROUPE_LLAMA_SERVER` (set by nobody; an override) or the cache path
//! `scripts/setup.sh test` builds it into. It runs under `setpriv --pdeathsig KILL` from a thread that lives
//! as long as the test binary, so it dies with the binary even when a test panics.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use troupe::config::{
    FallbackMode, FallbackTarget, ModelEndpoint, ModelOverride, ProviderKind, Secret, Settings,
    StructuredOutput,
};
use troupe::director::plan::{assign_request, parse_plan, plan_request};
use troupe::llm::openai::OpenAiProvider;
use troupe::llm::{
    ChatMessage, LlmError, LlmOutput, LlmProvider, LlmRequest, OutputSpec, TokenInfo, TokenSink,
};
use troupe::telemetry::metrics::Metrics;

use helpers::{root, spawn_app_with};

/// The llama.cpp version `scripts/setup.sh` builds `llama-server` from.
const LLAMA_CPP_PYTHON: &str = "0.3.36";

/// Where `llama-server` is: `TROUPE_LLAMA_SERVER`, else the set-up's cache.
fn llama_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TROUPE_LLAMA_SERVER") {
        return PathBuf::from(path);
    }
    helpers::setup_cache().join(format!("llama-cpp-{LLAMA_CPP_PYTHON}/bin/llama-server"))
}

/// The shared `llama-server`: its API root (with `/v1`). Started once; a failure to start is reported by
/// every test at once rather than retried by each.
fn llama_server() -> &'static str {
    static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
    match SERVER.get_or_init(start_llama_server) {
        Ok(base_url) => base_url,
        Err(error) => panic!("{error}"),
    }
}

fn start_llama_server() -> Result<String, String> {
    let binary = llama_server_binary();
    if !binary.is_file() {
        return Err(format!(
            "llama-server not found at {}: run `scripts/setup.sh test` (or set TROUPE_LLAMA_SERVER)",
            binary.display()
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let exited: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let (started, ready) = std::sync::mpsc::channel();
    // The parent-death signal fires when the spawning *thread* ends: the thread that spawns the server
    // waits for it, so it lives as long as the server or the binary, whichever ends first.
    let watcher = exited.clone();
    std::thread::spawn(move || {
        let child = Command::new("setpriv")
            .arg("--pdeathsig")
            .arg("KILL")
            .arg(&binary)
            .args(["-m", &model.display().to_string()])
            .args(["-t", "2", "-c", "2048", "-np", "2", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(mut child) => {
                started.send(Ok(())).ok();
                let status = child.wait();
                watcher.set(format!("{status:?}")).ok();
            }
            Err(error) => {
                started.send(Err(error.to_string())).ok();
            }
        }
    });
    ready
        .recv()
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("start llama-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = exited.get() {
            return Err(format!("llama-server exited while starting: {status}"));
        }
        let healthy = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut stream| {
                use std::io::{Read, Write};
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                stream
                    .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    .ok()?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer).ok()?;
                Some(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"))
            })
            .unwrap_or(false);
        if healthy {
            return Ok(format!("http://127.0.0.1:{port}/v1"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "llama-server did not become healthy on port {port}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn settings() -> Settings {
    Settings::load_from(&root().join("config"), Some("test")).unwrap()
}

fn endpoint(provider: ProviderKind, base_url: &str) -> ModelEndpoint {
    ModelEndpoint {
        provider,
        model: "SmolLM2-135M-Instruct".into(),
        base_url: base_url.into(),
    }
}

fn local_provider(structured: StructuredOutput) -> (OpenAiProvider, Metrics) {
    let mut settings = settings();
    settings.llm.structured_output = structured;
    // llama-server takes more than OpenAI's 20 alternatives; the 135M model needs them (below).
    settings.llm.top_logprobs = 200;
    let metrics = Metrics::new().unwrap();
    let provider = OpenAiProvider::new(
        &settings.llm,
        &endpoint(ProviderKind::Openai, llama_server()),
        None,
        metrics.clone(),
    )
    .unwrap();
    (provider, metrics)
}

/// A sink that keeps the pieces.
fn collector() -> (TokenSink, Arc<Mutex<Vec<String>>>) {
    let pieces = Arc::new(Mutex::new(Vec::new()));
    let kept = pieces.clone();
    let sink: TokenSink =
        Arc::new(move |piece: &str, _| kept.lock().unwrap().push(piece.to_owned()));
    (sink, pieces)
}

fn text_request(max_tokens: u32) -> LlmRequest {
    LlmRequest {
        purpose: "test".into(),
        messages: vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("Tell me about the sea."),
        ],
        max_tokens,
        output: OutputSpec::Text,
    }
}

async fn complete(
    provider: &OpenAiProvider,
    request: LlmRequest,
) -> (Result<LlmOutput, LlmError>, Vec<String>) {
    let (sink, pieces) = collector();
    let result = provider
        .complete(request, sink, CancellationToken::new())
        .await;
    let pieces = pieces.lock().unwrap().clone();
    (result, pieces)
}

#[actix_rt::test]
async fn text_streams_in_pieces_with_usage() {
    let (provider, _) = local_provider(StructuredOutput::ResponseFormat);
    let (result, pieces) = complete(&provider, text_request(24)).await;
    let output = result.unwrap();
    assert!(pieces.len() > 1, "{pieces:?}");
    assert_eq!(pieces.concat(), output.text);
    assert!(output.usage.input_tokens > 10, "{:?}", output.usage);
    assert!(
        output.usage.output_tokens > 0 && output.usage.output_tokens <= 24,
        "{:?}",
        output.usage
    );
    assert!(output.generation_seconds > 0.0);
    assert_eq!(provider.provider_name(), "openai");
}

#[actix_rt::test]
async fn streamed_pieces_carry_their_probability_and_alternatives_from_the_servers_logprobs() {
    // This llama.cpp's server (tools/server: `populate_token_probs`, `to_json_oaicompat_chat`) puts each
    // streamed token's `logprobs.content` with `top_logprobs` (softmax of the raw logits over the whole
    // vocabulary, like the embedded provider's) on the chunk of that token, text and schema output alike.
    let (provider, _) = local_provider(StructuredOutput::ResponseFormat);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let sink: TokenSink = Arc::new(move |piece: &str, info: TokenInfo| {
        kept.lock().unwrap().push((piece.to_owned(), info));
    });
    for request in [
        text_request(16),
        plan_request(
            "Write a Python function that adds two numbers",
            2,
            &settings().llm.limits,
            &[],
        ),
    ] {
        seen.lock().unwrap().clear();
        provider
            .complete(request, sink.clone(), CancellationToken::new())
            .await
            .unwrap();
        let pieces = seen.lock().unwrap().clone();
        assert!(!pieces.is_empty());
        let mut own_found = 0;
        for (piece, info) in &pieces {
            let p = info
                .p
                .unwrap_or_else(|| panic!("piece {piece:?} has no probability: {pieces:?}"));
            assert!(p > 0.0 && p <= 1.0, "{piece:?}: {p}");
            let mut token = serde_json::to_value(info).unwrap();
            token["text"] = json!(piece);
            if helpers::check_token_view(&token) {
                own_found += 1;
            }
        }
        // Greedy: the sampled token is the likeliest, so it is among its own alternatives (almost always:
        // a piece whose text the server re-spells, or that is two tokens, is not found by its text).
        assert!(
            own_found * 2 > pieces.len(),
            "{own_found} of {} pieces among their alternatives: {pieces:?}",
            pieces.len()
        );
    }
}

#[actix_rt::test]
async fn a_plan_comes_back_as_schema_valid_json_in_every_structured_mode() {
    let limits = settings().llm.limits;
    for mode in [StructuredOutput::ResponseFormat, StructuredOutput::LlamaCpp] {
        let (provider, _) = local_provider(mode);
        let request = plan_request(
            "Write a Python function that adds two numbers",
            2,
            &limits,
            &[],
        );
        let (result, _) = complete(&provider, request).await;
        let output = result.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let plan = parse_plan(&output.text, 2).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(!plan.steps.is_empty() && plan.steps.len() <= 2, "{plan:?}");
    }
}

#[actix_rt::test]
async fn a_decision_is_scored_from_logprobs_given_enough_alternatives() {
    // llama-server is asked for 200 alternatives per token (`local_provider`): a small model may rank the
    // options' first tokens below OpenAI's 20 (measured once with older prompts: "code" 33rd, "re" 107th).
    let limits = settings().llm.limits;
    let (provider, _) = local_provider(StructuredOutput::ResponseFormat);
    let request = assign_request(
        "Write a Python function that adds two numbers",
        1,
        "Write the function",
        &limits,
    );
    let (result, _) = complete(&provider, request).await;
    let output = result.unwrap();
    let choice = output.choice.clone().unwrap();
    assert!(["research", "code", "qa"].contains(&choice.chosen.as_str()));
    assert!(choice.options.iter().all(|o| o.raw_probability.is_none()));
    // With 200 alternatives the options' first tokens are among them: scored, from the model's own
    // log-probabilities (an option below the top 200 gets 0).
    assert!(choice.scored, "{choice:?}");
    let sum: f64 = choice.options.iter().map(|o| o.probability).sum();
    assert!((sum - 1.0).abs() < 1e-6, "{choice:?}");
    // Greedy under the enum: the option written is the one whose first token is likeliest.
    let best = choice
        .options
        .iter()
        .max_by(|a, b| a.probability.total_cmp(&b.probability))
        .unwrap();
    assert_eq!(best.name, choice.chosen, "{choice:?}");
    // The same text shape as the embedded provider's.
    let parsed: Value = serde_json::from_str(&output.text).unwrap();
    assert_eq!(parsed["agent"], choice.chosen.as_str(), "{}", output.text);
    assert!(output.text.starts_with("{\"agent\": \""), "{}", output.text);
    assert!(output.usage.output_tokens > 0);
}

#[actix_rt::test]
async fn cancelling_mid_stream_returns_at_once() {
    let (provider, _) = local_provider(StructuredOutput::ResponseFormat);
    let cancel = CancellationToken::new();
    let cancelled_at = Arc::new(Mutex::new(None));
    let pieces = Arc::new(AtomicUsize::new(0));
    let sink: TokenSink = {
        let (cancel, cancelled_at, pieces) = (cancel.clone(), cancelled_at.clone(), pieces.clone());
        Arc::new(move |_: &str, _| {
            if pieces.fetch_add(1, Ordering::SeqCst) == 2 {
                *cancelled_at.lock().unwrap() = Some(Instant::now());
                cancel.cancel();
            }
        })
    };
    let result = provider.complete(text_request(400), sink, cancel).await;
    let returned = Instant::now();
    assert_eq!(result, Err(LlmError::Cancelled));
    let cancelled_at = cancelled_at
        .lock()
        .unwrap()
        .expect("cancelled after 3 pieces");
    assert!(
        returned - cancelled_at < Duration::from_millis(500),
        "returned {:?} after the cancellation",
        returned - cancelled_at
    );
    assert!(pieces.load(Ordering::SeqCst) < 100);
}

#[actix_rt::test]
async fn a_task_over_the_api_runs_on_the_openai_provider() {
    let base_url = llama_server().to_owned();
    let app = spawn_app_with(move |settings| {
        settings.llm.provider = ProviderKind::Openai;
        settings.llm.model = "SmolLM2-135M-Instruct".into();
        settings.llm.base_url = base_url;
    })
    .await;
    let (_, agents) = app.get("/api/v1/agents").await;
    assert!(agents.to_string().contains("\"openai\""), "{agents}");
    // Ready once the background probe (GET /models) has reached the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, ready) = app.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = app
        .submit("Write a Python function that adds two numbers")
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(240)).await;
    let kinds = helpers::kinds(&events);
    assert!(kinds.contains(&"plan.created".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"llm.token".to_owned()), "{kinds:?}");
    let terminal = kinds.last().unwrap();
    assert!(
        terminal == "task.completed" || terminal == "task.failed",
        "{kinds:?}"
    );
    let decisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "decision.made")
        .collect();
    assert!(!decisions.is_empty(), "{kinds:?}");
    for decision in decisions {
        let options = decision["data"]["options"].as_array().unwrap();
        assert_eq!(options.len(), 3, "{decision}");
        let sum: f64 = options
            .iter()
            .map(|o| o["probability"].as_f64().unwrap())
            .sum();
        // Scored (the model's probabilities, summing to 1) or unscored (all 0); never anything between.
        assert!((sum - 1.0).abs() < 1e-6 || sum == 0.0, "{decision}");
    }
    // The token view over the API: every streamed piece with its probability and alternatives, served
    // with its model call and by the call's tokens route alike.
    let (_, calls) = app.get(&format!("/api/v1/tasks/{id}/llm-calls")).await;
    let calls = calls["calls"].as_array().unwrap();
    assert!(!calls.is_empty(), "{kinds:?}");
    for call in calls {
        let tokens = call["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty(), "{call}");
        for token in tokens {
            helpers::check_token_view(token);
        }
        let url = call["tokens_url"].as_str().unwrap();
        let (status, own) = app.get(url).await;
        assert_eq!(status, 200, "{own}");
        assert_eq!(&own["tokens"], &call["tokens"]);
    }
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    match task["status"].as_str().unwrap() {
        "completed" => assert!(task["result"]["answer"].is_string(), "{task}"),
        "failed" => assert!(
            task["error"].as_str().is_some_and(|e| !e.is_empty()),
            "a failed task says why: {task}"
        ),
        other => panic!("task ended as {other}: {task}"),
    }
    assert!(
        task["usage"]["completion_tokens"].as_i64().unwrap() > 0,
        "{task}"
    );
    let scrape = app.metrics().await;
    assert!(
        scrape.contains(
            "troupe_llm_tokens_total{model=\"SmolLM2-135M-Instruct\",provider=\"openai\""
        ),
        "no openai token counts in the scrape"
    );
}

// --- Groq's wire format, from an in-test server ---------------------------------------------------

/// What the fake Groq answers, one per request in order (the last repeats).
#[derive(Clone)]
enum Reply {
    /// 200 with these content pieces streamed.
    Stream(Vec<&'static str>),
    /// 429 with `retry-after` (seconds) and Groq's error body.
    RateLimited(u64),
    /// This status with an error body.
    Status(u16),
    /// 200, one piece, then an error event inside the stream.
    BrokenStream,
    /// 200 with an answer that fits the request: an instance of its JSON schema (the first option of an
    /// enum, a phrase within a string's length bounds), or a sentence for free text. Answers every call of a whole task.
    FromSchema,
}

/// A value valid for `schema` (the subset Troupe's schemas use: objects, strings, enums, arrays).
fn instance_of(schema: &Value) -> Value {
    if let Some(options) = schema["enum"].as_array() {
        return options[0].clone();
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    if let Some(alternatives) = schema["anyOf"].as_array() {
        return instance_of(&alternatives[0]);
    }
    if let Some(positions) = schema["prefixItems"].as_array() {
        return Value::Array(positions.iter().map(instance_of).collect());
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut object = serde_json::Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (key, property) in properties {
                    object.insert(key.clone(), instance_of(property));
                }
            }
            Value::Object(object)
        }
        Some("array") => {
            let count = schema["minItems"].as_u64().unwrap_or(1).max(1);
            Value::Array((0..count).map(|_| instance_of(&schema["items"])).collect())
        }
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(true),
        _ => {
            let least = schema["minLength"].as_u64().unwrap_or(0) as usize;
            let most = schema["maxLength"].as_u64().unwrap_or(64) as usize;
            let text: String = "Name three prime numbers and say why they are prime"
                .chars()
                .cycle()
                .take(most.min(24).max(least))
                .collect();
            json!(text)
        }
    }
}

/// The answer `Reply::FromSchema` gives to a request `body`.
fn answer_to(body: &Value) -> String {
    let schema = if body["response_format"]["json_schema"]["schema"].is_object() {
        &body["response_format"]["json_schema"]["schema"]
    } else {
        &body["json_schema"]
    };
    if schema.is_object() {
        instance_of(schema).to_string()
    } else {
        "Two, three and five are prime.".to_owned()
    }
}

struct FakeGroq {
    base_url: String,
    requests: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(text) => json!({ "content": text }),
        None => json!({}),
    };
    let chunk = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "llama-3.1-8b-instant",
        "system_fingerprint": "fp_1", "service_tier": "on_demand",
        "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        "x_groq": { "id": "req_01" }
    });
    format!("data: {chunk}\n\n")
}

fn groq_headers(builder: &mut actix_web::HttpResponseBuilder) {
    builder
        .insert_header(("x-groq-region", "us-east-1"))
        .insert_header(("x-ratelimit-limit-requests", "14400"))
        .insert_header(("x-ratelimit-limit-tokens", "6000"))
        .insert_header(("x-ratelimit-remaining-requests", "14399"))
        .insert_header(("x-ratelimit-remaining-tokens", "5990"))
        .insert_header(("x-ratelimit-reset-requests", "6s"))
        .insert_header(("x-ratelimit-reset-tokens", "100ms"));
}

fn reply(reply: &Reply, body: &Value) -> HttpResponse {
    match reply {
        Reply::FromSchema => self::reply(&Reply::Stream(vec![leak(&answer_to(body))]), body),
        Reply::Stream(pieces) => {
            let mut body = String::new();
            for piece in pieces {
                body.push_str(&chunk(Some(piece), None));
            }
            body.push_str(&chunk(None, Some("stop")));
            let usage = json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "service_tier": "on_demand",
                "choices": [], "x_groq": { "id": "req_01", "usage": {
                    "queue_time": 0.02, "prompt_tokens": 40, "prompt_time": 0.01,
                    "completion_tokens": pieces.len(), "completion_time": 0.02, "total_tokens": 40 + pieces.len()
                } }
            });
            body.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
            let mut builder = HttpResponse::Ok();
            groq_headers(&mut builder);
            builder.content_type("text/event-stream").body(body)
        }
        Reply::RateLimited(seconds) => {
            let mut builder = HttpResponse::TooManyRequests();
            groq_headers(&mut builder);
            builder
                .insert_header(("retry-after", seconds.to_string()))
                .json(json!({ "error": {
                    "message": "Rate limit reached for model `llama-3.1-8b-instant` on tokens per minute (TPM): Limit 6000, Used 5995, Requested 40. Please try again in 1s.",
                    "type": "tokens", "code": "rate_limit_exceeded" } }))
        }
        Reply::Status(status) => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(*status).unwrap(),
        )
        .json(json!({ "error": {
            "message": if *status == 401 { "Invalid API Key" } else { "Internal Server Error" },
            "type": "invalid_request_error",
            "code": if *status == 401 { "invalid_api_key" } else { "internal_server_error" } } })),
        Reply::BrokenStream => {
            let error = json!({ "error": { "message": "Internal Server Error", "type": "internal_server_error", "code": 500 } });
            let body = format!("{}data: {error}\n\n", chunk(Some("Hel"), None));
            let mut builder = HttpResponse::Ok();
            groq_headers(&mut builder);
            builder.content_type("text/event-stream").body(body)
        }
    }
}

async fn fake_groq(script: Vec<Reply>) -> FakeGroq {
    let requests = Arc::new(AtomicUsize::new(0));
    let authorizations = Arc::new(Mutex::new(Vec::new()));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let state = (
        Arc::new(script),
        requests.clone(),
        authorizations.clone(),
        bodies.clone(),
    );
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new()
            .route(
                "/openai/v1/models",
                web::get().to(|| async {
                    HttpResponse::Ok().json(json!({ "object": "list", "data": [
                        { "id": "llama-3.1-8b-instant", "object": "model", "owned_by": "Meta" } ] }))
                }),
            )
            .route(
            "/openai/v1/chat/completions",
            web::post().to(move |request: HttpRequest, body: web::Json<Value>| {
                let (script, requests, authorizations, bodies) = state.clone();
                async move {
                    let index = requests.fetch_add(1, Ordering::SeqCst);
                    let authorization = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    authorizations.lock().unwrap().push(authorization);
                    let body = body.into_inner();
                    let response = reply(&script[index.min(script.len() - 1)], &body);
                    bodies.lock().unwrap().push(body);
                    response
                }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    actix_rt::spawn(server.run());
    FakeGroq {
        base_url: format!("http://127.0.0.1:{port}/openai/v1"),
        requests,
        authorizations,
        bodies,
    }
}

const KEY: &str = "gsk_test_0123456789";

/// A `'static` copy of `text`, for `Reply::Stream` pieces made at run time (a test leaks a few bytes).
fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

fn groq_provider(groq: &FakeGroq, max_retries: u32) -> (OpenAiProvider, Metrics) {
    let mut settings = settings();
    settings.llm.max_retries = max_retries;
    let metrics = Metrics::new().unwrap();
    let endpoint = ModelEndpoint {
        provider: ProviderKind::Groq,
        model: "llama-3.1-8b-instant".into(),
        base_url: groq.base_url.clone(),
    };
    let provider = OpenAiProvider::new(
        &settings.llm,
        &endpoint,
        Some(&Secret::new(KEY)),
        metrics.clone(),
    )
    .unwrap();
    (provider, metrics)
}

fn retries(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .llm_retries
        .with_label_values(&["groq", reason])
        .get()
}

#[actix_rt::test]
async fn groq_a_429_is_retried_after_its_retry_after_then_succeeds() {
    let groq = fake_groq(vec![
        Reply::RateLimited(1),
        Reply::Stream(vec!["Hel", "lo"]),
    ])
    .await;
    let (provider, metrics) = groq_provider(&groq, 2);
    assert_eq!(provider.provider_name(), "groq");
    let started = Instant::now();
    let (result, pieces) = complete(&provider, text_request(16)).await;
    let output = result.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(output.text, "Hello");
    assert_eq!(pieces, vec!["Hel", "lo"]);
    assert_eq!(
        (output.usage.input_tokens, output.usage.output_tokens),
        (40, 2)
    );
    assert_eq!(groq.requests.load(Ordering::SeqCst), 2);
    assert_eq!(retries(&metrics, "rate_limited"), 1);
    // The key only as the bearer token; no logprobs asked of Groq.
    assert!(groq
        .authorizations
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == &format!("Bearer {KEY}")));
    assert!(groq.bodies.lock().unwrap()[0].get("logprobs").is_none());
    // The rate-limit gauges from the headers.
    let gauge = |g: &prometheus::GaugeVec, kind: &str| g.with_label_values(&["groq", kind]).get();
    assert_eq!(gauge(&metrics.llm_rate_limit_remaining, "tokens"), 5990.0);
    assert_eq!(
        gauge(&metrics.llm_rate_limit_remaining, "requests"),
        14399.0
    );
    assert_eq!(gauge(&metrics.llm_rate_limit_limit, "tokens"), 6000.0);
    assert!((gauge(&metrics.llm_rate_limit_reset, "tokens") - 0.1).abs() < 1e-9);
    assert!(provider.check_ready().is_ok());
}

#[actix_rt::test]
async fn groq_retries_exhausted_give_a_typed_rate_limit_error() {
    let groq = fake_groq(vec![Reply::RateLimited(0)]).await;
    let (provider, metrics) = groq_provider(&groq, 2);
    let (result, pieces) = complete(&provider, text_request(16)).await;
    match result {
        Err(LlmError::RateLimited {
            retry_after_seconds,
            message,
        }) => {
            assert_eq!(retry_after_seconds, Some(0));
            assert!(message.contains("rate_limit_exceeded"), "{message}");
            assert!(!message.contains(KEY));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(pieces.is_empty());
    assert_eq!(
        groq.requests.load(Ordering::SeqCst),
        3,
        "one call and two retries"
    );
    assert_eq!(retries(&metrics, "rate_limited"), 2);
}

#[actix_rt::test]
async fn groq_a_server_error_before_the_stream_is_retried() {
    let groq = fake_groq(vec![Reply::Status(503), Reply::Stream(vec!["ok"])]).await;
    let (provider, metrics) = groq_provider(&groq, 2);
    let (result, _) = complete(&provider, text_request(16)).await;
    assert_eq!(result.unwrap().text, "ok");
    assert_eq!(retries(&metrics, "http_5xx"), 1);
}

#[actix_rt::test]
async fn groq_an_error_after_the_stream_began_is_not_retried() {
    let groq = fake_groq(vec![Reply::BrokenStream, Reply::Stream(vec!["never"])]).await;
    let (provider, metrics) = groq_provider(&groq, 2);
    let (result, pieces) = complete(&provider, text_request(16)).await;
    match result {
        Err(LlmError::Http { status: 500, .. }) => {}
        other => panic!("expected Http 500, got {other:?}"),
    }
    assert_eq!(pieces, vec!["Hel"]);
    assert_eq!(groq.requests.load(Ordering::SeqCst), 1);
    assert_eq!(retries(&metrics, "http_5xx"), 0);
}

#[actix_rt::test]
async fn groq_a_401_is_an_auth_error_and_not_retried() {
    let groq = fake_groq(vec![Reply::Status(401)]).await;
    let (provider, metrics) = groq_provider(&groq, 2);
    let (result, _) = complete(&provider, text_request(16)).await;
    match &result {
        Err(error @ LlmError::Auth(_)) => {
            assert_eq!(error.kind(), "auth");
            assert!(!error.falls_back());
            assert!(!error.to_string().contains(KEY), "{error}");
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    assert_eq!(groq.requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        retries(&metrics, "http_5xx") + retries(&metrics, "rate_limited"),
        0
    );
    assert!(
        provider.check_ready().is_err(),
        "refused credentials make it unready"
    );
}

#[actix_rt::test]
async fn groq_choices_are_unscored_without_logprobs() {
    let groq = fake_groq(vec![Reply::Stream(vec![
        "{\"agent\": \"",
        "code",
        "\", \"reason\": \"it writes code\"}",
    ])])
    .await;
    let (provider, _) = groq_provider(&groq, 0);
    let limits = settings().llm.limits;
    let request = assign_request("Add two numbers", 1, "Write the function", &limits);
    let (result, _) = complete(&provider, request).await;
    let output = result.unwrap();
    let choice = output.choice.unwrap();
    assert!(!choice.scored);
    assert_eq!(choice.chosen, "code");
    assert!(
        choice.options.iter().all(|o| o.probability == 0.0),
        "{choice:?}"
    );
    assert_eq!(
        output.text,
        "{\"agent\": \"code\", \"reason\": \"it writes code\"}"
    );
    let body = groq.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["properties"]["agent"]["enum"],
        json!(["research", "code", "qa"])
    );
}

#[actix_rt::test]
async fn groq_pieces_carry_no_probability_and_no_alternatives() {
    let groq = fake_groq(vec![Reply::Stream(vec!["Hel", "lo"])]).await;
    let (provider, _) = groq_provider(&groq, 0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let sink: TokenSink = Arc::new(move |piece: &str, info: TokenInfo| {
        kept.lock().unwrap().push((piece.to_owned(), info));
    });
    provider
        .complete(text_request(16), sink, CancellationToken::new())
        .await
        .unwrap();
    // Groq sends `"logprobs": null`: nothing is invented.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("Hel".to_owned(), TokenInfo::unknown()),
            ("lo".to_owned(), TokenInfo::unknown())
        ]
    );
    assert!(groq.bodies.lock().unwrap()[0].get("top_logprobs").is_none());
}

#[actix_rt::test]
async fn groq_an_answer_off_its_schema_is_asked_again_then_fails_typed() {
    let groq = fake_groq(vec![Reply::Stream(vec!["{\"steps\": []}"])]).await;
    let (provider, _) = groq_provider(&groq, 0);
    let limits = settings().llm.limits;
    let request = plan_request("Add two numbers", 2, &limits, &[]);
    let (result, _) = complete(&provider, request).await;
    match result {
        Err(LlmError::Malformed(message)) => {
            assert!(message.contains("at least 1 items"), "{message}")
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert_eq!(groq.requests.load(Ordering::SeqCst), 2, "asked once more");
    let second = groq.bodies.lock().unwrap()[1].clone();
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages[messages.len() - 2]["role"], "assistant");
    assert!(messages[messages.len() - 1]["content"]
        .as_str()
        .unwrap()
        .contains("at least 1 items"));
}

// --- Groq as the cloud fallback of a failing primary -------------------------------------------------

/// An OpenAI-compatible base URL on which nothing listens (connection refused).
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

/// Groq, enabled as the fallback in `mode`, at the fake server.
fn with_groq_fallback(settings: &mut Settings, groq: &str, mode: FallbackMode) {
    settings.llm.groq.enabled = true;
    settings.llm.groq.model = "llama-3.1-8b-instant".into();
    settings.llm.groq.base_url = groq.to_owned();
    settings.llm.groq.api_key = Some(Secret::new(KEY));
    settings.llm.fallback = FallbackTarget::Groq;
    settings.llm.fallback_mode = mode;
    settings.llm.max_retries = 0;
}

/// A primary `openai` server that refuses connections, for every agent.
fn with_broken_primary(settings: &mut Settings, url: String) {
    settings.llm.provider = ProviderKind::Openai;
    settings.llm.model = "qwen2.5:7b".into();
    settings.llm.base_url = url;
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

#[actix_rt::test]
async fn a_failing_primary_falls_back_to_groq_at_once_in_auto_mode() {
    let groq = fake_groq(vec![Reply::FromSchema]).await;
    let (primary, groq_url) = (closed_port_url(), groq.base_url.clone());
    let app = spawn_app_with(move |settings| {
        with_broken_primary(settings, primary);
        with_groq_fallback(settings, &groq_url, FallbackMode::Auto);
    })
    .await;
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(agents["models"]["fallback"]["provider"], "groq", "{agents}");
    let id = app
        .submit_with(json!({ "prompt": "Name three prime numbers", "options": { "max_steps": 1 } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(120)).await;
    let kinds = helpers::kinds(&events);
    // The first call fell back; the task's later calls went to Groq directly.
    let fallbacks = of_kind(&events, "llm.fallback");
    assert_eq!(fallbacks.len(), 1, "{kinds:?}");
    let fallback = &fallbacks[0]["data"];
    assert_eq!(fallback["purpose"], "plan");
    assert_eq!(fallback["from"]["provider"], "openai");
    assert_eq!(fallback["to"]["provider"], "groq");
    assert_eq!(fallback["to"]["model"], "llama-3.1-8b-instant");
    assert_eq!(fallback["reason"], "connect");
    assert!(of_kind(&events, "task.paused").is_empty(), "{kinds:?}");
    // Groq returns no logprobs: its decisions say they are unscored and show no confidence.
    let decisions = of_kind(&events, "decision.made");
    assert!(!decisions.is_empty(), "{kinds:?}");
    for decision in decisions {
        assert_eq!(decision["data"]["scored"], false, "{decision}");
        assert!(decision["data"]["confidence"].is_null(), "{decision}");
    }
    let finished = of_kind(&events, "llm.finished");
    assert!(finished.len() >= 3, "{kinds:?}");
    for call in &finished {
        assert_eq!(call["data"]["provider"], "groq", "{call}");
        assert!(call["data"]["cost_usd"].as_f64().unwrap() > 0.0, "{call}");
    }
    assert_eq!(groq.requests.load(Ordering::SeqCst), finished.len());
    // Its tokens over the API: no probability, no alternatives (null), with each model call.
    let (_, calls) = app.get(&format!("/api/v1/tasks/{id}/llm-calls")).await;
    let calls = calls["calls"].as_array().unwrap();
    assert!(!calls.is_empty());
    let mut tokens = 0;
    for call in calls {
        assert_eq!(call["tokens_truncated"], false, "{call}");
        for token in call["tokens"].as_array().unwrap() {
            assert!(token["p"].is_null() && token["top"].is_null(), "{token}");
            tokens += 1;
        }
    }
    assert!(tokens > 0, "{calls:?}");
    // Priced at Groq's shipped list: $0.05 in and $0.08 out per million tokens.
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    let usage = &task["usage"];
    let expected = (usage["prompt_tokens"].as_f64().unwrap() * 0.05
        + usage["completion_tokens"].as_f64().unwrap() * 0.08)
        / 1e6;
    let cost = usage["cost_usd"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-12 && cost > 0.0, "{usage}");
    let scrape = app.metrics().await;
    assert_eq!(
        helpers::metric_value(
            &scrape,
            "troupe_llm_fallbacks_total{from=\"openai\",reason=\"connect\",to=\"groq\"}"
        ),
        1.0
    );
    assert!(
        helpers::metric_value(
            &scrape,
            "troupe_llm_cost_usd_total{model=\"llama-3.1-8b-instant\",provider=\"groq\"}"
        ) > 0.0
    );
}

/// Starts an app whose every call fails on the primary, with Groq in `confirm` mode and this confirmation
/// timeout, submits a task and waits until it is paused at its first call.
async fn paused_task(confirm_timeout_seconds: u64) -> (helpers::TestApp, FakeGroq, String, Value) {
    let groq = fake_groq(vec![Reply::FromSchema]).await;
    let (primary, groq_url) = (closed_port_url(), groq.base_url.clone());
    let app = spawn_app_with(move |settings| {
        with_broken_primary(settings, primary);
        with_groq_fallback(settings, &groq_url, FallbackMode::Confirm);
        settings.llm.confirm_timeout_seconds = confirm_timeout_seconds;
    })
    .await;
    let id = app
        .submit_with(json!({ "prompt": "Name three prime numbers", "options": { "max_steps": 1 } }))
        .await;
    app.wait_for_task(&id, Duration::from_secs(60), |task| {
        task["status"] == "paused" || task["status"] == "failed"
    })
    .await;
    let (_, body) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    let paused = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "task.paused")
        .cloned()
        .unwrap_or_else(|| panic!("no task.paused: {body}"));
    (app, groq, id, paused)
}

#[actix_rt::test]
async fn confirm_mode_pauses_until_a_person_declines_and_then_the_task_fails() {
    let (app, groq, id, paused) = paused_task(300).await;
    let data = &paused["data"];
    assert_eq!(data["reason"], "cloud_fallback");
    assert_eq!(data["purpose"], "plan");
    assert_eq!(data["to"]["provider"], "groq");
    assert!(data["estimated_cost_usd"].as_f64().unwrap() > 0.0, "{data}");
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{id}/confirm"),
            &json!({ "allow": false }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let task = app
        .wait_for_task(&id, Duration::from_secs(30), |t| t["status"] == "failed")
        .await;
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("cloud fallback declined"), "{error}");
    assert_eq!(
        groq.requests.load(Ordering::SeqCst),
        0,
        "nothing went to Groq"
    );
    let events = app.follow(&id, 0, Duration::from_secs(10)).await;
    let resumed = of_kind(&events, "task.resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["data"]["answer"], "declined");
    assert!(of_kind(&events, "llm.fallback").is_empty());
}

#[actix_rt::test]
async fn confirm_mode_fails_a_task_nobody_answers_in_time() {
    let (app, groq, id, _) = paused_task(1).await;
    let task = app
        .wait_for_task(&id, Duration::from_secs(30), |t| t["status"] == "failed")
        .await;
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("cloud fallback timed_out"), "{error}");
    assert_eq!(groq.requests.load(Ordering::SeqCst), 0);
    // A late answer finds nothing waiting.
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{id}/confirm"),
            &json!({ "allow": true }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

#[actix_rt::test]
async fn a_pause_inside_a_step_does_not_count_against_the_step_timeout() {
    // The Director thinks on the embedded model; the specialists' server is down, so the step's first call
    // pauses for a confirmation that comes after the step timeout has passed.
    let groq = fake_groq(vec![Reply::FromSchema]).await;
    let (broken, groq_url) = (closed_port_url(), groq.base_url.clone());
    let app = spawn_app_with(move |settings| {
        for agent in ["research", "code", "qa"] {
            settings.llm.agents.insert(
                agent.into(),
                ModelOverride {
                    provider: Some(ProviderKind::Openai),
                    model: Some("qwen2.5:7b".into()),
                    base_url: Some(broken.clone()),
                },
            );
        }
        with_groq_fallback(settings, &groq_url, FallbackMode::Confirm);
        settings.director.step_timeout_seconds = 2;
    })
    .await;
    let id = app
        .submit_with(json!({ "prompt": "Name three prime numbers", "options": { "max_steps": 1 } }))
        .await;
    app.wait_for_task(&id, Duration::from_secs(600), |task| {
        task["status"] == "paused" || task["status"] == "failed" || task["status"] == "completed"
    })
    .await;
    let paused_at = Instant::now();
    // What is tested is that time passes while the task waits: three seconds, past the 2 s step timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "paused", "{task}");
    assert!(paused_at.elapsed() > Duration::from_secs(2));
    let (status, body) = app
        .post_json(
            &format!("/api/v1/tasks/{id}/confirm"),
            &json!({ "allow": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events = app.follow(&id, 0, Duration::from_secs(600)).await;
    let kinds = helpers::kinds(&events);
    assert!(!kinds.contains(&"agent.restarted".to_owned()), "{kinds:?}");
    assert_eq!(
        of_kind(&events, "task.paused").len(),
        1,
        "asked once: {kinds:?}"
    );
    let resumed = of_kind(&events, "task.resumed");
    assert_eq!(resumed[0]["data"]["answer"], "allowed");
    let fallbacks = of_kind(&events, "llm.fallback");
    assert!(!fallbacks.is_empty(), "{kinds:?}");
    assert!(fallbacks[0]["agent"] != "director", "{:?}", fallbacks[0]);
    assert!(groq.requests.load(Ordering::SeqCst) > 0);
    let (_, task) = app.get(&format!("/api/v1/tasks/{id}")).await;
    if let Some(error) = task["error"].as_str() {
        assert!(!error.contains("no answer within"), "{task}");
        assert!(!error.contains("cloud fallback"), "{task}");
    }
}

/// An experiment of two models: the embedded one (the configured `[llm]`) against the same weights behind
/// `llama-server`, named `[llm.models.server]` and picked by one variant's `options.model`. Each run's model
/// calls go to its variant's provider, and the report compares them; an unknown model is a 400.
#[actix_rt::test]
async fn an_experiment_compares_the_embedded_model_with_a_named_server_model() {
    let base_url = llama_server().to_owned();
    let app = spawn_app_with(move |settings| {
        settings.llm.models.insert(
            "server".into(),
            troupe::config::ModelOverride {
                provider: Some(ProviderKind::Openai),
                model: Some("SmolLM2-135M-Instruct".into()),
                base_url: Some(base_url),
            },
        );
    })
    .await;
    let (_, agents) = app.get("/api/v1/agents").await;
    assert_eq!(
        agents["models"]["named"]["server"]["provider"], "openai",
        "{agents}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = app
        .post_json(
            "/api/v1/experiments",
            &json!({
                "prompts": ["What is the capital of France?"],
                "variants": [
                    { "name": "embedded", "options": { "max_steps": 1 } },
                    { "name": "server", "options": { "max_steps": 1, "model": "server" } }
                ]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let location = format!("/api/v1/experiments/{}", body["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(240);
    let report = loop {
        let (_, report) = app.get(&location).await;
        if report["status"] == "completed" {
            break report;
        }
        assert!(Instant::now() < deadline, "{report:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for run in report["runs"].as_array().unwrap() {
        let task = run["task"].as_str().unwrap();
        let (_, calls) = app.get(&format!("/api/v1/tasks/{task}/llm-calls")).await;
        let providers: std::collections::BTreeSet<&str> = calls["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|call| call["provider"].as_str())
            .filter(|provider| !provider.ends_with("(cached)"))
            .collect();
        let expected = if run["variant"] == "server" {
            "openai"
        } else {
            "llama.cpp"
        };
        assert_eq!(
            providers.into_iter().collect::<Vec<_>>(),
            vec![expected],
            "{calls:#}"
        );
    }
    assert_eq!(report["variants"][0]["ended"], 1, "{report:#}");
    assert_eq!(report["variants"][1]["ended"], 1, "{report:#}");
    let (status, body) = app
        .post_json(
            "/api/v1/tasks",
            &json!({ "prompt": "p", "options": { "model": "nowhere" } }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[llm.models.<name>] names: server"),
        "{body}"
    );
}
