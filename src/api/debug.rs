//! Debug mode's task routes: `GET /api/v1/tasks/{id}/state` (what a paused task waits on and holds) and
//! `POST /api/v1/tasks/{id}/resume` (a person's action at the pause).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{parse_task_id, ApiError};
use crate::debug::Action;
use crate::service::{Core, ResumeError};

/// `GET /api/v1/tasks/{id}/state`.
pub async fn task_state(
    core: web::Data<Core>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let state = core
        .task_state(id)
        .await?
        .ok_or(ApiError::TaskNotFound(id))?;
    Ok(HttpResponse::Ok().json(state))
}

/// The body of `POST /api/v1/tasks/{id}/resume`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// `continue`, `step`, `abort` or `override`.
    pub action: String,
    /// An override of a decision: the option chosen instead (a string).
    #[serde(default, deserialize_with = "present")]
    pub chosen: Option<Value>,
    /// An override of a step: its new instruction (a string).
    #[serde(default, deserialize_with = "present")]
    pub instruction: Option<Value>,
    /// An override of a tool call: its new arguments (an object, checked against the tool's schema).
    #[serde(default, deserialize_with = "present")]
    pub arguments: Option<Value>,
}

/// A field that is there, `null` included (absent is `None` through `default`): `"chosen": null` is a
/// change given, of the wrong type, not a change left out.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl Resume {
    fn action(self) -> Result<Action, ApiError> {
        let change: Vec<(&str, Value)> = [
            ("chosen", self.chosen),
            ("instruction", self.instruction),
            ("arguments", self.arguments),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect();
        for (name, value) in &change {
            let fits = if *name == "arguments" {
                value.is_object()
            } else {
                value.is_string()
            };
            if !fits {
                let wanted = if *name == "arguments" {
                    "an object"
                } else {
                    "a string"
                };
                return Err(ApiError::InvalidBody(format!("'{name}' must be {wanted}")));
            }
        }
        let plain = |action| {
            if let Some((name, _)) = change.first() {
                return Err(ApiError::InvalidBody(format!(
                    "'{name}' goes with \"action\": \"override\", not \"{}\"",
                    self.action
                )));
            }
            Ok(action)
        };
        match self.action.as_str() {
            "continue" => plain(Action::Continue),
            "step" => plain(Action::Step),
            "abort" => plain(Action::Abort),
            "override" => match change.as_slice() {
                [(name, value)] => Ok(Action::Override(json!({ *name: value }))),
                [] => Err(ApiError::InvalidBody(
                    "an override needs one of 'chosen' (a decision's option), 'instruction' (a step's) \
                     or 'arguments' (a tool call's)"
                        .to_owned(),
                )),
                _ => Err(ApiError::InvalidBody(
                    "an override changes one thing: give only one of 'chosen', 'instruction', 'arguments'"
                        .to_owned(),
                )),
            },
            other => Err(ApiError::InvalidBody(format!(
                "unknown action '{}': use continue, step, abort or override",
                crate::domain::excerpt(other)
            ))),
        }
    }
}

/// `POST /api/v1/tasks/{id}/resume`: 200 with the action taken; 409 when the task is not paused at a
/// breakpoint; 400 for an override that does not fit what is pending.
pub async fn resume_task(
    core: web::Data<Core>,
    path: web::Path<String>,
    body: web::Json<crate::domain::json_types::Object<Resume>>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_task_id(&path)?;
    let action = body.into_inner().into_inner().action()?;
    let name = action.as_str();
    core.resume_task(id, action).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "action": name })))
}

impl From<ResumeError> for ApiError {
    fn from(error: ResumeError) -> Self {
        match error {
            ResumeError::NotFound(id) => ApiError::TaskNotFound(id),
            ResumeError::NotPaused { id, status } => ApiError::NotPaused { id, status },
            ResumeError::InvalidOverride(why) => ApiError::InvalidBody(why),
            ResumeError::HeldElsewhere(why) => ApiError::HeldElsewhere(why),
            ResumeError::Storage(error) => ApiError::from(error),
        }
    }
}
