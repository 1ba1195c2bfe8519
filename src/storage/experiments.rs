//! Experiments as rows: the reads (one by id, the latest) and the row an experiment is written as. The writes
//! go through the writer (`WriteOp::PutExperiment`: the whole row, inserted or replaced).

use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder, QuerySelect};

use super::entities::experiment;
use super::{Storage, StorageError};
use crate::domain::experiment::{Experiment, ExperimentId};

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
    })
}
