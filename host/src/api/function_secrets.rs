//! A function's secrets: set (`PUT /v1/functions/{name}/secrets/{secret}`, the body is the
//! value), remove, and list by name. Values are sealed before they are stored, never answered,
//! and reach only the function's sandboxes (`wasi:config/store`). Admin scope only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::job::rfc3339;
use crate::store::PutSecret;
use crate::vault::{self, MAX_SECRETS, MAX_VALUE};

/// `GET /v1/functions/{name}/secrets`: names and when each was set; never the values.
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.store.function(&name)?.is_none() {
        return Err(ApiError::function_not_found(&name));
    }
    let secrets: Vec<Value> = state
        .store
        .secrets(&name)?
        .iter()
        .map(|s| json!({ "name": s.name, "updated_at": rfc3339(s.updated_at) }))
        .collect();
    Ok(Json(json!({ "function": name, "secrets": secrets })))
}

/// `PUT /v1/functions/{name}/secrets/{secret}`: sets a secret to the body (UTF-8 text).
/// Answered once it is durable; the function's next attempts read it.
pub(crate) async fn put(
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    vault::validate_name(&secret).map_err(|e| ApiError::bad_request("invalid_secret", e))?;
    if body.len() > MAX_VALUE {
        return Err(ApiError::bad_request(
            "invalid_secret",
            format!(
                "a secret's value is at most {MAX_VALUE} bytes, not {}: keep large data in a blob or an outside store",
                body.len()
            ),
        ));
    }
    if std::str::from_utf8(&body).is_err() {
        return Err(ApiError::bad_request(
            "invalid_secret",
            "a secret's value is UTF-8 text (handlers read it as a string): encode binary values, e.g. in base64",
        ));
    }
    let sealed = state.vault.seal(&name, &secret, &body);
    match state
        .store
        .put_secret(&name, &secret, sealed, MAX_SECRETS)
        .await?
    {
        PutSecret::Stored => {}
        PutSecret::NoFunction => return Err(ApiError::function_not_found(&name)),
        PutSecret::TooMany => {
            return Err(ApiError::bad_request(
                "too_many_secrets",
                format!(
                    "function {name} has {MAX_SECRETS} secrets, the most it may have: delete one first"
                ),
            ));
        }
    }
    reload(&state, &name)?;
    Ok(Json(
        json!({ "function": name, "secret": secret, "stored": true }),
    ))
}

/// `DELETE /v1/functions/{name}/secrets/{secret}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if state.store.function(&name)?.is_none() {
        return Err(ApiError::function_not_found(&name));
    }
    if !state.store.delete_secret(&name, &secret).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "secret_not_found",
            format!(
                "function {name} has no secret {secret:?}: GET /v1/functions/{name}/secrets lists them"
            ),
        ));
    }
    reload(&state, &name)?;
    Ok(Json(json!({ "function": name, "deleted": secret })))
}

/// Hands the function's stored secrets, opened, to the runtime.
fn reload(state: &AppState, name: &str) -> Result<(), ApiError> {
    let opened = open_all(&state.vault, &state.store, name)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    state.runtime.set_secrets(name, opened);
    Ok(())
}

/// A function's stored secrets, opened with `vault`.
pub(crate) fn open_all(
    vault: &vault::Vault,
    store: &crate::store::Store,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut opened = std::collections::BTreeMap::new();
    for s in store.secrets(name).map_err(|e| e.to_string())? {
        let value = vault
            .open_value(name, &s.name, &s.sealed)
            .map_err(|e| e.to_string())?;
        opened.insert(s.name, value);
    }
    Ok(opened)
}
