//! Memory in three tiers (DESIGN.md "Memory"): short-term per task ([`short_term`]: Redis or in-process),
//! long-term memories with provenance in the database, and semantic search over their embeddings
//! ([`embedding`]: all-MiniLM-L6-v2 in-process; pgvector HNSW on PostgreSQL, an exact scan on SQLite).
//! [`learning`] turns a failed run and its later fix into a pattern that later failures retrieve.
//!
//! [`Memory`] is what agents use. Every search is a `search_memory` span with the query, the hits and their
//! similarity scores; a search made for a task is also a `memory.read` event in its log. Writes go through
//! the storage writer: a task's memories commit together with its end, or not at all.

pub mod embedding;
pub mod learning;
pub mod short_term;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use serde_json::json;
use tracing::Instrument;

use crate::config::MemorySettings;
use crate::domain::{shorten, AgentKind, EventKind, TaskId};
use crate::storage::records::WriteOp;
use crate::storage::writer::Writer;
use crate::storage::{Storage, StorageError};
use crate::telemetry::metrics::Metrics;
use embedding::{Embedder, EmbeddingError, MODEL_NAME};

// Memory's vocabulary is the rows storage keeps; named here so that agents speak of `memory::MemoryHit`.
pub use crate::storage::memories::{MemoryDraft, MemoryHit, MemoryRecord, NewMemory, SearchFilter};
use short_term::ShortTerm;

/// Longest search query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 2000;
/// Most hits a search may ask for.
pub const MAX_SEARCH_K: usize = 50;

/// The tier label of long-term (stored memory) operations in metrics.
pub const LONG_TERM: &str = "long_term";
/// The tier label of semantic searches in metrics.
pub const SEMANTIC: &str = "semantic";

/// Longest excerpt of a memory's content in `memory.read` events, in characters.
const EVENT_EXCERPT_CHARS: usize = 240;

/// How [`recalled_list`] lays out each memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallLayout {
    /// As written (code keeps its lines).
    AsWritten,
    /// On one line (line breaks become spaces), for summaries in a list.
    OneLine,
}

/// Recalled memories for a prompt: one `- ` item per hit, best first, each cut to `max_chars`.
pub fn recalled_list(hits: &[MemoryHit], max_chars: usize, layout: RecallLayout) -> String {
    let mut text = String::new();
    for hit in hits {
        let content = match layout {
            RecallLayout::AsWritten => shorten(&hit.memory.content, max_chars),
            RecallLayout::OneLine => shorten(&hit.memory.content.replace('\n', " "), max_chars),
        };
        text.push_str("- ");
        text.push_str(&content);
        text.push('\n');
    }
    text
}

/// What an agent recalls before working on a step.
#[derive(Debug, Clone)]
pub struct RecallSpec {
    /// Why (shown in the event), e.g. "related work".
    pub purpose: &'static str,
    /// The text to find memories close to.
    pub query: String,
    /// Which memories.
    pub filter: SearchFilter,
}

/// A memory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Memory is switched off (`memory.enabled = false`).
    #[error("memory is disabled (memory.enabled = false)")]
    Disabled,
    /// Embedding failed.
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The embedding thread was lost.
    #[error("embedding thread: {0}")]
    Thread(String),
}

/// Long-term and semantic memory plus the short-term tier. Cheap to clone.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tasks that see memory as it was at an earlier moment (replays and forks), by task.
    views: std::sync::Mutex<HashMap<TaskId, DateTime<Utc>>>,
    settings: MemorySettings,
    embedder: Option<Arc<Embedder>>,
    short_term: ShortTerm,
    storage: Storage,
    writer: Writer,
    metrics: Metrics,
}

/// Loads the embedding model named by `settings` on a blocking thread (`None` when memory is disabled).
pub async fn load_embedder(
    settings: &MemorySettings,
) -> Result<Option<Arc<Embedder>>, EmbeddingError> {
    if !settings.enabled {
        return Ok(None);
    }
    let dir = settings.embedding_model.clone();
    let started = Instant::now();
    let embedder = tokio::task::spawn_blocking(move || Embedder::load(&dir))
        .await
        .map_err(|e| EmbeddingError::Files {
            path: settings.embedding_model.clone(),
            detail: format!("loading thread failed: {e}"),
        })??;
    tracing::info!(
        model = MODEL_NAME,
        seconds = started.elapsed().as_secs_f64(),
        "embedding model loaded"
    );
    Ok(Some(Arc::new(embedder)))
}

