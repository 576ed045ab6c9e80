//! Server-Sent Events: the push model beside polling.
//! - `GET /v1/jobs/{id}/events`: a `status` event with the job (as `GET /v1/jobs/{id}` shows it,
//!   without input and output) now and at every change of status or attempt, until it is
//!   terminal; then the stream ends (an `EventSource` should close on a terminal status rather
//!   than reconnect).
//! - `GET /v1/functions/{name}/events`: a `stats` event with the function's figures (as
//!   `GET /v1/functions/{name}/stats` shows them) now and every second while they change, a
//!   comment every 15 s keeping the connection open, until the client leaves, the function is
//!   deleted (an `end` event) or the host stops.
//!
//! At most `--max-event-streams` are open at once (each holds a connection and reads the store
//! every fraction of a second); more are answered `503 too_many_streams` with `Retry-After`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::Value;

use super::job_json::job_json;
use super::{ApiError, AppState};
use crate::job::JobId;

/// How often a job's record is read again while it has not changed.
const JOB_POLL: Duration = Duration::from_millis(200);
/// How often a function's figures are read again.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// A place among the streams open at once, held while the stream lives.
fn place(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!(
                "{} event streams are open, the most this host keeps (--max-event-streams): retry later, or poll",
                state.config.max_event_streams
            ),
        )
        .retry_after(5)
    })
}

fn event(name: &str, data: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().event(name).data(data.to_string()))
}

/// `GET /v1/jobs/{id}/events`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path, description = "Job id (26-character ULID)")),
    responses((status = 200, description = "Server-Sent Events: `status` (a Job) at each change until terminal", content_type = "text/event-stream", body = super::openapi::ServerSentEvent)))]
pub(crate) async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job_id = super::jobs::parse_id(&id)?;
    let first = state
        .store
        .job(job_id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(&id))?;
    let place = place(&state)?;
    struct Watch {
        _place: tokio::sync::OwnedSemaphorePermit,
        state: AppState,
        id: JobId,
        /// What was last sent: (status, attempts), or nothing yet.
        sent: Option<(crate::job::JobStatus, u32)>,
        next: Option<crate::job::Job>,
        done: bool,
    }
    let watch = Watch {
        _place: place,
        state,
        id: job_id,
        sent: None,
        next: Some(first),
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            let job = match w.next.take() {
                Some(job) => job,
                None => {
                    let read = tokio::select! {
                        read = w.state.store.wait_terminal(w.id, JOB_POLL) => read,
                        _ = w.state.stopping.cancelled() => return None,
                    };
                    match read {
                        Ok(Some(job)) => job,
                        // Purged meanwhile, or the store failed: the stream ends.
                        Ok(None) | Err(_) => return None,
                    }
                }
            };
            let now = (job.visible_status(), job.attempts);
            if w.sent == Some(now) {
                continue;
            }
            w.sent = Some(now);
            w.done = now.0.is_terminal();
            return Some((event("status", &job_json(w.id, &job, false)), w));
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /v1/functions/{name}/events`.
#[utoipa::path(get, path = "/v1/functions/{name}/events", tag = "functions", params(("name" = String, Path, description = "Function name", example = "echo")),
    responses((status = 200, description = "Server-Sent Events: `stats` (a Stats object) as the figures change; `end` when the function is deleted", content_type = "text/event-stream", body = super::openapi::ServerSentEvent)))]
pub(crate) async fn function_events(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let first = super::functions::stats_of(&state, &name).await?;
    let place = place(&state)?;
    struct Watch {
        _place: tokio::sync::OwnedSemaphorePermit,
        state: AppState,
        name: String,
        sent: Option<Value>,
        next: Option<Value>,
        done: bool,
    }
    let watch = Watch {
        _place: place,
        state,
        name,
        sent: None,
        next: Some(first),
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            let stats = match w.next.take() {
                Some(stats) => stats,
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(STATS_EVERY) => {}
                        _ = w.state.stopping.cancelled() => return None,
                    }
                    match super::functions::stats_of(&w.state, &w.name).await {
                        Ok(stats) => stats,
                        Err(e) if e.status() == axum::http::StatusCode::NOT_FOUND => {
                            w.done = true;
                            let gone = serde_json::json!({"function": w.name, "deleted": true});
                            return Some((event("end", &gone), w));
                        }
                        // A store that failed for a moment: try again at the next tick.
                        Err(_) => continue,
                    }
                }
            };
            if w.sent.as_ref() == Some(&stats) {
                continue;
            }
            w.sent = Some(stats.clone());
            return Some((event("stats", &stats), w));
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
