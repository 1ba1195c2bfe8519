//! Orchestration overhead: the Director -> specialists -> QA -> Director flow with the `replay` provider,
//! so no model time is spent (the recording comes from one real task on the embedded model, made first).
//!
//! Reported (JSON on stdout, one object):
//! - `core_us`: per task, from `task.started` to the terminal event's creation (envelopes, spans, metrics,
//!   events handed to the batching writer), p50/p99, one task at a time;
//! - `durable_us`: per task, from `submit` to the terminal event received by a subscriber, i.e. every event
//!   committed to SQLite (WAL, synchronous=FULL), p50/p99, one task at a time;
//! - `hop_us_mean`: mean mailbox hop (send to handler start) from `troupe_message_latency_seconds`;
//! - `throughput_tasks_per_s`: tasks completed per second with `IN_FLIGHT` clients each submitting a task,
//!   following it to its end and submitting the next, durable;
//! - `rss_kib`: this process's resident set before and after the throughput run (`TROUPE_BENCH_TASKS`
//!   tasks, 10,000 by default): flat memory means the two stay close however many tasks ran;
//! - `scrape_us`: rendering `/metrics` (p50/p99 of 200 renders) after more than 10,000 tasks, and its size.
//!
//! - `store`: the storage writer's commits over the whole run (count, mean duration, per task).
//!
//! Modes: `TROUPE_BENCH_DATABASE_URL` runs on that database instead of a fresh SQLite file (e.g. an empty
//! PostgreSQL database: `postgres://postgres@127.0.0.1:5432/troupe_bench`); `TROUPE_BENCH_TRACING=0` turns span creation off; `TROUPE_BENCH_OTLP=1` also exports every span over
//! OTLP/HTTP to a receiver in this process (it decodes nothing, it counts requests and bytes). Metrics are on
//! in every mode: they cannot be turned off. `scripts/bench.sh` runs all three.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::json;
use troupe::config::Settings;
use troupe::domain::{EventKind, TaskId, TaskOptions};
use troupe::llm::embedded::EmbeddedProvider;
use troupe::llm::models::Models;
use troupe::memory::MemoryParts;
use troupe::service::Core;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

const SEQUENTIAL: usize = 300;
const IN_FLIGHT: usize = 64;
/// Tasks in the throughput run unless `TROUPE_BENCH_TASKS` says otherwise (`scripts/bench.sh` runs 100,000
/// once, for the memory figure).
const THROUGHPUT_TASKS: usize = 10_000;
const SCRAPES: usize = 200;

