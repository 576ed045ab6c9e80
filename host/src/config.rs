//! Host configuration: one plain struct, validated once at start-up, then passed down.

use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::{Bounds, RetryPolicy};
use crate::store::StoreOptions;

/// Everything a host needs to know before it starts. Built by the CLI from flags and
/// `SLUICE_*` variables, or by tests directly.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory holding the redb files (`catalog.redb`, `jobs-N.redb`); created if missing.
    pub data_dir: PathBuf,
    /// How long a shutdown waits for running attempts before leaving them to the next start.
    pub grace_period: Duration,
    /// Largest request body accepted (submits and deploys); larger bodies get 413.
    pub max_body_bytes: usize,
    /// Cap on `?wait=N` long-polls.
    pub max_wait: Duration,
    /// Sandboxes that may exist at once, host-wide (sizes the pooling allocator).
    pub max_instances: u32,
    /// Largest `memory_mb` a function may ask for (each pool slot reserves this much).
    pub max_memory_mb: u32,
    /// Largest `timeout_ms` a function may ask for.
    pub max_timeout_ms: u64,
    /// redb page cache, in MiB.
    pub cache_mb: usize,
    /// How long a busy writer waits to gather more operations into one commit (group commit);
    /// an idle one commits at once.
    pub commit_delay: Duration,
    /// Job shards: redb files that commit in parallel. Fixed once a data directory has them
    /// (a larger number adds shards; a smaller one keeps the existing ones).
    pub store_shards: usize,
    /// How long finished jobs (`succeeded`, `cancelled`) are kept, with their outputs, logs and
    /// attempt histories; dead letters stay until redriven or purged.
    pub job_retention: Duration,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    /// Host-wide budget of unfinished work: each unfinished job costs its input bytes plus
    /// [`crate::job::JOB_RECORD_BYTES`]; submits beyond it get 429.
    pub max_queued_bytes: u64,
    /// Longest chain of jobs one request may cause (enqueues, emitted events, pipeline
    /// stages): a job further from its request is dead-lettered without running.
    pub max_hops: u32,
    /// Sandbox resources one component may use: core instances, linear memories and tables.
    /// A component that needs more is refused at deploy, so one handler cannot take the pool
    /// slots every other function's attempts need.
    pub component_limits: ComponentLimits,
    /// How long a connection may take to send a request's headers, and may stay idle between
    /// requests, before the host closes it (slow or abandoned clients hold no connection).
    pub header_timeout: Duration,
    /// Most client connections open at once; further ones wait in the listen backlog. Never
    /// more than half the process's file-descriptor limit, whatever is asked.
    pub max_connections: usize,
    /// Server-Sent Event streams open at once (`/v1/jobs/{id}/events`,
    /// `/v1/functions/{name}/events`); more are answered 503 with `Retry-After`.
    pub max_event_streams: usize,
    /// Threads running attempts (at a lower OS priority than the API and the writer).
    pub sandbox_threads: usize,
    /// Bound on a job's captured log (stdout, stderr and log lines), in bytes.
    pub max_log_bytes: usize,
    /// Payloads and outputs larger than this are stored once as chunked blobs (claim checks)
    /// and streamed; smaller ones travel inline.
    pub claim_check_bytes: usize,
    /// Largest output an attempt may stream out, in bytes.
    pub max_output_bytes: usize,
    /// Callback targets allowed although their address is internal: `host` or `host:port`
    /// (`--allow-callback-host`); loopback is reachable only this way.
    pub allow_callback_hosts: Vec<String>,
    /// Handlers' outbound HTTP targets allowed although their address is internal: `host` or
    /// `host:port` (`--allow-outbound-host`); a function's manifest must still allow them.
    pub allow_outbound_hosts: Vec<String>,
    /// The key that seals function secrets (`--secrets-key-file`); default `DATA/secrets.key`,
    /// created when missing. Keep it apart from the data directory so a copy of the data
    /// alone reveals no secret.
    pub secrets_key_file: Option<PathBuf>,
    /// Most bytes one function's key-value state may hold (`--max-kv-bytes`).
    pub max_kv_bytes: u64,
    /// Bounds on handlers' outbound HTTP requests.
    pub outbound: crate::runtime::outbound::OutboundLimits,
    /// The address clients reach this host at (`--public-url`, e.g. `https://sluice.example`):
    /// callbacks link large outputs under it. Unset: the listening address, unless that is
    /// unspecified (0.0.0.0), in which case the link is relative.
    pub public_url: Option<String>,
    /// Where to send spans (`--otlp-endpoint`, an OTLP/HTTP base URL such as
    /// `http://collector:4318`); unset, none are exported (`traceparent` headers go out anyway).
    pub otlp_endpoint: Option<String>,
    /// How failed callbacks are retried (attempts, backoff with full jitter).
    pub callback_retry: RetryPolicy,
    /// How long one callback attempt may take.
    pub callback_timeout: Duration,
    /// Callback deliveries in flight to one receiver origin at most.
    pub callback_per_destination: usize,
    /// How long deliveries to a receiver pause after it failed 5 times in a row.
    pub callback_cool_down: Duration,
    /// API tokens and their scopes; none means an open API, served on loopback only.
    pub tokens: crate::access::Tokens,
    /// Where jobs and functions live: `None` in redb files under `data_dir`; a NATS JetStream
    /// cluster (shared by several hosts) otherwise.
    pub backend: Option<crate::store::nats::NatsOptions>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".sluice"),
            backend: None,
            grace_period: Duration::from_secs(30),
            max_body_bytes: 64 << 20,
            max_wait: Duration::from_secs(60),
            max_instances: 256,
            max_memory_mb: 512,
            max_timeout_ms: 15 * 60 * 1000,
            cache_mb: 64,
            max_log_bytes: 64 << 10,
            commit_delay: Duration::ZERO,
            store_shards: 1,
            job_retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_window: Duration::from_secs(24 * 3600),
            max_queued_bytes: 1 << 30,
            max_hops: 64,
            component_limits: ComponentLimits::default(),
            header_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            max_event_streams: 1_000,
            sandbox_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            claim_check_bytes: 256 << 10,
            max_output_bytes: 256 << 20,
            allow_callback_hosts: Vec::new(),
            allow_outbound_hosts: Vec::new(),
            secrets_key_file: None,
            max_kv_bytes: 256 << 20,
            outbound: crate::runtime::outbound::OutboundLimits::DEFAULT,
            public_url: None,
            otlp_endpoint: None,
            callback_retry: RetryPolicy {
                max_attempts: 10,
                backoff_base_ms: 1000,
                backoff_max_ms: 3_600_000,
            },
            callback_timeout: Duration::from_secs(10),
            callback_per_destination: 8,
            callback_cool_down: Duration::from_secs(30),
            tokens: Default::default(),
        }
    }
}

