//! The embedded provider: llama.cpp hosted by a supervised child process (`troupe model-worker`).
//!
//! One tokio task owns the child: it starts it, waits for `ready`, feeds it one call at a time and routes
//! streamed tokens to the caller. When the child dies (an abort inside llama.cpp, a kill, an OOM) the call in
//! flight fails with [`LlmError::WorkerCrashed`], the restart is counted, and a new child serves the next
//! call. The server never dies with its model. Calls queue in a channel while the model is busy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::protocol::{FromWorker, ToWorker};
use super::{
    LlmError, LlmOutput, LlmProvider, LlmRequest, TokenInfo, TokenPrices, TokenSink, WorkerStatus,
};
use crate::config::LlmSettings;
use crate::domain::excerpt;
use crate::telemetry::metrics::Metrics;

/// How long a fresh worker may take to load its model.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One queued call.
struct Job {
    request: LlmRequest,
    ignore_eos: bool,
    on_token: TokenSink,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<LlmOutput, LlmError>>,
}

/// The worker's state, for `/readyz`.
#[derive(Debug, Clone)]
enum WorkerState {
    Starting,
    Ready,
    Down(String),
}

/// What the supervisor shares about its worker.
#[derive(Debug, Clone)]
struct WorkerHealth {
    state: WorkerState,
    pid: Option<u32>,
    restarts: u64,
}

/// llama.cpp in a supervised child process.
pub struct EmbeddedProvider {
    model_name: String,
    /// The model and sampling settings, for [`LlmProvider::model_config`].
    config: serde_json::Value,
    prices: TokenPrices,
    jobs: mpsc::Sender<Job>,
    health: Arc<Mutex<WorkerHealth>>,
}

impl EmbeddedProvider {
    /// Starts the worker on the primary model (`llm.model`) and waits until it is loaded.
    pub async fn start(settings: &LlmSettings, metrics: Metrics) -> Result<Self, LlmError> {
        Self::start_model(settings, Path::new(&settings.model), metrics).await
    }

    /// Starts a worker on the GGUF file `model` with the `[llm]` settings and waits until it is loaded.
    pub async fn start_model(
        settings: &LlmSettings,
        model: &Path,
        metrics: Metrics,
    ) -> Result<Self, LlmError> {
        if !model.is_file() {
            return Err(LlmError::Unavailable(format!(
                "model file {} not found; run `scripts/setup.sh demo` (or `make demo`) to fetch it",
                model.display()
            )));
        }
        let program = if settings.worker_command.is_empty() {
            std::env::current_exe()
                .map_err(|e| LlmError::Unavailable(format!("find this executable: {e}")))?
        } else {
            PathBuf::from(&settings.worker_command)
        };
        let model_name = model
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let launcher = Launcher {
            program,
            args: vec![
                "model-worker".into(),
                "--model".into(),
                model.display().to_string(),
                "--threads".into(),
                settings.threads.to_string(),
                "--context-size".into(),
                settings.context_size.to_string(),
                "--seed".into(),
                settings.seed.to_string(),
                "--temperature".into(),
                settings.temperature.to_string(),
                "--repeat-penalty".into(),
                settings.sampling.repeat_penalty.to_string(),
                "--repeat-last-n".into(),
                settings.sampling.repeat_last_n.to_string(),
                "--dry-multiplier".into(),
                settings.sampling.dry_multiplier.to_string(),
                "--dry-base".into(),
                settings.sampling.dry_base.to_string(),
                "--dry-allowed-length".into(),
                settings.sampling.dry_allowed_length.to_string(),
                "--dry-penalty-last-n".into(),
                settings.sampling.dry_penalty_last_n.to_string(),
            ],
        };
        let sampling = &settings.sampling;
        let config = serde_json::json!({
            "provider": "llama.cpp",
            "model": model_name,
            "context_size": settings.context_size,
            "seed": settings.seed,
            "temperature": settings.temperature,
            "repeat_penalty": sampling.repeat_penalty,
            "repeat_last_n": sampling.repeat_last_n,
            "dry_multiplier": sampling.dry_multiplier,
            "dry_base": sampling.dry_base,
            "dry_allowed_length": sampling.dry_allowed_length,
            "dry_penalty_last_n": sampling.dry_penalty_last_n,
        });
        let health = Arc::new(Mutex::new(WorkerHealth {
            state: WorkerState::Starting,
            pid: None,
            restarts: 0,
        }));
        let (jobs, queue) = mpsc::channel(settings.max_queued_calls.max(1));
        let (first_ready, ready) = oneshot::channel();
        let supervisor = WorkerSupervisor {
            launcher,
            queue,
            health: Arc::clone(&health),
            metrics,
            timeout: Duration::from_secs(settings.request_timeout_seconds),
            first_ready: Some(first_ready),
        };
        tokio::spawn(supervisor.run());
        match ready.await {
            Ok(Ok(())) => Ok(EmbeddedProvider {
                prices: settings.price_of(&model_name).into(),
                model_name,
                config,
                jobs,
                health,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(LlmError::Unavailable(
                "model worker supervisor stopped".into(),
            )),
        }
    }

    /// Runs a call that keeps generating past end-of-generation tokens, for benchmarks that need a fixed
    /// number of tokens.
    pub async fn complete_fixed_length(&self, request: LlmRequest) -> Result<LlmOutput, LlmError> {
        self.submit(request, true, Arc::new(|_, _| {}), CancellationToken::new())
            .await
    }

    async fn submit(
        &self,
        request: LlmRequest,
        ignore_eos: bool,
        on_token: TokenSink,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            ignore_eos,
            on_token,
            cancel: cancel.clone(),
            reply,
        };
        // The queue is bounded (`llm.max_queued_calls`): a full one makes the caller wait for a place.
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(LlmError::Cancelled),
            sent = self.jobs.send(job) => sent
                .map_err(|_| LlmError::Unavailable("model worker supervisor stopped".into()))?,
        }
        answer
            .await
            .map_err(|_| LlmError::Unavailable("model worker supervisor stopped".into()))?
    }
}

