//! Sandbox overhead: start-to-exit of a trivial Python program (`pass`) run through the sandbox (bubblewrap
//! jail, rlimits, per-run uid, wait4) against the same interpreter run unconfined, p50/p99 and their ratio;
//! then runs per second with both cores busy (as many runs at once as cores), and the peak RSS the shim
//! reports for the jailed program; and the time from cancelling a task to its run's last process gone and
//! its slot free (a run sleeping 30 s, cancelled once it runs). Prints one JSON line last.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use troupe::config::Settings;
use troupe::domain::TaskId;
use troupe::sandbox::{Language, Outcome, RunRequest, Sandbox};
use troupe::telemetry::metrics::Metrics;

const RUNS: usize = 200;
const THROUGHPUT_SECONDS: f64 = 10.0;
const CANCELS: usize = 30;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings::load_from(&root.join("config"), None)?.sandbox;
    let python = settings.python.clone();
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    actix_rt::System::new().block_on(async move {
        let metrics = Metrics::new()?;
        let sandbox = Sandbox::start(settings, metrics.clone()).await;
        sandbox.check_ready()?;
        // Warm both paths (page cache, interpreter files).
        for _ in 0..10 {
            sandbox.run(RunRequest::snippet(Language::Python, "pass")).await?;
            Command::new(&python).args(["-B", "-s", "-c", "pass"]).status()?;
        }
        let mut jailed = Vec::with_capacity(RUNS);
        let mut bare = Vec::with_capacity(RUNS);
        let mut peak_rss = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let started = Instant::now();
            let report = sandbox.run(RunRequest::snippet(Language::Python, "pass")).await?;
            jailed.push(started.elapsed().as_secs_f64());
            anyhow::ensure!(report.outcome == Outcome::Ok, "a trivial run ended {report:?}");
            peak_rss.push(report.peak_rss_bytes as f64 / 1024.0);
            let started = Instant::now();
            let status = Command::new(&python).args(["-B", "-s", "-c", "pass"]).status()?;
            bare.push(started.elapsed().as_secs_f64());
            anyhow::ensure!(status.success());
        }
        let (jailed_p50, jailed_p99) = summary(jailed);
        let (bare_p50, bare_p99) = summary(bare);
        let (peak_rss_p50, _) = summary(peak_rss);

        let started = Instant::now();
        let mut runs = 0usize;
        while started.elapsed().as_secs_f64() < THROUGHPUT_SECONDS {
            let batch = (0..cores).map(|_| {
                let sandbox = sandbox.clone();
                async move { sandbox.run(RunRequest::snippet(Language::Python, "pass")).await }
            });
            for report in futures_util::future::join_all(batch).await {
                anyhow::ensure!(report?.outcome == Outcome::Ok);
                runs += 1;
            }
        }
        let per_second = runs as f64 / started.elapsed().as_secs_f64();

        // Cancellation: a run that would sleep 30 s, cancelled 200 ms after its slot was taken; the run
        // returns once its processes are killed, reaped and swept (its slot is then free).
        let mut cancels = Vec::with_capacity(CANCELS);
        for _ in 0..CANCELS {
            let task = TaskId::new();
            let running = sandbox.clone();
            let run = actix_rt::spawn(async move {
                running
                    .run_for(task, RunRequest::snippet(Language::Python, "import time\ntime.sleep(30)"))
                    .await
            });
            while metrics.sandbox_slots_busy.get() == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let asked = Instant::now();
            anyhow::ensure!(sandbox.cancel_task(task) == 1, "the run was not registered");
            let report = run.await??;
            cancels.push(asked.elapsed().as_secs_f64());
            anyhow::ensure!(report.outcome == Outcome::Cancelled, "a cancelled run ended {report:?}");
            anyhow::ensure!(metrics.sandbox_slots_busy.get() == 0, "the slot is still taken");
        }
        let (cancel_p50, cancel_p99) = summary(cancels);
        eprintln!(
            "trivial python: jailed p50 {:.2} ms p99 {:.2} ms; unconfined p50 {:.2} ms p99 {:.2} ms; ratio p50 {:.2} p99 {:.2}; {per_second:.1} runs/s with {cores} at once",
            jailed_p50 * 1e3, jailed_p99 * 1e3, bare_p50 * 1e3, bare_p99 * 1e3,
            jailed_p50 / bare_p50, jailed_p99 / bare_p99
        );
        eprintln!(
            "cancel to the run's last process gone and its slot free: p50 {:.1} ms p99 {:.1} ms ({CANCELS} runs)",
            cancel_p50 * 1e3,
            cancel_p99 * 1e3
        );
        println!(
            "{}",
            serde_json::json!({
                "runs": RUNS,
                "jailed_p50_ms": jailed_p50 * 1e3,
                "jailed_p99_ms": jailed_p99 * 1e3,
                "unconfined_p50_ms": bare_p50 * 1e3,
                "unconfined_p99_ms": bare_p99 * 1e3,
                "ratio_p50": jailed_p50 / bare_p50,
                "ratio_p99": jailed_p99 / bare_p99,
                "concurrent_runs": cores,
                "runs_per_second": per_second,
                "jailed_peak_rss_kib_p50": peak_rss_p50,
                "cancels": CANCELS,
                "cancel_to_gone_p50_ms": cancel_p50 * 1e3,
                "cancel_to_gone_p99_ms": cancel_p99 * 1e3,
            })
        );
        Ok(())
    })
}
