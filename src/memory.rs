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

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::agents::AgentKind;
use crate::config::MemorySettings;
use crate::events::{EventKind, EventLog};
use crate::llm::shorten;
use crate::storage::writer::WriteOp;
use crate::storage::{Storage, StorageError};
use crate::task::TaskId;
use crate::telemetry::metrics::Metrics;
use embedding::{Embedder, EmbeddingError, MODEL_NAME};
use short_term::ShortTerm;

/// The tier label of long-term (stored memory) operations in metrics.
pub const LONG_TERM: &str = "long_term";
/// The tier label of semantic searches in metrics.
pub const SEMANTIC: &str = "semantic";

/// Longest excerpt of a memory's content in `memory.read` events, in characters.
const EVENT_EXCERPT_CHARS: usize = 240;

/// What a memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// A fact an agent stated.
    Fact,
    /// The summary of a finished task (prompt and result).
    Summary,
    /// A piece of code an agent wrote.
    Snippet,
    /// An error signature and the fix that made it pass.
    Pattern,
}

impl MemoryKind {
    /// Every kind.
    pub const ALL: [MemoryKind; 4] = [
        MemoryKind::Fact,
        MemoryKind::Summary,
        MemoryKind::Snippet,
        MemoryKind::Pattern,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Fact => "fact",
            MemoryKind::Summary => "summary",
            MemoryKind::Snippet => "snippet",
            MemoryKind::Pattern => "pattern",
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a memory kind.
#[derive(Debug, thiserror::Error)]
#[error("unknown memory kind '{0}' (fact, summary, snippet, pattern)")]
pub struct UnknownKind(pub String);

impl FromStr for MemoryKind {
    type Err = UnknownKind;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MemoryKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

/// A memory an agent wants kept, before it is embedded.
#[derive(Debug, Clone)]
pub struct MemoryDraft {
    /// What it is.
    pub kind: MemoryKind,
    /// The text that is embedded and shown.
    pub content: String,
    /// Structured details (a pattern's fix, ...).
    pub detail: Option<serde_json::Value>,
    /// Who wrote it.
    pub agent: AgentKind,
    /// The step it came from.
    pub step: Option<i32>,
}

/// A memory ready to store: a draft with its provenance and embedding.
#[derive(Debug, Clone)]
pub struct NewMemory {
    /// Its id (UUIDv7).
    pub id: uuid::Uuid,
    /// The task it came from.
    pub task_id: Option<TaskId>,
    /// The draft.
    pub draft: MemoryDraft,
    /// Its embedding (unit length).
    pub embedding: Vec<f32>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// A stored memory with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRecord {
    /// Id.
    pub id: String,
    /// What it is.
    pub kind: MemoryKind,
    /// Its text.
    pub content: String,
    /// Structured details.
    pub detail: Option<serde_json::Value>,
    /// The task it came from.
    pub task_id: Option<String>,
    /// Who wrote it.
    pub agent: Option<String>,
    /// The step it came from.
    pub step: Option<i32>,
    /// Times it was offered to an agent.
    pub uses: i32,
    /// Times an attempt that used it passed (patterns).
    pub successes: i32,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// A memory found by a search, with its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryHit {
    /// The memory.
    #[serde(flatten)]
    pub memory: MemoryRecord,
    /// Cosine similarity, -1..=1 (1: same meaning).
    pub score: f32,
}

/// Which memories a search considers.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// Only these kinds (empty: all).
    pub kinds: Vec<MemoryKind>,
    /// Only those written by this agent.
    pub agent: Option<AgentKind>,
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
    settings: MemorySettings,
    embedder: Option<Arc<Embedder>>,
    short_term: ShortTerm,
    storage: Storage,
    events: EventLog,
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
    /// Memory from started `parts`, over `storage` (reads) and `events` (writes and `memory.read` events).
    pub fn new(
        settings: MemorySettings,
        parts: MemoryParts,
        storage: Storage,
        events: EventLog,
        metrics: Metrics,
    ) -> Self {
        Memory {
            inner: Arc::new(Inner {
                settings,
                embedder: parts.embedder,
                short_term: parts.short_term,
                storage,
                events,
                metrics,
            }),
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
        if !self.enabled() {
            return Vec::new();
        }
        let settings = &self.inner.settings;
        let result = self
            .search(&spec.query, &spec.filter, settings.recall_k)
            .await;
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
        for hit in &used {
            self.inner
                .metrics
                .memory_reuses
                .with_label_values(&[hit.memory.kind.as_str()])
                .inc();
        }
        if !used.is_empty() {
            self.inner.events.writer().send(WriteOp::MemoriesUsed(
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
        self.inner.events.emit(
            task_id,
            EventKind::MemoryRead,
            Some(agent),
            json!({
                "step": step,
                "purpose": spec.purpose,
                "query": shorten(&spec.query, EVENT_EXCERPT_CHARS),
                "kinds": spec.filter.kinds,
                "k": settings.recall_k,
                "min_score": min_score,
                "backend": self.inner.storage.backend_name(),
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
        let now = Utc::now();
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
        let result = self.inner.events.writer().insert_memories(memories).await;
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
    pub(crate) fn writer(&self) -> &crate::storage::writer::Writer {
        self.inner.events.writer()
    }
}
