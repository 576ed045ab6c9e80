//! Scenarios about the data files: their size under a steady load with short retention, and a
//! deep backlog (batch submits into a million-job queue, dispatch against a shallow one).

use super::*;

/// A steady load (half the submits with a fresh idempotency key) against a host that keeps
/// finished jobs and keys for 5 s: the data files' size, sampled every 2 s, must level off once
/// the sweeper deletes as fast as the load adds.
pub(super) async fn retention_scenario(
    base: &Path,
    wasm: &[u8],
    manifest: &crate::manifest::Manifest,
    seconds: u64,
    rate: u64,
) -> anyhow::Result<Value> {
    const RETENTION: Duration = Duration::from_secs(5);
    const CLIENTS: usize = 16;
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench")
        .tempdir_in(base)?;
    let host = BenchHost::start_with(dir.path(), |c| {
        c.job_retention = RETENTION;
        c.idempotency_window = RETENTION;
    })
    .await?;
    host.deploy_echo("echo", wasm, manifest).await?;
    let duration = Duration::from_secs(seconds);
    let interval = Duration::from_secs_f64(CLIENTS as f64 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let addr = host.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut due = start + interval.mul_f64(c as f64 / CLIENTS as f64);
            let mut n = 0u64;
            while due < start + duration {
                tokio::time::sleep_until(due).await;
                let key = if n.is_multiple_of(2) {
                    format!("idempotency-key: c{c}-{n}\r\n")
                } else {
                    String::new()
                };
                let (status, body) = conn
                    .call_with("POST", "/v1/functions/echo/jobs", &key, &payload(c))
                    .await?;
                anyhow::ensure!(status == 202, "{}", String::from_utf8_lossy(&body));
                n += 1;
                due += interval;
            }
            anyhow::Ok(n)
        }));
    }
    let mut sizes = Vec::new();
    let sample = Duration::from_secs(2);
    let mut next = start + sample;
    while next <= start + duration {
        tokio::time::sleep_until(next).await;
        sizes.push(round2(dir_size(dir.path())? as f64 / (1 << 20) as f64));
        next += sample;
    }
    let mut submitted = 0;
    for t in tasks {
        submitted += t.await??;
    }
    let swept = host.metric("sluice_retention_deleted_total").await?;
    host.stop().await?;
    // Growth over the second half of the run, when the sweeper has long been deleting.
    let half = sizes.len() / 2;
    let (mid, last) = (sizes.get(half).copied(), sizes.last().copied());
    let growth = match (mid, last) {
        (Some(m), Some(l)) if m > 0.0 => round2((l - m) / m * 100.0),
        _ => 0.0,
    };
    Ok(json!({
        "retention_s": RETENTION.as_secs(),
        "seconds": seconds,
        "rate_per_s": rate,
        "submitted": submitted,
        "swept_rows": swept,
        "data_mb_every_2s": sizes,
        "growth_second_half_pct": growth,
        "goal": "the data files level off (small growth over the second half)",
    }))
}

/// The queue lives in redb: enqueue `deep` jobs with batch submits of 100 (jobs/s accepted
/// durably), then compare the dispatch rate of the first 100,000 jobs of that deep queue with
/// the rate while producers keep about 1,000 queued; host RSS after each.
pub(super) async fn backlog_scenario(
    base: &Path,
    wasm: &[u8],
    manifest: &crate::manifest::Manifest,
    deep: usize,
) -> anyhow::Result<Value> {
    const BATCH: usize = 100;
    const CLIENTS: usize = 16;
    const MEASURED: u64 = 100_000;
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench")
        .tempdir_in(base)?;
    let host = BenchHost::start_with(dir.path(), |_| {}).await?;
    // Held back while the queue fills: one attempt per second.
    let mut gated = manifest.clone();
    gated.max_queued = Some(deep as u64 * 2);
    gated.rate_per_second = Some(1);
    host.deploy_echo("deep", wasm, &gated).await?;
    let mut open = manifest.clone();
    open.max_queued = Some(deep as u64 * 2);
    host.deploy_echo("shallow", wasm, &open).await?;

    // Enqueue the deep queue: batches of 100 from 16 clients.
    let batch: Bytes = {
        let items: Vec<Value> = (0..BATCH)
            .map(|i| json!({"i": i, "s": "payload"}))
            .collect();
        Bytes::from(serde_json::to_vec(&items)?)
    };
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, next, batch) = (host.addr, next.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            while next.fetch_add(BATCH, Ordering::Relaxed) < deep {
                let (status, body) = conn
                    .call("POST", "/v1/functions/deep/jobs:batch", &batch)
                    .await?;
                anyhow::ensure!(status == 202, "{}", String::from_utf8_lossy(&body));
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueue_s = started.elapsed().as_secs_f64();
    let rss_full = rss_mb();

    // Open the gate and time the first 100,000 of the deep queue.
    let before = host.counters().await?;
    let started = Instant::now();
    Client::new(&format!("http://{}", host.addr))
        .configure("deep", &json!({"rate_per_second": null}))
        .await?;
    host.wait_finished(before.finished + MEASURED).await?;
    let deep_rate = MEASURED as f64 / started.elapsed().as_secs_f64();
    let rss_deep = rss_mb();
    let deep_left = host.stats("deep").await?["queued"].as_u64().unwrap_or(0);
    // Hold the rest of the deep queue back again so it does not compete.
    Client::new(&format!("http://{}", host.addr))
        .configure("deep", &json!({"rate_per_second": 1}))
        .await?;

    // A shallow queue: producers keep about 1,000 jobs queued.
    let before = host.counters().await?;
    let started = Instant::now();
    let mut conn = Connection::open(host.addr).await?;
    let mut submitted = 0u64;
    while submitted < MEASURED {
        let queued = host.stats("shallow").await?["queued"].as_u64().unwrap_or(0);
        if queued < 1_000 {
            for _ in 0..5 {
                let (status, body) = conn
                    .call("POST", "/v1/functions/shallow/jobs:batch", &batch)
                    .await?;
                anyhow::ensure!(status == 202, "{}", String::from_utf8_lossy(&body));
                submitted += BATCH as u64;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    host.wait_finished(before.finished + submitted).await?;
    let shallow_rate = submitted as f64 / started.elapsed().as_secs_f64();
    let rss_shallow = rss_mb();
    host.stop().await?;
    Ok(json!({
        "deep_queue_jobs": deep,
        "enqueue_seconds": round2(enqueue_s),
        "batch_submit_jobs_per_s": (deep as f64 / enqueue_s).round(),
        "dispatch_jobs_per_s_deep": deep_rate.round(),
        "deep_queue_left_while_measuring": deep_left,
        "dispatch_jobs_per_s_shallow": shallow_rate.round(),
        "dispatch_ratio_deep_vs_shallow": round2(deep_rate / shallow_rate),
        "rss_mb_after_enqueue": rss_full,
        "rss_mb_deep": rss_deep,
        "rss_mb_shallow": rss_shallow,
        "goal": "batch >= 100000 jobs/s; ratio >= 0.8; rss < 150 MB",
    }))
}

/// Resident memory of this process (host and load generator), in MiB.
pub(super) fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    round2(kb / 1024.0)
}

/// Total size of the files in `dir`.
pub(super) fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}
