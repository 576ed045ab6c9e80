//! Traces: W3C trace context carried through a job's life, and spans exported over OTLP/HTTP.
//!
//! Every job belongs to the trace its correlation id names: a request's `traceparent` makes
//! its trace id the correlation id, and everything the job causes (emitted events and jobs,
//! pipeline stages) carries that correlation id on, so one trace id spans them all. Span ids
//! are derived from the job (and attempt, and call) they stand for, so every host names the
//! same span the same way without storing anything:
//! - a job's span (`PRODUCER`, exported when its first attempt starts), under the caller's
//!   span for a traced request (the `traceparent`'s parent id, kept on the job), the attempt
//!   that enqueued it or whose output it carries on, or the event it delivers;
//! - an event's span (`PRODUCER`): a published one's when the API accepts it, under the
//!   caller's; an emitted one's when the attempt that emitted it ends, under that attempt's;
//! - each attempt's span (`CONSUMER`), under its job's;
//! - each outbound HTTP request's span (`CLIENT`), under its attempt's: the request carries a
//!   `traceparent` naming it, so the service called continues the trace;
//! - each webhook callback's span (`CLIENT`), under its job's, sent with its `traceparent`.
//!
//! With `--otlp-endpoint URL` the host sends finished spans to `URL/v1/traces` (OTLP/HTTP,
//! JSON encoding) in batches; without it nothing is exported and only the headers are sent.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::job::JobId;

/// A trace id: 16 bytes.
pub type TraceId = [u8; 16];
/// A span id: 8 bytes.
pub type SpanId = [u8; 8];

/// The trace a correlation id names: the id itself when it is a trace id (32 hex digits, as
/// a `traceparent` makes it), the 128 bits of a job or event id, a hash of anything else.
pub fn trace_id_of(correlation_id: &str) -> TraceId {
    let mut out = [0u8; 16];
    if correlation_id.len() == 32 && hex::decode_to_slice(correlation_id, &mut out).is_ok() {
        return out;
    }
    if let Ok(id) = correlation_id.parse::<JobId>() {
        return id.0.to_be_bytes();
    }
    out.copy_from_slice(&sha2::Sha256::digest(correlation_id.as_bytes())[..16]);
    out
}

/// The span id of what `kind` names: `job`, `event` (by id), `attempt` (by job and attempt),
/// `call` (by job, attempt and request), `callback` (by job and round).
pub fn span_id(kind: &str, id: JobId, n: u64) -> SpanId {
    let mut hash = sha2::Sha256::new();
    hash.update(kind.as_bytes());
    hash.update(id.0.to_be_bytes());
    hash.update(n.to_be_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash.finalize()[..8]);
    if out == [0; 8] {
        out[7] = 1;
    }
    out
}

/// The span of attempt `attempt` of job `job`.
pub fn attempt_span(job: JobId, attempt: u32) -> SpanId {
    span_id("attempt", job, u64::from(attempt))
}

/// The span of the `n`th event (from 0) that attempt `attempt` of job `job` emitted: its
/// deliveries' spans hang under it (the event's Sluice id is not known when it is recorded).
pub fn emit_span(job: JobId, attempt: u32, n: u32) -> SpanId {
    span_id("emit", job, (u64::from(attempt) << 32) | u64::from(n))
}

/// A span id as a job record keeps it.
pub fn span_number(span: &SpanId) -> u64 {
    u64::from_be_bytes(*span)
}

/// The span id a job record keeps as a number.
pub fn span_of_number(n: u64) -> SpanId {
    n.to_be_bytes()
}

/// The span of attempt `attempt`'s request number `n` (from 1).
pub fn call_span(job: JobId, attempt: u32, n: u32) -> SpanId {
    span_id("call", job, (u64::from(attempt) << 32) | u64::from(n))
}

/// A `traceparent` header naming `span` of `trace` (sampled).
pub fn traceparent(trace: &TraceId, span: &SpanId) -> String {
    format!("00-{}-{}-01", hex::encode(trace), hex::encode(span))
}

