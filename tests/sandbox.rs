//! The sandbox with real bubblewrap and real interpreters: a table of hostile programs (each asserting its
//! outcome and that nothing escaped), well-behaved runs with their figures, parallel runs that cannot see
//! each other, a sandbox that refuses when bubblewrap is missing, and the `troupe sandbox run` CLI.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use troupe::config::{SandboxSettings, Settings};
use troupe::sandbox::{
    Language, Outcome, RunReport, RunRequest, Sandbox, SandboxError, ViolationKind,
};
use troupe::telemetry::metrics::Metrics;

use crate::helpers::root;

/// The test profile's sandbox with short limits, on its own user-id range (tests run in parallel).
pub fn settings(uid_offset: u32) -> SandboxSettings {
    let mut settings = Settings::load_from(&root().join("config"), Some("test"))
        .unwrap()
        .sandbox;
    settings.timeout_seconds = 3.0;
    settings.cpu_seconds = 2;
    settings.memory_bytes = 256 << 20;
    settings.max_processes = 24;
    settings.output_limit_bytes = 64 * 1024;
    settings.parallel_runs = 4;
    settings.uid_base += uid_offset;
    settings
}

async fn sandbox(uid_offset: u32) -> (Sandbox, Metrics) {
    let metrics = Metrics::new().unwrap();
    let sandbox = Sandbox::start(settings(uid_offset), metrics.clone()).await;
    sandbox.check_ready().expect("bubblewrap works here");
    (sandbox, metrics)
}

async fn python(sandbox: &Sandbox, code: &str) -> RunReport {
    sandbox
        .run(RunRequest::snippet(Language::Python, code))
        .await
        .unwrap()
}

fn kinds(report: &RunReport) -> Vec<ViolationKind> {
    report.violations.iter().map(|v| v.kind).collect()
}

/// Processes on this machine whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(needle) && !cmdline.contains("cargo"))
        .collect()
}

/// Processes running under any of the sandbox's user ids.
fn processes_of_uids(first: u32, count: u32) -> usize {
    (first..first + count)
        .map(|uid| troupe::sandbox::process::processes_of(uid).len())
        .sum()
}

#[actix_rt::test]
async fn hostile_programs_are_contained_and_named() {
    let (sandbox, metrics) = sandbox(0).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let repo_file = root().join(format!("escape-{marker}"));
    let etc_file = PathBuf::from(format!("/etc/troupe-escape-{marker}"));
    let repo_under_tmp = root().starts_with("/tmp");

    let table: Vec<(&str, String, Outcome, Option<ViolationKind>)> = vec![
        (
            "connect to a TCP address (Troupe's own listener on the host's loopback)",
            format!("import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"),
            Outcome::Violation,
            Some(ViolationKind::Network),
        ),
        (
            "resolve a host name",
            "import socket\nprint(socket.getaddrinfo('example.com', 80))\n".into(),
            Outcome::Violation,
            Some(ViolationKind::Network),
        ),
        (
            "write to /etc",
            format!("open('{}', 'w').write('x')\n", etc_file.display()),
            Outcome::Violation,
            Some(ViolationKind::Filesystem),
        ),
        (
            "write to the repository",
            format!("open('{}', 'w').write('x')\n", repo_file.display()),
            // A checkout under /tmp is shadowed by the jail's own /tmp: the folder is not there, the write
            // fails as any missing folder would, and nothing is named (nothing escapes either way).
            if repo_under_tmp {
                Outcome::Error
            } else {
                Outcome::Violation
            },
            (!repo_under_tmp).then_some(ViolationKind::Filesystem),
        ),
        (
            "write a file that catches its own error",
            "try:\n    open('/usr/escape', 'w')\nexcept OSError:\n    pass\nprint('fine')\n".into(),
            Outcome::Violation,
            Some(ViolationKind::Filesystem),
        ),
        (
            "fork bomb",
            "import os\nwhile True:\n    os.fork()\n".into(),
            Outcome::Violation,
            Some(ViolationKind::ForkBomb),
        ),
        (
            "allocate 4 GiB",
            "block = bytearray(4 << 30)\nprint(len(block))\n".into(),
            Outcome::Oom,
            Some(ViolationKind::Memory),
        ),
        (
            "infinite loop",
            "while True:\n    pass\n".into(),
            Outcome::Timeout,
            Some(ViolationKind::Runaway),
        ),
        (
            "print 100 MB",
            "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n".into(),
            Outcome::Killed,
            Some(ViolationKind::Output),
        ),
        (
            "sleep past the timeout",
            "import time\ntime.sleep(30)\n".into(),
            Outcome::Timeout,
            Some(ViolationKind::Runaway),
        ),
    ];
    for (what, code, outcome, kind) in table {
        let report = python(&sandbox, &code).await;
        assert_eq!(report.outcome, outcome, "{what}: {report:#?}");
        if let Some(kind) = kind {
            assert!(kinds(&report).contains(&kind), "{what}: {report:#?}");
        }
        assert!(report.wall_seconds < 10.0, "{what}: {report:#?}");
    }

    // Nothing escaped: no connection reached the listener, no file appeared, no process is left.
    assert!(listener.accept().is_err(), "a connection reached the host");
    assert!(!repo_file.exists());
    assert!(!etc_file.exists());
    let base = settings(0).uid_base;
    assert_eq!(processes_of_uids(base, 4), 0, "a run left processes behind");

    // The figures: output capped, the sleeper stopped at the wall-clock limit.
    let big = python(
        &sandbox,
        "import sys\nsys.stdout.write('x' * (100 << 20))\n",
    )
    .await;
    assert!(
        big.stdout.len() <= 64 * 1024 && big.truncated,
        "{}",
        big.stdout.len()
    );
    let scrape = metrics.render().unwrap();
    for kind in [
        "network",
        "filesystem",
        "fork_bomb",
        "memory",
        "runaway",
        "output",
    ] {
        assert!(
            scrape.contains(&format!(
                "troupe_sandbox_violations_total{{kind=\"{kind}\"}}"
            )),
            "{kind} not counted"
        );
    }
    assert!(scrape.contains("troupe_sandbox_runs_total{language=\"python\",outcome=\"violation\"}"));
}

