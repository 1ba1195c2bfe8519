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
//!
//! A run is watched while it runs: past its wall-clock limit or its output cap, or at its process limit, the
//! whole process group is killed; the pid namespace takes every other process of the run with it, and, as
//! root, anything left under the run's user id is killed too. If bubblewrap is missing or cannot create
//! namespaces, [`Sandbox::start`] records why, `/readyz` reports it and every run is refused: code never
//! runs unconfined.

pub mod classify;
pub mod jail;
pub mod process;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

pub use classify::{Outcome, Violation, ViolationKind};

use crate::config::SandboxSettings;
use crate::telemetry::metrics::Metrics;

/// The Python audit hook, loaded as `sitecustomize` in every Python run.
const AUDIT_HOOK: &str = include_str!("sandbox/audit_hook.py");
/// The jail's command, which runs the program and reports its peak memory (`src/sandbox/shim.c`, built by
/// `build.rs`).
const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/troupe-shim"));
/// How often a running jail's process count is checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest file name in a run's workspace (and in the file tools' schemas).
pub const MAX_NAME_CHARS: usize = 100;

/// A language the sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3 (the configured interpreter).
    Python,
    /// POSIX shell.
    Shell,
}

impl Language {
    /// Every language.
    pub const ALL: [Language; 2] = [Language::Python, Language::Shell];

    /// The stable name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Shell => "shell",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Language::Python => "py",
            Language::Shell => "sh",
        }
    }
}

impl std::str::FromStr for Language {
    type Err = SandboxError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "python" | "python3" | "py" => Ok(Language::Python),
            "shell" | "sh" => Ok(Language::Shell),
            other => Err(SandboxError::Request(format!(
                "language '{other}' is not supported (python, shell); Rust is not built: compiling in the \
                 jail would need the toolchain inside it"
            ))),
        }
    }
}

/// A file of a run's workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceFile {
    /// A plain file name (letters, digits, `.`, `_`, `-`; no folders).
    pub name: String,
    /// Its content.
    pub content: String,
}

/// One run: files to put in the workspace and which of them to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The language of `entry`.
    pub language: Language,
    /// The workspace's files.
    pub files: Vec<WorkspaceFile>,
    /// The file to run (one of `files`).
    pub entry: String,
}

impl RunRequest {
    /// A run of one snippet, as `main.py` or `main.sh`.
    pub fn snippet(language: Language, code: impl Into<String>) -> Self {
        let entry = format!("main.{}", language.extension());
        RunRequest {
            language,
            files: vec![WorkspaceFile {
                name: entry.clone(),
                content: code.into(),
            }],
            entry,
        }
    }
}

/// What a run did and used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The language.
    pub language: Language,
    /// How it ended.
    pub outcome: Outcome,
    /// The program's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Wall-clock seconds from start to exit.
    pub wall_seconds: f64,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set of the run's largest process, in bytes (the program, the children it waited for,
    /// the orphans the shim reaped), measured by the shim in the jail; 0 when there is no report (the run
    /// was killed by the sandbox).
    pub peak_rss_bytes: u64,
    /// Standard output (at most `output_limit_bytes`; lossy UTF-8).
    pub stdout: String,
    /// Standard error, the audit hook's reports removed.
    pub stderr: String,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// What the jail and the limits contained.
    pub violations: Vec<Violation>,
}

impl RunReport {
    /// The last lines of stderr (or stdout when stderr is empty): what a failure says, for feedback.
    pub fn failure_output(&self, max_chars: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = text.trim_end();
        let start = text
            .char_indices()
            .rev()
            .nth(max_chars.saturating_sub(1))
            .map_or(0, |(i, _)| i);
        let mut tail = text[start..].trim_start().to_owned();
        if tail.is_empty() {
            tail = format!("the run ended with outcome {}", self.outcome.as_str());
        }
        tail
    }
}