/// What memory needs before the storage writer exists: the embedding model and the short-term store.
pub struct MemoryParts {
    /// The embedding model (`None` when memory is disabled).
    pub embedder: Option<Arc<Embedder>>,
    /// The short-term tier.
    pub short_term: ShortTerm,
}

/// Memory could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemoryStartError {
    /// The embedding model could not be loaded.
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
    /// The short-term store is misconfigured.
    #[error(transparent)]
    ShortTerm(#[from] short_term::ShortTermError),
}

impl MemoryParts {
    /// Loads the embedding model and connects the short-term store (Redis when `redis.url` is set; a Redis
    /// that does not answer is logged and falls back, it does not stop the start).
    pub async fn start(
        settings: &MemorySettings,
        redis: &crate::config::RedisSettings,
        metrics: &Metrics,
    ) -> Result<Self, MemoryStartError> {
        let retention = short_term::Retention {
            ttl: std::time::Duration::from_secs(settings.short_term_ttl_seconds),
            window: settings.window_size,
        };
        let short_term = if redis.url.is_empty() {
            ShortTerm::local(retention, metrics.clone())
        } else {
            ShortTerm::redis(&redis.url, &redis.key_prefix, retention, metrics.clone()).await?
        };
        let embedder = load_embedder(settings).await?;
        Ok(MemoryParts {
            embedder,
            short_term,
        })
    }
}

impl Memory {
    /// Memory from started `parts`, over `storage` (reads) and `writer` (writes and `memory.read` events).
    pub fn new(
        settings: MemorySettings,
        parts: MemoryParts,
        storage: Storage,
        writer: Writer,
        metrics: Metrics,
    ) -> Self {
        Memory {
            inner: Arc::new(Inner {
                views: std::sync::Mutex::default(),
                settings,
                embedder: parts.embedder,
                short_term: parts.short_term,
                storage,
                writer,
                metrics,
            }),
        }
    }

    /// From now until [`Memory::clear_view`], task `task_id` sees long-term memory as it was at `as_of`:
    /// its recalls and pattern look-ups consider only memories stored before then, and count as no use.
    /// A replay or fork sets its source's start, so that it is shown what its source was shown and asks
    /// the recorded questions.
    pub fn set_view(&self, task_id: TaskId, as_of: DateTime<Utc>) {
        match self.inner.views.lock() {
            Ok(mut views) => views.insert(task_id, as_of),
            Err(poisoned) => poisoned.into_inner().insert(task_id, as_of),
        };
    }

    /// Task `task_id` sees memory as it is again (its end).
    pub fn clear_view(&self, task_id: TaskId) {
        match self.inner.views.lock() {
            Ok(mut views) => views.remove(&task_id),
            Err(poisoned) => poisoned.into_inner().remove(&task_id),
        };
    }

    /// The moment task `task_id` sees memory as of, if it was given one.
    pub fn view(&self, task_id: TaskId) -> Option<DateTime<Utc>> {
        match self.inner.views.lock() {
            Ok(views) => views.get(&task_id).copied(),
            Err(poisoned) => poisoned.into_inner().get(&task_id).copied(),
        }
    }

    /// The short-term tier.
    pub fn short_term(&self) -> &ShortTerm {
        &self.inner.short_term
    }

    /// Whether long-term and semantic memory are on.
    pub fn enabled(&self) -> bool {
        self.inner.embedder.is_some()
    }

    /// The settings.
    pub fn settings(&self) -> &MemorySettings {
        &self.inner.settings
    }

