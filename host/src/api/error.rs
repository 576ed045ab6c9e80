//! The API's one error shape and how domain errors map onto it.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::manifest::ManifestError;
use crate::runtime::ComponentError;
use crate::store::{CancelError, DeleteError, StoreError, SubmitError};

/// An error answer: HTTP status, stable code, and a message saying what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (429 and 503 answers).
    retry_after: Option<u64>,
}

/// `Retry-After` of a submit refused because a queue or the host's budget is full.
const RETRY_AFTER_FULL_SECS: u64 = 1;

impl ApiError {
    /// Its HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After: secs` header.
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn function_not_found(name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!(
                "function {name:?} is not deployed; deploy it with PUT /v1/functions/{name} or `sluice deploy`"
            ),
        )
    }

    pub(crate) fn job_not_found(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job with id {id:?}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// `Retry-After` of an answer refused because the data file cannot be written (a full disk is
/// retried by the host every few seconds) or the host is shutting down.
const RETRY_AFTER_STORAGE_SECS: u64 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Changed { .. } = e {
            return ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string());
        }
        if let StoreError::Unsupported(_) = e {
            return ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_supported_by_backend",
                e.to_string(),
            );
        }
        // Every request fails the same way while a disk is full: a line per second at most.
        static LOGGED: crate::logging::Sampled = crate::logging::Sampled::per_second();
        if let Some(suppressed) = LOGGED.admit() {
            tracing::error!(error = %e, suppressed, "store error answered with 503");
        }
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            e.to_string(),
        )
        .retry_after(RETRY_AFTER_STORAGE_SECS)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::FunctionNotFound(name) => ApiError::function_not_found(&name),
            e @ (SubmitError::QueueFull { .. } | SubmitError::BudgetExhausted { .. }) => {
                let code = match e {
                    SubmitError::QueueFull { .. } => "queue_full",
                    _ => "host_budget_exhausted",
                };
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, e.to_string())
                    .retry_after(RETRY_AFTER_FULL_SECS)
            }
            e @ SubmitError::IdempotencyConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", e.to_string())
            }
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl From<crate::functions::FunctionsError> for ApiError {
    fn from(e: crate::functions::FunctionsError) -> Self {
        use crate::functions::FunctionsError as E;
        match e {
            E::NotFound(name) => ApiError::function_not_found(&name),
            E::Manifest(e) => e.into(),
            e @ E::PipelineCycle { .. } => ApiError::bad_request("invalid_manifest", e.to_string()),
            E::Component(e) => e.into(),
            e @ E::ComponentMissing { .. } => {
                ApiError::new(StatusCode::CONFLICT, "component_missing", e.to_string())
            }
            E::Rollback(e) => e.into(),
            E::Delete(e) => e.into(),
            e @ E::InvalidSecret(_) => ApiError::bad_request("invalid_secret", e.to_string()),
            e @ E::TooManySecrets(_) => ApiError::bad_request("too_many_secrets", e.to_string()),
            e @ E::SecretNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "secret_not_found", e.to_string())
            }
            E::Store(e) => e.into(),
            e => {
                tracing::error!(error = %e, "functions service");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

impl From<DeleteError> for ApiError {
    fn from(e: DeleteError) -> Self {
        match e {
            DeleteError::NotFound(name) => ApiError::function_not_found(&name),
            e @ DeleteError::Busy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "function_busy", e.to_string())
            }
            DeleteError::Store(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound(id) => ApiError::job_not_found(&id.to_string()),
            e @ CancelError::NotCancellable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "job_not_cancellable", e.to_string())
            }
            CancelError::Store(e) => e.into(),
        }
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> Self {
        let code = match e {
            ManifestError::Name(_) => "invalid_name",
            _ => "invalid_manifest",
        };
        ApiError::bad_request(code, e.to_string())
    }
}

impl From<ComponentError> for ApiError {
    fn from(e: ComponentError) -> Self {
        ApiError::bad_request("invalid_component", e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        body_error(e.status(), e.body_text())
    }
}

/// Maps a failure to read the request body (most often: over the size limit).
pub(crate) fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "the request body is over the host's limit (--max-body-bytes); send less, or raise the limit",
        )
    } else {
        ApiError::new(
            status,
            "bad_request",
            format!("cannot read the request body: {text}"),
        )
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.md for the API",
    )
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see docs/api.md",
    )
}
