//! The sandbox: runs generated code (Python or shell) in a bubblewrap jail and measures it.
//!
//! - [`jail`]: the bubblewrap command line (no network, read-only system, private tmpfs workspace, new
//!   session, capabilities dropped, root remounted read-only).
//! - [`process`]: what happens between fork and exec (session and process group, death with Troupe, no new
//!   privileges, rlimits for CPU, address space, processes, file size and open files, and, as root, a user
//!   id per run slot so `RLIMIT_NPROC` binds), waiting with a timeout, `wait4` for CPU time.
//! - `shim.c` (compiled by `build.rs`, embedded, run from a memory file): the jail's command and pid 1. It
//!   runs the program, reaps it (and its orphans) with `wait4` and reports the run's own peak RSS over a
//!   socket (bubblewrap cannot: Troupe forks it, so it carries Troupe's high-water mark).
//! - [`classify`]: the outcome (`ok`, `error`, `timeout`, `oom`, `killed`, `violation`) and the violations.
//! - `types.rs`: requests, reports and errors (re-exported here); `uids.rs`: the per-run user ids claimed
//!   per machine; `run.rs`: one run on a blocking thread. This file is the facade: start-up, the probe,
//!   slots, and the `sandbox_run` span and metrics around each run.
//!
//! A run is watched while it runs: past its wall-clock limit or its output cap, or at its process limit, the
//! whole process group is killed; the pid namespace takes every other process of the run with it, and, as
//! root, anything left under the run's user id is killed too. If bubblewrap is missing or cannot create
//! namespaces, [`Sandbox::start`] records why, `/readyz` reports it and every run is refused: code never
//! runs unconfined.

pub mod classify;
pub mod jail;
pub mod process;
mod run;
mod types;
mod uids;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use classify::{Outcome, Violation, ViolationKind};
pub use types::{
    check_file_name, Language, RunReport, RunRequest, SandboxError, WorkspaceFile, MAX_NAME_CHARS,
};

use crate::config::SandboxSettings;
use crate::domain::TaskId;
use crate::telemetry::metrics::Metrics;
use types::validate;
use uids::{claim_uids, UidClaims, UidSlot};

/// The jail's command, which runs the program and reports its peak memory (`src/sandbox/shim.c`, built by
/// `build.rs`).
const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/troupe-shim"));

/// The sandbox; cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SandboxSettings,
    /// Why no code may run, if so (set at start-up, by configuration or by the probe).
    refusal: OnceLock<SandboxError>,
    bwrap: PathBuf,
    /// The shim, as a read-only memory file (`None` only when the sandbox refuses anyway).
    shim: Option<std::fs::File>,
    system: Vec<jail::SystemDir>,
    permits: Semaphore,
    /// Free user ids (as root), one per slot.
    free_uids: Mutex<Vec<u32>>,
    /// The locks that claim those user ids on this machine, held while the sandbox lives.
    _uid_locks: Vec<std::fs::File>,
    metrics: Metrics,
    /// The runs of each task in progress (waiting for a slot or running), and what stops them.
    tasks: Mutex<HashMap<TaskId, TaskRuns>>,
}

/// A task's runs in progress.
struct TaskRuns {
    /// Cancelled by [`Sandbox::cancel_task`]: each of them is killed within one watch interval.
    cancel: CancellationToken,
    /// How many.
    runs: usize,
}

/// A run of a task, registered while it is in progress (however it ends, or if its future is dropped).
struct Registered<'a> {
    inner: &'a Inner,
    task: TaskId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            if let Some(runs) = tasks.get_mut(&self.task) {
                runs.runs = runs.runs.saturating_sub(1);
                if runs.runs == 0 {
                    tasks.remove(&self.task);
                }
            }
        }
    }
}

/// A slot in use, counted in `troupe_sandbox_slots_busy` while it is held.
struct Busy<'a>(&'a Metrics);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.sandbox_slots_busy.dec();
    }
}