#[actix_rt::test]
async fn files_outside_the_workspace_are_not_visible() {
    let (sandbox, _) = sandbox(8).await;
    let host_tmp = tempfile::NamedTempFile::new().unwrap();
    let secrets = [
        host_tmp.path().display().to_string(),
        "/etc/shadow".to_owned(),
        "/etc/passwd".to_owned(),
        "/root/.bashrc".to_owned(),
        root().join("Cargo.toml").display().to_string(),
        "/home".to_owned(),
    ];
    let code = format!(
        "import os\nfound = []\nfor path in {secrets:?}:\n    if os.path.exists(path):\n        found.append(path)\nprint(found)\nprint(sorted(os.listdir('/')))\n"
    );
    let report = python(&sandbox, &code).await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    let mut lines = report.stdout.lines();
    assert_eq!(lines.next(), Some("[]"), "{report:#?}");
    let top: String = lines.next().unwrap().to_owned();
    for hidden in ["'root'", "'home'", "'work'", "'var'", "'srv'"] {
        assert!(!top.contains(hidden), "{hidden} is visible: {top}");
    }
}

#[actix_rt::test]
async fn a_background_child_is_gone_after_the_run() {
    let (sandbox, _) = sandbox(12).await;
    let seconds = 900 + (uuid::Uuid::new_v4().as_u128() % 99) as u32;
    let needle = format!("sleep {seconds}.5");
    let report = sandbox
        .run(RunRequest::snippet(
            Language::Shell,
            format!("(sleep {seconds}.5 &)\nsleep {seconds}.5 &\necho started\n"),
        ))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.stdout, "started\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        processes_with(&needle).is_empty(),
        "{:?}",
        processes_with(&needle)
    );
}

