//! Embedded generation speed: tokens per second of free generation (64 tokens past a short prompt, greedy,
//! end-of-generation ignored so every run makes exactly 64), measured inside the model worker the way
//! llama.cpp's `llama-bench` measures `tg64`, plus the end-to-end rate including the pipe to the server.
//! Threads from `TROUPE_BENCH_THREADS` (default 2). `TROUPE_BENCH_WORKER` names another `troupe` binary to
//! run as the model worker (an earlier build, to compare two builds' workers in one session). Prints one
//! JSON object.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use troupe::config::Settings;
use troupe::llm::embedded::EmbeddedProvider;
use troupe::llm::{ChatMessage, LlmRequest, OutputSpec};
use troupe::telemetry::metrics::Metrics;

const TOKENS: u32 = 64;
const RUNS: usize = 7;

fn main() -> anyhow::Result<()> {
    let threads: u32 = std::env::var("TROUPE_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings::load_from(&root.join("config"), None)?;
    settings.llm.model = root
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string();
    settings.llm.worker_command = std::env::var("TROUPE_BENCH_WORKER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_troupe").to_owned());
    let settings_worker = settings.llm.worker_command.clone();
    settings.llm.threads = threads;
    actix_rt::System::new().block_on(async move {
        let provider = EmbeddedProvider::start(&settings.llm, Metrics::new()?).await?;
        let request = LlmRequest {
            purpose: "bench".into(),
            messages: vec![ChatMessage::user("Tell me a story.")],
            max_tokens: TOKENS,
            output: OutputSpec::Text,
        };
        provider.complete_fixed_length(request.clone()).await?; // warm-up
        let mut inside = Vec::new();
        let mut end_to_end = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let output = provider.complete_fixed_length(request.clone()).await?;
            let total = started.elapsed().as_secs_f64();
            anyhow::ensure!(
                output.usage.output_tokens == u64::from(TOKENS),
                "generated {} tokens",
                output.usage.output_tokens
            );
            inside.push(f64::from(TOKENS) / output.generation_seconds);
            end_to_end.push(f64::from(TOKENS) / total);
        }
        inside.sort_by(f64::total_cmp);
        end_to_end.sort_by(f64::total_cmp);
        println!(
            "{}",
            json!({
                "worker": settings_worker,
                "threads": threads,
                "tokens": TOKENS,
                "runs": RUNS,
                "generation_tokens_per_s_median": inside[RUNS / 2],
                "generation_tokens_per_s_runs": inside,
                "end_to_end_tokens_per_s_median": end_to_end[RUNS / 2],
            })
        );
        Ok(())
    })
}
