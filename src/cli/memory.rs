//! `troupe memory search "..."`: semantic search over the configured database's memories, in this process
//! (no server needed): the embedding model is loaded here.

use std::process::ExitCode;

use crate::cli::MemoryCommand;
use crate::config::Settings;
use crate::domain::{shorten, MemoryKind};
use crate::events::Hub;
use crate::memory::{Memory, MemoryParts, SearchFilter};
use crate::storage::writer::Writer;
use crate::storage::Storage;
use crate::telemetry::metrics::Metrics;

/// Runs a memory subcommand; exit code 0 with hits, 1 with none, 2 on bad input or failure.
pub async fn memory(settings: Settings, action: MemoryCommand) -> anyhow::Result<ExitCode> {
    match action {
        MemoryCommand::Search {
            query,
            k,
            kind,
            json,
        } => search(settings, &query, k, kind.as_deref(), json).await,
    }
}

async fn search(
    settings: Settings,
    query: &str,
    k: usize,
    kind: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let query = query.trim();
    if query.is_empty() {
        anyhow::bail!("the search text is empty");
    }
    if !(1..=crate::memory::MAX_SEARCH_K).contains(&k) {
        anyhow::bail!("--k must be within 1..={}", crate::memory::MAX_SEARCH_K);
    }
    let kinds = match kind {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|kind| kind.trim().parse::<MemoryKind>())
            .collect::<Result<Vec<_>, _>>()?,
    };
    if !settings.memory.enabled {
        anyhow::bail!("memory is disabled (memory.enabled = false)");
    }
    let metrics = Metrics::new()?;
    let storage = Storage::connect(&settings.database).await?;
    storage.migrate().await?;
    let parts = MemoryParts::start(&settings.memory, &settings.redis, &metrics).await?;
    // A search writes nothing but its counts; no one subscribes to events here.
    let writer = Writer::spawn(storage.clone(), Hub::new(), metrics.clone());
    let memory = Memory::new(settings.memory.clone(), parts, storage, writer, metrics);
    let filter = SearchFilter {
        kinds,
        ..SearchFilter::default()
    };
    let hits = memory.search(query, &filter, k).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
    } else if hits.is_empty() {
        println!("no memories yet");
    } else {
        for hit in &hits {
            let task = hit.memory.task_id.as_deref().unwrap_or("-");
            println!(
                "{:.3}  {:<7}  task {task}  {}",
                hit.score,
                hit.memory.kind,
                shorten(&hit.memory.content.replace('\n', " / "), 120)
            );
        }
    }
    Ok(if hits.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