#[actix_rt::test]
async fn well_behaved_programs_return_output_and_figures() {
    let (sandbox, metrics) = sandbox(16).await;
    let report = python(
        &sandbox,
        "import sys\nprint(sum(range(10)))\nprint('warn', file=sys.stderr)\n",
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
    assert_eq!(report.exit_code, Some(0));
    assert_eq!(report.stdout, "45\n");
    assert_eq!(report.stderr, "warn\n");
    assert!(report.violations.is_empty());
    assert!(report.wall_seconds > 0.0 && report.wall_seconds < 3.0);
    assert!(report.cpu_seconds > 0.0, "{report:#?}");
    assert!(
        (1 << 20..64 << 20).contains(&report.peak_rss_bytes),
        "{report:#?}"
    );

    let failing = sandbox
        .run(RunRequest::snippet(
            Language::Shell,
            "echo out; echo err >&2; exit 3",
        ))
        .await
        .unwrap();
    assert_eq!(failing.outcome, Outcome::Error);
    assert_eq!(failing.exit_code, Some(3));
    assert_eq!(
        (failing.stdout.as_str(), failing.stderr.as_str()),
        ("out\n", "err\n")
    );

    let assertion = python(
        &sandbox,
        "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n",
    )
    .await;
    assert_eq!(assertion.outcome, Outcome::Error);
    assert!(
        assertion.failure_output(200).contains("AssertionError"),
        "{assertion:#?}"
    );
    assert!(metrics
        .render()
        .unwrap()
        .contains("troupe_sandbox_runs_total{language=\"shell\",outcome=\"error\"} 1"));
}

/// The peak RSS is the run's own, not Troupe's: Linux carries a process's high-water mark across fork and
/// exec, so a jail forked straight from a large process would report that process's size.
#[actix_rt::test]
async fn peak_memory_is_the_runs_own_not_troupes() {
    // This process holds 384 MiB it has written to while the runs start.
    let ballast = vec![7u8; 384 << 20];
    let (sandbox, _) = sandbox(40).await;
    let trivial = sandbox
        .run(RunRequest::snippet(Language::Shell, "exit 0"))
        .await
        .unwrap();
    assert_eq!(trivial.outcome, Outcome::Ok, "{trivial:#?}");
    assert!(
        trivial.peak_rss_bytes > 0 && trivial.peak_rss_bytes < 16 << 20,
        "a shell that exits at once: {} bytes",
        trivial.peak_rss_bytes
    );
    let allocating = python(&sandbox, "data = b'x' * (128 << 20)\nprint(len(data))\n").await;
    assert_eq!(allocating.outcome, Outcome::Ok, "{allocating:#?}");
    assert!(
        (128 << 20..200 << 20).contains(&allocating.peak_rss_bytes),
        "a program that writes 128 MiB: {} bytes",
        allocating.peak_rss_bytes
    );
    // Memory exhausted without a word about it: named from the peak against the limit.
    let silent = python(
        &sandbox,
        "import os\nchunks = []\ntry:\n    while True:\n        chunks.append(b'x' * (1 << 20))\n\
         except MemoryError:\n    os._exit(1)\n",
    )
    .await;
    assert_eq!(silent.outcome, Outcome::Oom, "{silent:#?}");
    assert_eq!(kinds(&silent), [ViolationKind::Memory]);
    assert!(std::hint::black_box(&ballast)
        .iter()
        .step_by(4096)
        .all(|b| *b == 7));
}

#[actix_rt::test]
async fn parallel_runs_do_not_see_each_others_files() {
    let (sandbox, _) = sandbox(20).await;
    let runs = (0..4).map(|n| {
        let sandbox = sandbox.clone();
        async move {
            let code = format!(
                "import os, time\nopen('mine-{n}.txt', 'w').write('{n}')\nopen('/tmp/tmp-{n}', 'w').write('{n}')\ntime.sleep(0.3)\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))\n"
            );
            (n, python(&sandbox, &code).await)
        }
    });
    let reports = futures_util::future::join_all(runs).await;
    let mut seen = HashSet::new();
    for (n, report) in reports {
        assert_eq!(report.outcome, Outcome::Ok, "{report:#?}");
        assert_eq!(
            report.stdout.trim(),
            format!("['main.py', 'mine-{n}.txt'] ['tmp-{n}']"),
            "{report:#?}"
        );
        seen.insert(report.stdout);
    }
    assert_eq!(seen.len(), 4);
}

#[actix_rt::test]
async fn a_missing_bubblewrap_refuses_every_run() {
    let mut settings = settings(24);
    settings.bwrap = "/nonexistent/bwrap".into();
    let metrics = Metrics::new().unwrap();
    let sandbox = Sandbox::start(settings, metrics.clone()).await;
    let error = sandbox.check_ready().unwrap_err();
    assert!(matches!(error, SandboxError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("bubblewrap"), "{error}");
    let refused = sandbox
        .run(RunRequest::snippet(Language::Python, "print(1)"))
        .await
        .unwrap_err();
    assert!(matches!(refused, SandboxError::Unavailable(_)));
    assert!(metrics.render().unwrap().contains("troupe_sandbox_up 0"));
}

/// Runs back to back on one user id leave nothing that counts against the next one's process limit (no
/// zombie left to the machine's init, which may reap slowly: the shim is the jail's init and bubblewrap
/// reaps it).
#[actix_rt::test]
async fn many_runs_in_a_row_on_one_user_id_all_start() {
    let mut settings = settings(52);
    settings.parallel_runs = 1;
    settings.max_processes = 6;
    let sandbox = Sandbox::start(settings, Metrics::new().unwrap()).await;
    sandbox.check_ready().unwrap();
    for n in 0..40 {
        let report = sandbox
            .run(RunRequest::snippet(Language::Shell, "true"))
            .await
            .unwrap_or_else(|e| panic!("run {n}: {e}"));
        assert_eq!(report.outcome, Outcome::Ok, "run {n}: {report:#?}");
    }
}

/// As root each run slot has a user id of its own, claimed on the machine with a lock file: a second sandbox
/// (another Troupe process) cannot take ids the first holds, and gets them once the first is gone.
#[actix_rt::test]
async fn user_ids_are_claimed_once_per_machine() {
    if !troupe::sandbox::process::is_root() {
        eprintln!("not root: runs use Troupe's own user id and claim none");
        return;
    }
    let (first, _) = sandbox(44).await;
    let refused = Sandbox::start(settings(44), Metrics::new().unwrap()).await;
    let error = refused.check_ready().unwrap_err().to_string();
    assert!(
        error.contains("in use by another Troupe process") && error.contains("sandbox.uid_base"),
        "{error}"
    );
    // Overlapping ranges share nothing: the second gets only the ids the first does not hold.
    let mut wider = settings(44);
    wider.parallel_runs = 6;
    let partial = Sandbox::start(wider, Metrics::new().unwrap()).await;
    partial.check_ready().unwrap();
    let base = settings(44).uid_base;
    let runs =
        (0..3).map(|_| partial.run(RunRequest::snippet(Language::Shell, "sleep 0.3; id -u")));
    let mut ids: Vec<u32> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|report| report.unwrap().stdout.trim().parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    // The runs used only the two ids the first sandbox does not hold (bubblewrap maps the run's own id).
    assert!(
        !ids.is_empty() && ids.iter().all(|id| [base + 4, base + 5].contains(id)),
        "{ids:?} (base {base})"
    );
    drop(first);
    drop(partial);
    let (_again, _) = sandbox(44).await;
}

#[actix_rt::test]
async fn bad_requests_are_refused_before_anything_runs() {
    let (sandbox, _) = sandbox(28).await;
    let mut request = RunRequest::snippet(Language::Python, "print(1)");
    request.files[0].name = "../escape.py".into();
    request.entry = "../escape.py".into();
    assert!(matches!(
        sandbox.run(request).await,
        Err(SandboxError::Request(_))
    ));
    let mut request = RunRequest::snippet(Language::Python, "print(1)");
    request.entry = "other.py".into();
    assert!(matches!(
        sandbox.run(request).await,
        Err(SandboxError::Request(_))
    ));
}

#[test]
fn the_cli_runs_a_snippet_and_prints_the_run_as_json() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_troupe"))
            .args(args)
            .current_dir(root())
            .env("TROUPE_PROFILE", "test")
            .env(
                "TROUPE__SANDBOX__UID_BASE",
                (settings(32).uid_base).to_string(),
            )
            .output()
            .unwrap()
    };
    let ok = run(&["sandbox", "run", "--lang", "python", "-e", "print(6 * 7)"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["stdout"], "42\n");
    assert!(report["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(report["wall_seconds"].as_f64().unwrap() > 0.0);

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "exit 4\n").unwrap();
    let failed = run(&[
        "sandbox",
        "run",
        "--lang",
        "shell",
        file.path().to_str().unwrap(),
    ]);
    assert_eq!(failed.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(report["outcome"], "error");
    assert_eq!(report["exit_code"], 4);

    let bad = run(&["sandbox", "run", "--lang", "rust", "-e", "fn main() {}"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not supported"));
}
