//! `sluice bench`: starts a real host on loopback with a temp data dir, deploys `functions/echo`
//! and measures the performance goals, printing a table and one JSON line per scenario.
//!
//! Scenarios:
//! - `throughput`: N jobs, each its own HTTP submit from C keep-alive clients, timed from the
//!   first submit until every job is terminal (durably committed, pollable).
//! - `sandbox`: per-event cost of Sluice's attempt path against bare wasmtime (same component).
//! - `latency`: submit latency at half the measured throughput; submit-to-completion on an idle host.
//! - `startup`: a restart with 10 deployed functions: time to listen, compilations.
//! - `retention` (only when named): data-file size under a steady load with 5 s retention.
//! - `backlog` (only when named): batch submits into a 1,000,000-job queue, dispatch with that
//!   deep queue against a shallow one, host memory.
//! - `outbound` (only when named): one outbound HTTP call from a handler against the same
//!   call from plain Rust.
//! - `--peer bullmq`: runs the BullMQ + Redis script (persistence off, then `FSYNC=always`) and
//!   prints the throughput ratios.
//!
//! ## Layout
//! - `load`: the lean hyper client the scenarios drive the host with.
//! - `outbound`: the outbound HTTP scenario.

pub mod load;
mod outbound;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::cli::client::Client;
use crate::cli::examples;
use crate::config::Config;
use load::Connection;

/// Flags of `sluice bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Jobs in the throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Concurrent keep-alive HTTP clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Rounds of the throughput scenario (and of each peer run); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Also run a peer system's benchmark in the same run and print the ratios.
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    /// The BullMQ peer script.
    #[arg(long, default_value = "../shared/bench/peers/run_bullmq.sh")]
    pub peer_script: PathBuf,
    /// The functions workspace (for `echo`).
    #[arg(long, default_value = "functions")]
    pub functions: PathBuf,
    /// Where the temporary data directories go (a real disk: fsync cost is part of the result).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds of steady load in the retention scenario.
    #[arg(long, default_value_t = 40)]
    pub retention_seconds: u64,
    /// Submits per second in the retention scenario.
    #[arg(long, default_value_t = 4000)]
    pub retention_rate: u64,
    /// Jobs queued in the backlog scenario's deep queue.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog_jobs: usize,
}

/// A benchmark scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// End-to-end jobs/s.
    Throughput,
    /// Per-event sandbox cost against bare wasmtime.
    Sandbox,
    /// Submit and completion latency.
    Latency,
    /// Restart time with 10 functions.
    Startup,
    /// Data-file size under a steady load with short retention (not in the default set).
    Retention,
    /// Batch submits of 100, dispatch with a deep queue against a shallow one, host memory
    /// (not in the default set).
    Backlog,
    /// One outbound HTTP call from a handler against the same call from plain Rust.
    Outbound,
}