#[async_trait]
impl LlmProvider for EmbeddedProvider {
    fn provider_name(&self) -> &'static str {
        "llama.cpp"
    }

    fn model_name(&self) -> &str {
        &self.model_name
    }

    fn model_config(&self) -> serde_json::Value {
        self.config.clone()
    }

    async fn complete(
        &self,
        request: LlmRequest,
        on_token: TokenSink,
        cancel: CancellationToken,
    ) -> Result<LlmOutput, LlmError> {
        self.submit(request, false, on_token, cancel).await
    }

    fn check_ready(&self) -> Result<(), LlmError> {
        match self.health().state {
            WorkerState::Ready => Ok(()),
            WorkerState::Starting => Err(LlmError::Unavailable("model worker is starting".into())),
            WorkerState::Down(reason) => Err(LlmError::Unavailable(reason)),
        }
    }

    fn price_per_million_tokens(&self) -> TokenPrices {
        self.prices
    }

    fn worker(&self) -> Option<WorkerStatus> {
        let health = self.health();
        Some(WorkerStatus {
            state: match health.state {
                WorkerState::Starting => "starting",
                WorkerState::Ready => "ready",
                WorkerState::Down(_) => "down",
            },
            pid: health.pid,
            restarts: health.restarts,
        })
    }
}

