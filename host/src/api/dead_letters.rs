//! A function's dead-letter queue: list its `failed` and `dead` jobs, redrive them (back to
//! `queued`, same ids, attempts counted from zero) or purge them.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::jobs::{page_json, parse_cursor, parse_limit};
use super::{ApiError, AppState};
use crate::job::JobId;
use crate::store::{DeadLetterSelection, JobQuery};

/// `GET /v1/functions/{name}/dead-letters?limit=&cursor=`: newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/dead-letters", tag = "dead-letters",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "Failed and dead jobs, newest first", body = super::openapi::DeadLetterPage)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    require_function(&state, &name).await?;
    let mut q = JobQuery {
        function: Some(name),
        dead_letters: true,
        limit: 50,
        ..Default::default()
    };
    for (key, value) in &query {
        match key.as_str() {
            "limit" => q.limit = parse_limit(value)?,
            "cursor" => q.before = Some(parse_cursor(value)?),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter {other:?}: use limit, cursor"),
                ));
            }
        }
    }
    Ok(Json(page_json("dead_letters", state.store.jobs(&q).await?)))
}

/// `POST /v1/functions/{name}/dead-letters/redrive` with `{"ids": [...]}` or `{"all": true}`.
#[utoipa::path(post, path = "/v1/functions/{name}/dead-letters/redrive", tag = "dead-letters", params(("name" = String, Path, description = "Function name", example = "echo")),
    request_body(content = super::openapi::Selection),
    responses((status = 200, description = "Queued again (same ids, attempts from zero)", body = super::openapi::Redriven)))]
pub(crate) async fn redrive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let which = selection(&state, &name, body?).await?;
    let ids = state.store.redrive(&name, which).await?;
    Ok(Json(json!({ "redriven": strings(&ids) })))
}

/// `POST /v1/functions/{name}/dead-letters/purge` with `{"ids": [...]}` or `{"all": true}`.
#[utoipa::path(post, path = "/v1/functions/{name}/dead-letters/purge", tag = "dead-letters", params(("name" = String, Path, description = "Function name", example = "echo")),
    request_body(content = super::openapi::Selection),
    responses((status = 200, description = "Deleted for good", body = super::openapi::Purged)))]
pub(crate) async fn purge(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let which = selection(&state, &name, body?).await?;
    let ids = state.store.purge(&name, which).await?;
    Ok(Json(json!({ "purged": strings(&ids) })))
}

/// The body of a redrive or purge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
}

/// Reads which dead letters a request means; every given id must be a dead letter of `name`.
async fn selection(
    state: &AppState,
    name: &str,
    body: Bytes,
) -> Result<DeadLetterSelection, ApiError> {
    require_function(state, name).await?;
    const USAGE: &str = r#"send {"ids": ["JOB_ID", ...]} or {"all": true}"#;
    let body: SelectionBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("{e}: {USAGE}")))?;
    match (body.ids, body.all) {
        (Some(ids), false) if !ids.is_empty() => {
            let mut parsed = Vec::with_capacity(ids.len());
            for id in ids {
                let job_id: JobId = id.parse().map_err(|_| {
                    ApiError::bad_request("invalid_id", format!("{id:?} is not a job id"))
                })?;
                let is_dead_letter = state.store.job(job_id).await?.is_some_and(|job| {
                    job.function == name
                        && matches!(
                            job.status,
                            crate::job::JobStatus::Failed | crate::job::JobStatus::Dead
                        )
                });
                if !is_dead_letter {
                    return Err(ApiError::new(
                        axum::http::StatusCode::NOT_FOUND,
                        "dead_letter_not_found",
                        format!(
                            "job {id} is not a dead letter of {name:?}; list them with `sluice dlq list {name}` or GET /v1/functions/{name}/dead-letters"
                        ),
                    ));
                }
                parsed.push(job_id);
            }
            Ok(DeadLetterSelection::Ids(parsed))
        }
        (None, true) => Ok(DeadLetterSelection::All),
        _ => Err(ApiError::bad_request("invalid_body", USAGE)),
    }
}

async fn require_function(state: &AppState, name: &str) -> Result<(), ApiError> {
    match state.store.function(name).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::function_not_found(name)),
    }
}

fn strings(ids: &[JobId]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}