/// A peer system to compare with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// BullMQ on Redis.
    Bullmq,
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let functions = args.functions.clone();
    let built = tokio::task::spawn_blocking(move || examples::build(&functions)).await??;
    let probe = built.iter().find(|e| e.name == "probe").cloned();
    let echo = built
        .into_iter()
        .find(|e| e.name == "echo")
        .context("functions/echo is missing")?;
    let wasm = std::fs::read(&echo.wasm)?;
    let all = args.scenarios.is_empty();
    // The retention scenario takes a while: only when asked for.
    let slow = [Scenario::Retention, Scenario::Backlog, Scenario::Outbound];
    let wants = |s: Scenario| (all && !slow.contains(&s)) || args.scenarios.contains(&s);
    let mut report = Report::default();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    eprintln!(
        "machine: {} CPUs; data dirs under {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        base.display()
    );

    let mut throughput = None;
    if wants(Scenario::Throughput) || wants(Scenario::Latency) {
        let host = BenchHost::start(&base).await?;
        host.deploy_echo("echo", &wasm, &echo.manifest).await?;
        // Warm up connections, caches and the pool; not measured.
        drive(host.addr, 2_000, args.clients).await?;
        host.wait_finished(2_000).await?;
        if wants(Scenario::Throughput) {
            let mut rounds = Vec::new();
            for _ in 0..args.rounds.max(1) {
                rounds.push(throughput_scenario(&host, args.jobs, args.clients).await?);
            }
            let per_round: Vec<f64> = rounds
                .iter()
                .map(|r| r["jobs_per_s"].as_f64().unwrap_or(0.0))
                .collect();
            let median = median_by(&mut rounds, |r| r["jobs_per_s"].as_f64().unwrap_or(0.0));
            let mut r = median.clone();
            r["rounds_jobs_per_s"] = per_round.into();
            throughput = r["jobs_per_s"].as_f64();
            report.add("throughput", r);
        }
        if wants(Scenario::Latency) {
            let rate = match throughput {
                Some(t) => t,
                None => throughput_scenario(&host, args.jobs, args.clients).await?["jobs_per_s"]
                    .as_f64()
                    .unwrap_or(1000.0),
            };
            report.add(
                "submit_latency",
                submit_latency(&host, rate * 0.5, args.clients).await?,
            );
            report.add("completion_latency", completion_latency(&host, 500).await?);
        }
        host.stop().await?;
    }
    if wants(Scenario::Sandbox) {
        let config = Config {
            data_dir: base.clone(),
            max_instances: 16,
            ..Config::default()
        };
        let payload = br#"{"i":1,"s":"payload-1"}"#;
        let cost = crate::runtime::baseline::measure(&config, &wasm, payload, 20_000).await?;
        report.add(
            "sandbox",
            json!({
                "bare_wasmtime_us": round2(cost.bare_us),
                "sluice_us": round2(cost.sluice_us),
                "ratio": round2(cost.sluice_us / cost.bare_us),
                "goal": "ratio <= 2",
            }),
        );
    }
    if wants(Scenario::Startup) {
        report.add(
            "startup",
            startup_scenario(&base, &wasm, &echo.manifest).await?,
        );
    }
    if wants(Scenario::Retention) {
        report.add(
            "retention",
            retention_scenario(
                &base,
                &wasm,
                &echo.manifest,
                args.retention_seconds,
                args.retention_rate,
            )
            .await?,
        );
    }
    if wants(Scenario::Backlog) {
        report.add(
            "backlog",
            backlog_scenario(&base, &wasm, &echo.manifest, args.backlog_jobs).await?,
        );
    }
    if wants(Scenario::Outbound) {
        let probe = probe.context("functions/probe is missing")?;
        report.add(
            "outbound",
            outbound::scenario(&base, &probe, (args.jobs / 4).max(1000), args.clients).await?,
        );
    }
    if let Some(Peer::Bullmq) = args.peer {
        let mut off: Vec<f64> = Vec::new();
        let mut always: Vec<f64> = Vec::new();
        for _ in 0..args.rounds.max(1) {
            off.push(run_peer(&args.peer_script, args.jobs, args.clients, false)?);
            always.push(run_peer(&args.peer_script, args.jobs, args.clients, true)?);
        }
        let (off_rounds, always_rounds) = (off.clone(), always.clone());
        let off = *median_by(&mut off, |x| *x);
        let always = *median_by(&mut always, |x| *x);
        let mut r = json!({
            "bullmq_jobs_per_s": off,
            "bullmq_fsync_always_jobs_per_s": always,
            "bullmq_rounds_jobs_per_s": off_rounds,
            "bullmq_fsync_always_rounds_jobs_per_s": always_rounds,
        });
        if let Some(t) = throughput {
            r["sluice_jobs_per_s"] = t.round().into();
            r["ratio_vs_bullmq"] = round2(t / off).into();
            r["ratio_vs_bullmq_fsync_always"] = round2(t / always).into();
            r["goal"] = "ratio_vs_bullmq >= 2".into();
        }
        report.add("peer_bullmq", r);
    }
    report.print();
    Ok(())
}