fn main() -> anyhow::Result<()> {
    let tracing = std::env::var("TROUPE_BENCH_TRACING").map_or(true, |v| v != "0");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings::load_from(&root.join("config"), Some("test"))?;
    let dir = tempfile::tempdir()?;
    settings.database.url = std::env::var("TROUPE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/bench.sqlite?mode=rwc", dir.path().display()));
    settings.llm.model = root
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string();
    settings.llm.worker_command = env!("CARGO_BIN_EXE_troupe").into();
    settings.llm.threads = 2;
    settings.director.max_concurrent_tasks = IN_FLIGHT;
    settings.telemetry.tracing = tracing;
    settings.telemetry.log_level = "error".into();
    // Orchestration alone: no embedding model, no recall (the memory benchmark measures those). Short-term
    // memory (the in-process store) stays on: it carries earlier work between steps.
    settings.memory.enabled = false;
    // Nor the sandbox: code steps are not run (the sandbox benchmark measures runs).
    settings.sandbox.enabled = false;
    let otlp = std::env::var("TROUPE_BENCH_OTLP").is_ok_and(|v| v == "1");
    let sink = if otlp {
        let sink = OtlpSink::start()?;
        settings.telemetry.otlp_endpoint = sink.url.clone();
        Some(sink)
    } else {
        None
    };
    let _telemetry = troupe::telemetry::init(&settings.telemetry)?;

    actix_rt::System::new().block_on(async move {
        let metrics = Metrics::new()?;
        let storage = Storage::connect(&settings.database).await?;
        storage.migrate().await?;
        let backend = storage.backend_name();
        let llm = Arc::new(EmbeddedProvider::start(&settings.llm, metrics.clone()).await?);
        let memory = MemoryParts::start(&settings.memory, &settings.redis, &metrics).await?;
        let sandbox = troupe::sandbox::Sandbox::start(settings.sandbox.clone(), metrics.clone()).await;
        let core = std::rc::Rc::new(Core::assemble(
            settings,
            storage,
            metrics,
            Models::single(llm),
            memory,
            sandbox,
        ));

        let prompt = "Write a Python function that adds two numbers";
        let recorded = core.submit(prompt, TaskOptions::default()).await?;
        let end = finish(&core, recorded).await?;
        anyhow::ensure!(end == EventKind::TaskCompleted, "the recorded task ended {end}");
        let replay = TaskOptions { replay_of: Some(recorded), ..TaskOptions::default() };

        // Warm-up.
        for _ in 0..20 {
            let id = core.submit(prompt, replay.clone()).await?;
            finish(&core, id).await?;
        }

        let mut core_us = Vec::with_capacity(SEQUENTIAL);
        let mut durable_us = Vec::with_capacity(SEQUENTIAL);
        let mut events_per_task = 0;
        for _ in 0..SEQUENTIAL {
            let started = Instant::now();
            let id = core.submit(prompt, replay.clone()).await?;
            let end = finish(&core, id).await?;
            durable_us.push(started.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(end == EventKind::TaskCompleted, "a replayed task ended {end}");
            let events = core.storage.events_after(id, 0).await?;
            events_per_task = events.len();
            let start = events.iter().find(|e| e.kind == EventKind::TaskStarted);
            let last = events.last();
            if let (Some(start), Some(last)) = (start, last) {
                core_us.push((last.at - start.at).num_nanoseconds().unwrap_or(0) as f64 / 1e3);
            }
        }

        // IN_FLIGHT clients, each submitting a task and following it to its end, then the next: the
        // submissions are concurrent too, as they are from many clients, so their commits group as well.
        let throughput_tasks = std::env::var("TROUPE_BENCH_TASKS")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(THROUGHPUT_TASKS);
        let rss_before_kib = rss_kib();
        let started = Instant::now();
        let claimed = std::rc::Rc::new(std::cell::Cell::new(0_usize));
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let core = std::rc::Rc::clone(&core);
            let claimed = std::rc::Rc::clone(&claimed);
            let replay = replay.clone();
            clients.spawn_local(async move {
                while claimed.get() < throughput_tasks {
                    claimed.set(claimed.get() + 1);
                    let id = core.submit(prompt, replay.clone()).await?;
                    let mut subscription = core.events.subscribe(id, 0).await?;
                    let mut end = None;
                    while let Some(event) = subscription.next().await? {
                        if event.kind.is_terminal() {
                            end = Some(event.kind);
                            break;
                        }
                    }
                    let end = end.ok_or_else(|| anyhow::anyhow!("stream ended without a terminal event"))?;
                    anyhow::ensure!(end == EventKind::TaskCompleted, "a replayed task ended {end}");
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(result) = clients.join_next().await {
            result??;
        }
        let throughput = throughput_tasks as f64 / started.elapsed().as_secs_f64();
        let rss_after_kib = rss_kib();

        let scrape = core.metrics.render()?;
        let mut scrape_us = Vec::with_capacity(SCRAPES);
        for _ in 0..SCRAPES {
            let started = Instant::now();
            let text = core.metrics.render()?;
            scrape_us.push(started.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(text);
        }
        let tasks_before_scrape = 1 + 20 + SEQUENTIAL + throughput_tasks;
        troupe::telemetry::flush();
        let exported = sink.as_ref().map(|sink| {
            json!({
                "requests": sink.requests.load(Ordering::Relaxed),
                "bytes": sink.bytes.load(Ordering::Relaxed),
                "spans": sink.spans.load(Ordering::Relaxed),
            })
        });
        let hop = |suffix: &str| -> f64 {
            scrape
                .lines()
                .filter(|line| line.starts_with(&format!("troupe_message_latency_seconds_{suffix}")))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let hop_us_mean = hop("sum") / hop("count").max(1.0) * 1e6;
        let commit = |suffix: &str| -> f64 {
            scrape
                .lines()
                .filter(|line| line.starts_with(&format!("troupe_store_commit_duration_seconds_{suffix}")))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let commits = commit("count");

        println!(
            "{}",
            json!({
                "database": backend,
                "tracing": tracing,
                "otlp_export": otlp,
                "exported": exported,
                "tasks_sequential": SEQUENTIAL,
                "events_per_task": events_per_task,
                "core_us": { "p50": percentile(&mut core_us, 0.50), "p99": percentile(&mut core_us, 0.99) },
                "durable_us": { "p50": percentile(&mut durable_us, 0.50), "p99": percentile(&mut durable_us, 0.99) },
                "hop_us_mean": hop_us_mean,
                "in_flight": IN_FLIGHT,
                "throughput_tasks": throughput_tasks,
                "rss_kib": { "before_throughput": rss_before_kib, "after_throughput": rss_after_kib },
                "throughput_tasks_per_s": throughput,
                "store": {
                    "commits": commits,
                    "commit_us_mean": commit("sum") / commits.max(1.0) * 1e6,
                    "commits_per_task": commits / tasks_before_scrape as f64,
                },
                "scrape": {
                    "after_tasks": tasks_before_scrape,
                    "bytes": scrape.len(),
                    "us_p50": percentile(&mut scrape_us, 0.50),
                    "us_p99": percentile(&mut scrape_us, 0.99),
                },
            })
        );
        Ok::<_, anyhow::Error>(())
    })?;
    std::thread::sleep(Duration::from_millis(50));
    Ok(())
}

/// An OTLP/HTTP receiver that answers every export with an empty success and counts what arrived. It runs on
/// its own thread with its own actix system, like a collector next to Troupe.
struct OtlpSink {
    url: String,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

impl OtlpSink {
    fn start() -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let spans = Arc::new(AtomicU64::new(0));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (r, b, n) = (requests.clone(), bytes.clone(), spans.clone());
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(move || {
                    let (r, b, n) = (r.clone(), b.clone(), n.clone());
                    // Batches of 512 spans exceed actix-web's default 256 KiB body limit.
                    actix_web::App::new()
                        .app_data(actix_web::web::PayloadConfig::new(64 << 20))
                        .route(
                            "/v1/traces",
                            actix_web::web::post().to(move |body: actix_web::web::Bytes| {
                                r.fetch_add(1, Ordering::Relaxed);
                                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                                // Decoded like a collector would, to count spans (and see none is lost).
                                let spans =
                                    <ExportTraceServiceRequest as prost::Message>::decode(body)
                                        .map(|request| {
                                            request
                                                .resource_spans
                                                .iter()
                                                .flat_map(|r| &r.scope_spans)
                                                .map(|s| s.spans.len() as u64)
                                                .sum::<u64>()
                                        })
                                        .unwrap_or(0);
                                n.fetch_add(spans, Ordering::Relaxed);
                                async {
                                    actix_web::HttpResponse::Ok()
                                        .content_type("application/x-protobuf")
                                        .finish()
                                }
                            }),
                        )
                })
                .workers(1)
                .disable_signals()
                .bind("127.0.0.1:0")?;
                let _ = port_tx.send(server.addrs()[0].port());
                server.run().await
            })
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10))?;
        Ok(OtlpSink {
            url: format!("http://127.0.0.1:{port}"),
            requests,
            bytes,
            spans,
        })
    }
}

/// Waits for task `id`'s terminal event.
/// This process's resident set size in KiB (`VmRSS` of `/proc/self/status`), 0 where it cannot be read.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

async fn finish(core: &Core, id: TaskId) -> anyhow::Result<EventKind> {
    let mut subscription = core.events.subscribe(id, 0).await?;
    while let Some(event) = subscription.next().await? {
        if event.kind.is_terminal() {
            if event.kind == EventKind::TaskFailed {
                // Say why: a benchmark that stops on a failed task must name the failure.
                eprintln!("task {id} failed: {}", event.data);
            }
            return Ok(event.kind);
        }
    }
    anyhow::bail!("task {id} ended without a terminal event")
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}
