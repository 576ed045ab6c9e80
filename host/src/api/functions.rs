//! Deploy, configure, list, show, delete functions, and their stats.
//!
//! A deploy is `PUT /v1/functions/{name}` with either
//! - `Content-Type: application/wasm`: the component as the body, settings as query parameters
//!   named like the manifest keys (`?max_concurrency=4&timeout_ms=2000`): changes to what is
//!   deployed (the rest stays: settings, subscriptions, config), or
//! - `multipart/form-data`: a `component` part (the `.wasm`) and a `manifest` part
//!   (`sluice.toml`): the function's whole configuration (what it leaves out takes its
//!   default; a subscription it does not list ends). Without a manifest part: as query
//!   parameters.
//!
//! The answer's `changes` list what differs from the version before.
//!
//! The handlers parse and render; [`crate::functions::Functions`] validates the manifest,
//! compiles the component once (jobs never compile), stores component, artifact and settings in
//! one commit, and only then is the deploy answered.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::error::body_error;
use super::{ApiError, AppState};
use crate::functions::Given;
use crate::job::{JobStatus, now_ms, rfc3339};
use crate::manifest::Manifest;
use crate::store::FunctionRecord;

/// `PUT /v1/functions/{name}`.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name", example = "echo")),
    request_body(content = Vec<u8>, content_type = "application/wasm",
        description = "The component (settings as query parameters: max_concurrency, timeout_ms, ...); or multipart/form-data with `component` and a `manifest` (sluice.toml)"),
    responses(
        (status = 201, description = "Deployed as a new function", body = super::openapi::Function),
        (status = 200, description = "Deployed as a new version (or the same code and settings again)", body = super::openapi::Function),
        (status = 409, description = "A deploy of changes raced another deploy", body = super::openapi::ErrorBody)))]
pub(crate) async fn deploy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    // Read the whole body before judging anything: answering early while the client is still
    // sending would make its connection fail instead of showing our error.
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (manifest, whole, wasm) = if content_type.starts_with("multipart/form-data") {
        let form = Multipart::from_request(request, &state)
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        let (manifest, wasm) = read_multipart(form).await?;
        // A manifest part is the whole configuration; without one, the deploy changes code only.
        match manifest {
            Some(manifest) => (manifest, true, wasm),
            None => (manifest_from_query(&query)?, false, wasm),
        }
    } else {
        let wasm = Bytes::from_request(request, &state).await?;
        if !(content_type.starts_with("application/wasm")
            || content_type.starts_with("application/octet-stream")
            || content_type.is_empty())
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "deploy with Content-Type application/wasm (settings as query parameters) or multipart/form-data (parts `component` and `manifest`), not {content_type:?}"
                ),
            ));
        }
        (manifest_from_query(&query)?, false, wasm)
    };
    let given = if whole {
        Given::Whole(&manifest)
    } else {
        Given::Changes(&manifest)
    };
    let stored = state.functions.deploy(&name, given, wasm).await?;
    let status = if stored.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(function_json(&stored, None))))
}

async fn read_multipart(mut form: Multipart) -> Result<(Option<Manifest>, Bytes), ApiError> {
    let mut manifest = None;
    let mut component = None;
    let mut unknown = None;
    // Every part is read before anything is judged (see `deploy`).
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| body_error(e.status(), e.body_text()))?
    {
        let part = field.name().unwrap_or("").to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        match part.as_str() {
            "manifest" => manifest = Some(bytes),
            "component" => component = Some(bytes),
            _ => unknown = Some(part),
        }
    }
    if let Some(part) = unknown {
        return Err(ApiError::bad_request(
            "bad_request",
            format!(
                "unknown form part {part:?}: send `component` (the .wasm) and optionally `manifest` (sluice.toml)"
            ),
        ));
    }
    let manifest = match manifest {
        Some(bytes) => {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                ApiError::bad_request("invalid_manifest", "the manifest part is not UTF-8 text")
            })?;
            Some(Manifest::from_toml(text)?)
        }
        None => None,
    };
    let component = component.ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            "the form has no `component` part: attach the .wasm file",
        )
    })?;
    Ok((manifest, component))
}

