//! Submit jobs, show them (with long-poll), fetch their output, list them, cancel them. Batch
//! submits are in [`super::batch`], a job's JSON in [`super::job_json`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::headers::{
    callback, correlation_id, idempotency_key, not_before, ordering_key, priority,
};
use super::{ApiError, AppState};
use crate::job::{BlobRef, JobId, JobStatus, Pipeline, now_ms};
use crate::store::{CancelError, JobPage, JobQuery, NewJob, Submitted};

/// `POST /v1/functions/{name}/jobs`: answers 202 once the job is durable (200 with the original
/// answer when an `Idempotency-Key` repeats a request within its window, 409 when it comes with
/// a different request).
#[utoipa::path(post, path = "/v1/functions/{name}/jobs", tag = "jobs",
    params(("name" = String, Path, description = "Function name", example = "echo"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key and body answer the first job (200)"),
        ("Sluice-Priority" = Option<u8>, Header, description = "0 (lowest) to 9, default 5"),
        ("Sluice-Delay" = Option<u64>, Header, description = "Seconds before it may start"),
        ("Sluice-Not-Before" = Option<String>, Header, description = "RFC 3339 time before which it does not start"),
        ("Sluice-Callback" = Option<String>, Header, description = "A URL the host POSTs the outcome to, signed"),
        ("Sluice-Ordering-Key" = Option<String>, Header, description = "Jobs with one key run one at a time, in order"),
        ("Sluice-Concurrency-Key" = Option<String>, Header, description = "Jobs with one key run at most key_concurrency at once; keys take turns"),
        ("Sluice-Correlation-Id" = Option<String>, Header),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: its trace id becomes the correlation id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The job's input, any content type"),
    responses(
        (status = 202, description = "Accepted: stored durably", body = super::openapi::Accepted),
        (status = 200, description = "An earlier submit with the same idempotency key", body = super::openapi::Accepted),
        (status = 409, description = "The idempotency key was used with another body", body = super::openapi::ErrorBody),
        (status = 429, description = "The function's queue is full (max_queued)", body = super::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 501, description = "Not supported by this host's store backend", body = super::openapi::ErrorBody)))]
pub(crate) async fn submit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input = body?;
    let input_blob = state.large_blob(&input).await;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let correlation_id = correlation_id(&headers)?;
    let trace_parent = super::headers::caller_span(&headers, correlation_id.as_deref());
    let idempotency = idempotency_key(&headers, content_type.as_deref(), &input)?;
    let priority = priority(&headers)?;
    let not_before = not_before(&headers)?;
    let ordering_key = ordering_key(&headers)?;
    let callback = callback(&state, &headers)?;
    let concurrency_key = super::headers::concurrency_key(&state, &name, &headers, &input)?;
    let debounce_key = super::headers::debounce_key(&state, &name, &headers)?;
    let submitted = state
        .store
        .submit(NewJob {
            function: name,
            content_type,
            input,
            correlation_id,
            idempotency,
            priority,
            not_before,
            ordering_key,
            event: None,
            parent: None,
            pipeline: None,
            input_blob,
            callback,
            hops: 0,
            trace_parent,
            concurrency_key,
            debounce_key,
        })
        .await?;
    // A repeated request with the same idempotency key gets the original answer, as 200.
    let status = match submitted {
        Submitted::New(_) => StatusCode::ACCEPTED,
        Submitted::Existing(_) => StatusCode::OK,
    };
    // Built by hand: this answer is on every submit's path.
    let id = submitted.id().to_string();
    let location = format!("/v1/jobs/{id}");
    let queued = if not_before.is_some_and(|at| at > now_ms()) {
        "delayed"
    } else {
        "queued"
    };
    let body = format!(r#"{{"id":"{id}","status":"{queued}"}}"#);
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("job ids are ASCII"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Ok(response)
}

pub(crate) fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::job_not_found(id))
}

