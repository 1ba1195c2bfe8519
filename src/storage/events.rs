//! The event log's rows: reads, the rows of new events, and a task's last `seq`.
//!
//! Most rows are one event. The streamed pieces of a model call are stored coalesced ([`TokenRow`]): one
//! `llm.token` row spans `seq..=seq_end` and its `data` is `{purpose, pieces: [{text, p?, top?,
//! offset_us?}, ...]}` (`top`: at most [`TOP_ALTERNATIVES`] `{text, p}`; `offset_us`: microseconds
//! after the row's `at`), so a row holds a bounded amount. Every read here expands such a row back into the
//! `llm.token` events it holds, each `{purpose, text, p?, top?}` with its own `seq` and `at`, exactly as they
//! were broadcast; rows written before coalescing (and any token the writer could not coalesce) are one
//! event each and read as they are.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, ExprTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entities::event;
use super::records::PendingEvent;
use super::{Storage, StorageError};
use crate::domain::limits::{MAX_ALTERNATIVE_CHARS, TOP_ALTERNATIVES};
use crate::domain::{AgentKind, Event, EventKind, TaskId};

/// Most pieces one coalesced token row holds: a reader looking for `seq > after` starts its scan this far
/// before `after`, so a row straddling `after` is found through the primary key's range.
pub const MAX_ROW_PIECES: usize = 64;

impl Storage {
    /// Task `id`'s events with `seq > after`, in order.
    pub async fn events_after(&self, id: TaskId, after: i64) -> Result<Vec<Event>, StorageError> {
        Ok(self.events_page(id, after, None, &[]).await?.0)
    }

    /// Task `id`'s events with `seq > after`, in order, leaving out the kinds in `exclude` (in SQL), at most
    /// `limit` of them when given (counted in events: a coalesced row is as many as it has pieces). The
    /// second value is the last returned event's `seq` when more matching events are stored after it (the
    /// next page's `after`), else `None`.
    pub async fn events_page(
        &self,
        id: TaskId,
        after: i64,
        limit: Option<u64>,
        exclude: &[EventKind],
    ) -> Result<(Vec<Event>, Option<i64>), StorageError> {
        let mut select = event::Entity::find()
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(reaches_past(after))
            .order_by_asc(event::Column::Seq);
        if !exclude.is_empty() {
            select = select.filter(
                event::Column::Kind.is_not_in(exclude.iter().map(|kind| kind.as_str().to_owned())),
            );
        }
        if let Some(limit) = limit {
            // Every row holds at least one event past `after`: one row more than the events asked for says
            // whether another page exists.
            select = select.limit(limit.saturating_add(1));
        }
        let rows = select
            .all(&self.db)
            .await
            .map_err(StorageError::query("read events"))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            expand_row(id, row, after, &mut events)?;
            if limit.is_some_and(|limit| events.len() as u64 > limit) {
                break;
            }
        }
        let more = limit.is_some_and(|limit| events.len() as u64 > limit);
        if let Some(limit) = limit {
            events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        let next = more.then(|| events.last().map(|event| event.seq)).flatten();
        Ok((events, next))
    }

    /// The `llm.token` events of task `id`'s model call `purpose`, in order, as `(seq, data)` only (`data`
    /// as broadcast: `{purpose, text, p?, top?}`): the fewest columns, and the purpose picked in SQL (a task
    /// can stream thousands of tokens over many calls).
    pub async fn token_pieces(
        &self,
        id: TaskId,
        purpose: &str,
    ) -> Result<Vec<(i64, serde_json::Value)>, StorageError> {
        // The JSON path differs by backend; the purpose is bound, never spliced into the SQL.
        let of_purpose = match self.db.get_database_backend() {
            DbBackend::Postgres => Expr::cust_with_values("data->>'purpose' = $1", [purpose]),
            _ => Expr::cust_with_values("json_extract(data, '$.purpose') = ?", [purpose]),
        };
        let rows = event::Entity::find()
            .select_only()
            .column(event::Column::Seq)
            .column(event::Column::SeqEnd)
            .column(event::Column::Data)
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(event::Column::Kind.eq(EventKind::LlmToken.as_str()))
            .filter(of_purpose)
            .order_by_asc(event::Column::Seq)
            .into_tuple::<(i64, Option<i64>, serde_json::Value)>()
            .all(&self.db)
            .await
            .map_err(StorageError::query("read token events"))?;
        let mut pieces = Vec::with_capacity(rows.len());
        for row in rows {
            expand_pieces(row, &mut pieces)?;
        }
        Ok(pieces)
    }

