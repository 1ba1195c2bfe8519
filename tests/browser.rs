//! The web dashboard in a real browser: Debian's headless Chromium driven through `chromedriver`
//! (WebDriver, fantoccini) against the real app. Scripted tasks (the replay provider, as in
//! `tests/self_correction.rs`) where the model's quality is not the point; one task on the real embedded
//! model. Screenshots go to `target/screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "scripts.rs"]
#[allow(dead_code)]
mod scripts;
#[path = "dashboard_support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use helpers::{root, spawn_app, spawn_app_with, test_settings, TestApp};
use scripts::{fixed_on_second_attempt, seed_recording};
use support::{start_browser, start_driver, wait_ready, Driver};

/// A browser session and the driver behind it (killed with its browsers when dropped).
struct Session {
    client: Client,
    _driver: Driver,
}

async fn session() -> Session {
    let driver = start_driver().await.expect("chromedriver starts");
    let client = start_browser(&driver).await.expect("chromium starts");
    Session {
        client,
        _driver: driver,
    }
}

async fn screenshot(client: &Client, name: &str) {
    let dir = root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn css(client: &Client, selector: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("no {selector} within 20 s: {error}"))
}

/// Clicks the element `selector` finds (it must be there).
async fn click(client: &Client, selector: &str) {
    client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|error| panic!("no {selector} to click: {error}"))
        .click()
        .await
        .unwrap();
}

async fn count(client: &Client, selector: &str) -> usize {
    client.find_all(Locator::Css(selector)).await.unwrap().len()
}

/// Evaluates `script` (a function body) in the page until it returns true (bounded).
async fn until(client: &Client, limit: Duration, what: &str, script: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let value = client.execute(script, vec![]).await.unwrap();
        if value == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scripted_app(dir: &tempfile::TempDir) -> (TestApp, String) {
    let url = format!(
        "sqlite://{}/dashboard.sqlite?mode=rwc",
        dir.path().display()
    );
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.director.code_attempts = 3;
        settings.memory.enabled = false;
    })
    .await;
    (app, url)
}