/// `GET /v1/jobs/{id}[?wait=SECONDS]`: with `wait`, answers as soon as the job is terminal or the
/// wait (capped by the host) is over.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (26-character ULID)"), ("wait" = Option<f64>, Query, description = "Seconds to wait for it to be terminal (at most 60)")),
    responses((status = 200, description = "The job", body = super::openapi::Job)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let job_id = parse_id(&id)?;
    let wait = match query.get("wait") {
        None => Duration::ZERO,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|w| w.is_finite() && *w >= 0.0)
            // Capped before converting: a huge number (1e300) cannot overflow a Duration.
            .map(|w| Duration::from_secs_f64(w.min(state.config.max_wait.as_secs_f64())))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "wait must be a number of seconds, e.g. ?wait=30",
                )
            })?,
    };
    let job = if wait.is_zero() {
        state.store.job(job_id).await?
    } else {
        tokio::select! {
            job = state.store.wait_terminal(job_id, wait) => job?,
            _ = state.stopping.cancelled() => state.store.job(job_id).await?,
        }
    };
    let job = job.ok_or_else(|| ApiError::job_not_found(&id))?;
    let mut v = job_json(job_id, &job, true);
    // A pipeline's head lists every stage's job.
    match &job.pipeline {
        Some(Pipeline::Head { stages, .. }) => {
            let mut list = Vec::new();
            for &stage in stages {
                let stage = JobId(stage);
                let (function, status) = if stage == job_id {
                    (Some(job.function.clone()), Some(job.status))
                } else {
                    match state.store.job(stage).await? {
                        Some(j) => (Some(j.function), Some(j.status)),
                        None => (None, None),
                    }
                };
                list.push(json!({
                    "job_id": stage.to_string(),
                    "function": function,
                    "status": status,
                }));
            }
            v["pipeline"] = json!({ "stages": list });
        }
        Some(Pipeline::Stage { head }) => {
            v["pipeline"] = json!({ "head": JobId(*head).to_string() });
        }
        None => {}
    }
    Ok(Json(v))
}

/// `GET /v1/jobs/{id}/output`: the raw output with the handler's content type, once succeeded.
#[utoipa::path(get, path = "/v1/jobs/{id}/output", tag = "jobs", params(("id" = String, Path, description = "Job id (26-character ULID)")),
    responses((status = 200, description = "The output bytes, with the handler's content type", content_type = "*/*", body = Vec<u8>),
        (status = 409, description = "Not succeeded (yet)", body = super::openapi::ErrorBody)))]
pub(crate) async fn output(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = parse_id(&id)?;
    let job = state
        .store
        .job(job_id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(&id))?;
    let status = job.visible_status();
    let has_output = job.output.is_some() || job.output_blob.is_some();
    if status != JobStatus::Succeeded || !has_output {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "output_not_ready",
            format!(
                "job {id} is {}: output exists only once it has succeeded",
                status.as_str()
            ),
        ));
    }
    let content_type = job
        .output_content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let content_type = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let body = match (job.output, job.output_blob) {
        (Some(output), _) => Body::from(output),
        (None, Some(blob)) => blob_body(state.store.clone(), blob),
        (None, None) => Body::empty(),
    };
    // A handler chooses the type: never let a browser sniff or render active content (HTML,
    // SVG, scripts) from the API's origin; such outputs download instead.
    let disposition = if renders_safely(content_type.as_bytes()) {
        HeaderValue::from_static("inline")
    } else {
        HeaderValue::from_static("attachment")
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// Output types a browser shows without running anything: plain text, JSON, raw bytes.
fn renders_safely(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    matches!(
        essence.as_slice(),
        b"application/json" | b"text/plain" | b"application/octet-stream"
    ) || (essence.starts_with(b"application/") && essence.ends_with(b"+json"))
}

/// Bytes per read while streaming a blob out.
const STREAM_PIECE: usize = 1 << 20;

/// A large output, streamed from its chunks a piece at a time (never whole in memory).
fn blob_body(store: Arc<dyn crate::store::Backend>, blob: BlobRef) -> Body {
    let pieces = futures_util::stream::unfold(0u64, move |offset| {
        let store = store.clone();
        async move {
            if offset >= blob.size {
                return None;
            }
            // Off the request threads: a backend may read the piece from disk.
            let read = tokio::task::spawn_blocking(move || {
                let handle = tokio::runtime::Handle::current();
                handle.block_on(store.read_blob(&blob.digest, offset, STREAM_PIECE))
            })
            .await;
            let piece = match read {
                Ok(Ok(Some(bytes))) if !bytes.is_empty() => bytes,
                Ok(Err(e)) => return Some((Err(std::io::Error::other(e.to_string())), blob.size)),
                _ => {
                    return Some((
                        Err(std::io::Error::other("the output's blob is gone")),
                        blob.size,
                    ));
                }
            };
            let next = offset + piece.len() as u64;
            Some((Ok::<_, std::io::Error>(Bytes::from(piece)), next))
        }
    });
    Body::from_stream(pieces)
}

/// `GET /v1/jobs?function=&status=&limit=&cursor=`: newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(("function" = Option<String>, Query), ("status" = Option<super::openapi::Status>, Query),
        ("limit" = Option<u32>, Query, description = "1-1000, default 50"),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
        ("correlation_id" = Option<String>, Query, description = "Every job and event of this correlation id instead (a Correlated answer)")),
    responses((status = 200, description = "Jobs newest first (or, with correlation_id, a Correlated object)", body = super::openapi::JobListing)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut q = JobQuery {
        limit: 50,
        ..Default::default()
    };
    for (key, value) in &query {
        match key.as_str() {
            "function" => q.function = Some(value.clone()),
            "status" => {
                q.status = Some(
                    value
                        .parse()
                        .map_err(|e: String| ApiError::bad_request("invalid_query", e))?,
                )
            }
            "limit" => q.limit = parse_limit(value)?,
            "cursor" => q.before = Some(parse_cursor(value)?),
            "correlation_id" => {}
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown parameter {other:?}: use function, status, limit, cursor or correlation_id"
                    ),
                ));
            }
        }
    }
    if let Some(correlation) = query.get("correlation_id") {
        return correlated(&state, correlation).await;
    }
    let page = state.store.jobs(&q).await?;
    Ok(Json(page_json("jobs", page)))
}

