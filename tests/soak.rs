//! The soak (issue 17, hardening): steady submissions for a while to one API node and two workers on the
//! Redis queue (real PostgreSQL, Redis and processes), every task replayed from one recording made on the
//! real model (no model time). Every submitted task must complete (nothing lost), and each process's
//! resident memory, open files and sockets must stay flat once warmed up.
//!
//! `make test` runs the short mode (`TROUPE_SOAK_SECONDS`, default 60 s, at `TROUPE_SOAK_RATE` tasks/s,
//! default 10); `scripts/bench.sh` (`make bench`) runs it for 30 minutes and prints its figures (the JSON
//! line starting `soak:`) for `BENCHMARKS.md`.

use std::time::{Duration, Instant};

use awc::ws::Frame;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::resume::Server;
use crate::scale_out::Deployment;

/// One sample of a process: resident memory (KiB), open file descriptors, of which sockets.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    sockets: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    let (mut fds, mut sockets) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            fds += 1;
            if std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    Sample {
        rss_kib,
        fds,
        sockets,
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Submits `body` and follows the task's WebSocket on the API node to its end: its id and terminal kind.
async fn run_one(port: u16, body: &Value) -> Result<(String, String), String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut response = client
        .post(format!("http://127.0.0.1:{port}/api/v1/tasks"))
        .send_json(body)
        .await
        .map_err(|error| format!("submit: {error}"))?;
    let status = response.status().as_u16();
    let accepted: Value = response
        .json()
        .await
        .map_err(|error| format!("submit answer: {error}"))?;
    if status != 202 {
        return Err(format!("submit: {status} {accepted}"));
    }
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    let (_, mut socket) = awc::Client::new()
        .ws(format!("ws://127.0.0.1:{port}/api/v1/tasks/{id}/events"))
        .connect()
        .await
        .map_err(|error| format!("task {id}: websocket: {error}"))?;
    let mut last = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), socket.next()).await {
            Err(_) => return Err(format!("task {id}: no event for 120 s after {last}")),
            Ok(Some(Ok(Frame::Text(bytes)))) => {
                let event: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                last = event["kind"].as_str().unwrap_or_default().to_owned();
            }
            Ok(Some(Ok(Frame::Ping(bytes)))) => {
                let _ = socket.send(awc::ws::Message::Pong(bytes)).await;
            }
            Ok(Some(Ok(Frame::Close(_))) | None) => return Ok((id, last)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => return Err(format!("task {id}: websocket: {error}")),
        }
    }
}

/// The most of `pick` over `samples`.
fn most(samples: &[Sample], pick: impl Fn(&Sample) -> u64) -> u64 {
    samples.iter().map(pick).max().unwrap_or(0)
}

/// Least-squares slope of `pick` over `samples` taken every `every`, per hour.
fn slope_per_hour(samples: &[Sample], every: Duration, pick: impl Fn(&Sample) -> u64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let xs: Vec<f64> = (0..samples.len())
        .map(|i| i as f64 * every.as_secs_f64())
        .collect();
    let ys: Vec<f64> = samples.iter().map(|s| pick(s) as f64).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let covariance: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let variance: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance * 3600.0
    }
}

