//! Memory: embeddings per second, semantic search latency and recall, and operation latency per tier.
//!
//! Reported (JSON on stdout, one object):
//! - `embeddings_per_s`: all-MiniLM-L6-v2 in this process, one text at a time and in batches of 32 and 100;
//! - `search`: on PostgreSQL with pgvector's HNSW index at 10k and 100k vectors: p50/p99 latency of
//!   `Storage::search_memories` (k = 10, one transaction with `SET LOCAL hnsw.ef_search`) and recall@10 against
//!   exact search (brute force over the same vectors), at ef_search 40 (pgvector's default) and 100 (Troupe's);
//!   the index build time; and SQLite's exact scan at 10k through the same API;
//! - `tiers`: p50/p99 of short-term operations (in-process and Redis), of committing one memory (PostgreSQL
//!   and SQLite), and of a whole recall-style search (embed the query, then HNSW) at 10k.
//!
//! Data: 10,000 distinct generated sentences (templates over subjects, verbs, objects and settings), embedded
//! for real; the 100k set adds 90,000 synthetic neighbours, each a normalised mix of two real embeddings plus
//! a little noise (embedding 100k texts would take over ten minutes here). Queries are 200 further generated
//! sentences not in the set. Needs PostgreSQL with pgvector (`TROUPE_TEST_POSTGRES_URL`) and Redis
//! (`TROUPE_TEST_REDIS_URL`), as `scripts/setup.sh test` provides; a database is created and dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};
use serde_json::json;
use troupe::config::{DatabaseSettings, Settings};
use troupe::domain::{AgentKind, MemoryKind, TaskId, EMBEDDING_DIMENSIONS};
use troupe::events::Hub;
use troupe::memory::embedding::Embedder;
use troupe::memory::short_term::{Retention, ShortTerm};
use troupe::memory::{MemoryDraft, NewMemory, SearchFilter};
use troupe::storage::memories::cosine;
use troupe::storage::writer::Writer;
use troupe::storage::Storage;
use troupe::telemetry::metrics::Metrics;

const CORPUS: usize = 10_000;
const LARGE: usize = 100_000;
const QUERIES: usize = 200;
const K: usize = 10;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings::load_from(&root.join("config"), Some("test"))?;
    let embedder = Arc::new(Embedder::load(&root.join("models/all-MiniLM-L6-v2"))?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(settings, embedder))
}

