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

use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use helpers::{root, spawn_app, spawn_app_with, test_settings, TestApp};
use scripts::{code, fixed_on_second_attempt, frame, run_test_call, seed_recording};
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
    // The learning curve has the task's Code/QA loop (it failed once, then passed) once it is read again.
    until(
        &client,
        Duration::from_secs(25),
        "the learning curve to count the task's loop",
        "const hint = document.querySelector('#learning .hint[data-loops]');          return !!hint && hint.dataset.loops === '1' && !!document.querySelector('#learning .chart svg');",
    )
    .await;
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
    css(&client, "#stream span[aria-label]").await;
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

/// A scripted app holding a seeded task of `events` events (tokens with their alternatives, tool calls,
/// sandbox runs): the app, the directory of its database (keep it for the test), the task.
async fn big_task(events: usize) -> (TestApp, tempfile::TempDir, troupe::domain::TaskId) {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = scripted_app(&dir).await;
    let settings = test_settings(&tempfile::tempdir().unwrap());
    let writer = support::writer_on(&url, &settings).await.unwrap();
    let id = support::seed_big_task(&writer, events).await.unwrap();
    (app, dir, id)
}

#[actix_rt::test]
async fn a_ten_thousand_event_task_is_ready_within_two_seconds() {
    let (app, _dir, id) = big_task(10_000).await;
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
    let (app, _dir, id) = big_task(600).await;
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
        "return document.querySelectorAll('#stream span[aria-label]').length > 3;",
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
        "return [...document.querySelectorAll('#stream span[aria-label]')].some(s => s.getAttribute('aria-label').startsWith('p = '));",
    )
    .await;
    // And the five likeliest tokens at each sampled one, in its label (and its popover).
    until(
        &client,
        Duration::from_secs(20),
        "a token with its alternatives",
        "return [...document.querySelectorAll('#stream span[aria-label]')].some(s => /\\nalternatives: .+ 0\\.\\d{3}/.test(s.getAttribute('aria-label')));",
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

/// The value of the form field `selector`.
async fn value(client: &Client, selector: &str) -> String {
    css(client, selector)
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default()
}

async fn text(client: &Client, selector: &str) -> String {
    css(client, selector).await.text().await.unwrap()
}

/// A scripted app as `tests/pauses.rs` has it: one code attempt, QA's verdict decides, the real sandbox.
async fn debug_app(dir: &tempfile::TempDir) -> (TestApp, String) {
    let url = format!("sqlite://{}/debug.sqlite?mode=rwc", dir.path().display());
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.director.code_attempts = 1;
        settings.director.qa_verdict = troupe::config::QaVerdictMode::Decides;
        settings.memory.enabled = false;
    })
    .await;
    (app, url)
}

/// The recording of a one-step code task whose code passes its test.
fn passing() -> Vec<scripts::Output> {
    let mut outputs = frame();
    outputs.extend([
        ("work.1", code("def add(a, b):\n    return a + b"), None),
        ("test.1", run_test_call(), None),
    ]);
    outputs
}

async fn breakpoints(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get("/api/v1/breakpoints").await;
    assert_eq!(status, 200, "{body}");
    body["breakpoints"].as_array().cloned().unwrap()
}

#[actix_rt::test]
async fn the_breakpoints_page_adds_refuses_and_removes_a_breakpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = scripted_app(&dir).await;
    let Session { client, _driver } = session().await;
    client.goto(&format!("{}/", app.address)).await.unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    click(&client, "#nav-breakpoints").await;
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/breakpoints");
    css(&client, "#breakpoints .note").await;

    // A bad condition: the server's message beside the form, and the form keeps what was typed.
    css(&client, "#bp-on")
        .await
        .select_by_value("decision")
        .await
        .unwrap();
    css(&client, "#bp-kind")
        .await
        .select_by_value("assign_agent")
        .await
        .unwrap();
    css(&client, "#bp-when")
        .await
        .send_keys("confidence <")
        .await
        .unwrap();
    click(&client, "#add button[type='submit']").await;
    let refused = text(&client, "#add-result .error-box").await;
    assert!(refused.contains("when"), "{refused}");
    assert_eq!(value(&client, "#bp-when").await, "confidence <");
    assert_eq!(value(&client, "#bp-kind").await, "assign_agent");
    assert!(breakpoints(&app).await.is_empty());
    screenshot(&client, "breakpoints-refused").await;

    // Fixed, it is added and listed.
    css(&client, "#bp-when")
        .await
        .send_keys(" 0.6")
        .await
        .unwrap();
    click(&client, "#add button[type='submit']").await;
    let row = css(&client, "#breakpoints tr[data-breakpoint]").await;
    let stored = breakpoints(&app).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["kind"], "assign_agent");
    assert_eq!(stored[0]["when"], "confidence < 0.6");
    assert_eq!(
        row.attr("data-breakpoint").await.unwrap().as_deref(),
        stored[0]["id"].as_str()
    );
    let shown = row.text().await.unwrap();
    assert!(
        shown.contains("assign_agent") && shown.contains("confidence < 0.6"),
        "{shown}"
    );
    assert!(text(&client, "#add-result").await.contains("added"));
    screenshot(&client, "breakpoints").await;

    // Removed from its row.
    click(&client, "#breakpoints tr[data-breakpoint] button.remove").await;
    css(&client, "#breakpoints .note").await;
    assert!(breakpoints(&app).await.is_empty());
    client.close().await.unwrap();
}

