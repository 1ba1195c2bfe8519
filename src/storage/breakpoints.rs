//! Breakpoints as rows: the reads (every breakpoint, one by id) and the row a new one is written as. The
//! writes themselves go through the writer (`WriteOp::InsertBreakpoint`, `WriteOp::DeleteBreakpoint`; a
//! task's deletion removes its breakpoints in the same commit).

use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};

use super::entities::breakpoint;
use super::{Storage, StorageError};
use crate::domain::{
    AgentKind, BreakOn, Breakpoint, BreakpointId, BreakpointSpec, Condition, TaskId,
};

impl Storage {
    /// Every stored breakpoint, oldest first. A row that does not parse (edited by hand, or written by a
    /// later version) is left out with a warning naming its id: it cannot match anything here, and
    /// `DELETE /api/v1/breakpoints/{id}` still removes it.
    pub async fn breakpoints(&self) -> Result<Vec<Breakpoint>, StorageError> {
        let rows = breakpoint::Entity::find()
            .order_by_asc(breakpoint::Column::CreatedAt)
            .order_by_asc(breakpoint::Column::Id)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read breakpoints"))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let id = row.id.clone();
                match from_row(row) {
                    Ok(breakpoint) => Some(breakpoint),
                    Err(error) => {
                        tracing::warn!(breakpoint = %id, %error, "a stored breakpoint does not parse and is ignored");
                        None
                    }
                }
            })
            .collect())
    }

    /// The stored breakpoint `id`, if there is one.
    pub async fn breakpoint(&self, id: BreakpointId) -> Result<Option<Breakpoint>, StorageError> {
        breakpoint::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read breakpoint"))?
            .map(from_row)
            .transpose()
    }
}

/// The row `breakpoint` is stored as.
pub(super) fn row(breakpoint: &Breakpoint) -> breakpoint::ActiveModel {
    let spec = &breakpoint.spec;
    breakpoint::ActiveModel {
        id: Set(breakpoint.id.to_string()),
        on: Set(spec.on.as_str().to_owned()),
        agent: Set(spec.agent.map(|agent| agent.as_str().to_owned())),
        kind: Set(spec.kind.clone()),
        tool: Set(spec.tool.clone()),
        step: Set(spec.step),
        purpose: Set(spec.purpose.clone()),
        when: Set(spec.when.as_ref().map(Condition::to_string)),
        task_id: Set(spec.task_id.map(|id| id.to_string())),
        created_at: Set(breakpoint.created_at),
    }
}

/// Columns of a breakpoint row (for the writer's multi-row inserts).
pub(super) const COLUMNS: usize = 10;

/// The breakpoint a row holds.
fn from_row(row: breakpoint::Model) -> Result<Breakpoint, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        what: "breakpoint",
        detail: format!("{}: {detail}", row.id),
    };
    let id = row
        .id
        .parse::<BreakpointId>()
        .map_err(|e| corrupt(format!("id: {e}")))?;
    let on = row
        .on
        .parse::<BreakOn>()
        .map_err(|e| corrupt(format!("{e}")))?;
    let agent = row
        .agent
        .as_deref()
        .map(str::parse::<AgentKind>)
        .transpose()
        .map_err(|e| corrupt(format!("{e}")))?;
    let when = row
        .when
        .as_deref()
        .map(Condition::parse)
        .transpose()
        .map_err(|e| corrupt(format!("when: {e}")))?;
    let task_id = row
        .task_id
        .as_deref()
        .map(str::parse::<TaskId>)
        .transpose()
        .map_err(|e| corrupt(format!("task_id: {e}")))?;
    Ok(Breakpoint {
        id,
        spec: BreakpointSpec {
            on,
            agent,
            kind: row.kind.clone(),
            tool: row.tool.clone(),
            step: row.step,
            purpose: row.purpose.clone(),
            when,
            task_id,
        },
        created_at: row.created_at,
    })
}
