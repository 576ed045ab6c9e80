//! Topics: publish CloudEvents, list topics and their subscriptions, show a published event.
//!
//! A publish stores the event and one delivery job per matching subscriber in one durable
//! commit, then answers `202`. Each delivery is an ordinary job of its function (its retries,
//! dead letters, concurrency), so subscribers never hold each other up.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::headers::correlation_id;
use super::{ApiError, AppState};
use crate::event::{self, EventError, Mode};
use crate::job::{JobId, JobStatus, rfc3339};
use crate::store::{EventRecord, NewEvent, Published};

/// `POST /v1/topics/{topic}/events`: one event (structured or binary mode) or a batch.
#[utoipa::path(post, path = "/v1/topics/{topic}/events", tag = "topics",
    params(("topic" = String, Path), ("ce-specversion" = Option<String>, Header, description = "Binary mode: ce-* headers, the data as the body"),
        ("ce-type" = Option<String>, Header), ("ce-source" = Option<String>, Header), ("ce-id" = Option<String>, Header)),
    request_body(content = Object, content_type = "application/cloudevents+json", description = "A CloudEvent (structured mode); application/cloudevents-batch+json for several"),
    responses((status = 202, description = "Accepted: one delivery job per matching subscriber (for a batch, per event)", body = super::openapi::PublishAnswer)))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    event::validate_topic(&topic).map_err(|m| ApiError::bad_request("invalid_topic", m))?;
    let mode = Mode::of(
        headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let events = event::parse(&headers, body)?;
    let correlation_id = correlation_id(&headers)?;
    let caller = super::headers::caller_span(&headers, correlation_id.as_deref());
    let callback = super::headers::callback(&state, &headers)?;
    let priority = super::headers::priority(&headers)?;
    let mut new_events = Vec::with_capacity(events.len());
    for mut e in events {
        e.attributes.topic = topic.clone();
        let blob = state.large_blob(&e.data).await;
        new_events.push(NewEvent {
            event: e,
            correlation_id: correlation_id.clone(),
            priority,
            parent: None,
            blob,
            callback: callback.clone(),
            hops: 0,
            // Its deliveries hang under the event's span.
            trace_parent: None,
        });
    }
    let events = new_events;
    let topics: Vec<String> = events.iter().map(|e| e.event.attributes.event_type.clone()).collect();
    let started = crate::job::now_ms();
    let published = state.store.publish(events).await?;
    // Each event is a span its deliveries' jobs hang under (see `crate::trace`).
    for (p, event_type) in published.iter().zip(topics) {
        let correlation = correlation_id.clone().unwrap_or_else(|| p.event_id.to_string());
        state.tracer.record(crate::trace::Span {
            trace: crate::trace::trace_id_of(&correlation),
            id: crate::trace::span_id("event", p.event_id, 0),
            parent: caller.map(crate::trace::span_of_number),
            name: format!("publish {topic}"),
            kind: crate::trace::kind::PRODUCER,
            start_ms: started,
            end_ms: crate::job::now_ms(),
            attributes: vec![
                ("sluice.event.id", json!(p.event_id.to_string())),
                ("sluice.topic", json!(topic)),
                ("cloudevents.event_type", json!(event_type)),
                ("sluice.deliveries", json!(p.deliveries.len())),
            ],
            error: None,
        });
    }
    let body = match mode {
        Mode::Batch => {
            json!({ "events": published.iter().map(published_json).collect::<Vec<_>>() })
        }
        _ => published_json(&published[0]),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn published_json(p: &Published) -> Value {
    json!({
        "event_id": p.event_id.to_string(),
        "deliveries": p.deliveries.iter().map(|(function, id)| json!({
            "function": function,
            "job_id": id.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// `GET /v1/topics`: every topic some function subscribes to, with its subscriptions.
#[utoipa::path(get, path = "/v1/topics", tag = "topics",
    responses((status = 200, description = "Topics with subscribers", body = super::openapi::Topics)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut topics: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in state.store.functions().await? {
        for sub in &f.subscriptions {
            topics
                .entry(sub.topic.clone())
                .or_default()
                .push(json!({ "function": f.name, "types": sub.types }));
        }
    }
    let topics: Vec<Value> = topics
        .into_iter()
        .map(|(topic, subscriptions)| json!({ "topic": topic, "subscriptions": subscriptions }))
        .collect();
    Ok(Json(json!({ "topics": topics })))
}

/// `GET /v1/topics/{topic}`: its subscriptions, each with its function's backlog.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics", params(("topic" = String, Path)),
    responses((status = 200, description = "Its subscribers and their backlogs", body = super::openapi::Topic)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Json<Value>, ApiError> {
    event::validate_topic(&topic).map_err(|m| ApiError::bad_request("invalid_topic", m))?;
    let mut subscriptions = Vec::new();
    for f in state.store.functions().await? {
        let Some(sub) = f.subscriptions.iter().find(|s| s.topic == topic) else {
            continue;
        };
        let counts = state.store.counts(&f.name).await?;
        let running = state.scheduler.running_in(&f.name) as u64;
        let waiting = counts.status(JobStatus::Queued) + counts.status(JobStatus::Running);
        subscriptions.push(json!({
            "function": f.name,
            "types": sub.types,
            "paused": f.paused,
            "backlog": {
                "queued": waiting.saturating_sub(running),
                "delayed": counts.status(JobStatus::Delayed),
                "running": running,
                "dead_letters": counts.status(JobStatus::Failed) + counts.status(JobStatus::Dead),
            },
        }));
    }
    if subscriptions.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "topic_not_found",
            format!(
                "no function subscribes to topic {topic:?}; declare [[subscribe]] topic = \"{topic}\" in a manifest"
            ),
        ));
    }
    Ok(Json(
        json!({ "topic": topic, "subscriptions": subscriptions }),
    ))
}

/// `GET /v1/events/{id}`: a published event (attributes, not data) and its deliveries.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "topics", params(("id" = String, Path, description = "The event's Sluice id")),
    responses((status = 200, description = "The event's record", body = super::openapi::Event)))]
pub(crate) async fn show_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "event_not_found",
            format!("no event with id {id:?} (events are kept as long as finished jobs)"),
        )
    };
    let event_id: JobId = id.parse().map_err(|_| not_found())?;
    let event = state.store.event(event_id).await?.ok_or_else(not_found)?;
    Ok(Json(event_json(event_id, &event)))
}

/// A published event as the API shows it.
pub(crate) fn event_json(id: JobId, e: &EventRecord) -> Value {
    let a = &e.attributes;
    json!({
        "event_id": id.to_string(),
        "topic": a.topic,
        "id": a.id,
        "source": a.source,
        "type": a.event_type,
        "subject": a.subject,
        "time": a.time,
        "dataschema": a.dataschema,
        "datacontenttype": e.content_type,
        "extensions": a.extensions.iter().cloned().collect::<BTreeMap<_, _>>(),
        "size": e.size,
        "correlation_id": e.correlation_id,
        "parent": e.parent.map(|p| p.to_json()),
        "published_at": rfc3339(e.published_at),
        "deliveries": e.deliveries.iter().map(|(function, id)| json!({
            "function": function,
            "job_id": JobId(*id).to_string(),
        })).collect::<Vec<_>>(),
    })
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        ApiError::bad_request("invalid_event", e.to_string())
    }
}