async fn run(settings: Settings, embedder: Arc<Embedder>) -> anyhow::Result<()> {
    let texts = sentences(CORPUS + QUERIES);
    let (corpus_texts, query_texts) = texts.split_at(CORPUS);

    // Embeddings per second.
    let single = {
        let started = Instant::now();
        for text in corpus_texts.iter().take(200) {
            embedder.embed(&[text.as_str()])?;
        }
        200.0 / started.elapsed().as_secs_f64()
    };
    let batched = |size: usize| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut done = 0;
        for chunk in corpus_texts[..1000].chunks(size) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            done += embedder.embed(&refs)?.len();
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    };
    let batch_32 = batched(32)?;
    let batch_100 = batched(100)?;
    eprintln!("embeddings/s: single {single:.1}, batch32 {batch_32:.1}, batch100 {batch_100:.1}");

    let mut corpus: Vec<Vec<f32>> = Vec::with_capacity(LARGE);
    let embed_started = Instant::now();
    for chunk in corpus_texts.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        corpus.extend(embedder.embed(&refs)?);
    }
    eprintln!(
        "embedded {CORPUS} in {:.1}s",
        embed_started.elapsed().as_secs_f64()
    );
    let queries: Vec<Vec<f32>> = {
        let refs: Vec<&str> = query_texts.iter().map(String::as_str).collect();
        embedder.embed(&refs)?
    };

    // PostgreSQL with pgvector: a database of its own.
    let server = std::env::var("TROUPE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let admin = Database::connect(&server).await?;
    let name = format!("troupe_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    let result = postgres_and_tiers(
        &format!("{base}/{name}"),
        &settings,
        &embedder,
        &mut corpus,
        &queries,
        query_texts,
        (single, batch_32, batch_100),
    )
    .await;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    let report = result?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn postgres_and_tiers(
    url: &str,
    settings: &Settings,
    embedder: &Arc<Embedder>,
    corpus: &mut Vec<Vec<f32>>,
    queries: &[Vec<f32>],
    query_texts: &[String],
    embeddings_per_s: (f64, f64, f64),
) -> anyhow::Result<serde_json::Value> {
    let storage = Storage::connect(&DatabaseSettings {
        url: url.to_owned(),
        max_connections: 4,
        writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
    })
    .await?;
    storage.migrate().await?;
    let metrics = Metrics::new()?;
    let writer = Writer::spawn(storage.clone(), Hub::new(), metrics.clone());
    let db = Database::connect(url).await?;
    db.execute_unprepared("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
        .await?;

    insert(&writer, &corpus[..], 0).await?;
    let build_10k = build_index(&db).await?;
    let at_10k = measure(&storage, corpus, queries).await?;
    eprintln!("10k: {at_10k}");

    // Tiers, at 10k.
    let tiers = tiers(settings, &storage, &writer, embedder, query_texts, url).await?;
    // The commit-latency memories (snippets) are not part of the search corpus.
    db.execute_unprepared("DELETE FROM memories WHERE kind = 'snippet'")
        .await?;

    // 100k: synthetic neighbours of the real embeddings.
    db.execute_unprepared("DROP INDEX IF EXISTS idx_memories_embedding_hnsw")
        .await?;
    let mut rng = Lcg(42);
    let extra: Vec<Vec<f32>> = (0..LARGE - CORPUS)
        .map(|_| {
            let a = &corpus[rng.below(CORPUS)];
            let b = &corpus[rng.below(CORPUS)];
            let w = 0.5 + 0.5 * rng.unit();
            let mut v: Vec<f32> = a
                .iter()
                .zip(b)
                .map(|(x, y)| w * x + (1.0 - w) * y + 0.02 * (rng.unit() - 0.5))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect();
    insert(&writer, &extra, CORPUS).await?;
    corpus.extend(extra);
    let build_100k = build_index(&db).await?;
    let at_100k = measure(&storage, corpus, queries).await?;
    eprintln!("100k: {at_100k}");

    // SQLite's exact scan at 10k, through the same API.
    let dir = tempfile::tempdir()?;
    let sqlite = Storage::connect(&DatabaseSettings {
        url: format!("sqlite://{}/bench.sqlite?mode=rwc", dir.path().display()),
        max_connections: 4,
        writer_queue: troupe::storage::writer::DEFAULT_QUEUE,
    })
    .await?;
    sqlite.migrate().await?;
    let sqlite_writer = Writer::spawn(sqlite.clone(), Hub::new(), metrics.clone());
    insert(&sqlite_writer, &corpus[..CORPUS], 0).await?;
    let mut scan = Vec::new();
    for query in queries.iter().take(50) {
        let started = Instant::now();
        sqlite
            .search_memories(query, &SearchFilter::default(), K, 100)
            .await?;
        scan.push(started.elapsed());
    }
    let sqlite_commit = commit_latency(&sqlite_writer, embedder).await?;

    let mut tiers = tiers;
    tiers["long_term_commit_one_sqlite_ms"] = sqlite_commit;
    Ok(json!({
        "embeddings_per_s": {
            "single": embeddings_per_s.0,
            "batch_32": embeddings_per_s.1,
            "batch_100": embeddings_per_s.2,
        },
        "search": {
            "k": K,
            "queries": queries.len(),
            "postgres_hnsw_10k": at_10k,
            "postgres_hnsw_10k_index_build_s": build_10k,
            "postgres_hnsw_100k": at_100k,
            "postgres_hnsw_100k_index_build_s": build_100k,
            "sqlite_exact_scan_10k_ms": percentiles_ms(&mut scan),
        },
        "tiers": tiers,
    }))
}

/// Stores `vectors` as memories without a task, 1,000 per commit; each one's content is its index in the
/// corpus (counting from `offset`), which is how hits are matched to the exact answer.
async fn insert(writer: &Writer, vectors: &[Vec<f32>], offset: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    for (c, chunk) in vectors.chunks(1000).enumerate() {
        let memories = chunk
            .iter()
            .enumerate()
            .map(|(i, embedding)| NewMemory {
                id: uuid::Uuid::now_v7(),
                task_id: None,
                draft: MemoryDraft {
                    kind: MemoryKind::Fact,
                    content: (offset + c * 1000 + i).to_string(),
                    detail: None,
                    agent: AgentKind::Research,
                    step: None,
                },
                embedding: embedding.clone(),
                created_at: chrono::Utc::now(),
            })
            .collect();
        writer.insert_memories(memories).await?;
    }
    eprintln!(
        "inserted {} in {:.1}s",
        vectors.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// (Re)builds the HNSW index as the migration defines it; returns seconds.
async fn build_index(db: &sea_orm::DatabaseConnection) -> anyhow::Result<f64> {
    let started = Instant::now();
    db.execute_unprepared("SET maintenance_work_mem = '1GB'")
        .await?;
    db.execute_unprepared(
        "CREATE INDEX idx_memories_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops)",
    )
    .await?;
    db.execute_unprepared("ANALYZE memories").await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Latency and recall@K at ef_search 40 and 100 against brute force over `corpus`.
async fn measure(
    storage: &Storage,
    corpus: &[Vec<f32>],
    queries: &[Vec<f32>],
) -> anyhow::Result<serde_json::Value> {
    let count = storage.memory_count().await?;
    anyhow::ensure!(
        count as usize == corpus.len(),
        "stored {count}, expected {}",
        corpus.len()
    );
    let exact: Vec<Vec<usize>> = queries.iter().map(|q| brute_force(corpus, q)).collect();
    let mut result = serde_json::Map::new();
    for ef in [40_u32, 100] {
        // Warm-up.
        for query in queries.iter().take(20) {
            storage
                .search_memories(query, &SearchFilter::default(), K, ef)
                .await?;
        }
        let mut times = Vec::with_capacity(queries.len());
        let mut found = 0usize;
        for (query, truth) in queries.iter().zip(&exact) {
            let started = Instant::now();
            let hits = storage
                .search_memories(query, &SearchFilter::default(), K, ef)
                .await?;
            times.push(started.elapsed());
            let truth: Vec<String> = truth.iter().map(usize::to_string).collect();
            found += hits
                .iter()
                .filter(|h| truth.contains(&h.memory.content))
                .count();
        }
        let recall = found as f64 / (queries.len() * K) as f64;
        result.insert(
            format!("ef_search_{ef}"),
            json!({ "latency_ms": percentiles_ms(&mut times), "recall_at_10": recall }),
        );
    }
    Ok(serde_json::Value::Object(result))
}

fn brute_force(corpus: &[Vec<f32>], query: &[f32]) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = corpus
        .iter()
        .enumerate()
        .map(|(i, v)| (cosine(query, v), i))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(K).map(|(_, i)| i).collect()
}

/// Short-term (in-process and Redis), long-term commit and end-to-end search latency.
async fn tiers(
    settings: &Settings,
    storage: &Storage,
    writer: &Writer,
    embedder: &Arc<Embedder>,
    query_texts: &[String],
    _url: &str,
) -> anyhow::Result<serde_json::Value> {
    let retention = Retention {
        ttl: Duration::from_secs(60),
        window: 8,
    };
    let metrics = Metrics::new()?;
    let local = ShortTerm::local(retention, metrics.clone());
    let redis_url =
        std::env::var("TROUPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("troupe-bench-{}", uuid::Uuid::new_v4().simple());
    let redis = ShortTerm::redis(&redis_url, &prefix, retention, metrics).await?;
    let local_ops = short_term_ops(&local).await?;
    let redis_ops = short_term_ops(&redis).await?;
    let commit = commit_latency(writer, embedder).await?;

    // A recall-style search: embed the query, then HNSW (ef_search from the settings).
    let mut times = Vec::new();
    for text in query_texts.iter().take(100) {
        let started = Instant::now();
        let vector = embedder.embed(&[text.as_str()])?;
        storage
            .search_memories(
                &vector[0],
                &SearchFilter::default(),
                settings.memory.recall_k,
                settings.memory.hnsw_ef_search,
            )
            .await?;
        times.push(started.elapsed());
    }
    Ok(json!({
        "short_term_local_us": local_ops,
        "short_term_redis_us": redis_ops,
        "long_term_commit_one_postgres_ms": commit,
        "semantic_search_with_embedding_10k_ms": percentiles_ms(&mut times),
    }))
}

async fn short_term_ops(store: &ShortTerm) -> anyhow::Result<serde_json::Value> {
    const N: usize = 2000;
    let tasks: Vec<TaskId> = (0..50).map(|_| TaskId::new()).collect();
    let mut put = Vec::with_capacity(N);
    let mut get = Vec::with_capacity(N);
    let mut push = Vec::with_capacity(N);
    let mut window = Vec::with_capacity(N);
    for i in 0..N {
        let task = tasks[i % tasks.len()];
        let started = Instant::now();
        store.put(task, "plan", "step one, step two").await?;
        put.push(started.elapsed());
        let started = Instant::now();
        store.get(task, "plan").await?;
        get.push(started.elapsed());
        let started = Instant::now();
        store
            .push(task, r#"{"agent":"code","step":1,"text":"def f(): pass"}"#)
            .await?;
        push.push(started.elapsed());
        let started = Instant::now();
        store.window(task).await?;
        window.push(started.elapsed());
    }
    Ok(json!({
        "put": percentiles_us(&mut put),
        "get": percentiles_us(&mut get),
        "push": percentiles_us(&mut push),
        "window": percentiles_us(&mut window),
    }))
}

/// Committing one embedded memory through the writer, p50/p99 in ms (embedding excluded).
async fn commit_latency(
    writer: &Writer,
    embedder: &Arc<Embedder>,
) -> anyhow::Result<serde_json::Value> {
    let vector = embedder.embed(&["a memory to commit"])?.remove(0);
    let mut times = Vec::new();
    for _ in 0..200 {
        let memory = NewMemory {
            id: uuid::Uuid::now_v7(),
            task_id: None,
            draft: MemoryDraft {
                kind: MemoryKind::Snippet,
                content: "def reverse(s): return s[::-1]".into(),
                detail: None,
                agent: AgentKind::Code,
                step: None,
            },
            embedding: vector.clone(),
            created_at: chrono::Utc::now(),
        };
        let started = Instant::now();
        writer.insert_memories(vec![memory]).await?;
        times.push(started.elapsed());
    }
    Ok(percentiles_ms(&mut times))
}

fn percentiles(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    let at = |q: f64| {
        let index = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[index].as_secs_f64()
    };
    (at(0.5), at(0.99))
}

fn percentiles_ms(times: &mut [Duration]) -> serde_json::Value {
    let (p50, p99) = percentiles(times);
    json!({ "p50": p50 * 1e3, "p99": p99 * 1e3 })
}

fn percentiles_us(times: &mut [Duration]) -> serde_json::Value {
    let (p50, p99) = percentiles(times);
    json!({ "p50": p50 * 1e6, "p99": p99 * 1e6 })
}

/// A small deterministic generator (no extra crate for a benchmark's data).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 1_000_000) as f32 / 1_000_000.0
    }
}

/// `n` distinct sentences from templates, in a shuffled but fixed order.
fn sentences(n: usize) -> Vec<String> {
    const SUBJECTS: &[&str] = &[
        "The parser",
        "A junior developer",
        "The database",
        "Our web server",
        "The scheduler",
        "A data scientist",
        "The compiler",
        "The cache layer",
        "A test suite",
        "The mobile app",
        "The payment service",
        "A background worker",
        "The search index",
        "The load balancer",
        "A security audit",
        "The logging pipeline",
        "The recommendation model",
        "A shell script",
        "The build system",
        "The message queue",
    ];
    const VERBS: &[&str] = &[
        "reads",
        "validates",
        "compresses",
        "retries",
        "caches",
        "sorts",
        "encrypts",
        "streams",
        "rejects",
        "indexes",
        "summarises",
        "migrates",
        "monitors",
        "deduplicates",
        "schedules",
        "translates",
        "exports",
        "archives",
        "profiles",
        "renders",
    ];
    const OBJECTS: &[&str] = &[
        "the configuration file",
        "customer invoices",
        "user passwords",
        "large images",
        "failed requests",
        "sensor readings",
        "email attachments",
        "search queries",
        "video thumbnails",
        "audit logs",
        "shopping carts",
        "weather forecasts",
        "chat messages",
        "database backups",
        "API tokens",
        "product reviews",
        "GPS coordinates",
        "stock prices",
        "medical records",
        "source code",
    ];
    const SETTINGS: &[&str] = &[
        "every night",
        "before each release",
        "when memory runs low",
        "in parallel",
        "on every request",
        "after a crash",
        "during peak hours",
        "once a week",
        "with exponential backoff",
        "in batches of one hundred",
        "for the European region",
        "without blocking the UI",
        "on a single core",
        "under heavy load",
        "at startup",
        "behind a feature flag",
        "for compliance reasons",
        "in the staging environment",
        "with a five second timeout",
        "using a bloom filter",
    ];
    let total = SUBJECTS.len() * VERBS.len() * OBJECTS.len() * SETTINGS.len();
    let mut rng = Lcg(7);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n.min(total) {
        let index = rng.below(total);
        if !seen.insert(index) {
            continue;
        }
        let s = SUBJECTS[index % 20];
        let v = VERBS[(index / 20) % 20];
        let o = OBJECTS[(index / 400) % 20];
        let t = SETTINGS[(index / 8000) % 20];
        out.push(format!("{s} {v} {o} {t}."));
    }
    out
}

#[allow(dead_code)]
const _: () = assert!(EMBEDDING_DIMENSIONS == 384);
