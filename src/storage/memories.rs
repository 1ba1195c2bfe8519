//! Memories: their rows ([`MemoryDraft`], [`NewMemory`], [`MemoryRecord`], [`MemoryHit`], [`SearchFilter`];
//! `memory` uses them as its vocabulary), inserting them with their embeddings, searching by cosine
//! similarity, reading a task's.
//!
//! PostgreSQL orders by pgvector's cosine distance (`<=>`), which the HNSW index serves; `hnsw.ef_search` is
//! set per search (higher: better recall, slower). SQLite keeps embeddings as BLOBs of little-endian f32 and
//! scans them exactly: first ids and embeddings only, then the rows of the best `k`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, Statement, TransactionTrait,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::entities::memory;
use super::statement::Sql;
use super::{Storage, StorageError};
use crate::domain::{AgentKind, MemoryKind, TaskId, EMBEDDING_DIMENSIONS};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Only those stored before this moment: what a replay or fork sees of memory is what its source saw
    /// (see `Memory::set_view`).
    pub created_before: Option<DateTime<Utc>>,
}

/// Cosine similarity of two unit vectors (their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The columns of a memory row besides its embedding.
const COLUMNS: &str =
    "id, kind, content, detail, task_id, agent, step_idx, uses, successes, created_at";

impl Storage {
    /// The `k` memories closest to `embedding` (unit length) that `filter` allows, best first.
    pub async fn search_memories(
        &self,
        embedding: &[f32],
        filter: &SearchFilter,
        k: usize,
        ef_search: u32,
    ) -> Result<Vec<MemoryHit>, StorageError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        match self.db.get_database_backend() {
            DatabaseBackend::Postgres => {
                self.search_postgres(embedding, filter, k, ef_search).await
            }
            _ => self.search_scan(embedding, filter, k).await,
        }
    }

    async fn search_postgres(
        &self,
        embedding: &[f32],
        filter: &SearchFilter,
        k: usize,
        ef_search: u32,
    ) -> Result<Vec<MemoryHit>, StorageError> {
        let mut sql = Sql::new(DatabaseBackend::Postgres);
        let vector = sql.bind(pgvector::Vector::from(embedding.to_vec()));
        let conditions = sql.conditions(filter);
        let limit = sql.bind(i64::try_from(k).unwrap_or(i64::MAX));
        let text = format!(
            "SELECT {COLUMNS}, (1 - (embedding <=> {vector}))::float8 AS score FROM memories{conditions} \
             ORDER BY embedding <=> {vector} LIMIT {limit}"
        );
        let txn = self
            .db
            .begin()
            .await
            .map_err(StorageError::query("begin memory search"))?;
        // SET LOCAL takes no bind parameters; the value is a number from the settings.
        txn.execute_unprepared(&format!(
            "SET LOCAL hnsw.ef_search = {}",
            Ord::max(ef_search, 1)
        ))
        .await
        .map_err(StorageError::query("set hnsw.ef_search"))?;
        let rows = ScoredRow::find_by_statement(sql.statement(text))
            .all(&txn)
            .await
            .map_err(StorageError::query("search memories"))?;
        txn.commit()
            .await
            .map_err(StorageError::query("end memory search"))?;
        rows.into_iter()
            .map(|row| {
                let score = row.score as f32;
                Ok(MemoryHit {
                    memory: record(row.row)?,
                    score,
                })
            })
            .collect()
    }

    async fn search_scan(
        &self,
        embedding: &[f32],
        filter: &SearchFilter,
        k: usize,
    ) -> Result<Vec<MemoryHit>, StorageError> {
        let mut sql = Sql::new(DatabaseBackend::Sqlite);
        let conditions = sql.conditions(filter);
        let text = format!("SELECT id, embedding FROM memories{conditions}");
        let rows = EmbeddingRow::find_by_statement(sql.statement(text))
            .all(&self.db)
            .await
            .map_err(StorageError::query("scan memories"))?;
        // The best k by a min-heap of size k.
        let mut best: BinaryHeap<Scored> = BinaryHeap::with_capacity(k + 1);
        for row in rows {
            let stored = decode(&row.embedding).ok_or_else(|| StorageError::Corrupt {
                what: "memory embedding",
                detail: format!("memory {} has {} bytes", row.id, row.embedding.len()),
            })?;
            let score = cosine(embedding, &stored);
            best.push(Scored { score, id: row.id });
            if best.len() > k {
                best.pop();
            }
        }
        let ranked = best.into_sorted_vec();
        let ids: Vec<String> = ranked.iter().map(|scored| scored.id.clone()).collect();
        let mut rows = memory::Entity::find()
            .filter(memory::Column::Id.is_in(ids))
            .all(&self.db)
            .await
            .map_err(StorageError::query("read memories"))?;
        let mut hits = Vec::with_capacity(ranked.len());
        for scored in ranked {
            if let Some(position) = rows.iter().position(|row| row.id == scored.id) {
                let row = rows.swap_remove(position);
                hits.push(MemoryHit {
                    memory: record(row)?,
                    score: scored.score,
                });
            }
        }
        Ok(hits)
    }

    /// The memories task `id` wrote, oldest first.
    pub async fn task_memories(&self, id: TaskId) -> Result<Vec<MemoryRecord>, StorageError> {
        memory::Entity::find()
            .filter(memory::Column::TaskId.eq(id.to_string()))
            .order_by_asc(memory::Column::CreatedAt)
            .order_by_asc(memory::Column::Id)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read task memories"))?
            .into_iter()
            .map(record)
            .collect()
    }

    /// One memory by id.
    pub async fn memory(&self, id: &str) -> Result<Option<MemoryRecord>, StorageError> {
        memory::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read memory"))?
            .map(record)
            .transpose()
    }

    /// How many memories are stored.
    pub async fn memory_count(&self) -> Result<u64, StorageError> {
        use sea_orm::PaginatorTrait;
        memory::Entity::find()
            .count(&self.db)
            .await
            .map_err(StorageError::query("count memories"))
    }
}

