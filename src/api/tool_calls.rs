//! `/api/v1/tasks/{id}/tool-calls/{call_id}/replay`: re-runs a recorded tool call with the same arguments
//! and the same files (the workspace rebuilt as it was at that call) and returns the new result beside the
//! recorded one, marked same or different (`Core::replay_tool_call`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::error::{parse_task_id, ApiError};
use crate::service::tool_replay::MAX_CALL_ID_CHARS;
use crate::service::Core;

/// The query of a replay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// The `seq` of the recorded `tool.called` event, when a call id recurs (a resumed task ran a call
    /// again); default: the last call of that id.
    seq: Option<i64>,
}

/// Checks a call id from the path: 1..=[`MAX_CALL_ID_CHARS`] characters of letters, digits, `.`, `_`,
/// `-` and `:` (the ids Troupe gives its calls, such as `test.1.r2` or `work.2.read1`).
fn check_call_id(call_id: &str) -> Result<(), ApiError> {
    let chars = call_id.chars().count();
    let plain = call_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if chars == 0 || chars > MAX_CALL_ID_CHARS || !plain {
        return Err(ApiError::InvalidCallId(
            call_id.chars().take(MAX_CALL_ID_CHARS).collect(),
        ));
    }
    Ok(())
}

/// `POST /api/v1/tasks/{id}/tool-calls/{call_id}/replay[?seq=N]`: `{call_id, seq, tool, arguments,
/// workspace, recorded, replayed, duration_seconds, same, differences, logged}`.
pub async fn replay_tool_call(
    core: web::Data<Core>,
    path: web::Path<(String, String)>,
    query: web::Query<ReplayQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, call_id) = path.into_inner();
    let id = parse_task_id(&id)?;
    check_call_id(&call_id)?;
    if query.seq.is_some_and(|seq| seq < 1) {
        return Err(ApiError::InvalidQuery("seq must be at least 1".into()));
    }
    let replayed = core.replay_tool_call(id, &call_id, query.seq).await?;
    Ok(HttpResponse::Ok().json(replayed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_plain_and_bounded() {
        for good in [
            "test.1",
            "work.1.r2.write1",
            "test.1.r2.stub",
            "work.2.a2",
            "x",
        ] {
            assert!(check_call_id(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_CALL_ID_CHARS + 1);
        for bad in ["", "a b", "../x", "a/b", "é", long.as_str()] {
            assert!(check_call_id(bad).is_err(), "{bad}");
        }
    }
}
