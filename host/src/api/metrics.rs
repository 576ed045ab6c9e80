//! `GET /metrics`: the host's counters in the Prometheus text exposition format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// Renders every metric.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = Exposition::default();
    let s = state.store.stats();
    let count = |c: &AtomicU64| c.load(Relaxed) as f64;
    let seconds = |c: &AtomicU64| c.load(Relaxed) as f64 / 1e6;
    let counters = [
        (
            "sluice_component_compilations_total",
            "Components compiled since start (deploys and artifact-cache misses).",
            state.runtime.compilations() as f64,
        ),
        (
            "sluice_jobs_accepted_total",
            "Jobs accepted (durably committed submits).",
            count(&s.accepted),
        ),
        (
            "sluice_events_published_total",
            "Events published to topics (durably committed).",
            count(&s.published),
        ),
        (
            "sluice_jobs_finished_total",
            "Jobs that reached a terminal status (committed).",
            count(&s.finished),
        ),
        (
            "sluice_job_retries_total",
            "Failed attempts scheduled to run again after a backoff.",
            count(&s.retried),
        ),
        (
            "sluice_dead_letters_total",
            "Jobs that ended failed or dead and entered their function's dead-letter queue.",
            count(&s.dead_lettered),
        ),
        (
            "sluice_retention_deleted_total",
            "Finished jobs and idempotency keys deleted by the retention sweeper.",
            count(&s.swept),
        ),
        (
            "sluice_store_commits_total",
            "Durable write transactions (group commits).",
            count(&s.commits),
        ),
        (
            "sluice_store_operations_total",
            "Domain operations applied in those commits.",
            count(&s.ops),
        ),
        (
            "sluice_store_apply_seconds_total",
            "Writer time spent building transactions.",
            seconds(&s.apply_us),
        ),
        (
            "sluice_store_commit_seconds_total",
            "Writer time spent committing (page writes and fsync).",
            seconds(&s.commit_us),
        ),
    ];
    for (name, help, value) in counters {
        out.metric(name, help, "counter", [(None, value)]);
    }
    let functions = state.store.functions().await.map(|f| f.len()).unwrap_or(0);
    out.metric(
        "sluice_functions",
        "Deployed functions.",
        "gauge",
        [(None, functions as f64)],
    );
    let (blobs, blob_bytes) = state.store.blob_totals();
    out.metric(
        "sluice_blobs",
        "Large payloads and outputs stored once (claim checks).",
        "gauge",
        [(None, blobs as f64)],
    );
    out.metric(
        "sluice_blob_bytes",
        "Bytes of those blobs.",
        "gauge",
        [(None, blob_bytes as f64)],
    );
    out.metric(
        "sluice_attempts_running",
        "Attempts running now (held by a worker), host-wide.",
        "gauge",
        [(None, state.scheduler.running_count() as f64)],
    );
    let mut backlog: Vec<_> = state.scheduler.backlog().into_iter().collect();
    backlog.sort();
    let ready = backlog
        .iter()
        .map(|(name, (ready, _))| (Some(name.as_str()), *ready as f64));
    out.metric(
        "sluice_jobs_ready",
        "Jobs waiting for a slot, per function.",
        "gauge",
        ready,
    );
    let workers = backlog
        .iter()
        .map(|(name, (_, workers))| (Some(name.as_str()), *workers as f64));
    out.metric(
        "sluice_workers",
        "Workers running attempts, per function.",
        "gauge",
        workers,
    );
    let breakers = state.scheduler.breakers();
    out.metric(
        "sluice_circuit_open",
        "1 while the function's circuit breaker holds starts back (open or half-open), per function.",
        "gauge",
        breakers
            .iter()
            .map(|(name, open, _)| (Some(name.as_str()), if *open { 1.0 } else { 0.0 })),
    );
    out.metric(
        "sluice_circuit_opened_total",
        "Times the function's circuit breaker opened since the host started, per function.",
        "counter",
        breakers
            .iter()
            .map(|(name, _, opened)| (Some(name.as_str()), *opened as f64)),
    );
    let tallies = state.store.tallies();
    let _ = writeln!(
        out.text,
        "# HELP sluice_function_jobs_ended_total Jobs that reached a terminal status since start, per function and outcome.\n# TYPE sluice_function_jobs_ended_total counter"
    );
    for (function, t) in &tallies {
        for (outcome, n) in [
            ("succeeded", t.succeeded),
            ("failed", t.failed),
            ("dead", t.dead),
            ("cancelled", t.cancelled),
        ] {
            let _ = writeln!(
                out.text,
                "sluice_function_jobs_ended_total{{function=\"{function}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    out.histogram(
        "sluice_function_attempt_duration_seconds",
        "How long finished attempts ran, per function.",
        tallies.iter().map(|(f, t)| (f.as_str(), &t.attempt_ms)),
    );
    out.histogram(
        "sluice_function_queue_wait_seconds",
        "How long jobs waited from ready to their attempt's start, per function (finished attempts).",
        tallies.iter().map(|(f, t)| (f.as_str(), &t.queue_wait_ms)),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out.text,
    )
}

/// Text being built in the exposition format.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// A histogram per function, in seconds, with cumulative buckets.
    fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        functions: impl Iterator<Item = (&'a str, &'a crate::store::Histogram)>,
    ) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (function, h) in functions {
            let mut cumulative = 0;
            for (i, bound) in crate::store::BUCKETS_MS.iter().enumerate() {
                cumulative += h.buckets[i];
                let le = *bound as f64 / 1000.0;
                let _ = writeln!(
                    self.text,
                    "{name}_bucket{{function=\"{function}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                self.text,
                "{name}_bucket{{function=\"{function}\",le=\"+Inf\"}} {}\n{name}_sum{{function=\"{function}\"}} {}\n{name}_count{{function=\"{function}\"}} {}",
                h.count,
                h.sum_ms as f64 / 1000.0,
                h.count
            );
        }
    }

    /// One metric: its help and type lines, then a sample per (function label, value).
    fn metric<'a>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: impl IntoIterator<Item = (Option<&'a str>, f64)>,
    ) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (function, value) in samples {
            match function {
                Some(f) => writeln!(self.text, "{name}{{function=\"{f}\"}} {value}"),
                None => writeln!(self.text, "{name} {value}"),
            }
            .expect("writing to a String cannot fail");
        }
    }
}