/// Inserts `memories` in `txn` (part of the writer's batch).
pub(crate) async fn insert_memories<C: ConnectionTrait>(
    txn: &C,
    memories: &[NewMemory],
) -> Result<(), StorageError> {
    let backend = txn.get_database_backend();
    for new in memories {
        if new.embedding.len() != EMBEDDING_DIMENSIONS {
            return Err(StorageError::Corrupt {
                what: "memory embedding",
                detail: format!(
                    "{} dimensions, expected {EMBEDDING_DIMENSIONS}",
                    new.embedding.len()
                ),
            });
        }
        let mut sql = Sql::new(backend);
        let values = [
            sql.bind(new.id.to_string()),
            sql.bind(new.draft.kind.as_str()),
            sql.bind(new.draft.content.clone()),
            sql.bind(new.draft.detail.clone()),
            sql.bind(new.task_id.map(|id| id.to_string())),
            sql.bind(Some(new.draft.agent.as_str().to_owned())),
            sql.bind(new.draft.step),
            sql.bind(0_i32),
            sql.bind(0_i32),
            sql.bind(new.created_at),
            match backend {
                DatabaseBackend::Postgres => {
                    sql.bind(pgvector::Vector::from(new.embedding.clone()))
                }
                _ => sql.bind(encode(&new.embedding)),
            },
        ];
        let text = format!(
            "INSERT INTO memories ({COLUMNS}, embedding) VALUES ({})",
            values.join(", ")
        );
        txn.execute_raw(sql.statement(text))
            .await
            .map_err(StorageError::query("insert memory"))?;
    }
    Ok(())
}