/// Settings given as query parameters, read with the manifest's own rules (unknown keys refused).
fn manifest_from_query(query: &[(String, String)]) -> Result<Manifest, ApiError> {
    let mut table = toml::Table::new();
    for (key, value) in query {
        if key == "allowed_outbound_hosts" {
            // Repeated: one origin per parameter.
            let list = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(list) = list {
                list.push(toml::Value::String(value.clone()));
            }
            continue;
        }
        let value = if key == "name" {
            toml::Value::String(value.clone())
        } else {
            let n = value.parse::<i64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_manifest",
                    format!("{key} must be a whole number, not {value:?}"),
                )
            })?;
            toml::Value::Integer(n)
        };
        table.insert(key.clone(), value);
    }
    toml::Value::Table(table)
        .try_into::<Manifest>()
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_manifest",
                format!("invalid manifest: {}", e.message()),
            )
        })
}

/// `GET /v1/functions`.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, description = "Every deployed function", body = super::openapi::FunctionList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut functions = Vec::new();
    for f in state.store.functions().await? {
        let pending = state.store.pending_count(&f.name).await?;
        functions.push(function_json(&f, Some(pending)));
    }
    Ok(Json(json!({ "functions": functions })))
}

/// `GET /v1/functions/{name}`.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "The function", body = super::openapi::Function)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .store
        .function(&name)
        .await?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    let pending = state.store.pending_count(&name).await?;
    Ok(Json(function_json(&record, Some(pending))))
}

/// `PATCH /v1/functions/{name}`: changes settings without redeploying the code. Body: a JSON
/// object of manifest keys (`{"max_concurrency": 2, "rate_per_second": null}`; `null` unsets
/// `rate_per_second`), or the same keys as query parameters. Makes a new version.
#[utoipa::path(patch, path = "/v1/functions/{name}", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    request_body(content = Object, description = "Manifest keys to change, e.g. {\"max_concurrency\": 4, \"rate_per_second\": null} (or the same as query parameters)"),
    responses((status = 200, description = "The new version", body = super::openapi::Function)))]
pub(crate) async fn configure(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let current = state
        .store
        .function(&name)
        .await?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    let mut table = toml::Table::try_from(Manifest::from_settings(&current.settings))
        .expect("a manifest is a table");
    let usage =
        r#"send a JSON object of settings, e.g. {"max_concurrency": 4, "rate_per_second": 10}"#;
    let changes: Vec<(String, Value)> = if body.is_empty() {
        query
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.parse::<i64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(v)),
                )
            })
            .collect()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) => o.into_iter().collect(),
            _ => return Err(ApiError::bad_request("invalid_body", usage)),
        }
    };
    if changes.is_empty() {
        return Err(ApiError::bad_request("invalid_body", usage));
    }
    for (key, value) in changes {
        if key == "name" {
            return Err(ApiError::bad_request(
                "invalid_manifest",
                "a function's name cannot change: deploy it under the new name",
            ));
        }
        if matches!(
            key.as_str(),
            "allowed_outbound_hosts"
                | "config"
                | "subscribe"
                | "then"
                | "concurrency_key"
                | "schedule"
                | "key_weights"
                | "batch"
        ) {
            return Err(ApiError::bad_request(
                "invalid_manifest",
                format!(
                    "{key} changes with a deploy (sluice deploy, or PUT /v1/functions/{name} with the manifest), not with PATCH, which changes limits only"
                ),
            ));
        }
        match value {
            Value::Null => {
                table.remove(&key);
            }
            Value::Number(n) if n.is_i64() => {
                table.insert(key, toml::Value::Integer(n.as_i64().unwrap_or(0)));
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_manifest",
                    format!("{key} must be a whole number (or null to unset), not {other}"),
                ));
            }
        }
    }
    let manifest: Manifest =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                ApiError::bad_request(
                    "invalid_manifest",
                    format!("invalid settings: {}", e.message()),
                )
            })?;
    // New attempts use the new settings; the code stays loaded, nothing is compiled.
    let record = state.functions.configure(&name, &manifest).await?;
    let pending = state.store.pending_count(&name).await?;
    Ok(Json(function_json(&record, Some(pending))))
}

/// `GET /v1/functions/{name}/stats`: jobs per status from counters kept with every status
/// change (never a scan), attempts running now, and the age of the oldest queued job.
#[utoipa::path(get, path = "/v1/functions/{name}/stats", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "Its figures now", body = super::openapi::Stats)))]
pub(crate) async fn stats(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    stats_of(&state, &name).await.map(Json)
}

