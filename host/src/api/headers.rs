//! The request headers a submit or a publish takes: priority, delay, idempotency key,
//! correlation (`Sluice-Correlation-Id` or W3C `traceparent`), ordering key, callback. Each is
//! checked here once, with an error that names the header and its form.

use axum::http::HeaderMap;

use super::{ApiError, AppState};
use crate::job::{DEFAULT_PRIORITY, MAX_PRIORITY, now_ms};
use crate::store::IdempotencyKey;

/// Longest delay a submit may ask for, in seconds (a year).
pub(crate) const MAX_DELAY_SECS: f64 = 365.0 * 24.0 * 3600.0;
/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Longest accepted `Sluice-Correlation-Id`.
const MAX_CORRELATION_ID: usize = 128;
/// Longest accepted `Sluice-Ordering-Key`, in bytes.
const MAX_ORDERING_KEY: usize = 256;

/// `Sluice-Priority: 0-9` (default 5).
pub(crate) fn priority(headers: &HeaderMap) -> Result<u8, ApiError> {
    let Some(value) = headers.get("sluice-priority") else {
        return Ok(DEFAULT_PRIORITY);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .filter(|p| *p <= MAX_PRIORITY)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                "Sluice-Priority must be a whole number from 0 (lowest) to 9 (highest)",
            )
        })
}

/// `Sluice-Delay: SECONDS` or `Sluice-Not-Before: RFC3339`: when the job may run first.
pub(crate) fn not_before(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let delay = headers.get("sluice-delay");
    let at = headers.get("sluice-not-before");
    let bad = |m: &str| ApiError::bad_request("invalid_header", m);
    match (delay, at) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(bad("send Sluice-Delay or Sluice-Not-Before, not both")),
        (Some(d), None) => {
            let secs = d
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && (0.0..=MAX_DELAY_SECS).contains(s))
                .ok_or_else(|| {
                    bad("Sluice-Delay must be a number of seconds from 0 to 31536000 (a year)")
                })?;
            Ok(Some(now_ms() + (secs * 1000.0) as u64))
        }
        (None, Some(t)) => {
            let time = t
                .to_str()
                .ok()
                .and_then(|v| humantime::parse_rfc3339_weak(v.trim()).ok())
                .ok_or_else(|| {
                    bad("Sluice-Not-Before must be an RFC 3339 time, e.g. 2026-11-25T08:00:00Z")
                })?;
            let ms = time
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            if ms > now_ms() + (MAX_DELAY_SECS * 1000.0) as u64 {
                return Err(bad("Sluice-Not-Before must be within a year from now"));
            }
            Ok(Some(ms))
        }
    }
}

/// The `Idempotency-Key` header (1-255 visible ASCII characters) with the request's
/// fingerprint: SHA-256 of the content type and the body.
pub(crate) fn idempotency_key(
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
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
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

/// A W3C `traceparent` header's trace id (32 hex digits) and parent span.
pub(crate) struct TraceContext {
    trace: String,
    parent: u64,
}

/// A W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), checked.
fn traceparent(headers: &HeaderMap) -> Result<Option<TraceContext>, ApiError> {
    let Some(value) = headers.get("traceparent") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    let parts: Vec<&str> = text.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [version, trace, parent, flags, ..]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && hex(parent, 16)
                && hex(flags, 2) =>
        {
            Ok(Some(TraceContext {
                trace: trace.to_string(),
                parent: u64::from_str_radix(parent, 16).expect("16 hex digits"),
            }))
        }
        _ => Err(ApiError::bad_request(
            "invalid_header",
            "traceparent must be a W3C trace context: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>",
        )),
    }
}

/// The caller's span, from a `traceparent` naming the trace `correlation_id` stands for (a
/// `Sluice-Correlation-Id` of another trace leaves the caller's span out of Sluice's trace).
pub(crate) fn caller_span(headers: &HeaderMap, correlation_id: Option<&str>) -> Option<u64> {
    match traceparent(headers) {
        Ok(Some(t)) if Some(t.trace.as_str()) == correlation_id && t.parent != 0 => Some(t.parent),
        _ => None,
    }
}