/// The throughput scenario: `jobs` submits from `clients` connections, until all are terminal.
async fn throughput_scenario(
    host: &BenchHost,
    jobs: usize,
    clients: usize,
) -> anyhow::Result<Value> {
    let before = host.counters().await?;
    let started = Instant::now();
    let ids = drive(host.addr, jobs, clients).await?;
    let submitted = started.elapsed();
    host.wait_finished(before.finished + jobs as u64).await?;
    let elapsed = started.elapsed();
    let after = host.counters().await?;

    // Every job must be pollable with the right output; check a sample over HTTP.
    let mut conn = Connection::open(host.addr).await?;
    for (i, id) in ids.iter().enumerate().step_by((jobs / 200).max(1)) {
        let (status, body) = conn.get(&format!("/v1/jobs/{id}/output")).await?;
        let expected = payload(i);
        if status != 200 || body != expected {
            bail!(
                "job {id} is not pollable with its output ({status}: {})",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let commits = (after.commits - before.commits).max(1) as f64;
    Ok(json!({
        "jobs": jobs,
        "clients": clients,
        "seconds": round3(elapsed.as_secs_f64()),
        "jobs_per_s": (jobs as f64 / elapsed.as_secs_f64()).round(),
        "submit_seconds": round3(submitted.as_secs_f64()),
        "commits": commits,
        "ops_per_commit": round2((after.ops - before.ops) as f64 / commits),
        "writer_apply_ms_per_commit": round3((after.apply_s - before.apply_s) * 1e3 / commits),
        "writer_commit_ms_per_commit": round3((after.commit_s - before.commit_s) * 1e3 / commits),
    }))
}

/// Submits `jobs` echo jobs from `clients` keep-alive connections as fast as they are answered;
/// returns the ids in submit order.
async fn drive(addr: SocketAddr, jobs: usize, clients: usize) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return anyhow::Ok(ids);
                }
                ids.push((i, conn.submit("echo", payload(i)).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(jobs);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

/// Submit latency with submits paced at `rate` per second in total, for 4 seconds.
async fn submit_latency(host: &BenchHost, rate: f64, clients: usize) -> anyhow::Result<Value> {
    let before = host.counters().await?;
    let duration = Duration::from_secs(4);
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = host.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            let mut due = start + interval.mul_f64(c as f64 / clients as f64);
            while due < start + duration {
                tokio::time::sleep_until(due).await;
                let t = Instant::now();
                conn.submit("echo", payload(c)).await?;
                latencies.push(t.elapsed());
                due += interval;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let n = all.len() as u64;
    host.wait_finished(before.finished + n).await?;
    all.sort();
    Ok(json!({
        "rate_per_s": rate.round(),
        "submits": n,
        "p50_ms": ms(percentile(&all, 0.50)),
        "p99_ms": ms(percentile(&all, 0.99)),
        "max_ms": ms(*all.last().unwrap_or(&Duration::ZERO)),
        "goal": "p99_ms < 5",
    }))
}

/// Submit-to-completion on an idle host: submit, then long-poll until terminal, one at a time.
async fn completion_latency(host: &BenchHost, n: usize) -> anyhow::Result<Value> {
    let mut conn = Connection::open(host.addr).await?;
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let id = conn.submit("echo", payload(i)).await?;
        let (status, body) = conn.get(&format!("/v1/jobs/{id}?wait=5")).await?;
        let elapsed = t.elapsed();
        if status != 200 || !String::from_utf8_lossy(&body).contains("\"status\":\"succeeded\"") {
            bail!(
                "job {id} did not succeed: {}",
                String::from_utf8_lossy(&body)
            );
        }
        all.push(elapsed);
    }
    all.sort();
    Ok(json!({
        "jobs": n,
        "p50_ms": ms(percentile(&all, 0.50)),
        "p99_ms": ms(percentile(&all, 0.99)),
        "goal": "p50_ms < 2",
    }))
}

/// A steady load (half the submits with a fresh idempotency key) against a host that keeps
/// finished jobs and keys for 5 s: the data files' size, sampled every 2 s, must level off once
/// the sweeper deletes as fast as the load adds.
async fn retention_scenario(
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
async fn backlog_scenario(
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
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    round2(kb / 1024.0)
}

/// Total size of the files in `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// A restart with 10 deployed functions: time until the API answers, and compilations.
async fn startup_scenario(
    base: &Path,
    wasm: &[u8],
    manifest: &crate::manifest::Manifest,
) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench-startup")
        .tempdir_in(base)?;
    let host = BenchHost::start_in(dir.path()).await?;
    for i in 0..10 {
        host.deploy_echo(&format!("echo-{i}"), wasm, manifest)
            .await?;
    }
    host.stop().await?;
    let started = Instant::now();
    let host = BenchHost::start_in(dir.path()).await?;
    let listening = started.elapsed();
    let compilations = host.metric("sluice_component_compilations_total").await?;
    let functions = host.metric("sluice_functions").await?;
    host.stop().await?;
    Ok(json!({
        "functions": functions,
        "listen_ms": ms(listening),
        "compilations": compilations,
        "goal": "listen_ms < 300 and compilations == 0",
    }))
}

fn run_peer(script: &Path, jobs: usize, clients: usize, fsync_always: bool) -> anyhow::Result<f64> {
    eprintln!(
        "running the BullMQ peer ({}) ...",
        if fsync_always {
            "FSYNC=always"
        } else {
            "Redis persistence off"
        }
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script)
        .env("JOBS", jobs.to_string())
        .env("CLIENTS", clients.to_string());
    if fsync_always {
        cmd.env("FSYNC", "always");
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "the peer script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the peer printed no JSON line")?;
    let v: Value = serde_json::from_str(line)?;
    v["jobs_per_s"]
        .as_f64()
        .context("the peer's JSON has no jobs_per_s")
}

/// The small payload every benchmark job carries (the same shape as the BullMQ peer's).
fn payload(i: usize) -> Bytes {
    Bytes::from(format!(r#"{{"i":{i},"s":"payload-{i}"}}"#))
}

/// A host running in this process for the benchmark.
struct BenchHost {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: Option<tempfile::TempDir>,
}

/// Writer counters read from `/metrics`.
struct Counters {
    finished: u64,
    commits: u64,
    ops: u64,
    apply_s: f64,
    commit_s: f64,
}

impl BenchHost {
    async fn start(base: &Path) -> anyhow::Result<BenchHost> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench")
            .tempdir_in(base)?;
        let mut host = BenchHost::start_in(dir.path()).await?;
        host._dir = Some(dir);
        Ok(host)
    }

    async fn start_in(dir: &Path) -> anyhow::Result<BenchHost> {
        Self::start_with(dir, |_| {}).await
    }

    async fn start_with(dir: &Path, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<BenchHost> {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        // The host's tuning variables apply to the benchmark's host too.
        if let Ok(us) = std::env::var("SLUICE_COMMIT_DELAY_US") {
            config.commit_delay = Duration::from_micros(us.parse()?);
        }
        if let Ok(n) = std::env::var("SLUICE_SANDBOX_THREADS") {
            config.sandbox_threads = n.parse()?;
        }
        if let Ok(n) = std::env::var("SLUICE_STORE_SHARDS") {
            config.store_shards = n.parse()?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(
            listener,
            async move {
                let _ = stopped.await;
            },
            config,
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Connection::open(addr).await
                && let Ok((status, _)) = c.get("/healthz").await
                && status == 200
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the benchmark host did not start");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(BenchHost {
            addr,
            stop,
            task,
            _dir: None,
        })
    }

    async fn deploy_echo(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &crate::manifest::Manifest,
    ) -> anyhow::Result<()> {
        let mut manifest = manifest.clone();
        manifest.name = Some(name.to_string());
        Client::new(&format!("http://{}", self.addr))
            .deploy(name, wasm.to_vec(), Some(&manifest))
            .await?;
        Ok(())
    }

    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let mut conn = Connection::open(self.addr).await?;
        let (_, body) = conn.get("/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .filter(|r| r.starts_with(' '))
                    .and_then(|r| r.trim().parse().ok())
            })
            .with_context(|| format!("metric {name} missing"))
    }

    async fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Counters {
            finished: self.metric("sluice_jobs_finished_total").await? as u64,
            commits: self.metric("sluice_store_commits_total").await? as u64,
            ops: self.metric("sluice_store_operations_total").await? as u64,
            apply_s: self.metric("sluice_store_apply_seconds_total").await?,
            commit_s: self.metric("sluice_store_commit_seconds_total").await?,
        })
    }

    /// A function's stats.
    async fn stats(&self, function: &str) -> anyhow::Result<Value> {
        let mut conn = Connection::open(self.addr).await?;
        let (_, body) = conn.get(&format!("/v1/functions/{function}/stats")).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Waits until the host has committed `total` terminal jobs since it started.
    async fn wait_finished(&self, total: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut conn = Connection::open(self.addr).await?;
        loop {
            let (_, body) = conn.get("/metrics").await?;
            let text = String::from_utf8_lossy(&body);
            let finished = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("sluice_jobs_finished_total ")
                        .and_then(|r| r.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0) as u64;
            if finished >= total {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {finished} of {total} jobs finished in time");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

/// Scenario results, printed as a table and as JSON lines.
#[derive(Default)]
struct Report {
    rows: Vec<(String, Value)>,
}

impl Report {
    fn add(&mut self, scenario: &str, mut result: Value) {
        eprintln!("{scenario}: {result}");
        result["scenario"] = scenario.into();
        self.rows.push((scenario.to_string(), result));
    }

    fn print(&self) {
        println!("\n{:<20} {:<34} {:>14}", "SCENARIO", "METRIC", "VALUE");
        for (scenario, result) in &self.rows {
            if let Some(map) = result.as_object() {
                for (k, v) in map {
                    if k != "scenario" {
                        let v = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        println!("{scenario:<20} {k:<34} {v:>14}");
                    }
                }
            }
        }
        println!();
        for (_, result) in &self.rows {
            println!("{result}");
        }
    }
}

/// The median element (by `key`) of a non-empty list.
fn median_by<T>(items: &mut [T], key: impl Fn(&T) -> f64) -> &T {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    &items[items.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1e3)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
