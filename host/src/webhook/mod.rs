//! Webhook callbacks: the sender that POSTs a job's outcome to its `Sluice-Callback` URL,
//! signed per Standard Webhooks, through the SSRF guard.
//!
//! The store makes a callback due in the same commit that makes its job terminal, hands due
//! callbacks here, and records each attempt's result (retrying failures with backoff and
//! jitter); a callback left pending by a crash is handed out again at the next start. Delivery
//! is at-least-once, and `webhook-id` stays the same across attempts so a receiver can
//! deduplicate.
//!
//! ## Layout
//! - `guard`: which targets a callback may reach (the address actually connected to).
//! - `sign`: Standard Webhooks signatures and the host's secrets.
//! - `destination`: fairness between receivers: slots and a circuit breaker per origin.

mod destination;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::guard::{self, AllowList, PinnedClients};
use crate::job::{Job, JobId, now_ms, rfc3339};
use crate::store::{Backend, CallbackFeed, CallbackResult};
use sign::Secrets;

/// Redirects a delivery follows at most (each hop checked by the guard).
const MAX_REDIRECTS: usize = 5;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 64;
/// Deliveries waiting for their destination at most (beyond it, the store's feed waits).
const MAX_WAITING: usize = 10_000;

/// Delivers due callbacks.
pub struct Sender {
    store: Arc<dyn Backend>,
    secrets: Arc<Secrets>,
    allow: AllowList,
    slots: Arc<Semaphore>,
    /// Deliveries handed out and not done yet.
    waiting: Arc<Semaphore>,
    /// Slots and breakers per receiver origin.
    destinations: destination::Destinations,
    /// Prefix of the `output_url` links in payloads (`http://host:port`, or empty).
    public_base: String,
    /// Clients by (host, checked addresses).
    clients: PinnedClients,
    /// Where each delivery's span goes (each request also carries its `traceparent`).
    tracer: crate::trace::Tracer,
}

/// A callback delivery's place in its job's trace.
struct CallbackTrace {
    trace: crate::trace::TraceId,
    span: crate::trace::SpanId,
}