/// A setting that cannot work; the message says which and why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// How the store opens its files.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            cache_bytes: self.cache_mb << 20,
            commit_delay: self.commit_delay,
            shards: self.store_shards,
            job_retention: self.job_retention,
            idempotency_window: self.idempotency_window,
            max_queued_bytes: self.max_queued_bytes,
            max_hops: self.max_hops,
            claim_check_bytes: self.claim_check_bytes,
            callback_retry: self.callback_retry,
            max_kv_bytes: self.max_kv_bytes,
        }
    }

    /// Limits every function manifest must fit in.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_concurrency: self.max_instances,
            max_timeout_ms: self.max_timeout_ms,
            max_memory_mb: self.max_memory_mb,
        }
    }

    /// Settings that work but likely surprise, each with what to change.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.job_retention < self.idempotency_window {
            out.push(format!(
                "--job-retention-secs ({}) is shorter than --idempotency-window-secs ({}): a repeated idempotency key can answer with the id of a job already deleted (404); keep jobs at least as long as keys",
                self.job_retention.as_secs(),
                self.idempotency_window.as_secs()
            ));
        }
        out
    }

    /// Checks the settings fit together; call once before building anything from them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        if self.max_instances == 0 || self.max_instances > 10_000 {
            return fail("max_instances must be 1 to 10000");
        }
        if self.max_memory_mb == 0 || self.max_memory_mb > 4096 {
            return fail("max_memory_mb must be 1 to 4096");
        }
        if self.max_timeout_ms == 0 {
            return fail("max_timeout_ms must be at least 1");
        }
        if self.max_body_bytes == 0 {
            return fail("max_body_bytes must be at least 1");
        }
        if self.sandbox_threads == 0 || self.sandbox_threads > 1024 {
            return fail("sandbox_threads must be 1 to 1024");
        }
        if self.job_retention.is_zero() || self.idempotency_window.is_zero() {
            return fail("job_retention and idempotency_window must be longer than zero");
        }
        if self.store_shards == 0 || self.store_shards > 64 {
            return fail("store_shards must be 1 to 64");
        }
        crate::guard::AllowList::parse(&self.allow_callback_hosts, crate::guard::CALLBACK)
            .map_err(ConfigError)?;
        crate::guard::AllowList::parse(&self.allow_outbound_hosts, crate::guard::OUTBOUND)
            .map_err(ConfigError)?;
        if self.outbound.max_requests == 0 || self.outbound.timeout.is_zero() {
            return fail("max_outbound_requests and outbound_timeout must be at least 1");
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "public_url {url:?} must start with http:// or https:// (e.g. https://sluice.example)"
            )));
        }
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "otlp_endpoint {url:?} must start with http:// or https:// (e.g. http://localhost:4318)"
            )));
        }
        if self.callback_retry.max_attempts == 0 {
            return fail("callback_retry.max_attempts must be at least 1");
        }
        if self.claim_check_bytes < 1024 {
            return fail("claim_check_bytes must be at least 1024");
        }
        if self.max_log_bytes < 1024 {
            return fail("max_log_bytes must be at least 1024");
        }
        if self.max_hops == 0 {
            return fail("max_hops must be at least 1");
        }
        if self.header_timeout.is_zero() {
            return fail("header_timeout must be more than 0");
        }
        if self.callback_per_destination == 0 {
            return fail("callback_per_destination must be at least 1");
        }
        if self.max_event_streams == 0 {
            return fail("max_event_streams must be at least 1");
        }
        if self.max_connections == 0 {
            return fail("max_connections must be at least 1");
        }
        let l = self.component_limits;
        if !(1..=1000).contains(&l.core_instances)
            || !(1..=100).contains(&l.memories)
            || !(1..=100).contains(&l.tables)
        {
            return fail(
                "component limits: core instances 1 to 1000, memories and tables 1 to 100 per component",
            );
        }
        Ok(())
    }
}

/// What one component may hold in its sandbox. The pooling allocator reserves this much for
/// every one of `max_instances` sandboxes, so an attempt never waits for or takes another
/// function's slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentLimits {
    /// Core module instances (a Rust handler has about 3; `--max-core-instances`).
    pub core_instances: u32,
    /// Linear memories (a Rust handler has 1 or 2; `--max-memories`).
    pub memories: u32,
    /// Tables (a Rust handler has about 3; `--max-tables`).
    pub tables: u32,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        ComponentLimits {
            core_instances: 20,
            memories: 4,
            tables: 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use std::time::Duration;

    #[test]
    fn retention_shorter_than_the_key_window_is_warned_about() {
        let mut config = Config::default();
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        config.job_retention = Duration::from_secs(60);
        config.idempotency_window = Duration::from_secs(3600);
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("--job-retention-secs (60)"),
            "{warnings:?}"
        );
    }
}