#[actix_rt::test]
async fn the_overview_shows_a_task_live_and_its_page_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = scripted_app(&dir).await;
    let source = seed_recording(&url, &fixed_on_second_attempt()).await;
    let Session { client, _driver } = session().await;

    client.goto(&format!("{}/", app.address)).await.unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    // The agents table lists every agent.
    css(&client, "#agents table").await;
    for agent in ["director", "research", "code", "qa"] {
        css(&client, &format!("#agents tr[data-agent='{agent}']")).await;
    }
    // The page is marked: a reload would lose the mark.
    client
        .execute("window.__sameDocument = true; return true;", vec![])
        .await
        .unwrap();

    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    css(&client, &format!("#tasks tr[data-task='{id}']")).await;
    until(
        &client,
        Duration::from_secs(60),
        "the task's row to say completed",
        &format!(
            "const row = document.querySelector(\"#tasks tr[data-task='{id}']\"); \
             return !!row && row.dataset.status === 'completed' && \
             row.querySelector('.badge').textContent === 'completed';"
        ),
    )
    .await;
    let same = client
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, Value::Bool(true), "the overview reloaded");
    // Stats and the collaboration graph have drawn (or said why not) by now.
    css(&client, "#chart-tokens .chart, #chart-tokens .note").await;
    css(&client, "#collaboration .graph, #collaboration .note").await;
    screenshot(&client, "overview").await;

    // Its page: the plan, the decision with every option's probability, the attempts as branches.
    client
        .goto(&format!("{}/tasks/{id}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    css(&client, "#panel-decisions .node-card.step").await;
    let options: Vec<String> = {
        let mut texts = Vec::new();
        for element in client
            .find_all(Locator::Css("#panel-decisions .decision .option-p"))
            .await
            .unwrap()
        {
            texts.push(element.text().await.unwrap());
        }
        texts
    };
    assert_eq!(options.len(), 3, "{options:?}");
    assert!(
        options.iter().any(|text| text.starts_with("0.80")),
        "{options:?}"
    );
    assert_eq!(count(&client, "#panel-decisions .attempt").await, 2);
    assert_eq!(count(&client, "#panel-decisions .attempt.failed").await, 1);
    css(&client, "#panel-decisions [data-verdict='pass']").await;
    screenshot(&client, "task-decisions").await;

    // The timeline: bars for the step, the model calls and the sandbox runs.
    click(&client, "#tab-timeline").await;
    css(&client, "#panel-timeline svg rect.item").await;
    assert!(count(&client, "#panel-timeline rect.item").await >= 5);
    screenshot(&client, "task-timeline").await;

    // The token stream of a model call.
    click(&client, "#tab-tokens").await;
    css(
        &client,
        "#panel-tokens .call-list button[data-purpose='plan']",
    )
    .await;
    css(&client, "#stream span[title]").await;
    let streamed = client
        .find(Locator::Css("#stream"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(streamed.contains("steps"), "{streamed}");
    screenshot(&client, "task-tokens").await;

    for panel in ["sandbox", "tools", "result", "events"] {
        click(&client, &format!("#tab-{panel}")).await;
        css(
            &client,
            &format!("#panel-{panel}:not([hidden]) > *:not(.loading)"),
        )
        .await;
        screenshot(&client, &format!("task-{panel}")).await;
    }
    assert!(count(&client, "#panel-sandbox .sandbox-run").await >= 2);
    css(&client, "#panel-result .hl-kw").await; // the code, highlighted
    client.close().await.unwrap();
}

#[actix_rt::test]
async fn a_ten_thousand_event_task_is_ready_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = scripted_app(&dir).await;
    let settings = test_settings(&tempfile::tempdir().unwrap());
    let writer = support::writer_on(&url, &settings).await.unwrap();
    let id = support::seed_big_task(&writer, 10_000).await.unwrap();
    let (_, events) = app.get(&format!("/api/v1/tasks/{id}/events")).await;
    let stored = events["events"].as_array().unwrap().len();
    assert!(stored >= 9_900, "{stored} events");

    let Session { client, _driver } = session().await;
    client
        .goto(&format!("{}/tasks/{id}?panel=timeline", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let ready = support::ready_ms(&client).await.unwrap();
    println!("10,000-event task page ready in {ready:.0} ms");
    assert!(ready < 2000.0, "ready after {ready:.0} ms");
    assert!(count(&client, "#panel-timeline rect.item").await >= 18 * 2);
    screenshot(&client, "big-task-timeline").await;

    // Tokens of one call only, shaded by probability.
    click(&client, "#tab-tokens").await;
    css(
        &client,
        "#panel-tokens .call-list button[aria-pressed='true']",
    )
    .await;
    css(&client, "#stream span.p0, #stream span.p4").await;
    let shown = count(&client, "#stream span").await;
    assert!((500..1000).contains(&shown), "{shown} token spans");
    screenshot(&client, "big-task-tokens").await;
    client.close().await.unwrap();
}

#[actix_rt::test]
async fn url_state_round_trips_through_reload_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = scripted_app(&dir).await;
    let settings = test_settings(&tempfile::tempdir().unwrap());
    let writer = support::writer_on(&url, &settings).await.unwrap();
    let id = support::seed_big_task(&writer, 600).await.unwrap();
    let Session { client, _driver } = session().await;

    client
        .goto(&format!("{}/tasks/{id}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    click(&client, "#tab-tokens").await;
    css(&client, "#panel-tokens .call-list button").await;
    click(
        &client,
        "#panel-tokens .call-list button[data-purpose='work.2.call3']",
    )
    .await;
    css(
        &client,
        "#panel-tokens button[data-purpose='work.2.call3'][aria-pressed='true']",
    )
    .await;
    let address = client.current_url().await.unwrap();
    assert!(address.as_str().contains("panel=tokens"), "{address}");
    assert!(address.as_str().contains("call=work.2.call3"), "{address}");

    client.refresh().await.unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    css(&client, "#tab-tokens[aria-selected='true']").await;
    css(
        &client,
        "#panel-tokens button[data-purpose='work.2.call3'][aria-pressed='true']",
    )
    .await;

    // Back: the call chosen before; back again: the first panel.
    client.back().await.unwrap();
    css(
        &client,
        "#panel-tokens button[data-purpose='work.1.call0'][aria-pressed='true']",
    )
    .await;
    client.back().await.unwrap();
    css(&client, "#tab-decisions[aria-selected='true']").await;

    // The overview's filters are in the URL too.
    client
        .goto(&format!("{}/?status=completed&q=is_prime", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let status = client
        .find(Locator::Css("#status"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("completed"));
    let search = client
        .find(Locator::Css("#q"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(search.as_deref(), Some("is_prime"));

    // An unknown task still gets the page, which says so.
    client
        .goto(&format!("{}/tasks/not-a-task", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let heading = css(&client, ".not-found h1").await.text().await.unwrap();
    assert_eq!(heading, "No such task");
    client.close().await.unwrap();
}

/// The real embedded model: a task submitted from the overview's form runs live; its page streams tokens
/// with their probabilities.
#[actix_rt::test]
async fn a_task_on_the_real_model_streams_its_tokens_live() {
    let app = spawn_app().await;
    let Session { client, _driver } = session().await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let prompt = client.find(Locator::Css("#prompt")).await.unwrap();
    prompt
        .send_keys("Name one prime number greater than ten.")
        .await
        .unwrap();
    click(&client, "#submit button").await;
    let link = css(&client, "#submit-result a").await;
    link.click().await.unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    click(&client, "#tab-tokens").await;
    // Live: tokens arrive while the task runs.
    until(
        &client,
        Duration::from_secs(120),
        "streamed tokens",
        "return document.querySelectorAll('#stream span[title]').length > 3;",
    )
    .await;
    until(
        &client,
        Duration::from_secs(300),
        "the task to end",
        "const b = document.querySelector('#head .badge'); \
         return !!b && ['completed', 'failed'].includes(b.textContent);",
    )
    .await;
    // The task's stream ended, and the page says so.
    until(
        &client,
        Duration::from_secs(20),
        "the live indicator to say finished",
        "return document.querySelector('#live').dataset.state === 'done';",
    )
    .await;
    // The embedded model reports each sampled token's probability.
    until(
        &client,
        Duration::from_secs(20),
        "a token with its probability",
        "return [...document.querySelectorAll('#stream span[title]')].some(s => s.title.startsWith('p = '));",
    )
    .await;
    // And the five likeliest tokens at each sampled one, in its tooltip.
    until(
        &client,
        Duration::from_secs(20),
        "a token with its alternatives",
        "return [...document.querySelectorAll('#stream span[title]')].some(s => /\\nalternatives: .+ 0\\.\\d{3}/.test(s.title));",
    )
    .await;
    screenshot(&client, "real-task-tokens").await;
    client.close().await.unwrap();
}

/// Bound beyond loopback with a token: the dashboard sends the browser to the login form; the token
/// typed there opens the overview, whose API reads and event stream then work with the cookie.
#[actix_rt::test]
async fn beyond_loopback_the_dashboard_asks_for_the_token() {
    const TOKEN: &str = "browser-token-0123456789abcdef";
    let app = spawn_app_with(|settings| {
        settings.server.bind = "0.0.0.0:0".into();
        settings.server.auth_token = Some(troupe::config::Secret::new(TOKEN));
    })
    .await;
    let Session { client, _driver } = session().await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    let field = css(&client, "form[action='/login'] input#token").await;
    assert!(client
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/login"));
    screenshot(&client, "login").await;
    field.send_keys(TOKEN).await.unwrap();
    click(&client, "form[action='/login'] button[type='submit']").await;
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/");
    css(&client, "#agents tr[data-agent='director']").await;
    css(&client, "#live[data-state='open']").await;
    client.close().await.unwrap();
}
