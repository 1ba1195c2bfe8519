//! The token view on the real embedded model (SmolLM2-135M in its worker process): every sampled piece
//! carries its probability and the five likeliest tokens at its position (softmax of the raw logits over
//! the whole vocabulary), free text and grammar-constrained JSON alike; stored coalesced and served with
//! each model call (`GET /llm-calls`) and by the call's tokens route, on SQLite and PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use troupe::config::SamplingSettings;
use troupe::director::plan::plan_request;
use troupe::llm::embedded::EmbeddedProvider;
use troupe::llm::{ChatMessage, LlmProvider, LlmRequest, OutputSpec, TokenInfo, TokenSink};
use troupe::telemetry::metrics::Metrics;

use crate::helpers::{check_token_view, model_settings, spawn_app_with};
use crate::postgres::TestDatabase;

/// Runs `request` on the real model with plain greedy decoding (no penalties: the sampled token is then the
/// likeliest of the raw logits); returns each streamed piece with its token view.
async fn pieces_of(request: LlmRequest) -> Vec<(String, TokenInfo)> {
    let mut settings = model_settings();
    settings.llm.temperature = 0.0;
    settings.llm.sampling = SamplingSettings {
        repeat_penalty: 1.0,
        dry_multiplier: 0.0,
        ..settings.llm.sampling
    };
    let provider = EmbeddedProvider::start(&settings.llm, Metrics::new().unwrap())
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let sink: TokenSink = Arc::new(move |piece: &str, info: TokenInfo| {
        kept.lock().unwrap().push((piece.to_owned(), info));
    });
    provider
        .complete(request, sink, CancellationToken::new())
        .await
        .unwrap();
    let pieces = seen.lock().unwrap();
    pieces.clone()
}

#[actix_rt::test]
async fn every_sampled_piece_has_its_probability_and_the_five_likeliest_tokens() {
    let text = LlmRequest {
        purpose: "text".into(),
        messages: vec![ChatMessage::user("Tell me about the sea.")],
        max_tokens: 32,
        output: OutputSpec::Text,
    };
    let pieces = pieces_of(text).await;
    assert!(pieces.len() >= 8, "{pieces:?}");
    let mut first = 0;
    for (piece, info) in &pieces {
        let top = info.top.as_ref().unwrap();
        // The whole vocabulary's five best: always five for a 49k-token vocabulary.
        assert_eq!(top.len(), 5, "{piece:?}: {info:?}");
        let mut token = serde_json::to_value(info).unwrap();
        token["text"] = json!(piece);
        check_token_view(&token);
        // Greedy without penalties samples the likeliest token: it heads its own alternatives, with the
        // piece's very probability (every piece of English text here is one token).
        if top[0].text == *piece {
            assert_eq!(Some(top[0].p), info.p, "{piece:?}: {info:?}");
            first += 1;
        }
    }
    assert!(
        first * 10 >= pieces.len() * 9,
        "the sampled token heads its alternatives in {first} of {} pieces: {pieces:?}",
        pieces.len()
    );

    // Under a grammar (a plan, JSON from its schema): the alternatives are still the model's own, before
    // the grammar, so the sampled token need not be among them; every piece still has its five.
    let plan = plan_request(
        "Write a Python function that adds two numbers",
        2,
        &model_settings().llm.limits,
        &[],
    );
    let pieces = pieces_of(plan).await;
    assert!(pieces.len() >= 4, "{pieces:?}");
    let json: String = pieces.iter().map(|(piece, _)| piece.as_str()).collect();
    serde_json::from_str::<Value>(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    for (piece, info) in &pieces {
        let mut token = serde_json::to_value(info).unwrap();
        token["text"] = json!(piece);
        check_token_view(&token);
    }
}

/// A task on the real model over the API, on the database at `url` (the test's own SQLite file when
/// `None`): each model call is served with its tokens, each with its alternatives, exactly as the event log
/// and the call's tokens route have them.
async fn tokens_are_served_with_their_model_call(url: Option<String>) {
    let app = spawn_app_with(move |settings| {
        if let Some(url) = url {
            settings.database.url = url;
        }
    })
    .await;
    let id = app
        .submit_with(json!({ "prompt": "Name three prime numbers", "options": { "max_steps": 1 } }))
        .await;
    let events = app.follow(&id, 0, Duration::from_secs(120)).await;
    let terminal = events.last().unwrap()["kind"].as_str().unwrap().to_owned();
    assert!(
        terminal == "task.completed" || terminal == "task.failed",
        "{terminal}"
    );
    let streamed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "llm.token").collect();

    let (status, body) = app.get(&format!("/api/v1/tasks/{id}/llm-calls")).await;
    assert_eq!(status, 200, "{body}");
    let calls = body["calls"].as_array().unwrap();
    let purposes: Vec<&str> = calls
        .iter()
        .map(|call| call["purpose"].as_str().unwrap())
        .collect();
    // The plan (JSON under a grammar), an assignment (a choice), the work (text) and the verification.
    assert!(
        purposes.contains(&"plan") && purposes.contains(&"assign.1"),
        "{purposes:?}"
    );
    let mut served = 0;
    let mut own_found = 0;
    for call in calls {
        assert_eq!(call["tokens_truncated"], false, "{call}");
        let tokens = call["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty(), "{call}");
        let forced_first = call["choice"].is_object();
        for (n, token) in tokens.iter().enumerate() {
            if forced_first && n == 0 {
                // A choice's prefilled text and option were not sampled: nothing is claimed for them.
                assert!(token["p"].is_null() && token["top"].is_null(), "{token}");
            } else if check_token_view(token) {
                own_found += 1;
            }
            // As the event log has it (stored coalesced, read back piece by piece).
            let event = streamed
                .iter()
                .find(|event| event["seq"] == token["seq"])
                .unwrap_or_else(|| panic!("no event for {token}"));
            assert_eq!(event["data"]["text"], token["text"]);
            assert_eq!(
                event["data"].get("top").unwrap_or(&Value::Null),
                &token["top"]
            );
            served += 1;
        }
        let (status, own) = app.get(call["tokens_url"].as_str().unwrap()).await;
        assert_eq!(status, 200, "{own}");
        assert_eq!(own["tokens"], call["tokens"]);
        assert_eq!(own["finished"], true);
    }
    assert_eq!(served, streamed.len(), "every streamed piece is served");
    assert!(own_found > 0, "no sampled token among its own alternatives");

    // Without the tokens: only their URLs.
    let (status, body) = app
        .get(&format!("/api/v1/tasks/{id}/llm-calls?tokens=false"))
        .await;
    assert_eq!(status, 200, "{body}");
    for call in body["calls"].as_array().unwrap() {
        assert!(
            call["tokens"].is_null() && call["tokens_url"].is_string(),
            "{call}"
        );
        assert_eq!(call["tokens_truncated"], false);
    }
    let (status, body) = app
        .get(&format!("/api/v1/tasks/{id}/llm-calls?tokens=maybe"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
}

#[actix_rt::test]
async fn tokens_are_served_with_their_model_call_on_sqlite() {
    tokens_are_served_with_their_model_call(None).await;
}

#[actix_rt::test]
async fn tokens_are_served_with_their_model_call_on_postgres() {
    let database = TestDatabase::create().await;
    tokens_are_served_with_their_model_call(Some(database.url.clone())).await;
    database.drop_now().await;
}