/// Why a run could not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    /// `sandbox.enabled = false`.
    #[error("the sandbox is disabled (sandbox.enabled = false)")]
    Disabled,
    /// bubblewrap is missing or cannot create its namespaces here; nothing runs unconfined.
    #[error("the sandbox cannot run code on this machine: {0}")]
    Unavailable(String),
    /// The request is unusable (bad file name, unknown language, too large).
    #[error("{0}")]
    Request(String),
    /// bubblewrap failed to set up the jail for this run.
    #[error("the jail could not be set up: {0}")]
    Jail(String),
    /// Starting or watching the process failed.
    #[error("run: {0}")]
    Io(String),
}

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
}

impl Sandbox {
    /// The sandbox for `settings`: finds bubblewrap and proves it works by running `exit 0` in a full jail.
    /// A failure does not stop Troupe: it is logged, `/readyz` reports it and every run is refused.
    pub async fn start(settings: SandboxSettings, metrics: Metrics) -> Sandbox {
        let root = process::is_root();
        let bwrap = find_program(&settings.bwrap);
        let shim = process::executable_memory_file("troupe-shim", SHIM);
        let claims = if root && settings.enabled && bwrap.is_some() {
            claim_uids(&settings)
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
            .execute(RunRequest::snippet(Language::Shell, "exit 0"))
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
        let result = tracing::Instrument::instrument(self.execute(request), span.clone()).await;
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

    /// The run itself, without span or metrics (the start-up probe uses it before the sandbox is ready).
    async fn execute(&self, request: RunRequest) -> Result<RunReport, SandboxError> {
        validate(&request, &self.inner.settings)?;
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| SandboxError::Io("the sandbox is shutting down".into()))?;
        let slot = UidSlot::take(&self.inner);
        let inner = Arc::clone(&self.inner);
        let uid = slot.uid;
        let report = tokio::task::spawn_blocking(move || run_blocking(&inner, &request, uid))
            .await
            .map_err(|e| SandboxError::Io(format!("the run's thread failed: {e}")))?;
        drop(slot);
        report
    }
}

/// A per-run user id, returned to the free list when dropped.
struct UidSlot {
    inner: Arc<Inner>,
    uid: Option<u32>,
}

impl UidSlot {
    fn take(inner: &Arc<Inner>) -> UidSlot {
        let uid = inner.free_uids.lock().ok().and_then(|mut free| free.pop());
        UidSlot {
            inner: Arc::clone(inner),
            uid,
        }
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let (Some(uid), Ok(mut free)) = (self.uid, self.inner.free_uids.lock()) {
            free.push(uid);
        }
    }
}

/// Where the per-user-id lock files live: `/run/lock` (shared by every process on the machine), else the
/// temporary directory.
fn lock_dir() -> PathBuf {
    let run_lock = PathBuf::from("/run/lock");
    if run_lock.is_dir() {
        run_lock
    } else {
        std::env::temp_dir()
    }
}

/// The user ids a sandbox running as root claimed, and the locks that hold them.
#[derive(Default)]
struct UidClaims {
    uids: Vec<u32>,
    locks: Vec<std::fs::File>,
}

/// Claims the user ids `uid_base .. uid_base + parallel_runs` with an exclusive lock file each, so that no
/// two Troupe processes on the machine run code under one id (the sweep after a run kills whatever runs
/// under its id). Ids another process holds are skipped; none left is a refusal.
fn claim_uids(settings: &SandboxSettings) -> Result<UidClaims, SandboxError> {
    let dir = lock_dir();
    let mut claims = UidClaims::default();
    let mut held = Vec::new();
    for slot in 0..settings.parallel_runs {
        let Some(uid) = u32::try_from(slot)
            .ok()
            .and_then(|slot| settings.uid_base.checked_add(slot))
        else {
            break;
        };
        let path = dir.join(format!("troupe-sandbox-uid-{uid}.lock"));
        match process::try_lock_file(&path) {
            Ok(Some(lock)) => {
                claims.uids.push(uid);
                claims.locks.push(lock);
            }
            Ok(None) => held.push(uid),
            Err(error) => {
                return Err(SandboxError::Unavailable(format!(
                    "cannot claim sandbox user id {uid} ({}): {error}",
                    path.display()
                )))
            }
        }
    }
    if claims.uids.is_empty() {
        return Err(SandboxError::Unavailable(format!(
            "every sandbox user id ({}..{}) is in use by another Troupe process on this machine; give              each one its own sandbox.uid_base",
            settings.uid_base,
            u64::from(settings.uid_base) + settings.parallel_runs as u64
        )));
    }
    if !held.is_empty() {
        tracing::warn!(
            ?held,
            claimed = claims.uids.len(),
            "some sandbox user ids are in use by another Troupe process; fewer runs at once"
        );
    }
    // Slots are taken from the end: the lowest id first.
    claims.uids.reverse();
    Ok(claims)
}

/// Checks file names, the entry and the total size.
fn validate(request: &RunRequest, settings: &SandboxSettings) -> Result<(), SandboxError> {
    if request.files.is_empty() {
        return Err(SandboxError::Request(
            "a run needs at least one file".into(),
        ));
    }
    for file in &request.files {
        check_file_name(&file.name)?;
    }
    if !request.files.iter().any(|file| file.name == request.entry) {
        return Err(SandboxError::Request(format!(
            "the entry '{}' is not one of the run's files",
            request.entry
        )));
    }
    let total: usize = request.files.iter().map(|file| file.content.len()).sum();
    let limit = settings.max_file_bytes.min(settings.workspace_bytes);
    if u64::try_from(total).unwrap_or(u64::MAX) > limit {
        return Err(SandboxError::Request(format!(
            "the run's files hold {total} bytes; at most {limit}"
        )));
    }
    Ok(())
}

/// A plain file name: 1..=100 characters of letters, digits, `.`, `_`, `-`, not starting with a dot.
pub fn check_file_name(name: &str) -> Result<(), SandboxError> {
    let plain = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(())
    } else {
        Err(SandboxError::Request(format!(
            "'{}' is not a plain file name (1..={MAX_NAME_CHARS} letters, digits, '.', '_', '-'; no folders, \
             not starting with '.')",
            name.chars().take(MAX_NAME_CHARS).collect::<String>()
        )))
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

/// Reads a pipe up to `limit` bytes; past it, sets `exceeded`, kills the jail's group and stops reading.
fn read_capped(
    mut pipe: impl Read,
    limit: usize,
    exceeded: &AtomicBool,
    group: u32,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => return (kept, false),
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
                if n > room {
                    exceeded.store(true, Ordering::SeqCst);
                    process::kill_group(group);
                    return (kept, true);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (kept, false),
        }
    }
}

/// Starts the jail, watches it (wall clock, process count), reaps it and classifies the run.
fn run_blocking(
    inner: &Inner,
    request: &RunRequest,
    uid: Option<u32>,
) -> Result<RunReport, SandboxError> {
    let settings = &inner.settings;
    let io = |what: &str, e: std::io::Error| SandboxError::Io(format!("{what}: {e}"));
    let mut files = Vec::with_capacity(request.files.len());
    for file in &request.files {
        files.push((
            process::memory_file(&file.name, file.content.as_bytes())
                .map_err(|e| io("workspace file", e))?,
            file.name.clone(),
        ));
    }
    let hook = match request.language {
        Language::Python => Some(
            process::memory_file("sitecustomize.py", AUDIT_HOOK.as_bytes())
                .map_err(|e| io("audit hook", e))?,
        ),
        Language::Shell => None,
    };
    let file_fds: Vec<(i32, String)> = files
        .iter()
        .map(|(file, name)| (file.as_raw_fd(), name.clone()))
        .collect();
    let shim = inner
        .shim
        .as_ref()
        .ok_or_else(|| SandboxError::Io("the sandbox's shim is missing".into()))?;
    // The shim's report comes over a socket pair (both ends close on exec; the jail's end is handed on).
    let (report, report_end) = UnixStream::pair().map_err(|e| io("report socket", e))?;
    let mut inherited: Vec<i32> = file_fds.iter().map(|(fd, _)| *fd).collect();
    inherited.extend(hook.as_ref().map(AsRawFd::as_raw_fd));
    inherited.extend([shim.as_raw_fd(), report_end.as_raw_fd()]);
    // The jail's command is the shim (its memory file, open in bubblewrap and so in the jail), which runs the
    // program and reports its peak memory.
    let mut command_in_jail: Vec<std::ffi::OsString> = vec![
        format!("/proc/self/fd/{}", shim.as_raw_fd()).into(),
        report_end.as_raw_fd().to_string().into(),
    ];
    command_in_jail.extend(jail::command(
        request.language,
        &settings.python,
        &settings.shell,
        &request.entry,
    ));
    let args = jail::arguments(&jail::JailSpec {
        system: &inner.system,
        workspace_bytes: settings.workspace_bytes,
        files: &file_fds,
        hook: hook.as_ref().map(AsRawFd::as_raw_fd),
        command: command_in_jail,
    });
    // As root, the run has its own user id, so RLIMIT_NPROC counts only its processes (and the shim).
    // Otherwise the limit counts every process of Troupe's user: leave room for the ones it already has.
    let max_processes = if uid.is_some() {
        settings.max_processes + 1
    } else {
        let own = process::processes_of(process::real_uid()).len();
        settings.max_processes + 1 + u64::try_from(own).unwrap_or(0)
    };
    let mut command = Command::new(&inner.bwrap);
    command
        .args(&args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::prepare(
        &mut command,
        process::ChildSetup {
            cpu_seconds: settings.cpu_seconds,
            memory_bytes: settings.memory_bytes,
            max_processes,
            max_file_bytes: settings.max_file_bytes,
            max_open_files: settings.max_open_files,
            uid,
        },
        inherited,
    );
    let started = Instant::now();
    let mut child = command.spawn().map_err(|e| io("start bubblewrap", e))?;
    drop(files);
    drop(hook);
    drop(report_end);
    let pid = child.id();
    let exceeded = Arc::new(AtomicBool::new(false));
    let limit = settings.output_limit_bytes;
    let readers = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|pipe| {
        let exceeded = Arc::clone(&exceeded);
        pipe.map(|pipe| std::thread::spawn(move || read_capped(pipe, limit, &exceeded, pid)))
    });
    let deadline = started + Duration::from_secs_f64(settings.timeout_seconds);
    // With a per-run user id, the watcher counts that id's processes against the same limit.
    let watched = watch(pid, deadline, uid, max_processes);
    let reaped = process::reap(pid, false)
        .map_err(|e| io("wait for the jail", e))?
        .ok_or_else(|| SandboxError::Io("the jail was not reaped".into()))?;
    let wall_seconds = started.elapsed().as_secs_f64();
    // The shim wrote its report before it exited, so before the jail did; nothing written by now means
    // there is none (read without waiting, not for the end of the stream).
    let peak_rss_kb = report
        .set_nonblocking(true)
        .ok()
        .and_then(|()| read_peak_rss_kb(&mut BufReader::new(report)));
    if let Some(uid) = uid {
        sweep(uid);
    }
    let [stdout, stderr] = readers.map(|reader| {
        reader
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    });
    let truncated = stdout.1 || stderr.1;
    let stdout = String::from_utf8_lossy(&stdout.0).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.0).into_owned();
    // bubblewrap reports its own set-up failures as "bwrap: ..." and exits 1 before the program starts;
    // the shim's as "troupe-shim: ..." with 125 or 127.
    let jail_failed = (reaped.code == Some(1) && stderr.starts_with("bwrap: "))
        || (matches!(reaped.code, Some(125 | 127)) && stderr.starts_with("troupe-shim: "));
    if jail_failed {
        return Err(SandboxError::Jail(stderr.trim().to_owned()));
    }
    // No report: the sandbox killed the run (timeout, output, process limit).
    let peak_rss_bytes = peak_rss_kb.map_or(0, |kb| u64::try_from(kb).unwrap_or(0) * 1024);
    let (stderr, reported) = classify::split_markers(&stderr);
    let ending = classify::Ending {
        code: reaped.code,
        signal: reaped.signal,
        cpu_seconds: reaped.cpu_seconds,
        peak_rss_bytes,
        timed_out: watched == Watched::TimedOut,
        output_exceeded: exceeded.load(Ordering::SeqCst),
        process_limit_reached: watched == Watched::ProcessLimit,
        stderr,
        reported,
        cpu_limit_seconds: settings.cpu_seconds,
        memory_limit_bytes: settings.memory_bytes,
    };
    let (outcome, violations) = classify::classify(&ending);
    Ok(RunReport {
        language: request.language,
        outcome,
        exit_code: ending
            .code
            .filter(|code| classify::program_signal(&ending).is_none() || *code < 129),
        signal: classify::program_signal(&ending),
        wall_seconds,
        cpu_seconds: ending.cpu_seconds,
        peak_rss_bytes: ending.peak_rss_bytes,
        stdout,
        stderr: ending.stderr,
        truncated,
        violations,
    })
}

