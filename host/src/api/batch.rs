//! `POST /v1/functions/{name}/jobs:batch`: many jobs of one function, accepted together.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::headers::{callback, correlation_id, not_before, ordering_key, priority};
use super::{ApiError, AppState};
use crate::job::{MAX_PRIORITY, now_ms};
use crate::store::NewJob;

/// Most items in one batch submit.
const MAX_BATCH_ITEMS: usize = 1000;

/// `POST /v1/functions/{name}/jobs:batch`: a JSON array of up to 1000 items, each a JSON value
/// (the job's input) or `{"data": ..., "content_type": ..., "priority": ..., "delay": ...}`.
/// Answers 202 with every job, in order, after one durable commit; all or nothing.
#[utoipa::path(post, path = "/v1/functions/{name}/jobs:batch", tag = "jobs", params(("name" = String, Path, description = "Function name", example = "echo")),
    request_body(content = Vec<Object>, description = "Up to 1000 items: each an input, or {\"data\", \"content_type\", \"priority\", \"delay\"}"),
    responses((status = 202, description = "All accepted, or none", body = super::openapi::BatchAccepted),
        (status = 429, description = "Not all fit in the queue: none accepted", body = super::openapi::ErrorBody)))]
pub(crate) async fn submit_batch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let bad = |m: String| ApiError::bad_request("invalid_body", m);
    let items: Vec<Value> = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "{e}: send a JSON array of inputs, or of {{\"data\": ..., \"content_type\": ..., \"priority\": 0-9, \"delay\": seconds}}"
        ))
    })?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(bad(format!(
            "a batch holds 1 to {MAX_BATCH_ITEMS} items, not {}",
            items.len()
        )));
    }
    let correlation_id = correlation_id(&headers)?;
    let trace_parent = super::headers::caller_span(&headers, correlation_id.as_deref());
    let default_priority = priority(&headers)?;
    let default_not_before = not_before(&headers)?;
    // One key for the whole batch: its jobs keep their order within the key.
    let ordering_key = ordering_key(&headers)?;
    let callback = callback(&state, &headers)?;
    if headers.contains_key("sluice-debounce-key") {
        return Err(bad(
            "Sluice-Debounce-Key is for single submits (each replaces the key's waiting job): send them one by one".into(),
        ));
    }
    let now = now_ms();
    let mut jobs = Vec::with_capacity(items.len());
    let mut statuses = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let item = BatchItem::parse(item, default_priority, default_not_before, now)
            .map_err(|m| bad(format!("item {i}: {m}")))?;
        let concurrency_key = super::headers::concurrency_key(&state, &name, &headers, &item.input)?;
        statuses.push(if item.not_before.is_some() {
            "delayed"
        } else {
            "queued"
        });
        jobs.push(NewJob {
            function: name.clone(),
            content_type: Some(item.content_type),
            input: item.input,
            correlation_id: correlation_id.clone(),
            idempotency: None,
            priority: item.priority,
            not_before: item.not_before,
            ordering_key: ordering_key.clone(),
            event: None,
            parent: None,
            pipeline: None,
            input_blob: None,
            callback: callback.clone(),
            hops: 0,
            trace_parent,
            concurrency_key,
            debounce_key: None,
        });
    }
    let ids = state.store.submit_batch(jobs).await?;
    let jobs: Vec<Value> = ids
        .iter()
        .zip(statuses)
        .map(|(id, status)| json!({ "id": id.to_string(), "status": status }))
        .collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "jobs": jobs }))).into_response())
}

/// One item of a batch submit.
struct BatchItem {
    input: Bytes,
    content_type: String,
    priority: u8,
    not_before: Option<u64>,
}

impl BatchItem {
    /// An envelope is an object with `data` and only the envelope's keys; anything else is the
    /// input itself, as JSON.
    fn parse(
        item: Value,
        priority: u8,
        not_before: Option<u64>,
        now: u64,
    ) -> Result<BatchItem, String> {
        const KEYS: [&str; 4] = ["data", "content_type", "priority", "delay"];
        let envelope = item.as_object().is_some_and(|o| {
            o.contains_key("data") && o.keys().all(|k| KEYS.contains(&k.as_str()))
        });
        if !envelope {
            return Ok(BatchItem {
                input: Bytes::from(item.to_string()),
                content_type: "application/json".into(),
                priority,
                not_before,
            });
        }
        let mut o = match item {
            Value::Object(o) => o,
            _ => unreachable!("an envelope is an object"),
        };
        let data = o.remove("data").unwrap_or(Value::Null);
        let content_type = match o.remove("content_type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err("content_type must be a string".into()),
        };
        // A string with a content type other than JSON is sent as its text; everything else as JSON.
        let (input, content_type) = match (data, content_type) {
            (Value::String(text), Some(ct)) if !ct.contains("json") => (Bytes::from(text), ct),
            (data, ct) => (
                Bytes::from(data.to_string()),
                ct.unwrap_or_else(|| "application/json".into()),
            ),
        };
        let priority = match o.remove("priority") {
            None | Some(Value::Null) => priority,
            Some(p) => p
                .as_u64()
                .filter(|p| *p <= MAX_PRIORITY as u64)
                .ok_or("priority must be a whole number from 0 to 9")? as u8,
        };
        let not_before = match o.remove("delay") {
            None | Some(Value::Null) => not_before,
            Some(d) => {
                let secs = d
                    .as_f64()
                    .filter(|s| (0.0..=super::headers::MAX_DELAY_SECS).contains(s))
                    .ok_or("delay must be a number of seconds from 0 to 31536000")?;
                Some(now + (secs * 1000.0) as u64).filter(|&at| at > now)
            }
        };
        Ok(BatchItem {
            input,
            content_type,
            priority,
            not_before,
        })
    }
}