/// `Sluice-Callback: URL`: checked now as far as it can be without resolving (scheme, a
/// literal internal address); the sender checks the resolved address of every hop.
pub(crate) fn callback(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("sluice-callback") else {
        return Ok(None);
    };
    let url = value.to_str().map_err(|_| {
        ApiError::bad_request("invalid_callback", "Sluice-Callback must be a URL in ASCII")
    })?;
    crate::guard::check_url(url, &state.allow_callbacks)
        .map_err(|m| ApiError::bad_request("invalid_callback", m))?;
    Ok(Some(url.to_string()))
}

/// A submit's concurrency key (see `crate::flow`): `Sluice-Concurrency-Key`, else what the
/// function's `concurrency_key` rule finds in the request's headers or in `input`.
pub(crate) fn concurrency_key(
    state: &AppState,
    function: &str,
    headers: &HeaderMap,
    input: &[u8],
) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get("sluice-concurrency-key") {
        return match value.to_str() {
            Ok(s) if crate::flow::valid_key(s) => Ok(Some(s.to_string())),
            _ => Err(ApiError::bad_request(
                "invalid_header",
                format!(
                    "Sluice-Concurrency-Key must be 1 to {} visible characters",
                    crate::flow::MAX_KEY_LEN
                ),
            )),
        };
    }
    Ok(state
        .runtime
        .function(function)
        .and_then(|code| code.record.concurrency_key.clone())
        .and_then(|rule| rule.key_of(Some(headers), input)))
}

/// `Sluice-Debounce-Key`: a newer submit with the same key replaces the waiting job (see
/// `store::debounce`). The function must debounce (`debounce_ms`); a key cannot go with an
/// ordering key or a delay of the request's own.
pub(crate) fn debounce_key(
    state: &AppState,
    function: &str,
    headers: &HeaderMap,
) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("sluice-debounce-key") else {
        return Ok(None);
    };
    let key = match value.to_str() {
        Ok(s) if crate::flow::valid_key(s) => s.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_header",
                format!(
                    "Sluice-Debounce-Key must be 1 to {} visible characters",
                    crate::flow::MAX_KEY_LEN
                ),
            ));
        }
    };
    for other in ["sluice-ordering-key", "sluice-delay", "sluice-not-before"] {
        if headers.contains_key(other) {
            return Err(ApiError::bad_request(
                "invalid_header",
                format!("Sluice-Debounce-Key cannot go with {other}: the debounce sets when the job runs"),
            ));
        }
    }
    let debounces = state
        .runtime
        .function(function)
        .is_some_and(|code| code.record.settings.debounce_ms.is_some());
    if !debounces && state.runtime.function(function).is_some() {
        return Err(ApiError::bad_request(
            "invalid_header",
            format!(
                "function {function} does not debounce: deploy it with debounce_ms = N (and optionally debounce_max_ms) to use Sluice-Debounce-Key"
            ),
        ));
    }
    Ok(Some(key))
}

/// `Sluice-Ordering-Key`: jobs of a function with the same key run one at a time, in order.
pub(crate) fn ordering_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("sluice-ordering-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= MAX_ORDERING_KEY && !s.contains('\0') => {
            Ok(Some(s.to_string()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_header",
            format!("Sluice-Ordering-Key must be 1 to {MAX_ORDERING_KEY} visible characters"),
        )),
    }
}

/// The request's correlation id: `Sluice-Correlation-Id`, else the trace id of a W3C
/// `traceparent` (so a traced caller finds everything its request caused under its trace id),
/// else none (the store uses the new job's or event's own id).
pub(crate) fn correlation_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("sluice-correlation-id") else {
        return Ok(traceparent(headers)?.map(|t| t.trace));
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
