//! Outbound HTTP from a handler, through the standard `wasi:http/outgoing-handler`.
//!
//! ```ignore
//! use sluice_sdk::http;
//!
//! let answer = http::get("https://api.example.com/v1/status")?.error_for_status()?;
//! let charged = http::Request::post("https://api.example.com/v1/charges")
//!     .header("authorization", "Bearer ...")
//!     .json(&order)?
//!     .timeout(std::time::Duration::from_secs(5))
//!     .send()?;
//! ```
//!
//! The host sends a request only to origins the function's manifest lists in
//! `allowed_outbound_hosts`; anything else fails with [`HttpError::is_denied`] and the job's
//! log says which origin was refused. Each request carries an `Idempotency-Key` header
//! (`{job id}.{n}`, the same on every retry of the job) unless you set one. Errors turn into
//! [`crate::Error`] with `?`: a refused origin or a 4xx answer (after
//! [`Response::error_for_status`]) is permanent, anything else retryable.

use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// An HTTP method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
}

/// A request to send: build it, then [`Request::send`].
#[derive(Clone, Debug)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

/// GETs `url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// POSTs `body` to `url`.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response, HttpError> {
    Request::post(url).body(body).send()
}

/// POSTs `value` as JSON to `url`.
pub fn post_json<T: serde::Serialize + ?Sized>(
    url: &str,
    value: &T,
) -> Result<Response, HttpError> {
    Request::post(url).json(value)?.send()
}

impl Request {
    /// A request with `method` to `url` (`http://` or `https://`).
    pub fn new(method: Method, url: &str) -> Self {
        Request {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }

    /// A GET request.
    pub fn get(url: &str) -> Self {
        Self::new(Method::Get, url)
    }

    /// A POST request.
    pub fn post(url: &str) -> Self {
        Self::new(Method::Post, url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets `value` as a JSON body (and `content-type: application/json`).
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Self, HttpError> {
        let body = serde_json::to_vec(value).map_err(|e| HttpError {
            kind: Kind::Invalid,
            message: format!("cannot encode the JSON body: {e}"),
        })?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Gives up waiting for the response's headers after `timeout` (the host also bounds
    /// every request by what is left of the attempt's time).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let invalid = |message: String| HttpError {
            kind: Kind::Invalid,
            message,
        };
        let (scheme, rest) = match self.url.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            _ => {
                return Err(invalid(format!(
                    "{:?} is not an http:// or https:// URL",
                    self.url
                )));
            }
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(invalid(format!("{:?} has no host", self.url)));
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };

        let mut entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
            .collect();
        if !self.body.is_empty() && !self.headers.iter().any(|(n, _)| n == "content-length") {
            entries.push((
                "content-length".into(),
                self.body.len().to_string().into_bytes(),
            ));
        }
        let headers = Fields::from_list(&entries)
            .map_err(|e| invalid(format!("a header is not allowed or not valid: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let method = match self.method {
            Method::Get => WasiMethod::Get,
            Method::Head => WasiMethod::Head,
            Method::Post => WasiMethod::Post,
            Method::Put => WasiMethod::Put,
            Method::Patch => WasiMethod::Patch,
            Method::Delete => WasiMethod::Delete,
            Method::Options => WasiMethod::Options,
        };
        let bad = |what: &str| invalid(format!("invalid {what} in {:?}", self.url));
        request.set_method(&method).map_err(|_| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| bad("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|_| bad("host"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|_| bad("path"))?;
        let body = request.body().map_err(|_| bad("body"))?;

        let options = self.timeout.map(|t| {
            let options = RequestOptions::new();
            let nanos = t.as_nanos().min(u64::MAX as u128) as u64;
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            options
        });
        // Send first, then write the body: the host reads it while it is written.
        let pending = outgoing_handler::handle(request, options).map_err(HttpError::from_code)?;
        {
            let stream = body.write().map_err(|_| bad("body"))?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(stream_error)?;
            }
        }
        OutgoingBody::finish(body, None).map_err(HttpError::from_code)?;

        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(HttpError::from_code(code)),
            _ => {
                return Err(HttpError {
                    kind: Kind::Other,
                    message: "the response was lost".into(),
                });
            }
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response.consume().map_err(|_| bad("response body"))?;
        let mut data = Vec::new();
        {
            let stream = incoming.stream().map_err(|_| bad("response body"))?;
            loop {
                match stream.blocking_read(64 << 10) {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(stream_error(e)),
                }
            }
        }
        drop(IncomingBody::finish(incoming));
        Ok(Response {
            status,
            headers,
            body: data,
        })
    }
}

fn stream_error(e: StreamError) -> HttpError {
    match e {
        StreamError::LastOperationFailed(e) => {
            match wasip2::http::types::http_error_code(&e) {
                Some(code) => HttpError::from_code(code),
                None => {
                    // The host's description, without any backtrace it carries.
                    let text = e.to_debug_string();
                    let first = text.lines().next().unwrap_or("the response body failed");
                    HttpError {
                        kind: Kind::Other,
                        message: first.to_string(),
                    }
                }
            }
        }
        StreamError::Closed => HttpError {
            kind: Kind::Other,
            message: "the connection closed early".into(),
        },
    }
}

/// A response, read whole.
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError {
            kind: Kind::Invalid,
            message: format!(
                "the response (status {}) is not the JSON expected: {e}",
                self.status
            ),
        })
    }

    /// The response itself when its status is 1xx-3xx; otherwise an error: 4xx is permanent
    /// (the same request will be refused again), 5xx and 429 retryable.
    pub fn error_for_status(self) -> Result<Response, HttpError> {
        if self.status < 400 {
            return Ok(self);
        }
        let kind = if self.status >= 500 || self.status == 429 {
            Kind::ServerError
        } else {
            Kind::ClientError
        };
        let mut excerpt = self.text();
        excerpt.truncate(excerpt.floor_char_boundary(200));
        Err(HttpError {
            kind,
            message: format!("answered {}: {excerpt}", self.status),
        })
    }
}

/// Why a request failed.
#[derive(Clone, Debug)]
pub struct HttpError {
    kind: Kind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Denied,
    Timeout,
    Invalid,
    ClientError,
    ServerError,
    Other,
}

impl HttpError {
    fn from_code(code: ErrorCode) -> HttpError {
        let kind = match code {
            ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => Kind::Denied,
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout
            | ErrorCode::DnsTimeout => Kind::Timeout,
            _ => Kind::Other,
        };
        let message = match kind {
            Kind::Denied => format!(
                "{code:?}: the host refused the request (see the job's log: the origin must be in the function's allowed_outbound_hosts, and an internal address needs the operator's --allow-outbound-host)"
            ),
            _ => format!("{code:?}"),
        };
        HttpError { kind, message }
    }

    /// True when the host refused to send the request (an origin not in
    /// `allowed_outbound_hosts`, or an internal address).
    pub fn is_denied(&self) -> bool {
        self.kind == Kind::Denied
    }

    /// True when the request or its response took too long.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// True for a 4xx answer (see [`Response::error_for_status`]).
    pub fn is_client_error(&self) -> bool {
        self.kind == Kind::ClientError
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP request failed: {}", self.message)
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        match e.kind {
            Kind::Denied | Kind::Invalid | Kind::ClientError => {
                crate::Error::permanent(e.to_string())
            }
            Kind::Timeout | Kind::ServerError | Kind::Other => {
                crate::Error::retryable(e.to_string())
            }
        }
    }
}
