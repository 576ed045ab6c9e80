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
//! - `fairness` (only when named): one concurrency key with 100,000 jobs queued; another
//!   key's job latency (p50, p99) while it drains, against a newcomer behind the same backlog
//!   without keys.
//! - `batch` (only when named): the same backlog of `echo` jobs drained one per sandbox and in
//!   batches of 100 (`batch = { max_size = 100, max_wait_ms = 20 }`).
//! - `--peer bullmq`: runs the BullMQ + Redis script (persistence off, then `FSYNC=always`) and
//!   prints the throughput ratios.
//!
//! ## Layout
//! - `host`: the host the scenarios run against (in this process), and its counters.
//! - `load`: the lean hyper client the scenarios drive the host with.
//! - `outbound`: the outbound HTTP scenario.
//! - `storage`: the scenarios about the data files: retention, a deep backlog.

mod batches;
mod fairness;
mod host;
pub mod load;
mod outbound;
mod scale_out;
mod storage;

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
use host::BenchHost;
use load::Connection;
use storage::{backlog_scenario, retention_scenario};

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
    /// Run the host on a NATS JetStream cluster (`nats://HOST:PORT[,...]`) instead of redb
    /// files: the throughput and latency scenarios measure that backend.
    #[arg(long)]
    pub backend: Option<String>,
    /// With --backend: replicas of every stream and bucket.
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,
    /// Jobs of the noisy key in the fairness scenario.
    #[arg(long, default_value_t = 100_000)]
    pub fairness_jobs: usize,
    /// The scale-out scenario's `max_concurrency` for echo (cluster-wide).
    #[arg(long, default_value_t = 64)]
    pub scale_concurrency: u32,
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
    /// With --backend: throughput of one host, then two, on the same cluster.
    ScaleOut,
    /// One noisy concurrency key with a deep backlog: another key's job latency.
    Fairness,
    /// The same backlog drained one job per sandbox and in batches of 100.
    Batch,
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
    let slow = [
        Scenario::Retention,
        Scenario::Backlog,
        Scenario::Outbound,
        Scenario::ScaleOut,
        Scenario::Fairness,
        Scenario::Batch,
    ];
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
        let backend = args.backend.as_deref().map(|url| {
            let mut options = crate::store::nats::NatsOptions::new(url);
            options.replicas = args.nats_replicas.max(1);
            // A prefix of its own: earlier runs' jobs and functions on the cluster stay apart.
            options.prefix = format!("bench{}", crate::job::now_ms());
            options
        });
        if let Some(b) = &backend {
            eprintln!("backend: NATS JetStream at {}", b.servers.join(","));
        }
        let host = BenchHost::start(&base, backend).await?;
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
    if wants(Scenario::Fairness) {
        report.add(
            "fairness",
            fairness::scenario(&base, &wasm, &echo.manifest, args.fairness_jobs).await?,
        );
    }
    if wants(Scenario::Batch) {
        report.add(
            "batch",
            batches::scenario(&base, &wasm, &echo.manifest, args.jobs).await?,
        );
    }
    if wants(Scenario::Outbound) {
        let probe = probe.context("functions/probe is missing")?;
        report.add(
            "outbound",
            outbound::scenario(&base, &probe, (args.jobs / 4).max(1000), args.clients).await?,
        );
    }
    if wants(Scenario::ScaleOut) {
        let url = args
            .backend
            .as_deref()
            .context("the scale-out scenario needs --backend nats://HOST:PORT[,...]")?;
        let mut options = crate::store::nats::NatsOptions::new(url);
        options.replicas = args.nats_replicas.max(1);
        options.prefix = format!("bench{}", crate::job::now_ms());
        report.add(
            "scale_out",
            scale_out::scenario(
                &base,
                options,
                &wasm,
                &echo.manifest,
                args.jobs,
                args.clients,
                args.scale_concurrency,
            )
            .await?,
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
pub(super) async fn drive(addr: SocketAddr, jobs: usize, clients: usize) -> anyhow::Result<Vec<String>> {
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

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
