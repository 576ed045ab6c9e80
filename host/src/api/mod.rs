//! The HTTP API: routes, the shared state and the one JSON error shape.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a stable `code`; see
//! `docs/api.md` for the reference.
//!
//! ## Layout
//! - `error`: [`ApiError`] and the mapping from domain errors.
//! - `functions`: deploy, configure, list, show, delete functions; their stats.
//! - `lifecycle`: a function's versions, rollback, pause and resume.
//! - `headers`: the submit and publish headers, checked once.
//! - `jobs`: submit, show (long-poll), output, list, cancel jobs.
//! - `dead_letters`: a function's dead-letter queue: list, redrive, purge.
//! - `topics`: publish CloudEvents to topics; list topics; show a published event.
//! - `auth`: API tokens and scopes (a middleware on every route).
//! - `secret`: the webhook signing secret: show, rotate.
//! - `function_secrets`: a function's secrets: set, remove, list names.
//! - `kv`: a function's key-value state: get, set, delete, list keys.
//! - `streams`: Server-Sent Events of a job's status changes and a function's figures.
//! - `recent`: each function's outcomes over the last minutes (throughput, error rate).
//! - `openapi`: the API's OpenAPI 3.1 description, generated from the handlers.
//! - `metrics`: `GET /metrics` in the Prometheus text format.
//! - `listen`: accepting connections: a bound on how many, timeouts for slow and idle ones.

pub mod auth;
mod batch;
mod dead_letters;
mod error;
pub(crate) mod function_secrets;
mod functions;
mod headers;
mod job_json;
mod jobs;
mod kv;
mod lifecycle;
pub(crate) mod listen;
mod metrics;
pub(crate) mod openapi;
mod recent;
mod schedules;
mod secret;
mod streams;
mod topics;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::guard::AllowList;
use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::store::Backend;
use crate::webhook::sign::Secrets;
pub use error::ApiError;

/// What every handler can reach: one shared allocation, so the clone axum makes per request is
/// one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

/// The host's parts the API uses.
pub struct AppParts {
    /// Durable state.
    pub(crate) store: Arc<dyn Backend>,
    /// Compiles and runs components.
    pub(crate) runtime: Arc<Runtime>,
    /// Told about deploys and deletes.
    pub(crate) scheduler: Scheduler,
    /// Host settings (limits, caps).
    pub(crate) config: Arc<Config>,
    /// Cancelled when the host starts shutting down: long-polls return early.
    pub(crate) stopping: CancellationToken,
    /// Webhook signing secrets (shown and rotated here, used by the sender).
    pub(crate) secrets: Arc<Secrets>,
    /// Callback targets allowed although internal.
    pub(crate) allow_callbacks: AllowList,
    /// Deploys, changes and removes functions (catalog, runtime and scheduler in step).
    pub(crate) functions: Arc<crate::functions::Functions>,
    /// Each function's outcomes over the last minutes.
    pub(crate) recent: Arc<recent::Recent>,
    /// Where spans of published events go.
    pub(crate) tracer: crate::trace::Tracer,
    /// Server-Sent Event streams that may still open (`max_event_streams`).
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    /// Fires the functions' cron triggers.
    pub(crate) clock: Arc<crate::schedule::Clock>,
}

impl AppState {
    /// Bundles the host's parts for the router.
    pub fn new(
        store: Arc<dyn Backend>,
        runtime: Arc<Runtime>,
        scheduler: Scheduler,
        config: Config,
        stopping: CancellationToken,
        secrets: Arc<Secrets>,
        functions: Arc<crate::functions::Functions>,
        tracer: crate::trace::Tracer,
    ) -> Self {
        let allow_callbacks =
            AllowList::parse(&config.allow_callback_hosts, crate::guard::CALLBACK)
                .unwrap_or_default();
        let recent = Arc::new(recent::Recent::default());
        recent.start(store.clone(), stopping.clone());
        let streams = Arc::new(tokio::sync::Semaphore::new(config.max_event_streams));
        let clock = Arc::new(crate::schedule::Clock::default());
        tokio::spawn(clock.clone().run(store.clone(), stopping.clone()));
        AppState(Arc::new(AppParts {
            clock,
            recent,
            tracer,
            streams,
            store,
            runtime,
            scheduler,
            config: Arc::new(config),
            stopping,
            secrets,
            allow_callbacks,
            functions,
        }))
    }
}

impl AppParts {
    /// The blob reference of an input above the claim-check threshold, hashed on a blocking
    /// thread (so neither the request threads nor the store's writer spend time hashing).
    pub(crate) async fn large_blob(&self, data: &bytes::Bytes) -> Option<crate::job::BlobRef> {
        if data.len() <= self.config.claim_check_bytes {
            return None;
        }
        let data = data.clone();
        tokio::task::spawn_blocking(move || crate::job::BlobRef::of(&data))
            .await
            .ok()
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let routes = Router::new()
        .route("/healthz", get(health))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::render))
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            put(functions::deploy)
                .get(functions::show)
                .patch(functions::configure)
                .delete(functions::delete),
        )
        .route("/v1/functions/{name}/stats", get(functions::stats))
        .route("/v1/functions/{name}/events", get(streams::function_events))
        .route("/v1/functions/{name}/kv", get(kv::list))
        .route(
            "/v1/functions/{name}/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/functions/{name}/secrets", get(function_secrets::list))
        .route(
            "/v1/functions/{name}/secrets/{secret}",
            put(function_secrets::put).delete(function_secrets::delete),
        )
        .route("/v1/functions/{name}/versions", get(lifecycle::versions))
        .route("/v1/functions/{name}/rollback", post(lifecycle::rollback))
        .route("/v1/functions/{name}/pause", post(lifecycle::pause))
        .route("/v1/functions/{name}/resume", post(lifecycle::resume))
        .route("/v1/functions/{name}/jobs", post(jobs::submit))
        .route("/v1/functions/{name}/jobs:batch", post(batch::submit_batch))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/functions/{name}/dead-letters", get(dead_letters::list))
        .route(
            "/v1/functions/{name}/dead-letters/redrive",
            post(dead_letters::redrive),
        )
        .route(
            "/v1/functions/{name}/dead-letters/purge",
            post(dead_letters::purge),
        )
        .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/v1/jobs/{id}/output", get(jobs::output))
        .route("/v1/jobs/{id}/events", get(streams::job_events))
        .route("/v1/secret", get(secret::show))
        .route("/v1/secret/rotate", post(secret::rotate))
        .route("/v1/topics", get(topics::list))
        .route("/v1/schedules", get(schedules::list))
        .route("/v1/topics/{topic}", get(topics::show))
        .route("/v1/topics/{topic}/events", post(topics::publish))
        .route("/v1/events/{id}", get(topics::show_event));
    // With no tokens the API is open (loopback only, see `host`): no layer to pass through.
    let routes = if state.config.tokens.is_empty() {
        routes
    } else {
        routes.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
    };
    routes
        .merge(crate::ui::router())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::same_site,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The host serves", body = openapi::Health)))]
async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}