    /// Task `id`'s events of kind `kind` with `seq` below `before` (all when `None`), in order, at most
    /// `limit` (the first ones) when given. Not for `llm.token` (whose rows are coalesced:
    /// [`Storage::token_pieces`]).
    pub async fn events_of_kind(
        &self,
        id: TaskId,
        kind: EventKind,
        before: Option<i64>,
        limit: Option<u64>,
    ) -> Result<Vec<Event>, StorageError> {
        let mut select = event::Entity::find()
            .filter(event::Column::TaskId.eq(id.to_string()))
            .filter(event::Column::Kind.eq(kind.as_str()))
            .order_by_asc(event::Column::Seq);
        if let Some(before) = before {
            select = select.filter(event::Column::Seq.lt(before));
        }
        if let Some(limit) = limit {
            select = select.limit(limit);
        }
        let rows = select
            .all(&self.db)
            .await
            .map_err(StorageError::query("read events of a kind"))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            expand_row(id, row, i64::MIN, &mut events)?;
        }
        Ok(events)
    }
}

/// Appends the pieces of a token row `(seq, seq_end, data)` to `pieces` as `(seq, data)`.
fn expand_pieces(
    (seq, seq_end, data): (i64, Option<i64>, serde_json::Value),
    pieces: &mut Vec<(i64, serde_json::Value)>,
) -> Result<(), StorageError> {
    match seq_end {
        Some(seq_end) => {
            let row = TokenRow::parse(seq, seq_end, &data)?;
            pieces.extend(
                row.pieces
                    .iter()
                    .enumerate()
                    .map(|(n, piece)| (seq + n as i64, row.event_data(piece))),
            );
        }
        None => pieces.push((seq, data)),
    }
    Ok(())
}

/// Rows holding an event with `seq > after`: a row that starts after it, or a coalesced row that reaches
/// past it (such a row starts at most [`MAX_ROW_PIECES`] - 1 before, so the key's range serves both).
fn reaches_past(after: i64) -> sea_orm::sea_query::SimpleExpr {
    let earliest = after.saturating_sub(MAX_ROW_PIECES as i64 - 1);
    event::Column::Seq.gt(after).or(event::Column::Seq
        .gt(earliest)
        .and(event::Column::SeqEnd.gt(after)))
}

/// Appends the events of `row` with `seq > after` to `events`.
pub(super) fn expand_row(
    id: TaskId,
    row: event::Model,
    after: i64,
    events: &mut Vec<Event>,
) -> Result<(), StorageError> {
    let Some(seq_end) = row.seq_end else {
        if row.seq > after {
            events.push(event_of_row(id, row)?);
        }
        return Ok(());
    };
    let tokens = TokenRow::parse(row.seq, seq_end, &row.data)?;
    let agent = parse_agent(row.agent.as_deref())?;
    for (n, piece) in tokens.pieces.iter().enumerate() {
        let seq = row.seq + n as i64;
        if seq <= after {
            continue;
        }
        events.push(Event {
            seq,
            task_id: id,
            at: row.at + chrono::Duration::microseconds(piece.offset_us),
            kind: EventKind::LlmToken,
            agent,
            trace_id: row.trace_id.clone(),
            span_id: row.span_id.clone(),
            data: tokens.event_data(piece),
        });
    }
    Ok(())
}

/// The pieces of a coalesced token row, as read.
struct TokenRow<'a> {
    purpose: &'a serde_json::Value,
    pieces: Vec<Piece<'a>>,
}

/// One stored piece.
struct Piece<'a> {
    text: &'a serde_json::Value,
    p: Option<&'a serde_json::Value>,
    top: Option<&'a serde_json::Value>,
    offset_us: i64,
}