/// `GET /v1/jobs?correlation_id=ID`: every job and event the id names, oldest first, each with
/// its parent (the event or job that caused it; none: a request).
async fn correlated(state: &AppState, correlation: &str) -> Result<Json<Value>, ApiError> {
    let found = state.store.correlated(correlation).await?;
    let jobs: Vec<Value> = found
        .jobs
        .iter()
        .map(|(id, summary)| summary_json(*id, summary))
        .collect();
    let events: Vec<Value> = found
        .events
        .iter()
        .map(|(id, e)| super::topics::event_json(*id, e))
        .collect();
    Ok(Json(json!({
        "correlation_id": correlation,
        "jobs": jobs,
        "events": events,
    })))
}

/// A page of jobs as `{"<key>": [...], "next_cursor": ...}`.
pub(crate) fn page_json(key: &str, page: JobPage) -> Value {
    let jobs: Vec<Value> = page
        .jobs
        .iter()
        .map(|(id, summary)| summary_json(*id, summary))
        .collect();
    json!({ key: jobs, "next_cursor": page.next_cursor.map(|c| c.to_string()) })
}

/// A listing's `limit`: 1 to 1000.
pub(crate) fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| ApiError::bad_request("invalid_query", "limit must be 1 to 1000"))
}

/// A listing's `cursor`: the `next_cursor` of the previous page.
pub(crate) fn parse_cursor(value: &str) -> Result<JobId, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_query",
            "cursor must be the next_cursor of a previous page",
        )
    })
}

/// `DELETE /v1/jobs/{id}`: cancels a queued or delayed job (409 for any other status).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id (26-character ULID)")),
    responses((status = 200, description = "Cancelled", body = super::openapi::Job),
        (status = 409, description = "Running or terminal: not cancellable", body = super::openapi::ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job_id = parse_id(&id)?;
    // A job a worker already holds is running, even before `running` is committed.
    if state.scheduler.is_running(job_id) {
        return Err(CancelError::NotCancellable {
            id: job_id,
            status: JobStatus::Running,
        }
        .into());
    }
    let job = state.store.cancel(job_id).await?;
    state.scheduler.forget(&job.function, job_id);
    Ok(Json(job_json(job_id, &job, true)))
}

pub(crate) use super::job_json::{job_json, summary_json};
