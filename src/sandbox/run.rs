//! One run, on a blocking thread: the workspace and the audit hook as memory files, the jail started with
//! the shim as its pid 1, its output read up to the cap, the watch (wall clock, process count), the reap,
//! the sweep of the run's user id, and the classification of what happened.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::classify;
use super::types::{Language, RunReport, RunRequest, SandboxError};
use super::{jail, process, Inner};

/// The Python audit hook, loaded as `sitecustomize` in every Python run.
const AUDIT_HOOK: &str = include_str!("audit_hook.py");
/// How often a running jail's process count is checked.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

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
pub(super) fn run_blocking(
    inner: &Inner,
    request: &RunRequest,
    uid: Option<u32>,
    cancel: &CancellationToken,
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
    let watched = watch(pid, deadline, uid, max_processes, cancel);
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
        cancelled: watched == Watched::Cancelled,
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
    Cancelled,
}

/// Reads the shim's report, `maxrss <KB>`; `None` if the shim ended without it.
fn read_peak_rss_kb(report: &mut impl BufRead) -> Option<i64> {
    let mut line = String::new();
    report.read_line(&mut line).ok()?;
    line.trim_end().strip_prefix("maxrss ")?.parse().ok()
}

/// Waits for the jail (pid `pid`, also its process group) to exit, killing its group at the deadline, when
/// `cancel` fires (its task was cancelled: within one watch interval), or, with a per-run `uid`, when the
/// run holds `max_processes` processes.
fn watch(
    pid: u32,
    deadline: Instant,
    uid: Option<u32>,
    max_processes: u64,
    cancel: &CancellationToken,
) -> Watched {
    let pidfd = process::pidfd(pid);
    loop {
        if cancel.is_cancelled() {
            process::kill_group(pid);
            return Watched::Cancelled;
        }
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
