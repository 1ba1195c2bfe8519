//! How a run ended, read like a contest judge reads it: from the exit status, the signal, the limits that
//! were hit, what the watcher saw, and the error lines the program left. The jail contains; this only names
//! what happened.

use serde::{Deserialize, Serialize};

/// The outcome of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Exited 0, nothing contained.
    Ok,
    /// Exited non-zero.
    Error,
    /// Ran past the wall-clock or CPU limit and was killed.
    Timeout,
    /// Ran out of its address space.
    Oom,
    /// Killed by a signal, or for writing more output than allowed.
    Killed,
    /// Tried to reach the network, write outside its workspace, or fork without bound.
    Violation,
    /// Killed at once because its task was cancelled.
    Cancelled,
}

impl Outcome {
    /// Every outcome of a run that happened (a refused run is counted as `refused`).
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::Oom,
        Outcome::Killed,
        Outcome::Violation,
        Outcome::Cancelled,
    ];

    /// The stable name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Killed => "killed",
            Outcome::Violation => "violation",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What a run tried that the jail or its limits contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A connection or a name lookup.
    Network,
    /// A write outside `/workspace` and `/tmp`.
    Filesystem,
    /// Processes up to the limit.
    ForkBomb,
    /// Memory up to the address-space limit.
    Memory,
    /// CPU or wall-clock time up to the limit.
    Runaway,
    /// Output past the cap.
    Output,
}

impl ViolationKind {
    /// Every kind.
    pub const ALL: [ViolationKind; 6] = [
        ViolationKind::Network,
        ViolationKind::Filesystem,
        ViolationKind::ForkBomb,
        ViolationKind::Memory,
        ViolationKind::Runaway,
        ViolationKind::Output,
    ];

    /// The stable name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationKind::Network => "network",
            ViolationKind::Filesystem => "filesystem",
            ViolationKind::ForkBomb => "fork_bomb",
            ViolationKind::Memory => "memory",
            ViolationKind::Runaway => "runaway",
            ViolationKind::Output => "output",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One contained attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// What kind.
    pub kind: ViolationKind,
    /// What was seen.
    pub detail: String,
}

/// The marker the Python audit hook writes before each report on stderr.
pub const MARKER: &str = "\u{1e}troupe-violation ";

/// Splits the audit hook's reports out of `stderr`: (the program's own stderr, the reports).
pub fn split_markers(stderr: &str) -> (String, Vec<Violation>) {
    let mut own = String::with_capacity(stderr.len());
    let mut reports = Vec::new();
    for line in stderr.split_inclusive('\n') {
        if let Some(report) = line.strip_prefix(MARKER) {
            let report = report.trim_end();
            let (kind, detail) = report.split_once(' ').unwrap_or((report, ""));
            if let Some(kind) = ViolationKind::parse(kind) {
                reports.push(Violation {
                    kind,
                    detail: detail.to_owned(),
                });
                continue;
            }
        }
        own.push_str(line);
    }
    (own, reports)
}

/// What is known when a run has ended.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// The jail's exit code (the program's, or 128 + signal when a signal killed the program).
    pub code: Option<i32>,
    /// The signal that killed the jail itself (the sandbox kills it on timeout, output or fork bomb).
    pub signal: Option<i32>,
    /// CPU seconds used.
    pub cpu_seconds: f64,
    /// Peak resident set in bytes.
    pub peak_rss_bytes: u64,
    /// The wall-clock limit was reached.
    pub timed_out: bool,
    /// The output cap was reached.
    pub output_exceeded: bool,
    /// The watcher saw the process limit reached.
    pub process_limit_reached: bool,
    /// The run's task was cancelled and the watcher killed it.
    pub cancelled: bool,
    /// The program's stderr, markers removed.
    pub stderr: String,
    /// The audit hook's reports.
    pub reported: Vec<Violation>,
    /// The run's limits.
    pub cpu_limit_seconds: u64,
    /// The run's address-space limit.
    pub memory_limit_bytes: u64,
}

/// A failed run whose peak resident set reached this share (in percent) of its address-space limit ran out
/// of memory.
const MEMORY_NEAR_LIMIT_PERCENT: u64 = 80;

/// The signal a run ended by, as the program saw it: the jail's own (it was killed) or the program's
/// (bubblewrap exits with 128 + signal).
pub fn program_signal(ending: &Ending) -> Option<i32> {
    ending.signal.or_else(|| {
        ending
            .code
            .filter(|code| (129..=192).contains(code))
            .map(|code| code - 128)
    })
}

