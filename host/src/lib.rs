//! # Sluice host
//!
//! Stores every message in redb and runs each event in a fresh, sandboxed WebAssembly component.
//! Data flows one way: HTTP -> store (durable) -> scheduler -> runtime -> store -> callers.
//!
//! ## Layout
//! - [`access`]: API tokens and their scopes.
//! - [`config`]: host settings, validated once at start-up.
//! - [`manifest`]: a function's `sluice.toml`: name and limits.
//! - [`flow`]: concurrency keys: where a job's key comes from.
//! - [`schedule`]: cron triggers (`[[schedule]]`) and the clock that fires them.
//! - [`event`]: CloudEvents published to topics: parsing and what a delivery keeps.
//! - [`job`]: the job, its id, statuses and attempt outcomes.
//! - [`output`]: an attempt's output bytes, spooled to disk while large.
//! - `logging`: log lines for failures that repeat with every request, sampled.
//! - [`store`]: owns redb: atomic domain operations behind one group-committing writer.
//! - [`runtime`]: owns wasmtime: compiles, caches and runs components in limited sandboxes.
//! - [`functions`]: the functions service: deploy, configure, pause, rollback, remove,
//!   secrets, load at start; keeps catalog, runtime and scheduler in step.
//! - [`scheduler`]: hands queued jobs to sandboxes, at most `max_concurrency` per function,
//!   keys taking turns, behind each function's circuit breaker.
//! - [`webhook`]: signed callbacks to `Sluice-Callback` URLs, behind the SSRF guard.
//! - [`guard`]: the SSRF guard: what the host may connect to on a user's behalf.
//! - [`vault`]: function secrets sealed with the host's key before they are stored.
//! - [`api`]: the HTTP API (axum).
//! - [`trace`]: W3C trace context through a job's life; spans exported over OTLP/HTTP.
//! - [`ui`]: the operator console at `/ui`: embedded pages on the same API, a cookie session.
//! - [`host`]: wires them together: [`run`] serves a listener until a shutdown signal.
//! - [`bench`]: `sluice bench`: the performance scenarios and the peer comparison.
//! - [`cli`]: the `sluice` command line (serve, deploy, invoke, job, functions, up, bench).

// The function document (`api::functions`) is one `json!` with many keys.
#![recursion_limit = "256"]

pub mod access;
pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod event;
pub mod flow;
pub mod functions;
pub mod guard;
pub mod host;
pub mod job;
mod logging;
pub mod manifest;
pub mod output;
pub mod runtime;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod trace;
pub mod ui;
pub mod vault;
pub mod webhook;

pub use config::Config;
pub use host::run;
