//! Handlers' outbound HTTP: the standard `wasi:http/outgoing-handler`, sent by the host on the
//! handler's behalf under three checks. The function's manifest must allow the origin
//! (`allowed_outbound_hosts`, default none); the SSRF guard must pass the address actually
//! connected to (loopback, private and link-local only with `serve --allow-outbound-host`);
//! and the attempt's bounds hold (requests per attempt, bytes per request and response, a
//! timeout within the attempt's remaining time). Redirects are handed to the handler, never
//! followed. Each request carries `Idempotency-Key: {job id}.{n}` unless the handler set one,
//! and is recorded on the attempt.
//!
//! ## Layout
//! - `allowed`: the `allowed_outbound_hosts` patterns.

pub mod allowed;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use parking_lot::Mutex;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::sandbox::LogSink;
use crate::guard::{self, AllowList, PinnedClients};
use crate::job::{JobId, OutboundCall, now_ms};
use allowed::{AllowedHost, default_port, origin};

/// The host-wide bounds on outbound requests (`serve` flags).
#[derive(Clone, Copy, Debug)]
pub struct OutboundLimits {
    /// Requests one attempt may send.
    pub max_requests: u32,
    /// Largest request body, in bytes.
    pub max_request_bytes: usize,
    /// Largest response body, in bytes: reading past it fails in the guest.
    pub max_response_bytes: usize,
    /// Longest one request may take until its response headers (never past the attempt's
    /// own timeout).
    pub timeout: Duration,
}

impl OutboundLimits {
    /// Defaults that a normal handler never meets.
    pub const DEFAULT: OutboundLimits = OutboundLimits {
        max_requests: 64,
        max_request_bytes: 16 << 20,
        max_response_bytes: 16 << 20,
        timeout: Duration::from_secs(30),
    };
}

/// What every attempt's outbound requests share: the operator's allow-list, the bounds, and
/// the connection pools (reused across attempts to the same origin).
pub struct Egress {
    allow: AllowList,
    clients: PinnedClients,
    limits: OutboundLimits,
}

impl Egress {
    /// Outbound requests under `limits`, to internal addresses only where `allow` names them.
    pub fn new(allow: AllowList, limits: OutboundLimits) -> Egress {
        Egress {
            allow,
            clients: PinnedClients::new(None),
            limits,
        }
    }
}

/// One attempt's side of outbound HTTP: the wasi-http hooks that judge and send its requests.
pub(crate) struct OutboundHooks {
    egress: Arc<Egress>,
    /// The function's `allowed_outbound_hosts`.
    allowed: Arc<[AllowedHost]>,
    /// The job's id: the stem of each request's idempotency key.
    job: JobId,
    attempt: u32,
    /// The job's trace: each request carries a `traceparent` naming its own span in it.
    trace: crate::trace::TraceId,
    /// When the attempt times out: no request outlives it.
    deadline: Instant,
    /// Requests sent so far.
    sent: u32,
    log: LogSink,
    /// What the attempt's requests did, for its history.
    calls: Arc<Mutex<Vec<OutboundCall>>>,
}

impl OutboundHooks {
    pub(crate) fn new(
        egress: Arc<Egress>,
        allowed: Arc<[AllowedHost]>,
        job: JobId,
        attempt: u32,
        trace: crate::trace::TraceId,
        deadline: Instant,
        log: LogSink,
    ) -> Self {
        OutboundHooks {
            egress,
            allowed,
            job,
            attempt,
            trace,
            deadline,
            sent: 0,
            log,
            calls: Arc::default(),
        }
    }

