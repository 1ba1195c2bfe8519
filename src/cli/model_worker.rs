//! `troupe model-worker` (hidden): hosts the embedded model for a server; see `llm::worker`.

use crate::llm::worker::{self, WorkerOptions};

/// Runs the worker until its stdin closes.
pub fn model_worker(options: &WorkerOptions) -> anyhow::Result<()> {
    worker::run(options)?;
    Ok(())
}
