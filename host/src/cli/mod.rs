//! The `sluice` command line: parses flags (also from `SLUICE_*` variables), then calls the
//! library. Commands that talk to a host take `--url` / `SLUICE_URL`.
//!
//! ## Layout
//! - `client`: the HTTP client every command uses, and deploy and functions.
//! - `jobs`: commands about jobs: invoke, job, jobs, logs.
//! - `examples`: building and finding the example functions in `functions/`.
//! - `lifecycle`: versions, rollback, pause, resume.
//! - `topics`: list topics, publish events.
//! - `schedules`: list the functions' cron triggers.
//! - `progress`: progress bars on a terminal.
//! - `ops`: operating functions and jobs (stats, config, dead letters, cancel).
//! - `kv`: a function's key-value state: get, set, del, list.
//! - `secrets`: a function's secrets: set, del, list names.
//! - `up`: the one-command demo: build the examples, start a host, deploy them.

pub mod client;
mod cluster;
pub mod examples;
mod jobs;
mod kv;
mod lifecycle;
mod ops;
mod progress;
mod secrets;
mod schedules;
mod topics;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// Sluice: durable async jobs and events, each run in a fresh WebAssembly sandbox.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the host: HTTP API plus scheduler, all state in redb files in the data directory.
    Serve(ServeArgs),
    /// Build the example functions, start a host on the default data dir, deploy them.
    Up(up::UpArgs),
    /// Deploy a component (.wasm) with its manifest.
    Deploy(client::DeployArgs),
    /// Submit a job to a function (optionally wait for its result).
    Invoke(jobs::InvokeArgs),
    /// Show a job.
    Job(jobs::JobArgs),
    /// List jobs, newest first (filter by function, status, or correlation id).
    Jobs(jobs::JobsArgs),
    /// Print a job's log, attempt by attempt.
    Logs(jobs::LogsArgs),
    /// List deployed functions.
    Functions(client::FunctionsArgs),
    /// Show a function's job counts by status.
    Stats(ops::StatsArgs),
    /// Change a function's settings without redeploying it (`max_concurrency=4`).
    Config(ops::ConfigArgs),
    /// Cancel a queued or delayed job.
    Cancel(ops::CancelArgs),
    /// A function's dead-letter queue: list, redrive, purge.
    Dlq(ops::DlqArgs),
    /// List a function's versions (every deploy, settings change and rollback).
    Versions(lifecycle::FunctionArgs),
    /// Make an earlier version current again, code and settings together.
    Rollback(lifecycle::RollbackArgs),
    /// Pause a function: jobs are accepted and wait; none starts.
    Pause(lifecycle::FunctionArgs),
    /// Resume a paused function.
    Resume(lifecycle::FunctionArgs),
    /// List topics and their subscriptions, or show one topic's subscribers and backlog.
    Topics(topics::TopicsArgs),
    /// List every function's cron triggers (`[[schedule]]`) with their next and last fire.
    Schedules(schedules::SchedulesArgs),
    /// Publish a CloudEvent to a topic.
    Publish(topics::PublishArgs),
    /// A function's key-value state: get, set, del, list.
    Kv(kv::KvArgs),
    /// A function's secrets (read by its handler with config::get): set, del, list names.
    Secrets(secrets::SecretsArgs),
    /// Print the webhook signing secret (receivers verify callbacks with it), or rotate it.
    Secret(ops::SecretArgs),
    /// Measure throughput, latency, sandbox cost and start-up (optionally against BullMQ).
    Bench(crate::bench::BenchArgs),
    /// Check a stopped host's data directory: every page and record, and that no file is
    /// missing, empty or from elsewhere (exit 1 when something is wrong).
    Check(CheckArgs),
}

/// Flags of `sluice check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The data directory (the host using it must be stopped).
    #[arg(long, env = "SLUICE_DATA", default_value = ".sluice")]
    pub data: PathBuf,
}

/// `sluice check`: prints one line per file; fails when any has a problem.
fn check(args: CheckArgs) -> anyhow::Result<()> {
    // redb panics on some malformed pages; the check reports each as damage, so the default
    // hook's message and backtrace would only be noise.
    std::panic::set_hook(Box::new(|_| {}));
    let files = crate::store::check(&args.data)?;
    let mut bad = 0;
    for file in &files {
        match &file.problem {
            None => println!("ok       {}: {}", file.file.display(), file.summary),
            Some(problem) => {
                bad += 1;
                println!("DAMAGED  {}: {problem}", file.file.display());
            }
        }
    }
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} file(s) in {} have problems: restore the data directory from a backup (docs/delivery.md#checking-and-restoring-a-data-directory)",
            files.len(),
            args.data.display()
        );
    }
    Ok(())
}