/// A span, finished.
#[derive(Clone, Debug)]
pub struct Span {
    /// Its trace.
    pub trace: TraceId,
    /// Its id.
    pub id: SpanId,
    /// Its parent's id, if any.
    pub parent: Option<SpanId>,
    /// What it does, e.g. `echo` or `POST`.
    pub name: String,
    /// OTLP span kind: 3 client, 4 producer, 5 consumer.
    pub kind: u8,
    /// Start and end, in ms since the Unix epoch.
    pub start_ms: u64,
    /// See `start_ms`.
    pub end_ms: u64,
    /// Attributes (string, integer or boolean values).
    pub attributes: Vec<(&'static str, Value)>,
    /// An error message when it failed.
    pub error: Option<String>,
}

/// Span kinds (OTLP's numbering).
pub mod kind {
    /// A request sent.
    pub const CLIENT: u8 = 3;
    /// Work handed on (a job accepted).
    pub const PRODUCER: u8 = 4;
    /// Work taken up (an attempt).
    pub const CONSUMER: u8 = 5;
}

/// Where finished spans go: an OTLP/HTTP endpoint, or nowhere. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer {
    spans: Option<mpsc::UnboundedSender<Span>>,
}

/// Spans sent in one request at most.
const BATCH: usize = 512;
/// How long a span waits for others to go with it.
const LINGER: Duration = Duration::from_millis(500);

impl Tracer {
    /// Exports to `endpoint` (e.g. `http://collector:4318`), or nowhere when `None`. Starts
    /// the exporting task (in the current Tokio runtime).
    pub fn new(endpoint: Option<&str>) -> Tracer {
        let Some(endpoint) = endpoint else {
            return Tracer::default();
        };
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(export(url, rx));
        Tracer { spans: Some(tx) }
    }

    /// Whether spans go anywhere.
    pub fn is_on(&self) -> bool {
        self.spans.is_some()
    }

    /// Hands a finished span to the exporter (dropped when exporting is off).
    pub fn record(&self, span: Span) {
        if let Some(spans) = &self.spans {
            let _ = spans.send(span);
        }
    }
}

/// Sends spans in batches until every sender is gone.
async fn export(url: String, mut spans: mpsc::UnboundedReceiver<Span>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let mut failures = 0u64;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let sent = http.post(&url).json(&request(&batch)).send().await;
        match sent.map(|r| r.status()) {
            Ok(status) if status.is_success() => failures = 0,
            outcome => {
                failures += 1;
                // Spans are best effort: logged (once in a while), never retried.
                if failures.is_power_of_two() {
                    tracing::warn!(url, ?outcome, failures, "spans were not accepted by the OTLP endpoint");
                }
            }
        }
    }
}

/// An OTLP/HTTP JSON `ExportTraceServiceRequest` of `spans`.
fn request(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans.iter().map(span_json).collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "sluice"}},
                {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "sluice", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
}

fn span_json(span: &Span) -> Value {
    let attributes: Vec<Value> = span
        .attributes
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| {
            let value = match value {
                Value::Bool(b) => json!({"boolValue": b}),
                Value::Number(n) if n.is_u64() || n.is_i64() => json!({"intValue": n.to_string()}),
                Value::Number(n) => json!({"doubleValue": n.as_f64()}),
                Value::String(s) => json!({"stringValue": s}),
                other => json!({"stringValue": other.to_string()}),
            };
            json!({"key": key, "value": value})
        })
        .collect();
    let mut v = json!({
        "traceId": hex::encode(span.trace),
        "spanId": hex::encode(span.id),
        "name": span.name,
        "kind": span.kind,
        "startTimeUnixNano": (u128::from(span.start_ms) * 1_000_000).to_string(),
        "endTimeUnixNano": (u128::from(span.end_ms.max(span.start_ms)) * 1_000_000).to_string(),
        "attributes": attributes,
        "status": match &span.error {
            Some(message) => json!({"code": 2, "message": message}),
            None => json!({"code": 1}),
        },
    });
    if let Some(parent) = span.parent {
        v["parentSpanId"] = hex::encode(parent).into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_follow_the_correlation_id() {
        let w3c = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(hex::encode(trace_id_of(w3c)), w3c);
        let job: JobId = "01M996CCB7BG7ZBP2V6P9JY700".parse().unwrap();
        assert_eq!(trace_id_of(&job.to_string()), job.0.to_be_bytes());
        assert_eq!(trace_id_of("order-42"), trace_id_of("order-42"));
        assert_ne!(trace_id_of("order-42"), trace_id_of("order-43"));
        let p = traceparent(&trace_id_of(w3c), &span_id("job", job, 0));
        assert!(p.starts_with(&format!("00-{w3c}-")) && p.ends_with("-01") && p.len() == 55);
        assert_ne!(span_id("attempt", job, 1), span_id("attempt", job, 2));
        assert_ne!(call_span(job, 1, 2), call_span(job, 2, 1));
    }
}