impl Sandbox {
    /// The sandbox for `settings`: finds bubblewrap and proves it works by running `exit 0` in a full jail.
    /// A failure does not stop Troupe: it is logged, `/readyz` reports it and every run is refused.
    pub async fn start(settings: SandboxSettings, metrics: Metrics) -> Sandbox {
        let root = process::is_root();
        let bwrap = find_program(&settings.bwrap);
        let shim = process::executable_memory_file("troupe-shim", SHIM);
        let claims = if root && settings.enabled && bwrap.is_some() {
            // The claim may wait a moment for ids being let go (it sleeps between tries).
            let wanted = settings.clone();
            tokio::task::spawn_blocking(move || claim_uids(&wanted))
                .await
                .unwrap_or_else(|e| {
                    Err(SandboxError::Unavailable(format!(
                        "the user-id claim's thread failed: {e}"
                    )))
                })
        } else {
            Ok(UidClaims::default())
        };
        let refusal = if !settings.enabled {
            Some(SandboxError::Disabled)
        } else if bwrap.is_none() {
            Some(SandboxError::Unavailable(format!(
                "bubblewrap ('{}') is not installed or not on PATH; install the bubblewrap package \
                 (scripts/setup.sh does)",
                settings.bwrap
            )))
        } else if let Err(error) = &shim {
            Some(SandboxError::Unavailable(format!(
                "the sandbox's shim cannot be put in a memory file: {error}"
            )))
        } else if let Err(error) = &claims {
            Some(error.clone())
        } else {
            None
        };
        let claims = claims.unwrap_or_default();
        // As root, at most as many runs at once as user ids were claimed.
        let parallel_runs = if root && !claims.uids.is_empty() {
            claims.uids.len()
        } else {
            settings.parallel_runs
        };
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                permits: Semaphore::new(parallel_runs),
                bwrap: bwrap.unwrap_or_default(),
                shim: shim.ok(),
                system: jail::system_dirs(),
                free_uids: Mutex::new(claims.uids),
                _uid_locks: claims.locks,
                refusal: refusal.map(OnceLock::from).unwrap_or_default(),
                settings,
                metrics,
                tasks: Mutex::new(HashMap::new()),
            }),
        };
        if sandbox.inner.refusal.get().is_none() {
            if let Some(refusal) = sandbox.probe().await {
                let _ = sandbox.inner.refusal.set(refusal);
            }
        }
        let up = sandbox.check_ready().is_ok();
        sandbox.inner.metrics.sandbox_up.set(i64::from(up));
        match sandbox.inner.refusal.get() {
            None => tracing::info!(
                bwrap = %sandbox.inner.bwrap.display(),
                per_run_uid = root,
                "sandbox ready"
            ),
            Some(SandboxError::Disabled) => tracing::info!("sandbox disabled"),
            Some(error) => tracing::error!(%error, "sandbox unavailable: no code will run"),
        }
        sandbox
    }

    /// Runs `exit 0` in the shell; any other result is why the sandbox must refuse.
    async fn probe(&self) -> Option<SandboxError> {
        match self
            .execute(
                RunRequest::snippet(Language::Shell, "exit 0"),
                None,
                &CancellationToken::new(),
            )
            .await
        {
            Ok(report) if report.outcome == Outcome::Ok => None,
            Ok(report) => Some(SandboxError::Unavailable(format!(
                "a trivial run in the jail ended '{}': {}",
                report.outcome.as_str(),
                report.failure_output(300)
            ))),
            Err(SandboxError::Jail(message) | SandboxError::Io(message)) => {
                Some(SandboxError::Unavailable(format!(
                    "bubblewrap cannot create the jail (user namespaces may be disabled): {message}"
                )))
            }
            Err(error) => Some(SandboxError::Unavailable(error.to_string())),
        }
    }

    /// Ok when code can run; otherwise why not (disabled, or unavailable with the reason).
    pub fn check_ready(&self) -> Result<(), SandboxError> {
        match self.inner.refusal.get() {
            None => Ok(()),
            Some(error) => Err(error.clone()),
        }
    }

    /// The settings (limits) runs get.
    pub fn settings(&self) -> &SandboxSettings {
        &self.inner.settings
    }

    /// Runs `request` in the jail: a `sandbox_run` span with the outcome and resource figures, counted in
    /// the sandbox metrics. Waits for a free slot when `parallel_runs` runs are going.
    pub async fn run(&self, request: RunRequest) -> Result<RunReport, SandboxError> {
        self.run_within(request, None, &CancellationToken::new())
            .await
    }

    /// [`Sandbox::run`] for task `task`: [`Sandbox::cancel_task`] stops it (a run waiting for a slot is
    /// refused with [`SandboxError::Cancelled`]; a running one is killed, outcome `cancelled`, with the
    /// output it wrote so far).
    pub async fn run_for(
        &self,
        task: TaskId,
        request: RunRequest,
    ) -> Result<RunReport, SandboxError> {
        let cancel = match self.inner.tasks.lock() {
            Ok(mut tasks) => {
                let runs = tasks.entry(task).or_insert_with(|| TaskRuns {
                    cancel: CancellationToken::new(),
                    runs: 0,
                });
                runs.runs += 1;
                runs.cancel.clone()
            }
            Err(_) => CancellationToken::new(),
        };
        let _registered = Registered {
            inner: &self.inner,
            task,
        };
        self.run_within(request, None, &cancel).await
    }

    /// Stops every run of task `task` in progress at once: a running one is killed (its slot is free again
    /// as soon as its processes are reaped, within a watch interval of 50 ms), one waiting for a slot stops
    /// waiting. Returns how many were stopped.
    pub fn cancel_task(&self, task: TaskId) -> usize {
        let Ok(mut tasks) = self.inner.tasks.lock() else {
            return 0;
        };
        match tasks.remove(&task) {
            Some(runs) => {
                runs.cancel.cancel();
                runs.runs
            }
            None => 0,
        }
    }

    /// [`Sandbox::run`], waiting at most `slot_wait` for a free slot: [`SandboxError::Busy`] after that (for
    /// a person's replay, which should not queue behind the tasks' runs for long).
    pub async fn run_waiting(
        &self,
        request: RunRequest,
        slot_wait: std::time::Duration,
    ) -> Result<RunReport, SandboxError> {
        self.run_within(request, Some(slot_wait), &CancellationToken::new())
            .await
    }

    async fn run_within(
        &self,
        request: RunRequest,
        slot_wait: Option<std::time::Duration>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, SandboxError> {
        self.check_ready()?;
        let language = request.language;
        let span = tracing::info_span!(
            "sandbox_run",
            otel.name = %format!("sandbox_run {}", language.as_str()),
            troupe.sandbox.language = language.as_str(),
            troupe.sandbox.outcome = tracing::field::Empty,
            troupe.sandbox.exit_code = tracing::field::Empty,
            troupe.sandbox.wall_seconds = tracing::field::Empty,
            troupe.sandbox.cpu_seconds = tracing::field::Empty,
            troupe.sandbox.peak_rss_bytes = tracing::field::Empty,
            troupe.sandbox.violations = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result =
            tracing::Instrument::instrument(self.execute(request, slot_wait, cancel), span.clone())
                .await;
        let metrics = &self.inner.metrics;
        match &result {
            Ok(report) => {
                span.record("troupe.sandbox.outcome", report.outcome.as_str());
                if let Some(code) = report.exit_code {
                    span.record("troupe.sandbox.exit_code", i64::from(code));
                }
                span.record("troupe.sandbox.wall_seconds", report.wall_seconds);
                span.record("troupe.sandbox.cpu_seconds", report.cpu_seconds);
                span.record(
                    "troupe.sandbox.peak_rss_bytes",
                    i64::try_from(report.peak_rss_bytes).unwrap_or(i64::MAX),
                );
                let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
                span.record("troupe.sandbox.violations", kinds.join(",").as_str());
                metrics
                    .sandbox_runs
                    .with_label_values(&[language.as_str(), report.outcome.as_str()])
                    .inc();
                metrics
                    .sandbox_run_duration
                    .with_label_values(&[language.as_str()])
                    .observe(report.wall_seconds);
                metrics
                    .sandbox_cpu
                    .with_label_values(&[language.as_str()])
                    .observe(report.cpu_seconds);
                metrics
                    .sandbox_peak_rss
                    .with_label_values(&[language.as_str()])
                    .observe(report.peak_rss_bytes as f64);
                for violation in &report.violations {
                    metrics
                        .sandbox_violations
                        .with_label_values(&[violation.kind.as_str()])
                        .inc();
                    tracing::warn!(
                        kind = violation.kind.as_str(),
                        detail = %violation.detail,
                        "sandbox contained a violation"
                    );
                }
            }
            Err(error) => {
                span.record("error.type", "sandbox");
                metrics
                    .sandbox_runs
                    .with_label_values(&[language.as_str(), "refused"])
                    .inc();
                tracing::warn!(%error, "sandbox run refused");
            }
        }
        result
    }

    /// The run itself, without span or metrics (the start-up probe uses it before the sandbox is ready),
    /// waiting for a slot at most `slot_wait` when given.
    async fn execute(
        &self,
        request: RunRequest,
        slot_wait: Option<std::time::Duration>,
        cancel: &CancellationToken,
    ) -> Result<RunReport, SandboxError> {
        validate(&request, &self.inner.settings)?;
        let acquire = async {
            match slot_wait {
                None => Ok(self.inner.permits.acquire().await),
                Some(wait) => tokio::time::timeout(wait, self.inner.permits.acquire())
                    .await
                    .map_err(|_| SandboxError::Busy(wait.as_secs())),
            }
        };
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(SandboxError::Cancelled),
            permit = acquire => permit?,
        };
        let _permit =
            permit.map_err(|_| SandboxError::Io("the sandbox is shutting down".into()))?;
        self.inner.metrics.sandbox_slots_busy.inc();
        let _busy = Busy(&self.inner.metrics);
        let slot = UidSlot::take(&self.inner);
        let inner = Arc::clone(&self.inner);
        let uid = slot.uid;
        let cancel = cancel.clone();
        let report =
            tokio::task::spawn_blocking(move || run::run_blocking(&inner, &request, uid, &cancel))
                .await
                .map_err(|e| SandboxError::Io(format!("the run's thread failed: {e}")))?;
        drop(slot);
        report
    }
}

/// `name` as a path, or found on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