    /// Embeds `texts` in one batch on a blocking thread, as an `embeddings {model}` span.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, MemoryError> {
        let embedder = self.inner.embedder.clone().ok_or(MemoryError::Disabled)?;
        let count = texts.len();
        let span = tracing::info_span!(
            "embeddings",
            otel.name = %format!("embeddings {MODEL_NAME}"),
            gen_ai.operation.name = "embeddings",
            gen_ai.provider.name = "candle",
            gen_ai.request.model = MODEL_NAME,
            troupe.embeddings.count = i64::try_from(count).unwrap_or(i64::MAX),
            error.type = tracing::field::Empty,
        );
        let metrics = self.inner.metrics.clone();
        async move {
            let started = Instant::now();
            let result = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                embedder.embed(&refs)
            })
            .await
            .map_err(|e| MemoryError::Thread(e.to_string()))
            .and_then(|result| result.map_err(MemoryError::from));
            metrics
                .embedding_duration
                .with_label_values(&[MODEL_NAME])
                .observe(started.elapsed().as_secs_f64());
            match &result {
                Ok(_) => metrics
                    .embeddings
                    .with_label_values(&[MODEL_NAME])
                    .inc_by(u64::try_from(count).unwrap_or(u64::MAX)),
                Err(_) => {
                    tracing::Span::current().record("error.type", "embedding");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    /// The `k` memories closest in meaning to `query` among those `filter` allows, best first, as a
    /// `search_memory` span with the query, hits and scores.
    pub async fn search(
        &self,
        query: &str,
        filter: &SearchFilter,
        k: usize,
    ) -> Result<Vec<MemoryHit>, MemoryError> {
        let span = tracing::info_span!(
            "search_memory",
            otel.name = "search_memory",
            gen_ai.operation.name = "search_memory",
            troupe.memory.query = %shorten(query, EVENT_EXCERPT_CHARS),
            troupe.memory.k = i64::try_from(k).unwrap_or(i64::MAX),
            troupe.memory.backend = self.inner.storage.backend_name(),
            troupe.memory.hits = tracing::field::Empty,
            troupe.memory.top_score = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        async move {
            let started = Instant::now();
            let result = self.search_inner(query, filter, k).await;
            let metrics = &self.inner.metrics;
            let span = tracing::Span::current();
            let outcome = match &result {
                Ok(hits) => {
                    span.record("troupe.memory.hits", i64::try_from(hits.len()).unwrap_or(0));
                    if let Some(top) = hits.first() {
                        span.record("troupe.memory.top_score", f64::from(top.score));
                        metrics.memory_search_top_score.observe(f64::from(top.score));
                    }
                    let scored: Vec<_> = hits
                        .iter()
                        .map(|hit| json!({ "id": hit.memory.id, "kind": hit.memory.kind, "score": hit.score }))
                        .collect();
                    // The hits and their scores, as a span event.
                    tracing::debug!(memory.hits = %json!(scored), "memory read");
                    if hits.is_empty() {
                        "miss"
                    } else {
                        "hit"
                    }
                }
                Err(_) => {
                    span.record("error.type", "memory");
                    "error"
                }
            };
            metrics.observe_memory_op(SEMANTIC, "search", outcome, started);
            result
        }
        .instrument(span)
        .await
    }

    async fn search_inner(
        &self,
        query: &str,
        filter: &SearchFilter,
        k: usize,
    ) -> Result<Vec<MemoryHit>, MemoryError> {
        let mut vectors = self.embed(vec![query.to_owned()]).await?;
        let vector = vectors
            .pop()
            .ok_or(MemoryError::Embedding(EmbeddingError::Dimensions(0)))?;
        Ok(self
            .inner
            .storage
            .search_memories(&vector, filter, k, self.inner.settings.hnsw_ef_search)
            .await?)
    }

    /// What `agent` recalls for a step of `task_id`: a search per `spec`, the hits at or above
    /// `memory.min_score` (best first) returned for the prompt. Every recall is a `memory.read` event with all
    /// hits, their scores and which were used; a failed search is logged and recorded, and recalls nothing.
    pub async fn recall(
        &self,
        task_id: TaskId,
        agent: AgentKind,
        step: i32,
        spec: &RecallSpec,
    ) -> Vec<MemoryHit> {
        self.recall_k(task_id, agent, step, spec, self.inner.settings.recall_k)
            .await
    }

    /// [`Memory::recall`] with `k` hits retrieved instead of `memory.recall_k`.
    pub async fn recall_k(
        &self,
        task_id: TaskId,
        agent: AgentKind,
        step: i32,
        spec: &RecallSpec,
        k: usize,
    ) -> Vec<MemoryHit> {
        if !self.enabled() {
            return Vec::new();
        }
        let settings = &self.inner.settings;
        let view = self.view(task_id);
        let mut filter = spec.filter.clone();
        if view.is_some() {
            filter.created_before = view;
        }
        let result = self.search(&spec.query, &filter, k).await;
        let (hits, error) = match result {
            Ok(hits) => (hits, None),
            Err(error) => {
                tracing::warn!(task_id = %task_id, %agent, %error, "memory search failed; the step goes on without memories");
                (Vec::new(), Some(error.to_string()))
            }
        };
        let min_score = settings.min_score;
        let used: Vec<MemoryHit> = hits
            .iter()
            .filter(|hit| hit.score >= min_score)
            .cloned()
            .collect();
        // A re-run's reads repeat its source's: they are not new uses.
        for hit in used.iter().filter(|_| view.is_none()) {
            self.inner
                .metrics
                .memory_reuses
                .with_label_values(&[hit.memory.kind.as_str()])
                .inc();
        }
        if !used.is_empty() && view.is_none() {
            self.inner.writer.send(WriteOp::MemoriesUsed(
                used.iter().map(|hit| hit.memory.id.clone()).collect(),
            ));
        }
        let listed: Vec<_> = hits
            .iter()
            .map(|hit| {
                json!({
                    "id": hit.memory.id,
                    "kind": hit.memory.kind,
                    "score": hit.score,
                    "used": hit.score >= min_score,
                    "task_id": hit.memory.task_id,
                    "agent": hit.memory.agent,
                    "step": hit.memory.step,
                    "content": shorten(&hit.memory.content, EVENT_EXCERPT_CHARS),
                })
            })
            .collect();
        self.inner.writer.emit(
            task_id,
            EventKind::MemoryRead,
            Some(agent),
            json!({
                "step": step,
                "purpose": spec.purpose,
                "query": shorten(&spec.query, EVENT_EXCERPT_CHARS),
                "kinds": spec.filter.kinds,
                "k": k,
                "min_score": min_score,
                "backend": self.inner.storage.backend_name(),
                "as_of": view,
                "hits": listed,
                "used": used.len(),
                "error": error,
            }),
        );
        used
    }

    /// Embeds `drafts` (one batch) into memories of `task_id`, ready for the writer.
    pub async fn prepare(
        &self,
        task_id: Option<TaskId>,
        drafts: Vec<MemoryDraft>,
    ) -> Result<Vec<NewMemory>, MemoryError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self
            .embed(drafts.iter().map(|draft| draft.content.clone()).collect())
            .await?;
        let now = chrono::Utc::now();
        Ok(drafts
            .into_iter()
            .zip(vectors)
            .map(|(draft, embedding)| NewMemory {
                id: uuid::Uuid::now_v7(),
                task_id,
                draft,
                embedding,
                created_at: now,
            })
            .collect())
    }

    /// Embeds and stores `drafts` now (all or none), outside a task's end; returns their ids.
    pub async fn store(
        &self,
        task_id: Option<TaskId>,
        drafts: Vec<MemoryDraft>,
    ) -> Result<Vec<uuid::Uuid>, MemoryError> {
        let memories = self.prepare(task_id, drafts).await?;
        let ids = memories.iter().map(|memory| memory.id).collect();
        let started = Instant::now();
        let result = self.inner.writer.insert_memories(memories).await;
        self.count(LONG_TERM, "write", started, result.is_ok());
        result?;
        Ok(ids)
    }

    /// Counts a long-term operation.
    fn count(&self, tier: &str, op: &str, started: Instant, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.inner
            .metrics
            .observe_memory_op(tier, op, outcome, started);
    }

    /// The memories task `task_id` wrote.
    pub async fn written_by(&self, task_id: TaskId) -> Result<Vec<MemoryRecord>, MemoryError> {
        let started = Instant::now();
        let result = self.inner.storage.task_memories(task_id).await;
        self.count(LONG_TERM, "read", started, result.is_ok());
        Ok(result?)
    }

    /// Counts a commit of memories made with a task's end.
    pub fn count_task_write(&self, started: Instant, ok: bool) {
        self.count(LONG_TERM, "write", started, ok);
    }

    /// The metrics (for the learning loop).
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The writer (for the learning loop).
    pub(crate) fn writer(&self) -> &Writer {
        &self.inner.writer
    }
}
