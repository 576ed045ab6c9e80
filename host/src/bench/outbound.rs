//! The `outbound` scenario: what one outbound HTTP call costs a handler. A loopback server
//! answers `ok`; the same number of calls is made three ways, each from the same number of
//! concurrent clients until done:
//! - plain Rust: a pooled `reqwest` client calling the server directly;
//! - Sluice, no call: `probe` jobs that do nothing (the job's own cost);
//! - Sluice, one call: `probe` jobs that GET the server through `wasi:http` (the guard, the
//!   allow-list, the connection pool, the attempt's record).
//!
//! The per-event cost of the call inside a handler is the difference of the two Sluice rates,
//! compared with the plain call's cost at its own rate (both include the server's CPU).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;
use serde_json::{Value, json};

use super::load::Connection;
use super::{BenchHost, round2};
use crate::cli::examples::Example;

/// Runs the scenario with `jobs` calls per variant from `clients` clients.
pub(super) async fn scenario(
    base: &Path,
    probe: &Example,
    jobs: usize,
    clients: usize,
) -> anyhow::Result<Value> {
    let upstream = upstream().await?;
    let url = format!("http://{upstream}/ping");

    let plain = plain_calls(&url, jobs, clients).await?;

    let dir = tempfile::Builder::new()
        .prefix("sluice-bench")
        .tempdir_in(base)?;
    let host = BenchHost::start_with(dir.path(), |c| {
        c.allow_outbound_hosts = vec!["127.0.0.1".into()];
    })
    .await?;
    let mut manifest = probe.manifest.clone();
    manifest.name = Some("probe".into());
    manifest.max_concurrency = Some(clients as u32);
    manifest.allowed_outbound_hosts = vec![format!("http://{upstream}")];
    crate::cli::client::Client::new(&format!("http://{}", host.addr))
        .deploy("probe", std::fs::read(&probe.wasm)?, Some(&manifest))
        .await?;

    let noop = Bytes::from_static(br#"{"action":"sleep","ms":0}"#);
    let call = Bytes::from(json!({"action": "http", "url": url}).to_string());
    // Warm-up (pools, caches), not measured.
    jobs_per_s(&host, noop.clone(), 500, clients).await?;
    jobs_per_s(&host, call.clone(), 500, clients).await?;
    let (noop_rate, _) = jobs_per_s(&host, noop, jobs, clients).await?;
    let (call_rate, ids) = jobs_per_s(&host, call, jobs, clients).await?;

    // Every call job must have made its call.
    let mut conn = Connection::open(host.addr).await?;
    for id in ids.iter().step_by((jobs / 50).max(1)) {
        let (status, body) = conn.get(&format!("/v1/jobs/{id}/output")).await?;
        let text = String::from_utf8_lossy(&body);
        if status != 200 || !text.contains("[200] ok") {
            bail!("job {id} did not make its call: {status} {text}");
        }
    }
    host.stop().await?;

    let extra_us = 1e6 / call_rate - 1e6 / noop_rate;
    let plain_us = 1e6 / plain;
    Ok(json!({
        "calls": jobs,
        "clients": clients,
        "plain_rust_calls_per_s": plain.round(),
        "plain_rust_us_per_call": round2(plain_us),
        "sluice_noop_jobs_per_s": noop_rate.round(),
        "sluice_call_jobs_per_s": call_rate.round(),
        "sluice_us_per_call": round2(extra_us),
        "ratio_to_plain": round2(extra_us / plain_us),
    }))
}

/// A loopback HTTP server answering `ok` to everything.
async fn upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Calls per second from `clients` tasks sharing one pooled client, `jobs` calls in all.
async fn plain_calls(url: &str, jobs: usize, clients: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        client.get(url).send().await?.bytes().await?;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next, url) = (client.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let body = client.get(&url).send().await?.bytes().await?;
                anyhow::ensure!(&body[..] == b"ok", "the server answered {body:?}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(jobs as f64 / started.elapsed().as_secs_f64())
}

/// Submits `jobs` probe jobs with `body` from `clients` connections and waits until all are
/// terminal; returns the rate and the ids.
async fn jobs_per_s(
    host: &BenchHost,
    body: Bytes,
    jobs: usize,
    clients: usize,
) -> anyhow::Result<(f64, Vec<String>)> {
    let before = host.counters().await?.finished;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, body, addr) = (next.clone(), body.clone(), host.addr);
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut ids = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                ids.push(conn.submit("probe", body.clone()).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await??);
    }
    host.wait_finished(before + jobs as u64).await?;
    Ok((jobs as f64 / started.elapsed().as_secs_f64(), ids))
}
