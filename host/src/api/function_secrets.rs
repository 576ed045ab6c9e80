//! A function's secrets: set (`PUT /v1/functions/{name}/secrets/{secret}`, the body is the
//! value), remove, and list by name. Values are sealed before they are stored, never answered,
//! and reach only the function's sandboxes (`wasi:config/store`). Admin scope only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::job::rfc3339;

/// `GET /v1/functions/{name}/secrets`: names and when each was set; never the values.
#[utoipa::path(get, path = "/v1/functions/{name}/secrets", tag = "secrets", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "Secret names (never values)", body = super::openapi::SecretNames)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let secrets: Vec<Value> = state
        .functions
        .secrets(&name)
        .await?
        .iter()
        .map(|s| json!({ "name": s.name, "updated_at": rfc3339(s.updated_at) }))
        .collect();
    Ok(Json(json!({ "function": name, "secrets": secrets })))
}

/// `PUT /v1/functions/{name}/secrets/{secret}`: sets a secret to the body (UTF-8 text).
/// Answered once it is durable; the function's next attempts read it.
#[utoipa::path(put, path = "/v1/functions/{name}/secrets/{secret}", tag = "secrets",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("secret" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Stored, sealed", body = super::openapi::SecretStored)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    state.functions.set_secret(&name, &secret, &body).await?;
    Ok(Json(
        json!({ "function": name, "secret": secret, "stored": true }),
    ))
}

/// `DELETE /v1/functions/{name}/secrets/{secret}`.
#[utoipa::path(delete, path = "/v1/functions/{name}/secrets/{secret}", tag = "secrets",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("secret" = String, Path)),
    responses((status = 200, description = "Removed", body = super::openapi::SecretDeleted)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.functions.delete_secret(&name, &secret).await?;
    Ok(Json(json!({ "function": name, "deleted": secret })))
}