impl EmbeddedProvider {
    fn health(&self) -> WorkerHealth {
        self.health
            .lock()
            .map(|health| health.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

/// How to start a worker.
struct Launcher {
    program: PathBuf,
    args: Vec<String>,
}

/// A running worker's pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Owns the worker process: starts, feeds and restarts it.
struct WorkerSupervisor {
    launcher: Launcher,
    queue: mpsc::Receiver<Job>,
    health: Arc<Mutex<WorkerHealth>>,
    metrics: Metrics,
    timeout: Duration,
    first_ready: Option<oneshot::Sender<Result<(), LlmError>>>,
}

/// How one call ended, as far as the worker's health goes.
enum CallEnd {
    /// The worker is fine and can take the next call.
    Healthy,
    /// The worker is gone or unusable and must be replaced.
    Replace,
}

impl WorkerSupervisor {
    async fn run(mut self) {
        let mut next_id: u64 = 0;
        let mut backoff = Duration::from_millis(100);
        loop {
            self.set_state(WorkerState::Starting);
            let mut worker = match self.start_worker().await {
                Ok(worker) => {
                    backoff = Duration::from_millis(100);
                    worker
                }
                Err(error) => {
                    tracing::error!(%error, "model worker failed to start");
                    self.set_state(WorkerState::Down(error.to_string()));
                    if let Some(first_ready) = self.first_ready.take() {
                        // The first start failing is a start-up error the caller reports.
                        let _ = first_ready.send(Err(error));
                        return;
                    }
                    // Fail what is queued rather than leaving callers waiting, then retry.
                    while let Ok(job) = self.queue.try_recv() {
                        let _ = job.reply.send(Err(error.clone()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let pid = worker.child.id();
            self.update(|health| {
                health.state = WorkerState::Ready;
                health.pid = pid;
            });
            if let Some(first_ready) = self.first_ready.take() {
                let _ = first_ready.send(Ok(()));
            }
            loop {
                let Some(job) = self.queue.recv().await else {
                    // Every provider handle is gone: stop the worker and end.
                    let _ = worker.child.kill().await;
                    return;
                };
                next_id += 1;
                match self.serve(&mut worker, next_id, job).await {
                    CallEnd::Healthy => {}
                    CallEnd::Replace => {
                        let _ = worker.child.kill().await;
                        let status = worker.child.wait().await;
                        tracing::warn!(?status, "model worker lost; starting a new one");
                        self.metrics
                            .supervisor_restarts
                            .with_label_values(&["model_worker", "crash"])
                            .inc();
                        self.update(|health| {
                            health.pid = None;
                            health.restarts += 1;
                        });
                        break;
                    }
                }
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut WorkerHealth)) {
        match self.health.lock() {
            Ok(mut guard) => change(&mut guard),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    fn set_state(&self, state: WorkerState) {
        self.update(|health| health.state = state);
    }

    async fn start_worker(&self) -> Result<Worker, LlmError> {
        let mut child = Command::new(&self.launcher.program)
            .args(&self.launcher.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                LlmError::Unavailable(format!(
                    "start model worker {}: {e}",
                    self.launcher.program.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(LlmError::Unavailable("model worker has no pipes".into()));
        };
        let mut stdout = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, stdout.next_line())
            .await
            .map_err(|_| {
                LlmError::Unavailable("model worker did not load its model in 60 s".into())
            })?;
        match first {
            Ok(Some(line)) => match serde_json::from_str::<FromWorker>(&line) {
                Ok(FromWorker::Ready { model, context }) => {
                    tracing::info!(%model, context, "model worker ready");
                    Ok(Worker {
                        child,
                        stdin,
                        stdout,
                    })
                }
                _ => Err(LlmError::Protocol(format!(
                    "expected ready, got: {}",
                    excerpt(&line)
                ))),
            },
            Ok(None) => {
                let status = child.wait().await.ok();
                Err(LlmError::Unavailable(format!(
                    "model worker exited while loading the model ({})",
                    status.map_or_else(|| "unknown status".into(), |s| s.to_string())
                )))
            }
            Err(e) => Err(LlmError::Unavailable(format!("read model worker: {e}"))),
        }
    }

    /// Serves one call on `worker`.
    async fn serve(&self, worker: &mut Worker, id: u64, job: Job) -> CallEnd {
        if job.cancel.is_cancelled() {
            let _ = job.reply.send(Err(LlmError::Cancelled));
            return CallEnd::Healthy;
        }
        let line = match serde_json::to_string(&ToWorker::Generate {
            id,
            request: job.request,
            ignore_eos: job.ignore_eos,
        }) {
            Ok(line) => line,
            Err(e) => {
                let _ = job
                    .reply
                    .send(Err(LlmError::Protocol(format!("encode request: {e}"))));
                return CallEnd::Healthy;
            }
        };
        if let Err(e) = write_line(&mut worker.stdin, &line).await {
            let _ = job
                .reply
                .send(Err(LlmError::WorkerCrashed(format!("write request: {e}"))));
            return CallEnd::Replace;
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                line = worker.stdout.next_line() => {
                    let line = match line {
                        Ok(Some(line)) => line,
                        Ok(None) | Err(_) => {
                            let status = worker.child.try_wait().ok().flatten();
                            let reason = status.map_or_else(
                                || "pipe closed".to_owned(),
                                |status| status.to_string(),
                            );
                            let _ = job.reply.send(Err(LlmError::WorkerCrashed(reason)));
                            return CallEnd::Replace;
                        }
                    };
                    match serde_json::from_str::<FromWorker>(&line) {
                        Ok(FromWorker::Token { id: token_id, text, p, top }) if token_id == id => {
                            (job.on_token)(&text, TokenInfo { p, top }.bounded());
                        }
                        Ok(FromWorker::Done { id: done_id, output, .. }) if done_id == id => {
                            let _ = job.reply.send(Ok(output));
                            return CallEnd::Healthy;
                        }
                        Ok(FromWorker::Failed { id: failed_id, kind, message }) if failed_id == id => {
                            let _ = job.reply.send(Err(failure(&kind, message)));
                            return CallEnd::Healthy;
                        }
                        Ok(other) => tracing::warn!(?other, "model worker reply for another call ignored"),
                        Err(e) => {
                            let _ = job.reply.send(Err(LlmError::Protocol(format!(
                                "{e}: {}", excerpt(&line)
                            ))));
                            return CallEnd::Replace;
                        }
                    }
                }
                () = job.cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    let cancel = serde_json::to_string(&ToWorker::Cancel { id }).unwrap_or_default();
                    if write_line(&mut worker.stdin, &cancel).await.is_err() {
                        let _ = job.reply.send(Err(LlmError::Cancelled));
                        return CallEnd::Replace;
                    }
                }
                () = &mut deadline => {
                    let _ = job.reply.send(Err(LlmError::Timeout(self.timeout.as_secs())));
                    // The worker is busy with a call nobody waits for: replace it.
                    return CallEnd::Replace;
                }
            }
        }
    }
}

async fn write_line(stdin: &mut ChildStdin, line: &str) -> std::io::Result<()> {
    stdin.write_all(line.as_bytes()).await?;
    stdin.write_all(b"\n").await?;
    stdin.flush().await
}

/// Maps a worker-reported failure to the provider error.
fn failure(kind: &str, message: String) -> LlmError {
    match kind {
        "cancelled" => LlmError::Cancelled,
        "grammar" => LlmError::Grammar(message),
        "invalid_request" => LlmError::InvalidRequest(message),
        "context_overflow" => LlmError::InvalidRequest(message),
        _ => LlmError::Model(message),
    }
}
