//! A function's life after deploy: its versions, rollback to an earlier one, pause and resume.
//!
//! Every deploy, settings change and rollback makes a new version (a monotonic number with the
//! component digest and the settings). A rollback makes an earlier version's code and settings
//! current again as the next version, the way Heroku releases do, so the history only grows and
//! says what happened. Pausing is not a version: a paused function accepts jobs and starts none.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::functions::function_json;
use super::{ApiError, AppState};
use crate::job::rfc3339;
use crate::store::RollbackError;

/// `GET /v1/functions/{name}/versions`: every version, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "Every version, oldest first", body = super::openapi::Versions)))]
pub(crate) async fn versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = state
        .store
        .function(&name)
        .await?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    let versions: Vec<Value> = state
        .store
        .versions(&name)
        .await?
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "change": v.change,
                "changes": v.changes,
                "digest": format!("sha256:{}", v.digest),
                "size": v.size,
                "created_at": rfc3339(v.deployed_at),
                "current": v.version == current.version,
                "settings": crate::manifest::Manifest::from_settings(&v.settings),
                "subscriptions": v.subscriptions,
                "then": v.then,
            })
        })
        .collect();
    Ok(Json(json!({
        "function": name,
        "current": current.version,
        "versions": versions,
    })))
}

#[derive(serde::Deserialize)]
pub(crate) struct RollbackQuery {
    to: Option<u32>,
}

/// `POST /v1/functions/{name}/rollback[?to=N]` (or body `{"version": N}`): makes version N (by
/// default the one before the current) current again, code and settings together, as a new
/// version. The code is loaded from its stored compiled artifact: nothing is recompiled.
#[utoipa::path(post, path = "/v1/functions/{name}/rollback", tag = "functions",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("to" = Option<u32>, Query, description = "The version to make current again (default: the one before)")),
    request_body(content = Option<Object>, description = "Or {\"version\": N}"),
    responses((status = 200, description = "The new current version", body = super::openapi::Function),
        (status = 409, description = "No earlier version", body = super::openapi::ErrorBody)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<RollbackQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let usage = r#"name the version as ?to=N or a body {"version": N}, or send neither for the one before the current"#;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request("invalid_query", format!("{e}: {usage}")))?;
    let body = body?;
    let to = if body.is_empty() {
        query.to
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) if o.keys().all(|k| k == "version") => match o.get("version") {
                None | Some(Value::Null) => query.to,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| ApiError::bad_request("invalid_body", usage))?,
                ),
            },
            _ => return Err(ApiError::bad_request("invalid_body", usage)),
        }
    };
    let record = state.functions.rollback(&name, to).await?;
    let pending = state.store.pending_count(&name).await?;
    Ok(Json(function_json(&record, Some(pending))))
}

/// `POST /v1/functions/{name}/pause`: jobs are still accepted (queued durably); none starts.
/// Running attempts finish.
#[utoipa::path(post, path = "/v1/functions/{name}/pause", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "Paused: it starts no job", body = super::openapi::Function)))]
pub(crate) async fn pause(
    state: State<AppState>,
    name: Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, name, true).await
}

/// `POST /v1/functions/{name}/resume`: starts jobs again.
#[utoipa::path(post, path = "/v1/functions/{name}/resume", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "Resumed", body = super::openapi::Function)))]
pub(crate) async fn resume(
    state: State<AppState>,
    name: Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, name, false).await
}

async fn set_paused(
    State(state): State<AppState>,
    Path(name): Path<String>,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    let record = state.functions.set_paused(&name, paused).await?;
    let pending = state.store.pending_count(&name).await?;
    Ok(Json(function_json(&record, Some(pending))))
}

impl From<RollbackError> for ApiError {
    fn from(e: RollbackError) -> Self {
        match e {
            RollbackError::NotFound(name) => ApiError::function_not_found(&name),
            e @ RollbackError::UnknownVersion { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "version_not_found", e.to_string())
            }
            e @ (RollbackError::NoEarlierVersion(_) | RollbackError::NotEarlier { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "no_earlier_version", e.to_string())
            }
            RollbackError::Store(e) => e.into(),
        }
    }
}
