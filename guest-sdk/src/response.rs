//! What a handler returns: a [`Response`] or an [`Error`].

use crate::__private::{RawError, RawResponse};

/// A successful result: output bytes plus their media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The output bytes, stored as the job's output.
    data: Vec<u8>,
    /// Media type of `data`; `None` means `application/octet-stream`.
    content_type: Option<String>,
}

impl Response {
    /// Raw bytes with an explicit media type.
    pub fn bytes(data: impl Into<Vec<u8>>, content_type: impl Into<String>) -> Self {
        Response {
            data: data.into(),
            content_type: Some(content_type.into()),
        }
    }

    /// UTF-8 text (`text/plain; charset=utf-8`).
    pub fn text(text: impl Into<String>) -> Self {
        Response::bytes(text.into(), "text/plain; charset=utf-8")
    }

    /// `value` serialised as JSON (`application/json`).
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, Error> {
        serde_json::to_vec(value)
            .map(|data| Response::bytes(data, "application/json"))
            .map_err(|e| Error::Permanent(format!("could not serialise the response: {e}")))
    }

    /// No output.
    pub fn empty() -> Self {
        Response {
            data: Vec::new(),
            content_type: None,
        }
    }

    pub(crate) fn into_raw(self) -> RawResponse {
        RawResponse {
            data: self.data,
            content_type: self.content_type,
        }
    }
}

impl From<String> for Response {
    fn from(text: String) -> Self {
        Response::text(text)
    }
}

impl From<&str> for Response {
    fn from(text: &str) -> Self {
        Response::text(text)
    }
}

impl From<serde_json::Value> for Response {
    fn from(value: serde_json::Value) -> Self {
        Response::bytes(value.to_string(), "application/json")
    }
}

/// Why a handler failed. The host decides what happens next from the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A transient failure (a dependency was down, a timeout): the attempt may be retried.
    Retryable(String),
    /// The event can never succeed (bad input, a business rule): it is not retried.
    Permanent(String),
}

impl Error {
    /// A transient failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Error::Retryable(message.into())
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Error::Permanent(message.into())
    }

    pub(crate) fn into_raw(self) -> RawError {
        match self {
            Error::Retryable(m) => RawError::Retryable(m),
            Error::Permanent(m) => RawError::Permanent(m),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Retryable(m) => write!(f, "retryable: {m}"),
            Error::Permanent(m) => write!(f, "permanent: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Bad JSON input can never succeed on retry: it is a permanent error.
impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Permanent(format!("JSON error: {e}"))
    }
}
