//! Submit jobs, show them (with long-poll), fetch their output, list them, cancel them.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::job::{Job, JobId, JobStatus, rfc3339};
use crate::store::{CancelError, IdempotencyKey, JobPage, JobQuery, NewJob, Submitted};

/// Outputs up to this size, and valid UTF-8, are shown inline in the job's JSON.
const INLINE_OUTPUT: usize = 64 * 1024;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest accepted `Sluice-Correlation-Id`.
const MAX_CORRELATION_ID: usize = 128;

/// `POST /v1/functions/{name}/jobs`: answers 202 once the job is durable (200 with the original
/// answer when an `Idempotency-Key` repeats a request within its window, 409 when it comes with
/// a different request).
pub(crate) async fn submit(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input = body?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let correlation_id = correlation_id(&headers)?;
    let idempotency = idempotency_key(&headers, content_type.as_deref(), &input)?;
    let submitted = state
        .store
        .submit(NewJob {
            function: name,
            content_type,
            input,
            correlation_id,
            idempotency,
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
    let body = format!(r#"{{"id":"{id}","status":"queued"}}"#);
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

/// The `Idempotency-Key` header (1-255 visible ASCII characters) with the request's
/// fingerprint: SHA-256 of the content type and the body.
fn idempotency_key(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID works well)",
            )
        })?;
    use sha2::Digest;
    let request_hash = sha2::Sha256::new()
        .chain_update(content_type.unwrap_or("").as_bytes())
        .chain_update([0])
        .chain_update(body)
        .finalize()
        .into();
    Ok(Some(IdempotencyKey {
        key: key.to_string(),
        request_hash,
    }))
}

fn correlation_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("sluice-correlation-id") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(s)
            if !s.is_empty()
                && s.len() <= MAX_CORRELATION_ID
                && s.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(s.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_header",
            format!(
                "Sluice-Correlation-Id must be 1 to {MAX_CORRELATION_ID} visible ASCII characters"
            ),
        )),
    }
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::job_not_found(id))
}

/// `GET /v1/jobs/{id}[?wait=SECONDS]`: with `wait`, answers as soon as the job is terminal or the
/// wait (capped by the host) is over.
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
            .map(|w| Duration::from_secs_f64(w).min(state.config.max_wait))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "wait must be a number of seconds, e.g. ?wait=30",
                )
            })?,
    };
    let job = if wait.is_zero() {
        state.store.job(job_id)?
    } else {
        tokio::select! {
            job = state.store.wait_terminal(job_id, wait) => job?,
            _ = state.stopping.cancelled() => state.store.job(job_id)?,
        }
    };
    let job = job.ok_or_else(|| ApiError::job_not_found(&id))?;
    Ok(Json(job_json(job_id, &job, true)))
}

/// `GET /v1/jobs/{id}/output`: the raw output with the handler's content type, once succeeded.
pub(crate) async fn output(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job_id = parse_id(&id)?;
    let job = state
        .store
        .job(job_id)?
        .ok_or_else(|| ApiError::job_not_found(&id))?;
    let Some(output) = job.output.filter(|_| job.status == JobStatus::Succeeded) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "output_not_ready",
            format!(
                "job {id} is {}: output exists only once it has succeeded",
                job.status.as_str()
            ),
        ));
    };
    let content_type = job
        .output_content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let content_type = HeaderValue::from_str(&content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok(([(header::CONTENT_TYPE, content_type)], output).into_response())
}

/// `GET /v1/jobs?function=&status=&limit=&cursor=`: newest first.
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
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter {other:?}: use function, status, limit, cursor"),
                ));
            }
        }
    }
    let page = state.store.jobs(&q)?;
    Ok(Json(page_json("jobs", page)))
}

/// A page of jobs as `{"<key>": [...], "next_cursor": ...}`.
pub(crate) fn page_json(key: &str, page: JobPage) -> Value {
    let jobs: Vec<Value> = page
        .jobs
        .iter()
        .map(|(id, job)| job_json(*id, job, false))
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

/// A job as the API shows it; `full` adds the log and the inline output.
pub(crate) fn job_json(id: JobId, job: &Job, full: bool) -> Value {
    let succeeded = job.status == JobStatus::Succeeded;
    let mut v = json!({
        "id": id.to_string(),
        "function": job.function,
        "status": job.status,
        "attempts": job.attempts,
        "created_at": rfc3339(job.created_at),
        "started_at": job.started_at.map(rfc3339),
        "finished_at": job.finished_at.map(rfc3339),
        "correlation_id": job.correlation_id,
        "input_content_type": job.input_content_type,
        "output_content_type": job.output_content_type,
        "output_size": job.output.as_ref().map(|o| o.len()),
        "output_url": succeeded.then(|| format!("/v1/jobs/{id}/output")),
        "error": job.error,
        "not_before": job.not_before.map(rfc3339),
        "lease_until": job.lease_until.map(rfc3339),
        "attempt_history": job.history.iter().map(|a| json!({
            "attempt": a.attempt,
            "started_at": rfc3339(a.started_at),
            "finished_at": rfc3339(a.finished_at),
            "error": a.error,
            "retry_at": a.retry_at.map(rfc3339),
        })).collect::<Vec<_>>(),
    });
    if full {
        let inline = job
            .output
            .as_deref()
            .filter(|o| o.len() <= INLINE_OUTPUT)
            .and_then(|o| std::str::from_utf8(o).ok());
        v["output"] = inline.into();
        v["log"] = job.log.as_str().into();
    }
    v
}
