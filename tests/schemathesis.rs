//! The API against its own document (issue 17, hardening): `schemathesis` (PyPI; installed by
//! `scripts/setup.sh test` into a venv in the cache) reads `/api/v1/openapi.json` of the real app on a
//! random port and sends it generated requests: the documented examples, the boundaries of every schema
//! (coverage), random valid and invalid requests (fuzzing) and sequences along the document's links
//! (stateful: a created task is read, cancelled, forked, deleted). Every check is on (schemathesis's
//! default, so that the exceptions in the config file apply): no 5xx, every status
//! code, header and body is the documented one, a request the document allows is accepted and one it
//! forbids is refused.
//!
//! What the document cannot state is listed, with the reason, in `tests/data/schemathesis.toml` (a
//! WebSocket-only route; the breakpoint condition language).
//!
//! Bounded: `--max-examples` per operation and a fixed seed, so a run is reproducible (set
//! `TROUPE_SCHEMATHESIS_SEED` to explore another part of the input space; `TROUPE_SCHEMATHESIS` names
//! another binary).

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::spawn_app_with;

const SCHEMATHESIS: &str = "4.32.5";

/// Where `schemathesis` is: `TROUPE_SCHEMATHESIS`, else the set-up's cache.
fn schemathesis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TROUPE_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    crate::helpers::setup_cache().join(format!("schemathesis-{SCHEMATHESIS}/bin/schemathesis"))
}

#[actix_rt::test]
async fn schemathesis_finds_no_server_error_and_no_departure_from_the_document() {
    let binary = schemathesis_binary();
    assert!(
        binary.is_file(),
        "schemathesis not found at {}: run `scripts/setup.sh test` (or set TROUPE_SCHEMATHESIS)",
        binary.display()
    );
    let app = spawn_app_with(|settings| {
        // Memory on: search, recall and the memory routes answer from the real embedding model.
        settings.memory.enabled = true;
    })
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let seed = std::env::var("TROUPE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let mut command = tokio::process::Command::new(&binary);
    command
        .arg("--config-file")
        .arg(crate::helpers::root().join("tests/data/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", app.address))
        .args(["--url", &app.address])
        .args(["--max-examples", "25"])
        .args(["--seed", &seed])
        // One worker: with two threads, hypothesis's lambda descriptions call `ast.parse` from both at once,
        // and CPython 3.11's AST constructor keeps its recursion count in state the threads share
        // (python/cpython#106905), so a run can fail with "AST constructor recursion depth mismatch".
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .args(["--no-color"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // Whatever it writes (its cache, a report) goes to a directory of its own, not the checkout.
        .current_dir(scratch.path())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(900), command.output())
        .await
        .expect("schemathesis ends within 15 minutes")
        .expect("schemathesis starts");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis (seed {seed}) found failures:\n{report}"
    );
    // It ran the operations rather than skipping them (a document it could not read is a failure above).
    assert!(report.contains("passed"), "{report}");
}
