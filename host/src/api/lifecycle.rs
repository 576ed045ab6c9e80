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
pub(crate) async fn versions(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let current = state
        .store
        .function(&name)?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    let versions: Vec<Value> = state
        .store
        .versions(&name)?
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "change": v.change,
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
    let current = state
        .store
        .function(&name)?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    // Load the target's code before committing, so a failure changes nothing.
    let to = match to {
        Some(v) => v,
        None if current.version > 1 => current.version - 1,
        None => return Err(RollbackError::NoEarlierVersion(name).into()),
    };
    if to >= current.version {
        return Err(RollbackError::NotEarlier {
            name,
            to,
            current: current.version,
        }
        .into());
    }
    let target = state
        .store
        .versions(&name)?
        .into_iter()
        .find(|v| v.version == to)
        .ok_or_else(|| RollbackError::UnknownVersion {
            name: name.clone(),
            to,
        })?;
    super::functions::refuse_pipeline_cycle(&state, &name, target.then.as_deref())?;
    let mut loaded = load_version(&state, target).await?;
    let record = state.store.rollback(&name, Some(to)).await?;
    loaded.record = record.clone();
    state.runtime.install_loaded(loaded);
    state.scheduler.function_updated(&name);
    let pending = state.store.pending_count(&name)?;
    Ok(Json(function_json(&record, Some(pending))))
}

/// The code of an earlier version, from its stored artifact (compiled again only when this
/// engine cannot use the stored one).
async fn load_version(
    state: &AppState,
    version: crate::store::FunctionRecord,
) -> Result<crate::runtime::LoadedFunction, ApiError> {
    let key = state.runtime.artifact_key(&version.digest);
    if let Some(artifact) = state.store.artifact(&key)?
        && let Ok(loaded) = state.runtime.load(version.clone(), &artifact)
    {
        return Ok(loaded);
    }
    let wasm = state.store.component(&version.digest)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "component_missing",
            format!(
                "the component of version {} is no longer stored: deploy it again",
                version.version
            ),
        )
    })?;
    let runtime = state.runtime.clone();
    let compiled = tokio::task::spawn_blocking(move || runtime.compile(&wasm))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    state
        .store
        .save_artifact(key, compiled.artifact.clone())
        .await?;
    Ok(state.runtime.loaded(version, &compiled))
}

/// `POST /v1/functions/{name}/pause`: jobs are still accepted (queued durably); none starts.
/// Running attempts finish.
pub(crate) async fn pause(
    state: State<AppState>,
    name: Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(state, name, true).await
}

/// `POST /v1/functions/{name}/resume`: starts jobs again.
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
    let record = state
        .store
        .set_paused(&name, paused)
        .await?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    state.runtime.reconfigure(record.clone());
    state.scheduler.function_updated(&name);
    let pending = state.store.pending_count(&name)?;
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
