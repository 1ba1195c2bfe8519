//! PostgreSQL stopped under a running server (issue 17, hardening), on a cluster of the test's own
//! (`initdb` + `pg_ctl` from the installed PostgreSQL, on a free port) so that it can be stopped: while it
//! is down `/readyz` answers 503 naming the database, a submission gets 503 with a JSON error and is not
//! stored, the server does not exit, and the task it was running waits for its writes instead of failing;
//! when PostgreSQL is back the task finishes with its whole log, and new tasks run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use troupe::domain::EventKind;

use crate::helpers::client_for;
use crate::resume::{
    assert_ended_by_its_flow, assert_no_gap, ended, open, wait_for_events, wait_for_kind, Server,
};
use crate::scale_out::free_port;

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/N/bin`, Debian's layout).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/setup.sh test)")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL with pg_ctl").1
}

/// A PostgreSQL cluster of the test's own, removed when dropped.
struct OwnPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    /// `initdb` (trust authentication, user `postgres`) and start on a free port.
    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        let postgres = OwnPostgres {
            bin: postgres_bin(),
            port: free_port(),
            dir,
        };
        // PostgreSQL refuses to run as root: as root, the cluster is the `postgres` user's.
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(postgres.dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = postgres.data();
        postgres.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        postgres.resume();
        postgres
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of PostgreSQL's programs, as `postgres` when this process is root.
    fn program(&self, program: &str) -> Command {
        let binary = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        }
    }

    /// Runs one of PostgreSQL's programs; asserts it succeeded.
    fn run(&self, program: &str, args: &[&str]) {
        let output = self.program(program).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server (again) and waits until it accepts connections.
    fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.data()),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server the way an operator or a crash does: `fast` disconnects every client at once.
    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.data()), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .program("pg_ctl")
            .args(["-D", path(&data), "-m", "immediate", "stop"])
            .output();
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Whether this process runs as root (`/proc/self` belongs to the process's user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

#[actix_rt::test]
async fn postgres_stopped_mid_run_gives_503_loses_nothing_and_recovers() {
    let postgres = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let database = postgres.url();
    let dir = tempfile::tempdir().unwrap();
    let storage = open(&database).await;
    let mut server = Server::start(&database, &dir).await;
    let client = client_for(server.port, tempfile::tempdir().unwrap());
    let running = server
        .submit("List three facts about the river Danube, then summarise them in one sentence")
        .await;
    wait_for_kind(&storage, running, EventKind::AgentStarted).await;

    postgres.stop();
    let down_at = Instant::now();

    // While it is down: 503 with a JSON error, for readiness and for a submission, and nothing panics.
    let (status, ready) = client.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_ne!(ready["checks"]["database"], "ok", "{ready}");
    for _ in 0..3 {
        let (status, body) = client
            .post_task(&json!({ "prompt": "What is 2 + 2?" }))
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
    }
    let (status, body) = client.get("/api/v1/tasks").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // Long enough for the running task to have written (and waited) meanwhile.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
    assert!(
        server.exited().is_none(),
        "the server exited while PostgreSQL was down"
    );
    let metrics = client.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, "troupe_store_down"),
        1.0,
        "{metrics}"
    );

    // PostgreSQL back: ready again, the running task ends on its own terms with its whole log, and
    // nothing of the refused submissions was stored.
    postgres.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get("/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after PostgreSQL returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = wait_for_events(
        &storage,
        running,
        Duration::from_secs(300),
        "its end",
        ended,
    )
    .await;
    assert_no_gap(&events);
    let task = storage.task(running).await.unwrap().unwrap();
    assert_ended_by_its_flow(&task);
    assert!(
        !task
            .error
            .clone()
            .unwrap_or_default()
            .contains("store write"),
        "failed by storage: {:?}",
        task.error
    );
    let (status, listed) = client.get("/api/v1/tasks").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed["tasks"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let after = server.submit("What is 2 + 2?").await;
    wait_for_events(&storage, after, Duration::from_secs(300), "its end", ended).await;
    assert!(server.exited().is_none());
    drop(server);
}