/// The outcome and every violation of a run.
pub fn classify(ending: &Ending) -> (Outcome, Vec<Violation>) {
    let mut found: Vec<Violation> = Vec::new();
    let mut add = |kind: ViolationKind, detail: String| {
        if !found.iter().any(|v| v.kind == kind) {
            found.push(Violation { kind, detail });
        }
    };
    for report in &ending.reported {
        add(report.kind, report.detail.clone());
    }
    let stderr = &ending.stderr;
    let line_with = |needles: &[&str]| {
        stderr
            .lines()
            .find(|line| needles.iter().any(|needle| line.contains(needle)))
            .map(|line| line.trim().chars().take(200).collect::<String>())
    };
    if let Some(line) = line_with(&[
        "Network is unreachable",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Could not resolve host",
    ]) {
        add(ViolationKind::Network, line);
    }
    if let Some(line) = line_with(&["Read-only file system"]) {
        add(ViolationKind::Filesystem, line);
    }
    if ending.process_limit_reached {
        add(
            ViolationKind::ForkBomb,
            "the run reached its process limit".into(),
        );
    } else if let Some(line) = line_with(&[
        "Resource temporarily unavailable",
        "BlockingIOError",
        "fork: retry",
    ]) {
        add(ViolationKind::ForkBomb, line);
    }
    let signal = program_signal(ending);
    if let Some(line) = line_with(&["MemoryError", "Cannot allocate memory", "out of memory"]) {
        add(ViolationKind::Memory, line);
    } else if ending.code != Some(0)
        && ending.peak_rss_bytes.saturating_mul(100)
            >= ending
                .memory_limit_bytes
                .saturating_mul(MEMORY_NEAR_LIMIT_PERCENT)
    {
        // A failed run whose resident set came close to its address-space limit ran out of memory even
        // when it said nothing about it (the shim in the jail measures the program's own peak).
        add(
            ViolationKind::Memory,
            format!(
                "the run's peak memory reached {} MiB of its {} MiB limit",
                ending.peak_rss_bytes >> 20,
                ending.memory_limit_bytes >> 20
            ),
        );
    }
    let cpu_exhausted = signal == Some(libc::SIGXCPU)
        || (signal == Some(libc::SIGKILL)
            && ending.cpu_seconds + 0.05 >= ending.cpu_limit_seconds as f64);
    if ending.timed_out {
        add(
            ViolationKind::Runaway,
            "the run passed its wall-clock limit".into(),
        );
    } else if cpu_exhausted {
        add(
            ViolationKind::Runaway,
            format!("the run used its {} CPU seconds", ending.cpu_limit_seconds),
        );
    }
    if ending.output_exceeded {
        add(
            ViolationKind::Output,
            "the run wrote more output than allowed".into(),
        );
    }
    let has = |kind: ViolationKind| found.iter().any(|v| v.kind == kind);
    let outcome = if ending.cancelled {
        // Whatever the program was doing, it was stopped for its task.
        Outcome::Cancelled
    } else if has(ViolationKind::Network)
        || has(ViolationKind::Filesystem)
        || has(ViolationKind::ForkBomb)
    {
        Outcome::Violation
    } else if has(ViolationKind::Memory) {
        Outcome::Oom
    } else if has(ViolationKind::Runaway) {
        Outcome::Timeout
    } else if has(ViolationKind::Output) || signal.is_some() {
        Outcome::Killed
    } else if ending.code == Some(0) {
        Outcome::Ok
    } else {
        Outcome::Error
    };
    (outcome, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending() -> Ending {
        Ending {
            code: Some(0),
            cpu_limit_seconds: 5,
            memory_limit_bytes: 512 << 20,
            ..Ending::default()
        }
    }

    #[test]
    fn a_run_killed_for_its_cancelled_task_is_cancelled() {
        let killed = Ending {
            code: None,
            signal: Some(libc::SIGKILL),
            cancelled: true,
            ..ending()
        };
        assert_eq!(classify(&killed).0, Outcome::Cancelled);
    }

    #[test]
    fn a_clean_exit_is_ok_and_a_failing_one_is_an_error() {
        assert_eq!(classify(&ending()).0, Outcome::Ok);
        let failed = Ending {
            code: Some(1),
            stderr: "AssertionError\n".into(),
            ..ending()
        };
        assert_eq!(classify(&failed), (Outcome::Error, vec![]));
    }

    #[test]
    fn markers_are_split_from_the_programs_own_stderr() {
        let (own, reports) = split_markers(
            "oops\n\u{1e}troupe-violation network socket.connect ('1.2.3.4', 80)\nlast",
        );
        assert_eq!(own, "oops\nlast");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].kind, ViolationKind::Network);
        assert!(reports[0].detail.contains("1.2.3.4"));
    }

    #[test]
    fn limits_are_named() {
        let xcpu = Ending {
            code: Some(128 + libc::SIGXCPU),
            ..ending()
        };
        assert_eq!(classify(&xcpu).0, Outcome::Timeout);
        let wall = Ending {
            signal: Some(libc::SIGKILL),
            code: None,
            timed_out: true,
            ..ending()
        };
        assert_eq!(classify(&wall).0, Outcome::Timeout);
        let memory = Ending {
            code: Some(1),
            stderr: "Traceback...\nMemoryError\n".into(),
            ..ending()
        };
        assert_eq!(classify(&memory).0, Outcome::Oom);
        // Killed near its memory limit without a word: out of memory; the same peak on success is fine.
        let silent = Ending {
            code: None,
            signal: Some(libc::SIGSEGV),
            peak_rss_bytes: 450 << 20,
            ..ending()
        };
        let (outcome, violations) = classify(&silent);
        assert_eq!(outcome, Outcome::Oom);
        assert!(violations[0].detail.contains("450 MiB of its 512 MiB"));
        let big_but_fine = Ending {
            peak_rss_bytes: 450 << 20,
            ..ending()
        };
        assert_eq!(classify(&big_but_fine), (Outcome::Ok, vec![]));
        let output = Ending {
            signal: Some(libc::SIGKILL),
            code: None,
            output_exceeded: true,
            ..ending()
        };
        assert_eq!(classify(&output).0, Outcome::Killed);
        let bomb = Ending {
            code: Some(1),
            stderr: "BlockingIOError: [Errno 11] Resource temporarily unavailable\n".into(),
            ..ending()
        };
        let (outcome, violations) = classify(&bomb);
        assert_eq!(outcome, Outcome::Violation);
        assert_eq!(violations[0].kind, ViolationKind::ForkBomb);
    }

    #[test]
    fn a_reported_attempt_is_a_violation_even_when_the_program_recovers() {
        let caught = Ending {
            reported: vec![Violation {
                kind: ViolationKind::Filesystem,
                detail: "write /etc/passwd".into(),
            }],
            ..ending()
        };
        assert_eq!(classify(&caught).0, Outcome::Violation);
    }
}
