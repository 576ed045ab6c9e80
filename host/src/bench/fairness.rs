//! The fairness scenario: one noisy concurrency key with 100,000 jobs queued, and the latency
//! of another key's jobs (submit to completion) while that backlog drains; against the same
//! backlog without keys, where a newcomer waits behind all of it (first in, first out).

use super::*;

/// Jobs of the other key, measured one after another while the backlog drains.
const QUIET_JOBS: usize = 200;

/// Runs the scenario with `noisy` jobs in the flood.
pub(super) async fn scenario(
    base: &Path,
    wasm: &[u8],
    manifest: &crate::manifest::Manifest,
    noisy: usize,
) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench")
        .tempdir_in(base)?;
    let host = BenchHost::start_with(dir.path(), |_| {}).await?;
    let mut gated = manifest.clone();
    gated.max_queued = Some(noisy as u64 * 4);
    // Held back while the flood is queued.
    gated.rate_per_second = Some(1);
    host.deploy_echo("fair", wasm, &gated).await?;
    host.deploy_echo("fifo", wasm, &gated).await?;

    fill(&host, "fair", Some("noisy"), noisy).await?;
    let keyed = drain_and_measure(&host, "fair", Some("quiet")).await?;
    // The rest of the flood drains before the next part, so the two do not compete.
    while host.stats("fair").await?["queued"].as_u64().unwrap_or(0) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fill(&host, "fifo", None, noisy).await?;
    let fifo = drain_and_measure(&host, "fifo", None).await?;
    host.stop().await?;
    let p = |d: &[Duration], q: f64| round2(percentile(d, q).as_secs_f64() * 1e3);
    Ok(json!({
        "noisy_jobs": noisy,
        "quiet_jobs": keyed.latencies.len(),
        "quiet_p50_ms": p(&keyed.latencies, 0.50),
        "quiet_p99_ms": p(&keyed.latencies, 0.99),
        "noisy_left_after_quiet_jobs": keyed.left,
        "noisy_jobs_per_s": keyed.drain_per_s.round(),
        "fifo_newcomer_ms": p(&fifo.latencies, 0.50),
        "fifo_jobs_per_s": fifo.drain_per_s.round(),
        "goal": "quiet p99 within a few jobs' time while the noisy key's backlog is still queued",
    }))
}

/// Queues `n` jobs of `function` (with concurrency key `key`) in batches of 1000.
pub(super) async fn fill(host: &BenchHost, function: &str, key: Option<&str>, n: usize) -> anyhow::Result<()> {
    const BATCH: usize = 1000;
    let batch: Bytes = {
        let items: Vec<Value> = (0..BATCH).map(|i| json!({"i": i})).collect();
        Bytes::from(serde_json::to_vec(&items)?)
    };
    let header = key.map_or(String::new(), |k| format!("sluice-concurrency-key: {k}\r\n"));
    let mut conn = Connection::open(host.addr).await?;
    for _ in 0..n.div_ceil(BATCH) {
        let (status, body) = conn
            .call_with("POST", &format!("/v1/functions/{function}/jobs:batch"), &header, &batch)
            .await?;
        anyhow::ensure!(status == 202, "{}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

struct Measured {
    latencies: Vec<Duration>,
    /// The backlog still queued when the measurement ended.
    left: u64,
    /// Backlog jobs finished per second meanwhile.
    drain_per_s: f64,
}

/// Opens the gate and times jobs of key `key` (one at a time, submit to completion) while the
/// backlog drains: [`QUIET_JOBS`] of them, or one without a key (it waits for the backlog).
async fn drain_and_measure(
    host: &BenchHost,
    function: &str,
    key: Option<&str>,
) -> anyhow::Result<Measured> {
    Client::new(&format!("http://{}", host.addr))
        .configure(function, &json!({"rate_per_second": null}))
        .await?;
    let header = key.map_or(String::new(), |k| format!("sluice-concurrency-key: {k}\r\n"));
    let rounds = if key.is_some() { QUIET_JOBS } else { 1 };
    let mut conn = Connection::open(host.addr).await?;
    let mut latencies = Vec::with_capacity(rounds);
    let queued = host.stats(function).await?["queued"].as_u64().unwrap_or(0);
    let measuring = Instant::now();
    for _ in 0..rounds {
        let started = Instant::now();
        let (status, body) = conn
            .call_with("POST", &format!("/v1/functions/{function}/jobs"), &header, b"{\"quiet\":true}")
            .await?;
        anyhow::ensure!(status == 202, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body)?;
        let id = answer["id"].as_str().context("no job id")?.to_string();
        loop {
            let (_, job) = conn.get(&format!("/v1/jobs/{id}?wait=30")).await?;
            let job: Value = serde_json::from_slice(&job)?;
            if job["status"] == "succeeded" {
                break;
            }
            anyhow::ensure!(job["status"] != "failed" && job["status"] != "dead", "{job}");
        }
        latencies.push(started.elapsed());
    }
    let left = host.stats(function).await?["queued"].as_u64().unwrap_or(0);
    let drain_per_s = (queued.saturating_sub(left)) as f64 / measuring.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Measured {
        latencies,
        left,
        drain_per_s,
    })
}