impl<'a> TokenRow<'a> {
    fn parse(seq: i64, seq_end: i64, data: &'a serde_json::Value) -> Result<Self, StorageError> {
        let corrupt = |detail: &str| StorageError::Corrupt {
            what: "token row",
            detail: format!("row {seq}..={seq_end}: {detail}"),
        };
        let purpose = data.get("purpose").ok_or_else(|| corrupt("no purpose"))?;
        let stored = data
            .get("pieces")
            .and_then(|pieces| pieces.as_array())
            .ok_or_else(|| corrupt("no pieces"))?;
        if i64::try_from(stored.len()).ok() != seq_end.checked_sub(seq).map(|span| span + 1) {
            return Err(corrupt(&format!("{} pieces", stored.len())));
        }
        let pieces = stored
            .iter()
            .map(|piece| {
                Ok(Piece {
                    text: piece
                        .get("text")
                        .ok_or_else(|| corrupt("a piece has no text"))?,
                    p: piece.get("p"),
                    top: piece.get("top"),
                    offset_us: piece
                        .get("offset_us")
                        .and_then(|offset| offset.as_i64())
                        .unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(TokenRow { purpose, pieces })
    }

    /// A piece's event data as it was broadcast.
    fn event_data(&self, piece: &Piece<'_>) -> serde_json::Value {
        let mut data = serde_json::Map::with_capacity(4);
        data.insert("purpose".into(), self.purpose.clone());
        data.insert("text".into(), piece.text.clone());
        if let Some(p) = piece.p {
            data.insert("p".into(), p.clone());
        }
        if let Some(top) = piece.top {
            data.insert("top".into(), top.clone());
        }
        serde_json::Value::Object(data)
    }
}

/// Whether `pending` is a streamed piece: an `llm.token` event whose data is exactly `{purpose, text, p?,
/// top?}` (strings, a number for `p`, and for `top` at most [`TOP_ALTERNATIVES`] objects `{text, p}`
/// with texts of at most [`MAX_ALTERNATIVE_CHARS`]). Pieces are stored coalesced; any other shape is stored
/// as its own row, so a coalesced row stays bounded.
pub(super) fn is_piece(pending: &PendingEvent) -> bool {
    if pending.kind != EventKind::LlmToken {
        return false;
    }
    let Some(data) = pending.data.as_object() else {
        return false;
    };
    data.get("purpose")
        .is_some_and(|purpose| purpose.is_string())
        && data.get("text").is_some_and(|text| text.is_string())
        && data.iter().all(|(key, value)| match key.as_str() {
            "purpose" | "text" => true,
            "p" => value.is_number(),
            "top" => is_alternatives(value),
            _ => false,
        })
}

/// Whether `value` is a bounded list of alternatives `[{text, p}]`.
fn is_alternatives(value: &serde_json::Value) -> bool {
    value.as_array().is_some_and(|alternatives| {
        alternatives.len() <= TOP_ALTERNATIVES
            && alternatives.iter().all(|alternative| {
                alternative.as_object().is_some_and(|alternative| {
                    alternative.len() == 2
                        && alternative
                            .get("text")
                            .and_then(|t| t.as_str())
                            .is_some_and(|text| text.chars().count() <= MAX_ALTERNATIVE_CHARS)
                        && alternative.get("p").is_some_and(|p| p.is_number())
                })
            })
    })
}

/// The stored row of consecutive token events `pieces` (one task, one purpose, agent, trace and span; `seq`
/// consecutive, `at` in microseconds), as built by the writer.
pub(super) fn token_row(pieces: &[Event]) -> Option<event::ActiveModel> {
    let first = pieces.first()?;
    let last = pieces.last()?;
    let stored: Vec<serde_json::Value> = pieces
        .iter()
        .map(|piece| {
            let mut stored = serde_json::Map::with_capacity(4);
            if let Some(text) = piece.data.get("text") {
                stored.insert("text".into(), text.clone());
            }
            if let Some(p) = piece.data.get("p") {
                stored.insert("p".into(), p.clone());
            }
            if let Some(top) = piece.data.get("top") {
                stored.insert("top".into(), top.clone());
            }
            let offset = offset_us(first.at, piece.at);
            if offset != 0 {
                stored.insert("offset_us".into(), offset.into());
            }
            serde_json::Value::Object(stored)
        })
        .collect();
    let purpose = first.data.get("purpose").cloned().unwrap_or_default();
    Some(event::ActiveModel {
        task_id: Set(first.task_id.to_string()),
        seq: Set(first.seq),
        at: Set(first.at),
        kind: Set(EventKind::LlmToken.as_str().to_owned()),
        agent: Set(first.agent.map(|agent| agent.as_str().to_owned())),
        trace_id: Set(first.trace_id.clone()),
        span_id: Set(first.span_id.clone()),
        data: Set(serde_json::json!({ "purpose": purpose, "pieces": stored })),
        seq_end: Set(Some(last.seq)),
    })
}

fn offset_us(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_microseconds().unwrap_or(0)
}

fn parse_agent(agent: Option<&str>) -> Result<Option<AgentKind>, StorageError> {
    agent
        .map(|agent| {
            agent.parse().map_err(|e| StorageError::Corrupt {
                what: "event",
                detail: format!("{e}"),
            })
        })
        .transpose()
}

/// An event as read from its row (a row that is one event).
pub(super) fn event_of_row(id: TaskId, row: event::Model) -> Result<Event, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        what: "event",
        detail,
    };
    Ok(Event {
        seq: row.seq,
        task_id: id,
        at: row.at,
        kind: row.kind.parse().map_err(|e| corrupt(format!("{e}")))?,
        agent: parse_agent(row.agent.as_deref())?,
        trace_id: row.trace_id,
        span_id: row.span_id,
        data: row.data,
    })
}

/// The last `seq` of task `task_id`'s log (`None`: no events yet; a coalesced row counts its last piece),
/// read inside `db` (a transaction that is about to append).
pub(super) async fn last_seq(
    db: &impl ConnectionTrait,
    task_id: TaskId,
) -> Result<Option<i64>, StorageError> {
    Ok(event::Entity::find()
        .select_only()
        .column_as(Expr::cust("MAX(COALESCE(seq_end, seq))"), "max")
        .filter(event::Column::TaskId.eq(task_id.to_string()))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await
        .map_err(StorageError::query("read last event"))?
        .flatten())
}