/// Flags of `sluice serve` (and `sluice up`).
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of the data file (created if missing).
    #[arg(long, env = "SLUICE_DATA", default_value = ".sluice")]
    pub data: PathBuf,
    /// Seconds a shutdown waits for running attempts.
    #[arg(long, env = "SLUICE_GRACE_PERIOD", default_value_t = 30)]
    pub grace_period: u64,
    /// Host-wide budget of unfinished work in bytes (inputs plus 128 per job); submits beyond
    /// it get 429.
    #[arg(long, env = "SLUICE_MAX_QUEUED_BYTES", default_value_t = 1 << 30)]
    pub max_queued_bytes: u64,
    /// Longest chain of jobs one request may cause (enqueues, events, pipeline stages); a job
    /// further away is dead-lettered without running.
    #[arg(long, env = "SLUICE_MAX_HOPS", default_value_t = 64)]
    pub max_hops: u32,
    /// Seconds a client may take to send a request's headers, and may keep an idle connection
    /// open between requests, before the host closes it.
    #[arg(long, env = "SLUICE_HEADER_TIMEOUT", default_value_t = 15)]
    pub header_timeout: u64,
    /// Most client connections open at once (further ones wait to be accepted); at most half
    /// the process's file-descriptor limit.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Server-Sent Event streams open at once (job and function events); more get 503.
    #[arg(long, env = "SLUICE_MAX_EVENT_STREAMS", default_value_t = 1_000)]
    pub max_event_streams: usize,
    /// Core module instances one component may have (deploys of larger ones get 400).
    #[arg(long, env = "SLUICE_MAX_CORE_INSTANCES", default_value_t = 20)]
    pub max_core_instances: u32,
    /// Linear memories one component may have (deploys of more get 400).
    #[arg(long, env = "SLUICE_MAX_MEMORIES", default_value_t = 4)]
    pub max_memories: u32,
    /// Tables one component may have (deploys of more get 400).
    #[arg(long, env = "SLUICE_MAX_TABLES", default_value_t = 8)]
    pub max_tables: u32,
    /// Largest request body, in bytes (submits and deploys).
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Sandboxes that may run at once, host-wide.
    #[arg(long, env = "SLUICE_MAX_INSTANCES", default_value_t = 256)]
    pub max_instances: u32,
    /// Largest memory_mb a function may ask for.
    #[arg(long, env = "SLUICE_MAX_MEMORY_MB", default_value_t = 512)]
    pub max_memory_mb: u32,
    /// redb page cache, in MiB.
    #[arg(long, env = "SLUICE_CACHE_MB", default_value_t = 64)]
    pub cache_mb: usize,
    /// Microseconds a busy writer waits to gather more operations into one commit.
    #[arg(long, env = "SLUICE_COMMIT_DELAY_US", default_value_t = 0)]
    pub commit_delay_us: u64,
    /// Threads running attempts (default: one per CPU).
    #[arg(long, env = "SLUICE_SANDBOX_THREADS")]
    pub sandbox_threads: Option<usize>,
    /// Job shards: redb files committing in parallel (a data directory keeps the ones it has).
    #[arg(long, env = "SLUICE_STORE_SHARDS", default_value_t = 1)]
    pub store_shards: usize,
    /// Seconds finished jobs (succeeded, cancelled) are kept; dead letters stay until handled.
    #[arg(long, env = "SLUICE_JOB_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub job_retention_secs: u64,
    /// Seconds an Idempotency-Key is remembered.
    #[arg(long, env = "SLUICE_IDEMPOTENCY_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub idempotency_window_secs: u64,
    /// Payloads and outputs larger than this many bytes are stored once and streamed in chunks.
    #[arg(long, env = "SLUICE_CLAIM_CHECK_BYTES", default_value_t = 256 << 10)]
    pub claim_check_bytes: usize,
    /// Most bytes one attempt may stream out as its output (`write-output`); outputs past
    /// `--claim-check-bytes` wait on disk under DATA/spool for their commit.
    #[arg(long, env = "SLUICE_MAX_OUTPUT_BYTES", default_value_t = 256 << 20)]
    pub max_output_bytes: usize,
    /// A callback target allowed although internal: `host` (any port) or `host:port`;
    /// loopback is reachable only this way (repeat, or comma-separate in the variable).
    #[arg(long, env = "SLUICE_ALLOW_CALLBACK_HOSTS", value_delimiter = ',')]
    pub allow_callback_host: Vec<String>,
    /// A target of handlers' outbound HTTP allowed although internal (loopback, private,
    /// link-local): `host` (any port) or `host:port` (repeat, or comma-separate in the
    /// variable). The function's manifest must allow the origin too.
    #[arg(long, env = "SLUICE_ALLOW_OUTBOUND_HOST", value_delimiter = ',')]
    pub allow_outbound_host: Vec<String>,
    /// The file holding the key that seals function secrets (64 hex digits; created when
    /// missing). Default: DATA/secrets.key; keep it elsewhere (and backed up) so a copy of the
    /// data directory alone reveals no secret.
    #[arg(long, env = "SLUICE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<std::path::PathBuf>,
    /// Most bytes one function's key-value state may hold (keys and values, plus 64 bytes a
    /// key); a success whose writes would pass it fails retryably.
    #[arg(long, env = "SLUICE_MAX_KV_BYTES", default_value_t = 256 << 20)]
    pub max_kv_bytes: u64,
    /// Outbound HTTP requests one attempt may send.
    #[arg(long, env = "SLUICE_MAX_OUTBOUND_REQUESTS", default_value_t = 64)]
    pub max_outbound_requests: u32,
    /// Largest outbound request body, in bytes.
    #[arg(long, env = "SLUICE_MAX_OUTBOUND_REQUEST_BYTES", default_value_t = 16 << 20)]
    pub max_outbound_request_bytes: usize,
    /// Largest outbound response body a handler may read, in bytes.
    #[arg(long, env = "SLUICE_MAX_OUTBOUND_RESPONSE_BYTES", default_value_t = 16 << 20)]
    pub max_outbound_response_bytes: usize,
    /// Milliseconds one outbound request may take until its response headers (never more
    /// than what is left of the attempt's timeout).
    #[arg(long, env = "SLUICE_OUTBOUND_TIMEOUT_MS", default_value_t = 30_000)]
    pub outbound_timeout_ms: u64,
    /// Keep jobs and functions on a NATS JetStream cluster instead of the data directory's
    /// files, so several hosts serve them together: `nats://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, env = "SLUICE_BACKEND")]
    pub backend: Option<String>,
    /// With --backend: the prefix of every stream and bucket (one deployment's data).
    #[arg(long, env = "SLUICE_NATS_PREFIX", default_value = "sluice")]
    pub nats_prefix: String,
    /// With --backend: replicas of every stream and bucket (3 on a 3-node cluster).
    #[arg(long, env = "SLUICE_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// With --backend: a `.creds` file to authenticate with.
    #[arg(long, env = "SLUICE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// With --backend: a CA certificate to trust (TLS is then required).
    #[arg(long, env = "SLUICE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// The address clients reach this host at (e.g. https://sluice.example): callbacks link
    /// large outputs under it (default: the listening address).
    #[arg(long, env = "SLUICE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Send spans of jobs, attempts, outbound requests and callbacks to this OTLP/HTTP
    /// endpoint (e.g. http://localhost:4318; JSON to /v1/traces).
    #[arg(long, env = "SLUICE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Callback deliveries in flight to one receiver (URL origin) at most, so a slow receiver
    /// cannot hold the sender's slots.
    #[arg(long, env = "SLUICE_CALLBACK_PER_DESTINATION", default_value_t = 8)]
    pub callback_per_destination: usize,
    /// Seconds deliveries to a receiver pause after it failed 5 times in a row (then one probe
    /// goes out).
    #[arg(long, env = "SLUICE_CALLBACK_COOL_DOWN", default_value_t = 30)]
    pub callback_cool_down: u64,
    /// Delivery attempts of a callback before it is marked failed.
    #[arg(long, env = "SLUICE_CALLBACK_MAX_ATTEMPTS", default_value_t = 10)]
    pub callback_max_attempts: u32,
    /// Upper bound of the first callback retry's delay, in ms (doubling, full jitter, capped at
    /// an hour).
    #[arg(long, env = "SLUICE_CALLBACK_BACKOFF_BASE_MS", default_value_t = 1000)]
    pub callback_backoff_base_ms: u64,
    /// Cap on a callback retry's delay, in ms.
    #[arg(
        long,
        env = "SLUICE_CALLBACK_BACKOFF_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub callback_backoff_max_ms: u64,
    /// API tokens as `SCOPES=TOKEN` entries (scopes: admin, submit, read, joined with +),
    /// comma-separated. Without any token the API is open and served on loopback only.
    #[arg(
        long,
        env = "SLUICE_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub tokens: Vec<String>,
    /// A file of `SCOPES=TOKEN` entries, one per line (`#` comments).
    #[arg(long, env = "SLUICE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The host configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut tokens = crate::access::Tokens::parse(self.tokens.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--tokens: {e}"))?;
        if let Some(path) = &self.token_file {
            tokens =
                tokens.merged(&crate::access::Tokens::from_file(path).map_err(anyhow::Error::msg)?);
        }
        let backend = match &self.backend {
            None => None,
            Some(url) if url.starts_with("nats://") || url.starts_with("tls://") => {
                let mut options = crate::store::nats::NatsOptions::new(url);
                options.prefix = self.nats_prefix.clone();
                options.replicas = self.nats_replicas.max(1);
                options.credentials = self.nats_creds.clone();
                options.tls_ca = self.nats_ca.clone();
                options.idempotency_window = Duration::from_secs(self.idempotency_window_secs);
                Some(options)
            }
            Some(other) => anyhow::bail!(
                "--backend {other:?}: give NATS servers as nats://HOST:PORT[,HOST:PORT...] (or leave it out to keep everything in --data)"
            ),
        };
        Ok(Config {
            backend,
            data_dir: self.data.clone(),
            grace_period: Duration::from_secs(self.grace_period),
            max_body_bytes: self.max_body_bytes,
            max_instances: self.max_instances,
            max_memory_mb: self.max_memory_mb,
            cache_mb: self.cache_mb,
            commit_delay: Duration::from_micros(self.commit_delay_us),
            store_shards: self.store_shards,
            job_retention: Duration::from_secs(self.job_retention_secs),
            idempotency_window: Duration::from_secs(self.idempotency_window_secs),
            max_queued_bytes: self.max_queued_bytes,
            max_hops: self.max_hops,
            header_timeout: Duration::from_secs(self.header_timeout),
            max_connections: self.max_connections,
            max_event_streams: self.max_event_streams,
            component_limits: crate::config::ComponentLimits {
                core_instances: self.max_core_instances,
                memories: self.max_memories,
                tables: self.max_tables,
            },
            claim_check_bytes: self.claim_check_bytes,
            max_output_bytes: self.max_output_bytes,
            allow_callback_hosts: self.allow_callback_host.clone(),
            allow_outbound_hosts: self.allow_outbound_host.clone(),
            secrets_key_file: self.secrets_key_file.clone(),
            max_kv_bytes: self.max_kv_bytes,
            outbound: crate::runtime::outbound::OutboundLimits {
                max_requests: self.max_outbound_requests,
                max_request_bytes: self.max_outbound_request_bytes,
                max_response_bytes: self.max_outbound_response_bytes,
                timeout: Duration::from_millis(self.outbound_timeout_ms),
            },
            public_url: self.public_url.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            callback_per_destination: self.callback_per_destination,
            callback_cool_down: Duration::from_secs(self.callback_cool_down),
            callback_retry: crate::manifest::RetryPolicy {
                max_attempts: self.callback_max_attempts,
                backoff_base_ms: self.callback_backoff_base_ms,
                backoff_max_ms: self
                    .callback_backoff_max_ms
                    .max(self.callback_backoff_base_ms),
            },
            tokens,
            sandbox_threads: self
                .sandbox_threads
                .unwrap_or(Config::default().sandbox_threads),
            ..Config::default()
        })
    }
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "sluice=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Up(args) => up::run(args).await,
            Command::Deploy(args) => client::deploy(args).await,
            Command::Invoke(args) => jobs::invoke(args).await,
            Command::Job(args) => jobs::job(args).await,
            Command::Jobs(args) => jobs::jobs(args).await,
            Command::Logs(args) => jobs::logs(args).await,
            Command::Functions(args) => client::functions(args).await,
            Command::Stats(args) => ops::stats(args).await,
            Command::Config(args) => ops::config(args).await,
            Command::Cancel(args) => ops::cancel(args).await,
            Command::Dlq(args) => ops::dlq(args).await,
            Command::Versions(args) => lifecycle::versions(args).await,
            Command::Rollback(args) => lifecycle::rollback(args).await,
            Command::Pause(args) => lifecycle::set_paused(args, true).await,
            Command::Resume(args) => lifecycle::set_paused(args, false).await,
            Command::Topics(args) => topics::topics(args).await,
            Command::Schedules(args) => schedules::schedules(args).await,
            Command::Publish(args) => topics::publish(args).await,
            Command::Secret(args) => ops::secret(args).await,
            Command::Kv(args) => kv::kv(args).await,
            Command::Secrets(args) => secrets::secrets(args).await,
            Command::Bench(args) => crate::bench::run(args).await,
            Command::Check(args) => check(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (pick another with --listen)",
                args.listen
            )
        })?;
    eprintln!(
        "sluice listening on http://{} (data in {})",
        listener.local_addr()?,
        config.data_dir.display()
    );
    crate::run(listener, shutdown_signal(), config).await
}

/// Resolves on Ctrl-C or SIGTERM.
/// Waits until `url` answers `/healthz` (30 s at most).
async fn wait_healthy(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the host on {url} did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    eprintln!("sluice: shutting down");
}