/// A function's figures now, as `GET /v1/functions/{name}/stats` shows them.
pub(crate) async fn stats_of(state: &AppState, name: &str) -> Result<Value, ApiError> {
    let name = name.to_string();
    let record = state
        .store
        .function(&name)
        .await?
        .ok_or_else(|| ApiError::function_not_found(&name))?;
    let counts = state.store.counts(&name).await?;
    // `running` is what runs now; jobs whose start is not committed yet count as queued in the
    // store.
    let running = state.scheduler.running_in(&name) as u64;
    let waiting = counts.status(JobStatus::Queued) + counts.status(JobStatus::Running);
    let oldest = state
        .store
        .oldest_ready(&name)
        .await?
        .map(|at| now_ms().saturating_sub(at));
    Ok(json!({
        "function": name,
        "version": record.version,
        "paused": record.paused,
        "queued": waiting.saturating_sub(running),
        "delayed": counts.status(JobStatus::Delayed),
        "running": running,
        "succeeded": counts.status(JobStatus::Succeeded),
        "failed": counts.status(JobStatus::Failed),
        "dead": counts.status(JobStatus::Dead),
        "cancelled": counts.status(JobStatus::Cancelled),
        "superseded": counts.status(JobStatus::Superseded),
        "oldest_queued_age_ms": oldest,
        "queued_bytes": counts.bytes(),
        "max_queued": record.settings.max_queued,
        "max_concurrency": record.settings.max_concurrency,
        "rate_per_second": record.settings.rate_per_second,
        "circuit_breaker": state.scheduler.breaker(&name),
        "recent": state.recent.of(&name),
    }))
}

#[derive(serde::Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/functions/{name}[?force=true]`.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name", example = "echo"), ("force" = Option<bool>, Query, description = "Cancel its unfinished jobs")),
    responses((status = 200, description = "Deleted", body = super::openapi::Deleted),
        (status = 409, description = "It has unfinished jobs (pass force=true)", body = super::openapi::ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("{e}: use ?force=true or ?force=false"),
        )
    })?;
    let cancelled = state.functions.remove(&name, query.force).await?;
    let cancelled: Vec<String> = cancelled.iter().map(|id| id.to_string()).collect();
    Ok(Json(
        json!({ "deleted": name, "cancelled_jobs": cancelled }),
    ))
}

/// A function as the API shows it (`pending_jobs` when counted).
pub(crate) fn function_json(f: &FunctionRecord, pending_jobs: Option<u64>) -> Value {
    let mut v = json!({
        "name": f.name,
        "version": f.version,
        "change": f.change,
        "changes": f.changes,
        "paused": f.paused,
        "digest": format!("sha256:{}", f.digest),
        "size": f.size,
        "deployed_at": rfc3339(f.deployed_at),
        "max_concurrency": f.settings.max_concurrency,
        "timeout_ms": f.settings.timeout_ms,
        "memory_mb": f.settings.memory_mb,
        "max_attempts": f.settings.retry.max_attempts,
        "backoff_base_ms": f.settings.retry.backoff_base_ms,
        "backoff_max_ms": f.settings.retry.backoff_max_ms,
        "max_queued": f.settings.max_queued,
        "rate_per_second": f.settings.rate_per_second,
        "key_concurrency": f.settings.key_concurrency,
        "key_rate_per_second": f.settings.key_rate_per_second,
        "concurrency_key": f.concurrency_key,
        "key_weights": f.key_weights,
        "debounce_ms": f.settings.debounce_ms,
        "debounce_max_ms": f.settings.debounce_max_ms,
        "breaker_failures": f.settings.breaker_failures,
        "breaker_cooldown_ms": f.settings.breaker_cooldown_ms,
        "batch": f.settings.batch_max_size.map(|n| json!({
            "max_size": n,
            "max_wait_ms": f.settings.batch_max_wait_ms,
        })),
        "subscriptions": f.subscriptions,
        "schedules": f.schedules,
        "then": f.then,
        "allowed_outbound_hosts": f.allowed_outbound_hosts,
        "config": f.config,
        "jobs_url": format!("/v1/functions/{}/jobs", f.name),
    });
    if let Some(n) = pending_jobs {
        v["pending_jobs"] = n.into();
    }
    v
}