/// How the watch of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Exited,
    TimedOut,
    ProcessLimit,
}

/// Reads the shim's report, `maxrss <KB>`; `None` if the shim ended without it.
fn read_peak_rss_kb(report: &mut impl BufRead) -> Option<i64> {
    let mut line = String::new();
    report.read_line(&mut line).ok()?;
    line.trim_end().strip_prefix("maxrss ")?.parse().ok()
}

/// Waits for the jail (pid `pid`, also its process group) to exit, killing its group at the deadline or,
/// with a per-run `uid`, when the run holds `max_processes` processes.
fn watch(pid: u32, deadline: Instant, uid: Option<u32>, max_processes: u64) -> Watched {
    let pidfd = process::pidfd(pid);
    loop {
        let now = Instant::now();
        if now >= deadline {
            process::kill_group(pid);
            return Watched::TimedOut;
        }
        let wait = (deadline - now).min(WATCH_INTERVAL);
        let exited = match &pidfd {
            Some(fd) => process::wait_exit(fd, wait),
            None => {
                std::thread::sleep(wait.min(Duration::from_millis(5)));
                // Without pidfds, peek at the process's state without reaping it.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|stat| stat.contains(") Z "))
                    .unwrap_or(true)
            }
        };
        if exited {
            return Watched::Exited;
        }
        if let Some(uid) = uid {
            let count = u64::try_from(process::processes_of(uid).len()).unwrap_or(u64::MAX);
            if count >= max_processes {
                process::kill_group(pid);
                return Watched::ProcessLimit;
            }
        }
    }
}

