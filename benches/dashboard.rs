//! The web dashboard in Chromium (headless, through chromedriver) against the real app on SQLite:
//! - the overview's first contentful paint with 10,000 stored tasks (median of several loads);
//! - a 10,000-event task page (nine in ten events are tokens), time to its `troupe-ready` mark;
//! - server time of the task page's data requests (a Rust HTTP client on loopback, p50/p95);
//! - page weight of each page (its HTML and the assets it loads), raw and gzip.
//!
//! Prints a table on stderr and one JSON object on the last line of stdout (`scripts/bench.sh`).
//! Run with `cargo bench --profile dev --bench dashboard`.
#![allow(missing_docs)]

#[path = "../tests/dashboard_support.rs"]
#[allow(dead_code)]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use troupe::app::Application;
use troupe::config::Settings;

const LOADS: usize = 7;
const REQUESTS: usize = 50;
const OVERVIEW_ASSETS: &[&str] = &[
    "app.css",
    "common.js",
    "charts.js",
    "overview.js",
    "icon.svg",
];
const TASK_ASSETS: &[&str] = &[
    "app.css",
    "common.js",
    "charts.js",
    "highlight.js",
    "task.js",
    "icon.svg",
];

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings::load_from(&root.join("config"), Some("test"))?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.sqlite?mode=rwc", dir.path().display());
    settings.database.url = url.clone();
    settings.server.bind = "127.0.0.1:0".into();
    settings.llm.model = root
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string();
    settings.llm.worker_command = env!("CARGO_BIN_EXE_troupe").into();
    settings.memory.enabled = false;
    settings.sandbox.enabled = false;
    settings.telemetry.log_level = "error".into();
    actix_rt::System::new().block_on(async move {
        let writer = support::writer_on(&url, &settings).await?;
        let seeding = Instant::now();
        support::seed_tasks(&writer, 10_000).await?;
        let big = support::seed_big_task(&writer, 10_000).await?;
        eprintln!("seeded 10,000 tasks and a 10,000-event task in {:.1} s", seeding.elapsed().as_secs_f64());
        let application = Application::build(settings).await?;
        let base = format!("http://127.0.0.1:{}", application.port());
        actix_rt::spawn(application.run_until_stopped());
        let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();

        let (overview_raw, overview_gzip) = weight(&http, &base, "/", OVERVIEW_ASSETS).await?;
        let task_path = format!("/tasks/{big}");
        let (task_raw, task_gzip) = weight(&http, &base, &task_path, TASK_ASSETS).await?;

        let data = server_times(&http, &base, &big.to_string()).await?;

        let driver = support::start_driver().await?;
        let browser = support::start_browser(&driver).await?;
        let mut paints = Vec::new();
        let mut readies = Vec::new();
        for _ in 0..LOADS {
            browser.goto("about:blank").await?;
            browser.goto(&format!("{base}/")).await?;
            support::wait_ready(&browser, Duration::from_secs(30)).await?;
            let paint = browser
                .execute(
                    "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null;",
                    vec![],
                )
                .await?;
            paints.push(paint.as_f64().ok_or_else(|| anyhow::anyhow!("no first-contentful-paint entry"))?);
        }
        for _ in 0..LOADS {
            browser.goto("about:blank").await?;
            browser.goto(&format!("{base}{task_path}")).await?;
            support::wait_ready(&browser, Duration::from_secs(30)).await?;
            readies.push(support::ready_ms(&browser).await?);
        }
        browser.close().await?;

        let (fcp_first, fcp) = (paints[0], median(&mut paints.clone()));
        let (ready_first, ready) = (readies[0], median(&mut readies.clone()));
        eprintln!("| measure | value |");
        eprintln!("|---|---|");
        eprintln!("| overview first contentful paint, 10,000 tasks (median of {LOADS}; first load) | {fcp:.0} ms ({fcp_first:.0} ms) |");
        eprintln!("| 10,000-event task page to troupe-ready (median of {LOADS}; first load) | {ready:.0} ms ({ready_first:.0} ms) |");
        for (route, p50, p95) in &data {
            eprintln!("| server time {route} (p50 / p95 of {REQUESTS}) | {p50:.1} / {p95:.1} ms |");
        }
        eprintln!("| overview weight (HTML + {} assets), raw / gzip | {:.1} / {:.1} KiB |", OVERVIEW_ASSETS.len(), kib(overview_raw), kib(overview_gzip));
        eprintln!("| task page weight (HTML + {} assets), raw / gzip | {:.1} / {:.1} KiB |", TASK_ASSETS.len(), kib(task_raw), kib(task_gzip));
        let report = json!({
            "overview_fcp_ms": { "median": fcp, "first": fcp_first, "runs": paints },
            "task_ready_ms": { "median": ready, "first": ready_first, "runs": readies },
            "data_ms": data.iter().map(|(route, p50, p95)| json!({ "route": route, "p50": p50, "p95": p95 })).collect::<Vec<Value>>(),
            "weight_bytes": {
                "overview": { "raw": overview_raw, "gzip": overview_gzip },
                "task": { "raw": task_raw, "gzip": task_gzip },
            },
        });
        println!("{report}");
        Ok(())
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

/// Bytes of `page` and `assets`, as sent without and with gzip.
async fn weight(
    http: &awc::Client,
    base: &str,
    page: &str,
    assets: &[&str],
) -> anyhow::Result<(usize, usize)> {
    let mut raw = 0;
    let mut gzip = 0;
    let paths =
        std::iter::once(page.to_owned()).chain(assets.iter().map(|name| format!("/assets/{name}")));
    for path in paths {
        for (encoding, total) in [("identity", &mut raw), ("gzip", &mut gzip)] {
            let mut response = http
                .get(format!("{base}{path}"))
                .insert_header(("Accept-Encoding", encoding))
                .no_decompress()
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "GET {path}: {}",
                response.status()
            );
            *total += response.body().limit(1 << 24).await?.len();
        }
    }
    Ok((raw, gzip))
}

/// p50 and p95 milliseconds of each data request the task page makes, and of all of them in a row.
async fn server_times(
    http: &awc::Client,
    base: &str,
    id: &str,
) -> anyhow::Result<Vec<(String, f64, f64)>> {
    // The last one is what the page reads from a server without the paged, filtered events route.
    let routes = [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/events?exclude=llm.token&limit=2000"),
        // As the page asks for the calls: without their tokens (it reads one call's at a time).
        format!("/api/v1/tasks/{id}/llm-calls?tokens=false"),
        format!("/api/v1/tasks/{id}/llm-calls/work.1.call0/tokens"),
        format!("/api/v1/tasks/{id}/events"),
    ];
    let mut out = Vec::new();
    let mut totals = vec![0.0; REQUESTS];
    for (index, route) in routes.iter().enumerate() {
        let served = http
            .get(format!("{base}{route}"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {route}: {e}"))?
            .status()
            .is_success();
        if !served {
            eprintln!("not served by this build: {route}");
            continue;
        }
        let mut times = Vec::with_capacity(REQUESTS);
        for total in totals.iter_mut() {
            let started = Instant::now();
            let mut response = http
                .get(format!("{base}{route}"))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("GET {route}: {e}"))?;
            let body = response.body().limit(1 << 26).await?;
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                response.status().is_success(),
                "GET {route}: {} {}",
                response.status(),
                String::from_utf8_lossy(&body)
            );
            times.push(millis);
            // The page's own requests (the fallback is read only from a server without the others).
            if index < 4 {
                *total += millis;
            }
        }
        let label = route.replace(id, "{id}");
        out.push((
            label,
            percentile(&mut times.clone(), 0.5),
            percentile(&mut times, 0.95),
        ));
    }
    out.push((
        "the page's requests in a row (without the fallback)".to_owned(),
        percentile(&mut totals.clone(), 0.5),
        percentile(&mut totals, 0.95),
    ));
    Ok(out)
}
