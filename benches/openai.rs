//! Generation speed through the `openai` provider against `llama-server`'s own figure, same server, same run:
//! llama.cpp's `llama-server` on SmolLM2-135M-Instruct Q4_1 (threads from `TROUPE_BENCH_THREADS`, default 2,
//! one slot), the same greedy 64-token request alternately (a) streamed through `OpenAiProvider` (tokens/s
//! from its first piece to the end, as `LlmOutput::generation_seconds` reports) and (b) sent non-streamed to
//! the server itself, whose `timings.predicted_per_second` is the reference. Median of 7 runs each after a
//! warm-up. `llama-server` is found like the tests find it (`TROUPE_LLAMA_SERVER` or the set-up's cache).
//! Prints one JSON object.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use troupe::config::{ModelEndpoint, ProviderKind, Settings};
use troupe::llm::openai::OpenAiProvider;
use troupe::llm::{ChatMessage, LlmProvider, LlmRequest, OutputSpec, TokenSink};
use troupe::telemetry::metrics::Metrics;

const TOKENS: u32 = 64;
const RUNS: usize = 7;
const PROMPT: &str = "Tell me a long story about a dragon.";
const LLAMA_CPP_PYTHON: &str = "0.3.36";

fn llama_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("TROUPE_LLAMA_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let cache = std::env::var_os("TROUPE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("troupe")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/troupe")))
        .context("HOME is not set")?;
    Ok(cache.join(format!("llama-cpp-{LLAMA_CPP_PYTHON}/bin/llama-server")))
}

/// The server process, killed when dropped (and by its parent-death signal should this process die).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).is_ok() && answer.contains(" 200 ")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let threads: u32 = std::env::var("TROUPE_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = llama_server_binary()?;
    anyhow::ensure!(
        binary.is_file(),
        "llama-server not found at {}: run `scripts/setup.sh bench`",
        binary.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let _server = Server(
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL"])
            .arg(&binary)
            .args(["-m", &model.display().to_string()])
            .args(["-t", &threads.to_string(), "-c", "2048", "-np", "1"])
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start llama-server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !healthy(port) {
        anyhow::ensure!(Instant::now() < deadline, "llama-server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let mut settings = Settings::load_from(&root.join("config"), None)?;
    settings.llm.temperature = 0.0;
    let endpoint = ModelEndpoint {
        provider: ProviderKind::Openai,
        model: "SmolLM2-135M-Instruct".into(),
        base_url: base_url.clone(),
    };
    actix_rt::System::new().block_on(async move {
        let provider = OpenAiProvider::new(&settings.llm, &endpoint, None, Metrics::new()?)?;
        let request = LlmRequest {
            purpose: "bench".into(),
            messages: vec![ChatMessage::user(PROMPT)],
            max_tokens: TOKENS,
            output: OutputSpec::Text,
        };
        let http = reqwest::Client::new();
        let direct = serde_json::to_vec(&json!({
            "model": "SmolLM2-135M-Instruct",
            "messages": [{ "role": "user", "content": PROMPT }],
            "max_tokens": TOKENS,
            "temperature": 0.0,
            "seed": settings.llm.seed,
            "stream": false
        }))?;
        let server_rate = || async {
            let response = http
                .post(format!("{base_url}/chat/completions"))
                .header("content-type", "application/json")
                .body(direct.clone())
                .send()
                .await?
                .bytes()
                .await?;
            let answer: Value = serde_json::from_slice(&response)?;
            let rate = answer["timings"]["predicted_per_second"]
                .as_f64()
                .context("no timings.predicted_per_second in llama-server's answer")?;
            let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
            anyhow::Ok((rate, tokens))
        };
        let sink: TokenSink = Arc::new(|_: &str, _| {});
        // Warm-up of both paths.
        provider
            .complete(request.clone(), sink.clone(), CancellationToken::new())
            .await?;
        server_rate().await?;
        let (mut ours, mut ours_end_to_end, mut reference) = (Vec::new(), Vec::new(), Vec::new());
        let mut tokens = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let output = provider
                .complete(request.clone(), sink.clone(), CancellationToken::new())
                .await?;
            let total = started.elapsed().as_secs_f64();
            let generated = output.usage.output_tokens as f64;
            ours.push(generated / output.generation_seconds);
            ours_end_to_end.push(generated / total);
            let (rate, server_tokens) = server_rate().await?;
            reference.push(rate);
            tokens.push((output.usage.output_tokens, server_tokens));
        }
        let ours_median = median(ours.clone());
        let reference_median = median(reference.clone());
        println!(
            "{}",
            json!({
                "threads": threads,
                "max_tokens": TOKENS,
                "runs": RUNS,
                "tokens_generated_ours_and_server": tokens,
                "openai_provider_tokens_per_s_median": ours_median,
                "openai_provider_tokens_per_s_runs": ours,
                "openai_provider_end_to_end_tokens_per_s_median": median(ours_end_to_end),
                "llama_server_predicted_per_second_median": reference_median,
                "llama_server_predicted_per_second_runs": reference,
                "ratio": ours_median / reference_median,
            })
        );
        anyhow::Ok(())
    })
}
