//! Troupe as an OpenAI-compatible model (issue 18), driven by the `async-openai` client itself against the
//! real app on the real embedded model: a streamed answer (typed chunks, the content is the task's answer),
//! the agents' progress as `reasoning_content` with the usage chunk, a non-streamed completion, the model
//! list, errors in OpenAI's shape, and a client that goes away cancelling its task.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::Client;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

const PROMPT: &str = "Name three prime numbers";

fn client(app: &TestApp) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", app.address))
            .with_api_key("unused-on-loopback"),
    )
}

fn request(stream: bool) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("troupe")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(PROMPT)
            .build()
            .unwrap()
            .into()])
        .stream(stream)
        .build()
        .unwrap()
}

fn task_of(completion_id: &str) -> String {
    completion_id
        .strip_prefix("chatcmpl-")
        .unwrap_or_else(|| panic!("not a Troupe completion id: {completion_id}"))
        .to_owned()
}

#[actix_rt::test]
async fn an_openai_client_streams_a_task_answer() {
    let app = spawn_app().await;
    let client = client(&app);
    let mut stream = client.chat().create_stream(request(true)).await.unwrap();
    let (mut content, mut finish, mut id) = (String::new(), None, String::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.model, "troupe");
        id.clone_from(&chunk.id);
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content {
                content.push_str(&text);
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
    }
    assert_eq!(finish, Some(FinishReason::Stop));
    let task = app
        .wait_for_task(&task_of(&id), Duration::from_secs(5), |task| {
            task["status"] == "completed"
        })
        .await;
    assert_eq!(task["prompt"], PROMPT);
    assert_eq!(
        Some(content.as_str()),
        task["result"]["answer"].as_str(),
        "{task}"
    );
}

#[actix_rt::test]
async fn progress_comes_as_reasoning_and_a_plain_completion_is_the_answer() {
    let app = spawn_app().await;
    let client = client(&app);
    // The agents' progress, read as plain JSON chunks (async-openai's bring-your-own-types calls).
    let mut stream = client
        .chat()
        .create_stream_byot::<Value, Value>(json!({
            "model": "troupe",
            "messages": [{ "role": "user", "content": PROMPT }],
            "stream": true,
            "stream_options": { "include_usage": true },
        }))
        .await
        .unwrap();
    let (mut reasoning, mut usage) = (String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(text) = chunk
            .pointer("/choices/0/delta/reasoning_content")
            .and_then(Value::as_str)
        {
            reasoning.push_str(text);
        }
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
    }
    assert!(reasoning.contains("Plan: 1. "), "{reasoning}");
    assert!(reasoning.contains("Step 1 goes to "), "{reasoning}");
    assert!(reasoning.contains("QA's verdict: "), "{reasoning}");
    let usage = usage.expect("a usage chunk");
    assert!(usage["completion_tokens"].as_i64().unwrap() > 0, "{usage}");

    // Not streamed: the typed response.
    let completion = client.chat().create(request(false)).await.unwrap();
    let answer = completion.choices[0].message.content.clone().unwrap();
    let task = app
        .wait_for_task(&task_of(&completion.id), Duration::from_secs(5), |task| {
            task["status"] == "completed"
        })
        .await;
    assert_eq!(Some(answer.as_str()), task["result"]["answer"].as_str());
    let usage = completion.usage.unwrap();
    assert_eq!(
        i64::from(usage.completion_tokens),
        task["usage"]["completion_tokens"].as_i64().unwrap(),
        "{task}"
    );

    let (status, models) = app.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(
        models["data"],
        json!([{ "id": "troupe", "object": "model", "created": 0, "owned_by": "troupe" }])
    );
}

#[actix_rt::test]
async fn errors_come_in_openai_shape_and_store_nothing() {
    let app = spawn_app().await;
    let client = client(&app);
    let mut wrong = request(false);
    wrong.model = "gpt-4o".into();
    match client.chat().create(wrong).await {
        Err(OpenAIError::ApiError(error)) => {
            assert_eq!(
                error.api_error.code.as_deref(),
                Some("model_not_found"),
                "{error:?}"
            );
            assert_eq!(error.api_error.param.as_deref(), Some("model"), "{error:?}");
            assert!(error.api_error.message.contains("troupe"), "{error:?}");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    // No user message, an image, a broken body: 400 with what is wrong.
    for (body, expected) in [
        (
            json!({ "model": "troupe", "messages": [{ "role": "system", "content": "x" }] }).to_string(),
            "no user message",
        ),
        (
            json!({ "model": "troupe", "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "x" } }] }] }).to_string(),
            "image_url",
        ),
        ("{\"model\": ".to_owned(), "not a chat completion request"),
    ] {
        let mut response = app
            .client
            .post(format!("{}/v1/chat/completions", app.address))
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(expected),
            "{error}"
        );
    }
    let (_, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["tasks"], json!([]), "{page}");
}

#[actix_rt::test]
async fn a_client_that_goes_away_cancels_its_task() {
    let app = spawn_app().await;
    let client = client(&app);
    let mut stream = client
        .chat()
        .create_stream_byot::<Value, Value>(json!({
            "model": "troupe",
            "messages": [{ "role": "user", "content": "Write a Python class for a bank account" }],
            "stream": true,
        }))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let id = task_of(first["id"].as_str().unwrap());
    drop(stream);
    let task = app
        .wait_for_task(&id, Duration::from_secs(15), |task| {
            task["status"] == "cancelled"
        })
        .await;
    assert_eq!(task["status"], "cancelled");
}
