//! `scale_out` (only when named, needs `--backend nats://...`): end-to-end throughput of one
//! host on the cluster, then of two hosts sharing it (the clients split between them), in the
//! same run on this machine. Echo is deployed with `--scale-concurrency` (the cluster-wide
//! `max_concurrency` caps the jobs in flight however many hosts there are).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::host::BenchHost;
use super::load::Connection;
use super::{drive, round3};
use crate::manifest::Manifest;
use crate::store::nats::NatsOptions;

/// Runs the scenario: `jobs` echo jobs from `clients` clients on one host, then on two.
pub(super) async fn scenario(
    base: &Path,
    options: NatsOptions,
    wasm: &[u8],
    manifest: &Manifest,
    jobs: usize,
    clients: usize,
    max_concurrency: u32,
) -> anyhow::Result<Value> {
    let mut manifest = manifest.clone();
    manifest.max_concurrency = Some(max_concurrency);
    let a = BenchHost::start(base, Some(options.clone())).await?;
    a.deploy_echo("echo", wasm, &manifest).await?;
    // Warm up connections, caches and the pool; not measured.
    drive(a.addr, 1_000, clients).await?;
    a.wait_finished(1_000).await?;
    let one = run(&[&a], jobs, clients).await?;

    let b = BenchHost::start(base, Some(options)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = Connection::open(b.addr).await?;
        if conn.get("/v1/functions/echo").await?.0 == 200 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the second host did not learn of echo");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = finished(&[&a, &b]).await?;
    drive(b.addr, 1_000, clients).await?;
    wait_all(&[&a, &b], before + 1_000).await?;
    let two = run(&[&a, &b], jobs, clients).await?;
    a.stop().await?;
    b.stop().await?;
    let (one_rate, two_rate) = (rate(&one), rate(&two));
    Ok(json!({
        "jobs": jobs,
        "clients": clients,
        "max_concurrency": max_concurrency,
        "one_host": one,
        "two_hosts": two,
        "two_over_one": round3(two_rate / one_rate.max(1.0)),
    }))
}

fn rate(run: &Value) -> f64 {
    run["jobs_per_s"].as_f64().unwrap_or(0.0)
}

/// Jobs the hosts ended since they started, together.
async fn finished(hosts: &[&BenchHost]) -> anyhow::Result<u64> {
    let mut total = 0;
    for host in hosts {
        total += host.counters().await?.finished;
    }
    Ok(total)
}

/// Waits until the hosts together ended `total` jobs.
async fn wait_all(hosts: &[&BenchHost], total: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while finished(hosts).await? < total {
        if Instant::now() > deadline {
            bail!("the jobs did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Submits `jobs` split evenly over the hosts (each its share of the clients) and times them
/// until all ended.
async fn run(hosts: &[&BenchHost], jobs: usize, clients: usize) -> anyhow::Result<Value> {
    let before = finished(hosts).await?;
    let started = Instant::now();
    let mut submits = Vec::new();
    for host in hosts {
        let addr = host.addr;
        let (n, c) = (jobs / hosts.len(), (clients / hosts.len()).max(1));
        submits.push(tokio::spawn(async move { drive(addr, n, c).await }));
    }
    for submit in submits {
        submit.await??;
    }
    let submitted = started.elapsed();
    let total = jobs / hosts.len() * hosts.len();
    wait_all(hosts, before + total as u64).await?;
    let elapsed = started.elapsed();
    Ok(json!({
        "hosts": hosts.len(),
        "seconds": round3(elapsed.as_secs_f64()),
        "jobs_per_s": (total as f64 / elapsed.as_secs_f64()).round(),
        "submits_per_s": (total as f64 / submitted.as_secs_f64()).round(),
    }))
}
