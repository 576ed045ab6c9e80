//! The HTTP API: routes, the shared state and the one JSON error shape.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a stable `code`; see
//! `docs/api.md` for the reference.
//!
//! ## Layout
//! - `error`: [`ApiError`] and the mapping from domain errors.
//! - `functions`: deploy, list, show, delete functions.
//! - `jobs`: submit, show (long-poll), output, list jobs.

mod error;
mod functions;
mod jobs;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::store::Store;
pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Durable state.
    pub(crate) store: Arc<Store>,
    /// Compiles and runs components.
    pub(crate) runtime: Arc<Runtime>,
    /// Told about deploys and deletes.
    pub(crate) scheduler: Scheduler,
    /// Host settings (limits, caps).
    pub(crate) config: Arc<Config>,
    /// Cancelled when the host starts shutting down: long-polls return early.
    pub(crate) stopping: CancellationToken,
}

impl AppState {
    /// Bundles the host's parts for the router.
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        scheduler: Scheduler,
        config: Config,
        stopping: CancellationToken,
    ) -> Self {
        AppState {
            store,
            runtime,
            scheduler,
            config: Arc::new(config),
            stopping,
        }
    }
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/functions", get(functions::list))
        .route(
            "/v1/functions/{name}",
            put(functions::deploy)
                .get(functions::show)
                .delete(functions::delete),
        )
        .route("/v1/functions/{name}/jobs", post(jobs::submit))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::show))
        .route("/v1/jobs/{id}/output", get(jobs::output))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    use std::fmt::Write;
    let mut out = String::new();
    let functions = state.store.functions().map(|f| f.len()).unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP sluice_component_compilations_total Components compiled since start (deploys and artifact-cache misses)."
    );
    let _ = writeln!(out, "# TYPE sluice_component_compilations_total counter");
    let _ = writeln!(
        out,
        "sluice_component_compilations_total {}",
        state.runtime.compilations()
    );
    let _ = writeln!(out, "# HELP sluice_functions Deployed functions.");
    let _ = writeln!(out, "# TYPE sluice_functions gauge");
    let _ = writeln!(out, "sluice_functions {functions}");
    let s = state.store.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for (name, help, kind, value) in [
        (
            "sluice_jobs_accepted_total",
            "Jobs accepted (durably committed submits).",
            "counter",
            load(&s.accepted) as f64,
        ),
        (
            "sluice_jobs_finished_total",
            "Jobs that reached a terminal status (committed).",
            "counter",
            load(&s.finished) as f64,
        ),
        (
            "sluice_store_commits_total",
            "Durable write transactions (group commits).",
            "counter",
            load(&s.commits) as f64,
        ),
        (
            "sluice_store_operations_total",
            "Domain operations applied in those commits.",
            "counter",
            load(&s.ops) as f64,
        ),
        (
            "sluice_store_apply_seconds_total",
            "Writer time spent building transactions.",
            "counter",
            load(&s.apply_us) as f64 / 1e6,
        ),
        (
            "sluice_store_commit_seconds_total",
            "Writer time spent committing (page writes and fsync).",
            "counter",
            load(&s.commit_us) as f64 / 1e6,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    let mut backlog: Vec<_> = state.scheduler.backlog().into_iter().collect();
    backlog.sort();
    let _ = writeln!(
        out,
        "# HELP sluice_jobs_ready Jobs waiting for a slot, per function."
    );
    let _ = writeln!(out, "# TYPE sluice_jobs_ready gauge");
    for (name, (ready, _)) in &backlog {
        let _ = writeln!(out, "sluice_jobs_ready{{function=\"{name}\"}} {ready}");
    }
    let _ = writeln!(
        out,
        "# HELP sluice_workers Workers running attempts, per function."
    );
    let _ = writeln!(out, "# TYPE sluice_workers gauge");
    for (name, (_, workers)) in &backlog {
        let _ = writeln!(out, "sluice_workers{{function=\"{name}\"}} {workers}");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
}