#[actix_rt::test]
async fn a_soak_across_two_workers_loses_nothing_and_stays_flat() {
    let seconds = env_number("TROUPE_SOAK_SECONDS", 60);
    let rate = env_number("TROUPE_SOAK_RATE", 10).max(1);
    let every = Duration::from_secs(if seconds > 300 { 10 } else { 2 });
    let deployment = Deployment::new("", 3).await;
    let api = deployment.api().await;
    let workers: Vec<Server> = vec![
        deployment.worker("worker-a").await,
        deployment.worker("worker-b").await,
    ];
    let port = api.port;
    let prompt = "Write a Python function that adds two numbers";
    // The recording, on the real model.
    let (recorded, end) = run_one(port, &json!({ "prompt": prompt }))
        .await
        .expect("the recorded task runs");
    assert_eq!(end, "task.completed", "the recording");
    let body = json!({ "prompt": prompt, "options": { "replay_of": recorded } });

    // Steady submissions: `rate` a second, each followed to its end on its own; in flight at most 256.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let outcomes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let pids: Vec<u32> = std::iter::once(api.pid())
        .chain(workers.iter().map(Server::pid))
        .collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); pids.len()];
    let started = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    let mut next_sample = Instant::now();
    let mut submitted = 0_u64;
    let mut clients = tokio::task::JoinSet::new();
    while started.elapsed() < run_for {
        ticker.tick().await;
        if Instant::now() >= next_sample {
            for (pid, series) in pids.iter().zip(samples.iter_mut()) {
                series.push(sample(*pid));
            }
            next_sample += every;
        }
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            continue; // the system is behind: this tick submits nothing (counted as the achieved rate)
        };
        submitted += 1;
        let (body, outcomes) = (body.clone(), std::rc::Rc::clone(&outcomes));
        clients.spawn_local(async move {
            let outcome = run_one(port, &body).await.map(|(_, end)| end);
            outcomes.borrow_mut().push(outcome);
            drop(slot);
        });
    }
    while clients.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    for (pid, series) in pids.iter().zip(samples.iter_mut()) {
        series.push(sample(*pid));
    }

    // Nothing lost: every submission was accepted and completed.
    let outcomes = outcomes.borrow().clone();
    let failures: Vec<&Result<String, String>> = outcomes
        .iter()
        .filter(|outcome| outcome.as_deref() != Ok("task.completed"))
        .collect();
    assert_eq!(outcomes.len() as u64, submitted);
    assert!(
        failures.is_empty(),
        "{} of {submitted} tasks did not complete, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    deployment.wait_for_empty_queue().await;

    // Flat. Descriptors rise and fall with the connections in flight, so a leak shows where nothing is in
    // flight: at the end, every client done, a process holds no more than it did at its busiest in the first
    // half (pools filled), beyond a slack. Resident memory: the last quarter no higher than the second, beyond
    // a slack for caches settling. The slopes are reported.
    let names = ["api", "worker-a", "worker-b"];
    let mut report = Vec::new();
    for (name, series) in names.iter().zip(&samples) {
        let quarter = (series.len() / 4).max(1);
        let warm = &series[quarter..];
        let (first_half, second, last) = (
            &series[..(2 * quarter).min(series.len())],
            &series[quarter..(2 * quarter).min(series.len())],
            &series[series.len().saturating_sub(quarter)..],
        );
        let end = series[series.len() - 1];
        let figures = json!({
            "process": name,
            "rss_mib": { "first": series[0].rss_kib / 1024, "after_warm_up": warm[0].rss_kib / 1024,
                         "last": end.rss_kib / 1024, "most": most(series, |s| s.rss_kib) / 1024,
                         "slope_mib_per_hour": slope_per_hour(warm, every, |s| s.rss_kib) / 1024.0 },
            "fds": { "after_warm_up": warm[0].fds, "last": end.fds, "most": most(series, |s| s.fds) },
            "sockets": { "after_warm_up": warm[0].sockets, "last": end.sockets, "most": most(series, |s| s.sockets) },
        });
        report.push(figures.clone());
        assert!(
            end.fds <= most(first_half, |s| s.fds) + 16,
            "{name}: open files grew: {figures}"
        );
        assert!(
            end.sockets <= most(first_half, |s| s.sockets) + 16,
            "{name}: sockets grew: {figures}"
        );
        assert!(
            most(last, |s| s.rss_kib) <= most(second, |s| s.rss_kib) * 5 / 4 + 32 * 1024,
            "{name}: resident memory grew: {figures}"
        );
    }
    println!(
        "soak: {}",
        json!({
            "seconds": elapsed.as_secs(),
            "target_rate": rate,
            "tasks": submitted,
            "achieved_rate": submitted as f64 / elapsed.as_secs_f64(),
            "completed": outcomes.len() - failures.len(),
            "processes": report,
        })
    );
    drop(workers);
    drop(api);
    deployment.finish().await;
}
