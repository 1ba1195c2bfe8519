//! Experiments as rows: the reads (one by id, the latest, the running ones whose owner died), the claim of an
//! orphan (compare-and-set on its owner, as for tasks in `leases.rs`) and the row an experiment is written
//! as. The other writes go through the writer (`WriteOp::PutExperiment`: the whole row, inserted or replaced).

use std::time::Duration;

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::experiment;
use super::leases::is_orphaned;
use super::{Storage, StorageError};
use crate::domain::experiment::{Experiment, ExperimentId, ExperimentStatus};

impl Storage {
    /// Experiment `id`, if there is one.
    pub async fn experiment(&self, id: ExperimentId) -> Result<Option<Experiment>, StorageError> {
        experiment::Entity::find_by_id(id.to_string())
            .one(&self.db)
            .await
            .map_err(StorageError::query("read experiment"))?
            .map(from_row)
            .transpose()
    }

    /// The latest `limit` experiments, newest first.
    pub async fn experiments(&self, limit: u64) -> Result<Vec<Experiment>, StorageError> {
        experiment::Entity::find()
            .order_by_desc(experiment::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(StorageError::query("read experiments"))?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// The running experiments whose owner is gone (no owner, an unknown lease, or a heartbeat older than
    /// `lease`; see [`is_orphaned`]), oldest first. A row that does not parse is skipped (logged).
    pub async fn orphaned_experiments(
        &self,
        me: &str,
        lease: Duration,
    ) -> Result<Vec<Experiment>, StorageError> {
        let heartbeats = self.lease_heartbeats().await?;
        let now = Utc::now();
        let rows = experiment::Entity::find()
            .filter(experiment::Column::Status.eq(ExperimentStatus::Running.as_str()))
            .order_by_asc(experiment::Column::Id)
            .all(&self.db)
            .await
            .map_err(StorageError::query("find running experiments"))?;
        let mut orphans = Vec::new();
        for row in rows {
            if !is_orphaned(row.owner.as_deref(), me, &heartbeats, now, lease) {
                continue;
            }
            let id = row.id.clone();
            match from_row(row) {
                Ok(experiment) => orphans.push(experiment),
                Err(error) => {
                    tracing::warn!(experiment = %id, %error, "a running experiment's row does not parse; left alone")
                }
            }
        }
        Ok(orphans)
    }

    /// Makes `me` the owner of experiment `id` if it is still running and still owned by `expected`
    /// (compare-and-set: of two processes claiming one experiment, one wins). Whether this claim won.
    pub async fn claim_experiment(
        &self,
        id: ExperimentId,
        expected: Option<&str>,
        me: &str,
    ) -> Result<bool, StorageError> {
        let owner = match expected {
            Some(expected) => experiment::Column::Owner.eq(expected),
            None => experiment::Column::Owner.is_null(),
        };
        let claimed = experiment::Entity::update_many()
            .col_expr(experiment::Column::Owner, Expr::value(me))
            .filter(experiment::Column::Id.eq(id.to_string()))
            .filter(experiment::Column::Status.eq(ExperimentStatus::Running.as_str()))
            .filter(owner)
            .exec(&self.db)
            .await
            .map_err(StorageError::query("claim experiment"))?;
        Ok(claimed.rows_affected == 1)
    }
}

/// The row `experiment` is stored as.
pub(super) fn row(experiment: &Experiment) -> experiment::ActiveModel {
    experiment::ActiveModel {
        id: Set(experiment.id.to_string()),
        name: Set(experiment.spec.name.clone()),
        spec: Set(serde_json::to_string(&experiment.spec).unwrap_or_default()),
        runs: Set(serde_json::to_string(&experiment.runs).unwrap_or_default()),
        status: Set(experiment.status.as_str().to_owned()),
        created_at: Set(experiment.created_at),
        finished_at: Set(experiment.finished_at),
        owner: Set(experiment.owner.clone()),
    }
}

fn from_row(row: experiment::Model) -> Result<Experiment, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        what: "experiment",
        detail: format!("{}: {detail}", row.id),
    };
    Ok(Experiment {
        id: row.id.parse().map_err(|e| corrupt(format!("id: {e}")))?,
        spec: serde_json::from_str(&row.spec).map_err(|e| corrupt(format!("spec: {e}")))?,
        runs: serde_json::from_str(&row.runs).map_err(|e| corrupt(format!("runs: {e}")))?,
        status: row.status.parse().map_err(corrupt)?,
        created_at: row.created_at,
        finished_at: row.finished_at,
        owner: row.owner,
    })
}