/// Kills whatever is still running under `uid` (nothing should be: the pid namespace ends with the jail).
fn sweep(uid: u32) {
    for _ in 0..50 {
        let left = process::processes_of(uid);
        if left.is_empty() {
            return;
        }
        for pid in left {
            process::kill(pid);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!(uid, "processes of a finished run survived repeated kills");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_must_be_plain() {
        for good in ["main.py", "test_solution.py", "a-b_c.sh"] {
            assert!(check_file_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x.py", "/etc/passwd", "a/b.py", ".hidden", "x y.py"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn languages_parse_and_rust_says_why_not() {
        assert_eq!("python".parse::<Language>().unwrap(), Language::Python);
        assert_eq!("sh".parse::<Language>().unwrap(), Language::Shell);
        let error = "rust".parse::<Language>().unwrap_err();
        assert!(error.to_string().contains("not supported"));
    }

    #[test]
    fn failure_output_is_the_tail_of_stderr() {
        let report = RunReport {
            language: Language::Python,
            outcome: Outcome::Error,
            exit_code: Some(1),
            signal: None,
            wall_seconds: 0.0,
            cpu_seconds: 0.0,
            peak_rss_bytes: 0,
            stdout: "noise".into(),
            stderr: "Traceback\n  line 1\nAssertionError: 1 != 2\n".into(),
            truncated: false,
            violations: vec![],
        };
        assert_eq!(report.failure_output(23), "AssertionError: 1 != 2");
    }
}