impl Sender {
    /// A sender signing with `secrets`, refusing targets the guard denies unless `allow` names
    /// them, giving each attempt `timeout`, linking large outputs under `public_base`, with
    /// at most `per_destination` deliveries in flight to one receiver origin and a breaker
    /// that pauses a failing one for `cool_down`, recording a span of each delivery with
    /// `tracer`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Backend>,
        secrets: Arc<Secrets>,
        allow: AllowList,
        timeout: Duration,
        public_base: String,
        per_destination: usize,
        cool_down: Duration,
        tracer: crate::trace::Tracer,
    ) -> Sender {
        Sender {
            tracer,
            store,
            secrets,
            allow,
            public_base,
            slots: Arc::new(Semaphore::new(CONCURRENCY)),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            destinations: destination::Destinations::new(per_destination, cool_down),
            clients: PinnedClients::new(Some(timeout)),
        }
    }

    /// Delivers callbacks as the store hands them out, until it closes.
    pub async fn run(self, mut feed: CallbackFeed) {
        let this = Arc::new(self);
        while let Some(ids) = feed.recv().await {
            for id in ids {
                let waiting = this.waiting.clone().acquire_owned().await;
                let this = this.clone();
                tokio::spawn(async move {
                    let _waiting = waiting;
                    let result = this.deliver(id).await;
                    this.store.callback_done(id, result);
                });
            }
        }
    }

    /// One delivery attempt of job `id`'s callback: after a slot at its destination (and its
    /// breaker's leave), then one of the sender's.
    async fn deliver(&self, id: JobId) -> CallbackResult {
        let (url, msg_id, body, trace) = match self.prepare(id).await {
            Ok(ready) => ready,
            Err(result) => return result,
        };
        let turn = self
            .destinations
            .turn(&url.origin().ascii_serialization())
            .await;
        let slot = self.slots.acquire().await;
        let started = now_ms();
        let shown = url.to_string();
        let result = self.post(url, &msg_id, &body, &trace).await;
        drop(slot);
        self.tracer.record(crate::trace::Span {
            trace: trace.trace,
            id: trace.span,
            parent: Some(crate::trace::span_id("job", id, 0)),
            name: "callback POST".into(),
            kind: crate::trace::kind::CLIENT,
            start_ms: started,
            end_ms: now_ms(),
            attributes: vec![
                ("sluice.job.id", serde_json::json!(id.to_string())),
                ("url.full", serde_json::json!(shown)),
                ("webhook.id", serde_json::json!(msg_id)),
            ],
            error: match &result {
                CallbackResult::Failed { error, .. } => Some(error.clone()),
                CallbackResult::Delivered => None,
            },
        });
        let health = match &result {
            CallbackResult::Delivered => Some(true),
            CallbackResult::Failed { retry: true, .. } => Some(false),
            CallbackResult::Failed { retry: false, .. } => None,
        };
        self.destinations.finish(turn, health);
        result
    }

    /// What job `id`'s callback sends: its checked URL, message id and signed-to-be body.
    async fn prepare(
        &self,
        id: JobId,
    ) -> Result<(Url, String, Vec<u8>, CallbackTrace), CallbackResult> {
        let job = match self.store.job(id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                return Err(CallbackResult::Failed {
                    error: "the job is gone".into(),
                    retry: false,
                });
            }
            Err(e) => {
                return Err(CallbackResult::Failed {
                    error: e.to_string(),
                    retry: true,
                });
            }
        };
        let Some(callback) = &job.callback else {
            return Err(CallbackResult::Failed {
                error: "the job has no callback".into(),
                retry: false,
            });
        };
        let body = serde_json::to_vec(&payload(id, &job, &self.public_base))
            .expect("JSON values serialise");
        let msg_id = callback.message_id(id);
        let url =
            guard::check_url(&callback.url, &self.allow).map_err(|e| CallbackResult::Failed {
                error: e,
                retry: false,
            })?;
        // Each delivery attempt is a span of the job's trace.
        let trace = CallbackTrace {
            trace: crate::trace::trace_id_of(&job.correlation_id),
            span: crate::trace::span_id("callback", id, u64::from(callback.attempts) + 1),
        };
        Ok((url, msg_id, body, trace))
    }

    /// POSTs the signed body, following redirects hop by hop through the guard.
    async fn post(
        &self,
        mut url: Url,
        msg_id: &str,
        body: &[u8],
        trace: &CallbackTrace,
    ) -> CallbackResult {
        for _ in 0..=MAX_REDIRECTS {
            let addrs = match guard::resolve(&url, &self.allow, guard::CALLBACK).await {
                Ok(a) => a,
                Err(refusal) => {
                    return CallbackResult::Failed {
                        error: refusal.message,
                        retry: refusal.transient,
                    };
                }
            };
            let host = guard::host_of(&url).unwrap_or_default();
            // Connect only to the addresses just checked.
            let client = match self.clients.client(&host, &addrs) {
                Ok(c) => c,
                Err(e) => {
                    return CallbackResult::Failed {
                        error: format!("cannot set up the request: {e}"),
                        retry: true,
                    };
                }
            };
            let now = now_ms();
            let timestamp = now / 1000;
            let signature = self.secrets.sign(msg_id, timestamp, body, now);
            let sent = client
                .post(url.clone())
                .header("content-type", "application/json")
                .header("user-agent", concat!("sluice/", env!("CARGO_PKG_VERSION")))
                .header("webhook-id", msg_id)
                .header(
                    "traceparent",
                    crate::trace::traceparent(&trace.trace, &trace.span),
                )
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body.to_vec())
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    return CallbackResult::Failed {
                        error: format!("POST {url} failed: {e}"),
                        retry: true,
                    };
                }
            };
            // Defense in depth: the peer must be one of the checked addresses.
            if let Some(peer) = response.remote_addr()
                && !addrs.iter().any(|a| a.ip() == peer.ip())
            {
                return CallbackResult::Failed {
                    error: "connected to an address that was not checked; refused".into(),
                    retry: false,
                };
            }
            let status = response.status();
            if status.is_success() {
                return CallbackResult::Delivered;
            }
            if status.is_redirection() {
                let next = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| url.join(l).ok());
                match next {
                    Some(next) => match guard::check_url(next.as_str(), &self.allow) {
                        Ok(next) => {
                            url = next;
                            continue;
                        }
                        Err(e) => {
                            return CallbackResult::Failed {
                                error: format!("redirected to {next}: {e}"),
                                retry: false,
                            };
                        }
                    },
                    None => {
                        return CallbackResult::Failed {
                            error: format!("{status} without a usable Location"),
                            retry: true,
                        };
                    }
                }
            }
            return CallbackResult::Failed {
                error: format!("the receiver answered {status}"),
                retry: true,
            };
        }
        CallbackResult::Failed {
            error: format!("more than {MAX_REDIRECTS} redirects"),
            retry: false,
        }
    }
}

/// The callback body: the job's outcome, the output inline when small UTF-8, else a link under
/// `base` (the host's public URL).
pub fn payload(id: JobId, job: &Job, base: &str) -> Value {
    let status = job.visible_status();
    let inline = job
        .output
        .as_deref()
        .filter(|o| o.len() <= crate::job::INLINE_OUTPUT)
        .and_then(|o| std::str::from_utf8(o).ok());
    let has_output = job.output.is_some() || job.output_blob.is_some();
    let mut data = json!({
        "id": id.to_string(),
        "function": job.function,
        "status": status,
        "attempts": job.attempts,
        "created_at": rfc3339(job.created_at),
        "started_at": job.started_at.map(rfc3339),
        "finished_at": job.finished_at.map(rfc3339),
        "error": job.error,
        "correlation_id": job.correlation_id,
        "output_content_type": job.output_content_type,
        "output_size": job.output_size(),
    });
    match inline {
        Some(text) => data["output"] = text.into(),
        None if has_output => data["output_url"] = format!("{base}/v1/jobs/{id}/output").into(),
        None => {}
    }
    json!({
        "type": format!("job.{}", status.as_str()),
        "timestamp": rfc3339(now_ms()),
        "data": data,
    })
}