/// Replayed recordings (deterministic): a task paused at an `assign_agent` breakpoint shows what is
/// pending; a click overrides the decision to Research and the task completes with the override in its
/// tree; two runs that decided otherwise are compared side by side; a finished task forks from a step.
#[actix_rt::test]
async fn a_paused_task_is_overridden_from_its_page_then_compared_and_forked() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = debug_app(&dir).await;
    let source = seed_recording(&url, &passing()).await;
    let (status, breakpoint) = app
        .post_json(
            "/api/v1/breakpoints",
            &json!({ "on": "decision", "kind": "assign_agent" }),
        )
        .await;
    assert_eq!(status, 201, "{breakpoint}");
    let Session { client, _driver } = session().await;

    let overridden = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    client
        .goto(&format!("{}/tasks/{overridden}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    // The pending decision: its options with their probabilities, the model's choice marked.
    css(&client, "#pause .pause-pending[data-on='decision']").await;
    assert_eq!(count(&client, "#pause .pending-options tbody tr").await, 3);
    let chosen = text(&client, "#pause .pending-options tr.chosen").await;
    assert!(
        chosen.contains("code") && chosen.contains("0.80"),
        "{chosen}"
    );
    assert_eq!(count(&client, "#pause button.override").await, 2);
    for action in ["continue", "step", "abort"] {
        css(&client, &format!("#pause button[data-action='{action}']")).await;
    }
    css(&client, "#pause details.state-part").await;
    assert_eq!(text(&client, "#head .badge").await, "paused");
    screenshot(&client, "task-paused").await;

    click(&client, "#pause button.override[data-option='research']").await;
    until(
        &client,
        Duration::from_secs(60),
        "the task to complete",
        "const b = document.querySelector('#head .badge'); return !!b && b.textContent === 'completed';",
    )
    .await;
    // Its step, re-read at the end: done by Research.
    until(
        &client,
        Duration::from_secs(20),
        "step 1 to show as done by research",
        "const step = document.querySelector('#panel-decisions .node-card.step'); \
         return !!step && step.querySelector('.badge').textContent === 'done' && \
         !!step.querySelector('.agent-chip.research');",
    )
    .await;
    let hidden = client
        .execute("return document.querySelector('#pause').hidden;", vec![])
        .await
        .unwrap();
    assert_eq!(
        hidden,
        Value::Bool(true),
        "the pause panel stays after the end"
    );
    let decision = css(
        &client,
        "#panel-decisions .decision[data-overridden='true'][data-chosen='research']",
    )
    .await;
    let says = decision.text().await.unwrap();
    assert!(says.contains("the model chose code"), "{says}");
    css(
        &client,
        "#panel-decisions .node-card.overridden[data-overridden='decision']",
    )
    .await;
    css(&client, "#panel-decisions .node-card.paused-card").await;
    screenshot(&client, "task-overridden").await;
    // The timeline has the pause as a span of its own.
    click(&client, "#tab-timeline").await;
    css(
        &client,
        "#panel-timeline rect.item[aria-label^='paused, override']",
    )
    .await;
    screenshot(&client, "task-timeline-paused").await;
    let (_, task) = app.get(&format!("/api/v1/tasks/{overridden}")).await;
    assert_eq!(task["status"], "completed", "{task}");

    // A replay's page links to its comparison with the source.
    let link = css(&client, "#head .compare-link").await;
    assert_eq!(
        link.attr("href").await.unwrap().unwrap(),
        format!("/compare/{source}/{overridden}")
    );
    link.click().await.unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    css(&client, ".compare-section[data-section='decisions']").await;
    assert_eq!(count(&client, "#compare .error-box").await, 0);
    screenshot(&client, "compare-with-source").await;

    // Without the breakpoint, the same replay keeps the model's Code.
    let id = breakpoint["id"].as_str().unwrap();
    let (status, _) = app.delete(&format!("/api/v1/breakpoints/{id}")).await;
    assert_eq!(status, 204);
    let plain = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    let task = app
        .wait_for_task(&plain, Duration::from_secs(60), |task| {
            ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap_or(""))
        })
        .await;
    assert_eq!(task["status"], "completed", "{task}");

    // Side by side: the decision that differs, highlighted.
    client
        .goto(&format!("{}/compare/{plain}/{overridden}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let row = css(
        &client,
        ".compare-section[data-section='decisions'] .compare-row",
    )
    .await;
    let a = row
        .find(Locator::Css(".side-cell.differs[data-side='a']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let b = row
        .find(Locator::Css(".side-cell.differs[data-side='b']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(a.contains("code") && b.contains("research"), "{a} | {b}");
    assert!(row.text().await.unwrap().contains("assign_agent"));
    screenshot(&client, "compare").await;

    // Fork the plain run from step 1 with Research: the new task's page opens, linked to its source.
    client
        .goto(&format!("{}/tasks/{plain}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    click(
        &client,
        "#panel-decisions .node-card.step details.fork > summary",
    )
    .await;
    css(&client, ".node-card.step .fork-form select")
        .await
        .select_by_value("research")
        .await
        .unwrap();
    screenshot(&client, "task-fork-form").await;
    click(&client, ".node-card.step .fork-form button[type='submit']").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let fork = loop {
        let path = client.current_url().await.unwrap().path().to_owned();
        let id = path.trim_start_matches("/tasks/");
        if path.starts_with("/tasks/") && id != plain {
            break id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the fork's page did not open: {path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let origin = text(&client, "#head .origin").await;
    assert!(
        origin.contains("fork of") && origin.contains("research"),
        "{origin}"
    );
    let (_, task) = app.get(&format!("/api/v1/tasks/{fork}")).await;
    assert_eq!(task["options"]["fork_of"]["task"], plain.as_str(), "{task}");
    assert_eq!(task["options"]["fork_of"]["override"]["chosen"], "research");
    screenshot(&client, "task-forked").await;
    // Its live step would run on the real model: not needed here.
    app.post_json(&format!("/api/v1/tasks/{fork}/cancel"), &json!({}))
        .await;
    client.close().await.unwrap();
}

#[actix_rt::test]
async fn a_tokens_alternatives_show_on_hover_and_on_focus() {
    let (app, _dir, id) = big_task(600).await;
    let Session { client, _driver } = session().await;
    client
        .goto(&format!("{}/tasks/{id}?panel=tokens", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let token = css(&client, "#stream span[data-top]:nth-of-type(3)").await;
    let hover = MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
        element: token.clone(),
        duration: None,
        x: 0.0,
        y: 0.0,
    });
    client.perform_actions(hover).await.unwrap();
    css(&client, "#token-popover:not([hidden]) .alt-table").await;
    assert_eq!(
        count(&client, "#token-popover .alt-table tbody tr").await,
        5
    );
    let shown = text(&client, "#token-popover").await;
    let own = token.text().await.unwrap();
    assert!(
        shown.contains(own.trim()) && shown.contains("p = 0."),
        "{shown}"
    );
    assert!(shown.contains("alt1"), "{shown}");
    css(&client, "#token-popover tr.sampled").await;
    screenshot(&client, "tokens-alternatives").await;

    // From the keyboard: the stream, then the arrow keys from token to token.
    let away = MouseActions::new("mouse".into()).then(PointerAction::MoveTo {
        duration: None,
        x: 5.0,
        y: 5.0,
    });
    client.perform_actions(away).await.unwrap();
    css(&client, "#token-popover[hidden]").await;
    let stream = css(&client, "#stream").await;
    stream.send_keys("\u{E014}\u{E014}").await.unwrap();
    css(&client, "#token-popover:not([hidden]) .alt-table").await;
    let focused = client
        .execute(
            "const s = document.activeElement; return s.parentElement.id === 'stream' && \
             [...s.parentElement.children].indexOf(s) === 1 && s.getAttribute('aria-describedby') === 'token-popover';",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        focused,
        Value::Bool(true),
        "the second token has the focus and the popover"
    );
    screenshot(&client, "tokens-alternatives-keyboard").await;
    client.close().await.unwrap();
}

/// A replayed task paused before QA's `run_code`: the arguments are editable JSON beside the tool's schema;
/// an edit the schema refuses is a 400 whose message shows in the panel (the edit stays), and Continue
/// runs the call as recorded.
#[actix_rt::test]
async fn a_tool_pause_shows_a_refused_override_in_its_panel_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = debug_app(&dir).await;
    let source = seed_recording(&url, &passing()).await;
    let (status, body) = app
        .post_json(
            "/api/v1/breakpoints",
            &json!({ "on": "tool", "tool": "run_code", "agent": "qa" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let Session { client, _driver } = session().await;
    let id = app
        .submit_with(json!({ "prompt": "Write add(a, b)", "options": { "replay_of": source } }))
        .await;
    client
        .goto(&format!("{}/tasks/{id}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    let editor = css(
        &client,
        "#pause .pause-pending[data-on='tool'] textarea.json-editor",
    )
    .await;
    let arguments = editor.prop("value").await.unwrap().unwrap_or_default();
    assert!(arguments.contains("step1_test.py"), "{arguments}");
    let schema = text(&client, "#pause .pending-grid pre").await;
    assert!(schema.contains("language"), "{schema}");
    // The workspace at the pause: the test file QA is about to run.
    click(&client, "#pause details.state-part:last-of-type > summary").await;
    let files = text(&client, "#pause details.state-part:last-of-type").await;
    assert!(files.contains("step1_test.py"), "{files}");

    // Not JSON: said at once, nothing sent.
    editor.clear().await.unwrap();
    editor.send_keys("{\"language\": ").await.unwrap();
    click(&client, "#pause button.override").await;
    let said = text(&client, "#pause .pause-pending .error-box").await;
    assert!(said.contains("not JSON"), "{said}");
    // Refused by the tool's schema: the server's message in the panel, the edit kept, still paused.
    editor.clear().await.unwrap();
    editor
        .send_keys("{\"language\": \"ruby\", \"file\": \"step1_test.py\"}")
        .await
        .unwrap();
    click(&client, "#pause button.override").await;
    let refused = text(&client, "#pause-status .error-box").await;
    assert!(refused.contains("arguments"), "{refused}");
    assert!(value(&client, "#pause textarea.json-editor")
        .await
        .contains("ruby"));
    let (_, state) = app.get(&format!("/api/v1/tasks/{id}/state")).await;
    assert_eq!(state["status"], "paused", "{state}");
    screenshot(&client, "task-paused-tool").await;

    // Step: the call runs and the task pauses again at the next point; the panel follows live.
    let first = css(&client, "#pause .pause-pending")
        .await
        .attr("data-key")
        .await
        .unwrap()
        .unwrap();
    click(&client, "#pause button[data-action='step']").await;
    until(
        &client,
        Duration::from_secs(60),
        "the panel to show the next pause",
        &format!(
            "const p = document.querySelector('#pause:not([hidden]) .pause-pending'); \
             return !!p && p.dataset.key !== '{first}';"
        ),
    )
    .await;
    let (_, state) = app.get(&format!("/api/v1/tasks/{id}/state")).await;
    let next = css(&client, "#pause .pause-pending")
        .await
        .attr("data-key")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state["pending"]["key"], next.as_str(), "{state}");
    screenshot(&client, "task-paused-next").await;

    click(&client, "#pause button[data-action='continue']").await;
    until(
        &client,
        Duration::from_secs(60),
        "the task to complete",
        "const b = document.querySelector('#head .badge'); return !!b && b.textContent === 'completed';",
    )
    .await;
    css(&client, "#pause[hidden]").await;
    client.close().await.unwrap();
}

#[actix_rt::test]
async fn the_plan_graph_fills_in_live_as_steps_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}/dashboard.sqlite?mode=rwc",
        dir.path().display()
    );
    let app_url = url.clone();
    let app = spawn_app_with(move |settings| {
        settings.sandbox.enabled = true;
        settings.database.url = app_url;
        settings.memory.enabled = false;
        scripts::three_steps(settings);
    })
    .await;
    let source = seed_recording(&url, &scripts::diamond()).await;
    let Session { client, _driver } = session().await;
    let id = app
        .submit_with(json!({
            "prompt": "Write add(a, b) and mul(a, b), then explain them",
            "options": { "replay_of": source }
        }))
        .await;
    client
        .goto(&format!("{}/tasks/{id}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    // While the two code steps run (each test sleeps 1.5 s), both nodes say running, each on its own Code.
    until(
        &client,
        Duration::from_secs(30),
        "steps 1 and 2 running at once in the plan graph",
        "const running = [...document.querySelectorAll('.plan-graph .plan-node[data-status=running]')] \
         .map((node) => node.dataset.step); \
         return running.includes('1') && running.includes('2');",
    )
    .await;
    screenshot(&client, "plan-graph-running").await;
    let waiting = client
        .execute(
            "return document.querySelector(\".plan-graph .plan-node[data-step='3']\").dataset.status;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(waiting, json!("pending"), "step 3 waits for both");
    until(
        &client,
        Duration::from_secs(60),
        "every node done",
        "const nodes = [...document.querySelectorAll('.plan-graph .plan-node')]; \
         return nodes.length === 4 && nodes.every((node) => node.dataset.status === 'done');",
    )
    .await;
    // Arrows: 1 and 2 into 3, and 3 into the verification (which waits for 1 and 2 through 3).
    assert_eq!(count(&client, ".plan-graph path[data-from]").await, 3);
    let titles = client
        .execute(
            "return [...document.querySelectorAll('.plan-graph .plan-node .plan-title')].map((t) => t.textContent);",
            vec![],
        )
        .await
        .unwrap();
    let titles: Vec<String> = serde_json::from_value(titles).unwrap();
    assert!(
        titles
            .iter()
            .any(|t| t == "1 · code-1" || t == "1 · code-2"),
        "{titles:?}"
    );
    assert_ne!(
        titles[0].rsplit('-').next(),
        titles[1].rsplit('-').next(),
        "steps 1 and 2 on the same instance: {titles:?}"
    );
    // Each node shows its duration once done.
    let status = text(
        &client,
        ".plan-graph .plan-node[data-step='1'] .plan-status",
    )
    .await;
    assert!(status.starts_with("done · "), "{status}");
    screenshot(&client, "plan-graph-done").await;
    // The research step's figures are a table and a bar chart in the result.
    click(&client, "#tab-result").await;
    css(&client, "#panel-result .rich-table .chart svg").await;
    assert_eq!(
        count(&client, "#panel-result .result-table tbody tr").await,
        2
    );
    screenshot(&client, "rich-result").await;
    client.close().await.unwrap();
}

#[actix_rt::test]
async fn the_experiment_page_charts_pass_rates_with_intervals_and_the_tests() {
    let dir = tempfile::tempdir().unwrap();
    let (app, url) = scripted_app(&dir).await;
    let fixed = seed_recording(&url, &scripts::passing_first_attempt()).await;
    let broken = seed_recording(&url, &scripts::failing_first_attempt()).await;
    let mut response = app
        .client
        .post(format!("{}/api/v1/experiments", app.address))
        .send_json(&json!({
            "name": "fixed against broken",
            "prompts": ["Write add(a, b)", "Write a function add(a, b) that adds"],
            "repetitions": 2,
            "variants": [
                { "name": "fixed", "options": { "replay_of": fixed } },
                { "name": "broken", "options": { "replay_of": broken } }
            ]
        }))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let Session { client, _driver } = session().await;
    client
        .goto(&format!("{}/experiments/{id}", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    // The page reads the report again while the experiment runs, until it is completed.
    until(
        &client,
        Duration::from_secs(120),
        "the experiment to be shown completed",
        "const badge = document.querySelector('#experiment .title .badge'); \
         return !!badge && badge.textContent === 'completed';",
    )
    .await;
    let rates = client
        .execute(
            "return [...document.querySelectorAll('.experiment-chart rect[data-variant]')].map((r) => [r.dataset.variant, Number(r.dataset.rate)]);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rates, json!([["fixed", 1], ["broken", 0]]));
    assert_eq!(count(&client, ".experiment-chart line.ci").await, 2);
    let fisher = text(&client, "table[aria-label=pairs] tbody tr td:nth-child(3)").await;
    assert_eq!(fisher, "0.0286");
    css(&client, "table[aria-label=pairs] td.significant").await;
    let passed = text(
        &client,
        "table[aria-label=variants] tr[data-variant=fixed] td:nth-child(2)",
    )
    .await;
    assert_eq!(passed, "4/4");
    screenshot(&client, "experiment").await;
    client
        .goto(&format!("{}/experiments", app.address))
        .await
        .unwrap();
    wait_ready(&client, Duration::from_secs(10)).await.unwrap();
    css(&client, &format!("#experiment tr[data-experiment='{id}']")).await;
    screenshot(&client, "experiments").await;
    client.close().await.unwrap();
}
