//! A function's key-value state from outside: read, set and delete keys, list them.
//! `PUT` and `DELETE` are durable before they answer and bump the key's version, so a handler
//! attempt that read the key before and writes after runs again on the new value.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::job::KvChanges;
use crate::runtime::kv::{MAX_KEY, MAX_VALUE};
use crate::store::kv::KvVerdict;

/// Most keys one listing answers.
const MAX_LIST: usize = 1000;

async fn check_function(state: &AppState, name: &str) -> Result<(), ApiError> {
    match state.store.function(name).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::function_not_found(name)),
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("a key is 1 to {MAX_KEY} bytes, not {}", key.len()),
        ));
    }
    Ok(())
}

fn key_not_found(name: &str, key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "key_not_found",
        format!(
            "function {name} has no key {key:?}: `sluice kv list {name}` or GET /v1/functions/{name}/kv lists its keys"
        ),
    )
}

/// `GET /v1/functions/{name}/kv/{key}`: the value as stored (`application/octet-stream`).
#[utoipa::path(get, path = "/v1/functions/{name}/kv/{key}", tag = "kv",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("key" = String, Path)),
    responses((status = 200, description = "The value as stored", content_type = "application/octet-stream", body = Vec<u8>)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    check_function(&state, &name).await?;
    check_key(&key)?;
    match state.store.kv_get(&name, &key).await? {
        (_, Some(value)) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value)),
        (_, None) => Err(key_not_found(&name, &key)),
    }
}

/// `PUT /v1/functions/{name}/kv/{key}`: sets the key to the body.
#[utoipa::path(put, path = "/v1/functions/{name}/kv/{key}", tag = "kv",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("key" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Stored", body = super::openapi::KvStored),
        (status = 507, description = "The function's state would pass its bound", body = super::openapi::ErrorBody)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    check_function(&state, &name).await?;
    check_key(&key)?;
    if body.len() > MAX_VALUE {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("a value is at most {MAX_VALUE} bytes, not {}", body.len()),
        ));
    }
    write(&state, &name, &key, Some(body.to_vec())).await?;
    Ok(Json(
        json!({ "function": name, "key": key, "size": body.len() }),
    ))
}

/// `DELETE /v1/functions/{name}/kv/{key}`.
#[utoipa::path(delete, path = "/v1/functions/{name}/kv/{key}", tag = "kv",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("key" = String, Path)),
    responses((status = 200, description = "Deleted", body = super::openapi::KvDeleted)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_function(&state, &name).await?;
    check_key(&key)?;
    if state.store.kv_get(&name, &key).await?.1.is_none() {
        return Err(key_not_found(&name, &key));
    }
    write(&state, &name, &key, None).await?;
    Ok(Json(json!({ "function": name, "deleted": key })))
}

async fn write(
    state: &AppState,
    name: &str,
    key: &str,
    value: Option<Vec<u8>>,
) -> Result<(), ApiError> {
    let changes = KvChanges {
        function: name.to_string(),
        reads: Vec::new(),
        listed: Vec::new(),
        writes: vec![(key.to_string(), value)],
    };
    match state.store.kv_write(changes).await? {
        KvVerdict::Full(message) => Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "kv_full",
            message,
        )),
        _ => Ok(()),
    }
}

/// `GET /v1/functions/{name}/kv?prefix=&cursor=&limit=`: keys in order; `next_cursor` (the
/// number of keys to skip) while there are more.
#[utoipa::path(get, path = "/v1/functions/{name}/kv", tag = "kv",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("prefix" = Option<String>, Query), ("cursor" = Option<u64>, Query, description = "Keys to skip (the previous page's next_cursor)"),
        ("limit" = Option<u32>, Query, description = "1-1000, default 100")),
    responses((status = 200, description = "Keys in order", body = super::openapi::KvKeys)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    check_function(&state, &name).await?;
    let mut prefix = None;
    let mut cursor = 0usize;
    let mut limit = 100usize;
    for (k, v) in &query {
        let number = |what: &str| {
            v.parse::<usize>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{what} is a whole number, not {v:?}"),
                )
            })
        };
        match k.as_str() {
            "prefix" => prefix = Some(v.as_str()),
            "cursor" => cursor = number("cursor")?,
            "limit" => limit = number("limit")?.clamp(1, MAX_LIST),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter {other:?}: use prefix, cursor or limit"),
                ));
            }
        }
    }
    let keys = state.store.kv_keys(&name, prefix, cursor, limit).await?;
    let next = (keys.len() == limit).then(|| (cursor + limit).to_string());
    Ok(Json(
        json!({ "function": name, "keys": keys, "next_cursor": next }),
    ))
}