    /// The requests recorded so far (take them once the attempt is over).
    pub(crate) fn calls(&self) -> Vec<OutboundCall> {
        std::mem::take(&mut *self.calls.lock())
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let (mut parts, body) = request.into_parts();
        let scheme = parts
            .uri
            .scheme_str()
            .unwrap_or("https")
            .to_ascii_lowercase();
        let host = parts.uri.host().unwrap_or("").to_ascii_lowercase();
        let port = parts.uri.port_u16().unwrap_or(default_port(&scheme));
        let origin = origin(&scheme, &host, port);
        self.sent += 1;
        let n = self.sent;
        let mut call = OutboundCall {
            attempt: self.attempt,
            at: now_ms(),
            method: parts.method.to_string(),
            origin: origin.clone(),
            path: parts.uri.path().to_string(),
            status: None,
            error: None,
            duration_ms: 0,
        };
        let refuse = |call: &mut OutboundCall,
                      calls: &Mutex<Vec<OutboundCall>>,
                      why: String,
                      error: Error| {
            call.error = Some(why);
            calls.lock().push(call.clone());
            let fut: Box<dyn Future<Output = SendResult> + Send> =
                Box::new(async move { Err(error) });
            fut
        };
        let limits = self.egress.limits;
        if n > limits.max_requests {
            let why = format!(
                "refused: an attempt may send at most {} requests (the host operator sets --max-outbound-requests)",
                limits.max_requests
            );
            self.log
                .line("sluice", &format!("outbound request {n} to {origin} {why}"));
            return refuse(&mut call, &self.calls, why, Error::ConnectionLimitReached);
        }
        if !self.allowed.iter().any(|a| a.permits(&scheme, &host, port)) {
            let why = format!(
                "refused: {origin} is not in the function's allowed_outbound_hosts; allow it with allowed_outbound_hosts = [\"{origin}\"] in sluice.toml"
            );
            self.log
                .line("sluice", &format!("outbound request to {origin} {why}"));
            return refuse(&mut call, &self.calls, why, Error::HttpRequestDenied);
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let mut timeout = limits.timeout.min(remaining);
        if let Some(first_byte) = options.and_then(|o| o.first_byte_timeout) {
            timeout = timeout.min(first_byte);
        }
        if !parts.headers.contains_key("idempotency-key")
            && let Ok(key) = http::HeaderValue::from_str(&format!("{}.{n}", self.job))
        {
            parts.headers.insert("idempotency-key", key);
        }
        // The trace goes on, under this request's own span (unless the handler set one).
        if !parts.headers.contains_key("traceparent")
            && let Ok(value) = http::HeaderValue::from_str(&crate::trace::traceparent(
                &self.trace,
                &crate::trace::call_span(self.job, self.attempt, n),
            ))
        {
            parts.headers.insert("traceparent", value);
        }
        // The URL as the client sends it: the guest cannot set Host (wasi-http forbids it), and
        // the client writes it from the URL.
        parts.headers.remove(http::header::HOST);
        let egress = self.egress.clone();
        let calls = self.calls.clone();
        let log = self.log.clone();
        // Recorded now, so a request still in flight when the attempt ends is on record too;
        // its answer (or failure) replaces the placeholder error.
        call.error = Some("no answer before the attempt ended".into());
        let index = {
            let mut calls = calls.lock();
            calls.push(call.clone());
            calls.len() - 1
        };
        Box::new(async move {
            let started = Instant::now();
            let sent = tokio::time::timeout(timeout, egress.send(parts, body, &log)).await;
            let result = match sent {
                Ok(result) => result,
                Err(_) => Err((
                    format!("timed out after {} ms", timeout.as_millis()),
                    Error::ConnectionReadTimeout,
                )),
            };
            call.duration_ms = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
            let (answer, record) = match result {
                Ok(response) => {
                    call.status = Some(response.status().as_u16());
                    call.error = None;
                    let io: Box<dyn Future<Output = Result<(), Error>> + Send> =
                        Box::new(async { Ok(()) });
                    (Ok((response, io)), call)
                }
                Err((why, error)) => {
                    call.error = Some(why);
                    (Err(error), call)
                }
            };
            if let Some(slot) = calls.lock().get_mut(index) {
                *slot = record;
            }
            answer
        })
    }
}

impl Egress {
    /// Sends one request through the guard: resolve, check every address, connect only to
    /// them, and bound the response body.
    async fn send(
        &self,
        parts: http::request::Parts,
        body: WasiBody,
        log: &LogSink,
    ) -> Result<http::Response<WasiBody>, (String, Error)> {
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| (format!("invalid URL: {e}"), Error::HttpRequestUriInvalid))?;
        let addrs = guard::resolve(&url, &self.allow, guard::OUTBOUND)
            .await
            .map_err(|refusal| {
                log.line("sluice", &refusal.message);
                let error = if refusal.transient {
                    Error::DnsError {
                        rcode: None,
                        info_code: None,
                    }
                } else {
                    Error::DestinationIpProhibited
                };
                (refusal.message, error)
            })?;
        let host = guard::host_of(&url).unwrap_or_default();
        let body = collect(body, self.limits.max_request_bytes).await?;
        let client = self.clients.client(&host, &addrs).map_err(|e| {
            (
                format!("cannot set up a client: {e}"),
                Error::InternalError(None),
            )
        })?;
        let mut request = client.request(parts.method, url);
        for (name, value) in &parts.headers {
            request = request.header(name, value);
        }
        let response = request.body(body).send().await.map_err(|e| {
            let error = if e.is_timeout() {
                Error::ConnectionReadTimeout
            } else if e.is_connect() {
                Error::ConnectionRefused
            } else {
                Error::HttpProtocolError
            };
            (format!("{e}"), error)
        })?;
        // Defense in depth: the peer must be one of the checked addresses.
        if let Some(peer) = response.remote_addr()
            && !addrs.iter().any(|a| a.ip() == peer.ip())
        {
            return Err((
                "connected to an address that was not checked; refused".into(),
                Error::DestinationIpProhibited,
            ));
        }
        let cap = self.limits.max_response_bytes;
        let response: http::Response<reqwest::Body> = response.into();
        Ok(response.map(|body| {
            Limited::new(body, cap)
                .map_err(move |e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Error::HttpResponseBodySize(Some(cap as u64))
                    } else {
                        Error::HttpResponseIncomplete
                    }
                })
                .boxed_unsync()
        }))
    }
}

/// Reads a request body of at most `max` bytes.
async fn collect(mut body: WasiBody, max: usize) -> Result<Bytes, (String, Error)> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (format!("reading the request body failed: {e}"), e))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err((
                    format!(
                        "the request body is over {max} bytes (the host operator sets --max-outbound-request-bytes)"
                    ),
                    Error::HttpRequestBodySize(Some(max as u64)),
                ));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