/// Counts one more use of each memory in `ids`.
pub(crate) async fn mark_used<C: ConnectionTrait>(
    txn: &C,
    ids: &[String],
) -> Result<(), StorageError> {
    if ids.is_empty() {
        return Ok(());
    }
    memory::Entity::update_many()
        .col_expr(
            memory::Column::Uses,
            Expr::col(memory::Column::Uses).add(Expr::val(1)),
        )
        .filter(memory::Column::Id.is_in(ids.iter().cloned()))
        .exec(txn)
        .await
        .map_err(StorageError::query("count memory use"))?;
    Ok(())
}

/// Counts one more success of the memory `id` (a pattern whose fix worked again).
pub(crate) async fn mark_succeeded<C: ConnectionTrait>(
    txn: &C,
    id: &str,
) -> Result<(), StorageError> {
    memory::Entity::update_many()
        .col_expr(
            memory::Column::Successes,
            Expr::col(memory::Column::Successes).add(Expr::val(1)),
        )
        .filter(memory::Column::Id.eq(id.to_owned()))
        .exec(txn)
        .await
        .map_err(StorageError::query("count pattern success"))?;
    Ok(())
}

impl Sql {
    /// The WHERE clause of `filter` (empty when it allows everything).
    fn conditions(&mut self, filter: &SearchFilter) -> String {
        let mut clauses = Vec::new();
        if !filter.kinds.is_empty() {
            let list: Vec<String> = filter
                .kinds
                .iter()
                .map(|kind| self.bind(kind.as_str()))
                .collect();
            clauses.push(format!("kind IN ({})", list.join(", ")));
        }
        if let Some(agent) = filter.agent {
            let placeholder = self.bind(agent.as_str());
            clauses.push(format!("agent = {placeholder}"));
        }
        if let Some(before) = filter.created_before {
            // Bound as the rows were written (the same encoding), so SQLite's text comparison orders them.
            let placeholder = self.bind(before);
            clauses.push(format!("created_at < {placeholder}"));
        }
        if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        }
    }

    fn statement(self, text: String) -> Statement {
        Statement::from_sql_and_values(self.backend, text, self.values)
    }
}

#[derive(FromQueryResult)]
struct ScoredRow {
    #[sea_orm(nested)]
    row: memory::Model,
    score: f64,
}

#[derive(FromQueryResult)]
struct EmbeddingRow {
    id: String,
    embedding: Vec<u8>,
}

/// A scan candidate, ordered so that the heap's top is the worst kept.
struct Scored {
    score: f32,
    id: String,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: a higher score is "less", so the max-heap's top is the lowest score.
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.id.cmp(&other.id))
    }
}

/// A row as a record.
fn record(row: memory::Model) -> Result<MemoryRecord, StorageError> {
    Ok(MemoryRecord {
        kind: row.kind.parse().map_err(|e| StorageError::Corrupt {
            what: "memory",
            detail: format!("{e}"),
        })?,
        id: row.id,
        content: row.content,
        detail: row.detail,
        task_id: row.task_id,
        agent: row.agent,
        step: row.step_idx,
        uses: row.uses,
        successes: row.successes,
        created_at: row.created_at,
    })
}

/// An embedding as SQLite stores it: little-endian f32s.
fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`encode`]; `None` unless it holds exactly [`EMBEDDING_DIMENSIONS`] values.
fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() != EMBEDDING_DIMENSIONS * 4 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_round_trip_through_their_blob() {
        let vector: Vec<f32> = (0..EMBEDDING_DIMENSIONS)
            .map(|i| i as f32 / 7.0 - 3.0)
            .collect();
        assert_eq!(decode(&encode(&vector)), Some(vector));
        assert_eq!(decode(&[0, 1, 2]), None);
    }

    #[test]
    fn the_scan_heap_keeps_the_best() {
        let mut heap = BinaryHeap::new();
        for (score, id) in [(0.1, "a"), (0.9, "b"), (0.5, "c"), (0.7, "d")] {
            heap.push(Scored {
                score,
                id: id.into(),
            });
            if heap.len() > 2 {
                heap.pop();
            }
        }
        let ids: Vec<_> = heap.into_sorted_vec().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["b", "d"]);
    }
}
