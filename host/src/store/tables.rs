//! The redb tables, as constants, and the encoding of what they hold.
//!
//! The catalog file (`catalog.redb`) holds what is deployed:
//! - `functions`: name -> [`FunctionRecord`] (JSON: rare writes, easy to evolve).
//! - `components`: digest -> the component's wasm bytes (kept to recompile after an upgrade).
//! - `artifacts`: `{digest}-{engine hash}` -> the compiled artifact (so start-up never compiles).
//!
//! Each shard file (`jobs-N.redb`) holds the jobs whose id carries its number:
//! - `jobs`: job id -> [`Job`] (postcard, behind a version byte).
//! - `ready`: (function, 9 - priority, ready ms, job id) -> (): each function's ready queue
//!   (`queued` jobs, and `running` ones until they finish), in dispatch order. Taking the next
//!   jobs is a range read from the function's start; recovery and delete read only this and
//!   `delayed`, never the whole history.
//! - `counts`: (function, slot) -> u64: jobs per status (slots in [`JobStatus::ALL`] order) and,
//!   in slot [`BYTES_SLOT`], the input bytes of its unfinished jobs. Updated in the same
//!   transaction as every status change; stats never scan jobs.
//! - `function_jobs`: (function, job id) -> (): the per-function listing index.
//! - `delayed`: (not-before ms, job id) -> (): the timer index of `delayed` jobs, earliest first.
//! - `dead_letters`: (function, job id) -> (): each function's dead-letter queue (`failed` and
//!   `dead` jobs), kept until redriven or purged.
//! - `finished`: (finished ms, job id) -> (): `succeeded` and `cancelled` jobs by age, for the
//!   retention sweeper (dead letters are not in it: they stay until redriven or purged).
//! - `idempotency`: (function, key) -> [`KeyRecord`]: the job a key created and its request's hash.
//! - `idempotency_times`: (created ms, function, key) -> (): keys by age, for the sweeper.
//! - `ordering`: (function, ordering key, seq) -> job id: each key's unfinished jobs in
//!   submission order. Only the first (the key's head) is ever in `ready`; when it ends, the
//!   next one enters `ready`.
//! - `concurrency`: (function, concurrency key, seq) -> (job id, admitted): each key's
//!   unfinished jobs that are due, in the order they became due. Only the first
//!   `key_concurrency` of a key are ever let into `ready` (`admitted`, see [`super::keys`]).
//! - `debounce`: (function, debounce key) -> (job id, burst began ms): each key's job waiting
//!   to run, which a newer submit with the key replaces (see [`super::debounce`]).
//! - `events`: Sluice event id -> [`EventRecord`]: each published event (attributes, not data)
//!   and the delivery jobs it made; in `finished` from the moment it is published, so the
//!   sweeper deletes it after the job retention period.
//! - `correlated`: (correlation id, job or event id) -> kind: everything that carries a
//!   correlation id it did not get from itself (a client's id, an event's), for
//!   `GET /v1/jobs?correlation_id=`.
//! - `callbacks`: (due ms, job id) -> (): webhook callbacks not yet delivered, earliest first.
//! - `blobs`: digest -> (size, references) and `blob_chunks`: (digest, n) -> bytes: payloads and
//!   outputs above the claim-check threshold, stored once (see [`super::blobs`]).
//!
//! The catalog also keeps `versions`: (function, version) -> [`FunctionRecord`] as of that
//! version (JSON), every deploy, settings change and rollback.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

#[allow(unused_imports)] // named in the docs above
use crate::job::JobStatus;
use crate::job::{Job, JobSummary};
use crate::manifest::Settings;

pub(crate) const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
pub(crate) const COMPONENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("components");
pub(crate) const ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("artifacts");
/// Host-wide settings kept with the catalog (the webhook signing secrets), JSON by name.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Function secrets: (function, name) -> (when set, ms since the Unix epoch; the sealed value).
pub(crate) const SECRETS: TableDefinition<(&str, &str), (u64, &[u8])> =
    TableDefinition::new("secrets");
pub(crate) const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
pub(crate) const READY: TableDefinition<(&str, u8, u64, u128), ()> = TableDefinition::new("ready");
pub(crate) const COUNTS: TableDefinition<(&str, u8), u64> = TableDefinition::new("counts");
pub(crate) const FUNCTION_JOBS: TableDefinition<(&str, u128), ()> =
    TableDefinition::new("function_jobs");
pub(crate) const DELAYED: TableDefinition<(u64, u128), ()> = TableDefinition::new("delayed");
pub(crate) const FINISHED: TableDefinition<(u64, u128), ()> = TableDefinition::new("finished");
pub(crate) const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("idempotency");
pub(crate) const IDEMPOTENCY_TIMES: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("idempotency_times");
pub(crate) const ORDERING: TableDefinition<(&str, &str, u128), u128> =
    TableDefinition::new("ordering");
pub(crate) const CONCURRENCY: TableDefinition<(&str, &str, u128), (u128, bool)> =
    TableDefinition::new("concurrency");
pub(crate) const DEBOUNCE: TableDefinition<(&str, &str), (u128, u64)> =
    TableDefinition::new("debounce");
pub(crate) const VERSIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("versions");
pub(crate) const EVENTS: TableDefinition<u128, &[u8]> = TableDefinition::new("events");
pub(crate) const CORRELATED: TableDefinition<(&str, u128), u8> = TableDefinition::new("correlated");
/// `correlated` kinds.
pub(crate) const KIND_JOB: u8 = 0;
pub(crate) const KIND_EVENT: u8 = 1;
pub(crate) const BLOBS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("blobs");
pub(crate) const BLOB_CHUNKS: TableDefinition<(&[u8], u32), &[u8]> =
    TableDefinition::new("blob_chunks");
pub(crate) const CALLBACKS: TableDefinition<(u64, u128), ()> = TableDefinition::new("callbacks");
pub(crate) const DEAD_LETTERS: TableDefinition<(&str, u128), ()> =
    TableDefinition::new("dead_letters");

/// A deployed function, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// The function's name.
    pub name: String,
    /// Its validated settings.
    pub settings: Settings,
    /// Lowercase hex SHA-256 of the component's bytes.
    pub digest: String,
    /// Size of the component, in bytes.
    pub size: u64,
    /// When this version was deployed (ms since the Unix epoch).
    pub deployed_at: u64,
    /// This version's number: every deploy, settings change and rollback makes the next one,
    /// starting at 1.
    pub version: u32,
    /// What made this version: `deploy`, `configure`, or `rollback to N`.
    #[serde(default)]
    pub change: String,
    /// Topics it receives events from (part of a version, like the settings).
    #[serde(default)]
    pub subscriptions: Vec<crate::manifest::Subscription>,
    /// The next stage of its pipeline: on success, its output becomes a job of this function.
    #[serde(default)]
    pub then: Option<String>,
    /// Where its jobs take their concurrency key from when a submit names none (part of a
    /// version, like the settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<crate::flow::KeyRule>,
    /// Weights of its concurrency keys (part of a version, like the settings).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub key_weights: std::collections::BTreeMap<String, u32>,
    /// Its cron triggers (part of a version, like the settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedule::Schedule>,
    /// A paused function accepts jobs but starts none (not part of a version: pausing is
    /// operation, not configuration).
    #[serde(default)]
    pub paused: bool,
    /// Origins its handler may send HTTP requests to (`allowed_outbound_hosts`, normalised);
    /// empty allows none. Part of a version, like the settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Its `[config]` values, read by the handler through `wasi:config/store`. Part of a
    /// version, like the settings.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
    /// What differs from the version before, one line each (`timeout_ms 2000 -> 500`,
    /// `unsubscribed from audit`, `new code`); empty for version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

impl FunctionRecord {
    /// What a version with this configuration would change from `previous`, one line each:
    /// code, every setting, subscriptions, pipeline, outbound hosts, config keys (values of
    /// config are not shown).
    pub fn changes_from(&self, previous: &FunctionRecord) -> Vec<String> {
        let mut out = Vec::new();
        if self.digest != previous.digest {
            out.push(format!(
                "new code (sha256:{}, {} bytes)",
                &self.digest[..12.min(self.digest.len())],
                self.size
            ));
        }
        let (a, b) = (&previous.settings, &self.settings);
        let mut setting = |key: &str, from: String, to: String| {
            if from != to {
                out.push(format!("{key} {from} -> {to}"));
            }
        };
        setting(
            "max_concurrency",
            a.max_concurrency.to_string(),
            b.max_concurrency.to_string(),
        );
        setting(
            "timeout_ms",
            a.timeout_ms.to_string(),
            b.timeout_ms.to_string(),
        );
        setting(
            "memory_mb",
            a.memory_mb.to_string(),
            b.memory_mb.to_string(),
        );
        setting(
            "max_attempts",
            a.retry.max_attempts.to_string(),
            b.retry.max_attempts.to_string(),
        );
        setting(
            "backoff_base_ms",
            a.retry.backoff_base_ms.to_string(),
            b.retry.backoff_base_ms.to_string(),
        );
        setting(
            "backoff_max_ms",
            a.retry.backoff_max_ms.to_string(),
            b.retry.backoff_max_ms.to_string(),
        );
        setting(
            "max_queued",
            a.max_queued.to_string(),
            b.max_queued.to_string(),
        );
        let rate = |r: Option<u32>| r.map_or("unlimited".to_string(), |r| r.to_string());
        setting(
            "rate_per_second",
            rate(a.rate_per_second),
            rate(b.rate_per_second),
        );
        let keyed = |n: Option<u32>, unset: &str| n.map_or(unset.to_string(), |n| n.to_string());
        setting(
            "key_concurrency",
            keyed(a.key_concurrency, "max_concurrency"),
            keyed(b.key_concurrency, "max_concurrency"),
        );
        setting(
            "key_rate_per_second",
            keyed(a.key_rate_per_second, "unlimited"),
            keyed(b.key_rate_per_second, "unlimited"),
        );
        let ms = |n: Option<u64>| n.map_or("none".to_string(), |n| n.to_string());
        setting("debounce_ms", ms(a.debounce_ms), ms(b.debounce_ms));
        setting("debounce_max_ms", ms(a.debounce_max_ms), ms(b.debounce_max_ms));
        let failures = |n: Option<u32>| n.map_or("none".to_string(), |n| n.to_string());
        setting("breaker_failures", failures(a.breaker_failures), failures(b.breaker_failures));
        setting("breaker_cooldown_ms", ms(a.breaker_cooldown_ms), ms(b.breaker_cooldown_ms));
        setting("batch.max_size", failures(a.batch_max_size), failures(b.batch_max_size));
        setting("batch.max_wait_ms", ms(a.batch_max_wait_ms), ms(b.batch_max_wait_ms));
        if previous.key_weights != self.key_weights {
            out.push(format!(
                "key_weights {:?} -> {:?}",
                previous.key_weights, self.key_weights
            ));
        }
        if previous.schedules != self.schedules {
            let crons = |s: &[crate::schedule::Schedule]| {
                let list: Vec<&str> = s.iter().map(|s| s.cron.as_str()).collect();
                format!("[{}]", list.join(", "))
            };
            out.push(format!(
                "schedules {} -> {}",
                crons(&previous.schedules),
                crons(&self.schedules)
            ));
        }
        if previous.concurrency_key != self.concurrency_key {
            let rule = |r: &Option<crate::flow::KeyRule>| match r {
                Some(crate::flow::KeyRule::Header(h)) => format!("header {h}"),
                Some(crate::flow::KeyRule::Json(p)) => format!("json {p}"),
                None => "none".into(),
            };
            out.push(format!(
                "concurrency_key {} -> {}",
                rule(&previous.concurrency_key),
                rule(&self.concurrency_key)
            ));
        }
        let topics = |subs: &[crate::manifest::Subscription]| -> Vec<String> {
            subs.iter()
                .map(|s| {
                    if s.types.is_empty() {
                        s.topic.clone()
                    } else {
                        format!("{} ({})", s.topic, s.types.join(", "))
                    }
                })
                .collect()
        };
        let (was, now) = (topics(&previous.subscriptions), topics(&self.subscriptions));
        for t in was.iter().filter(|t| !now.contains(t)) {
            out.push(format!("unsubscribed from {t}"));
        }
        for t in now.iter().filter(|t| !was.contains(t)) {
            out.push(format!("subscribed to {t}"));
        }
        if previous.then != self.then {
            let stage = |t: &Option<String>| t.clone().unwrap_or_else(|| "none".into());
            out.push(format!(
                "then {} -> {}",
                stage(&previous.then),
                stage(&self.then)
            ));
        }
        for h in previous
            .allowed_outbound_hosts
            .iter()
            .filter(|h| !self.allowed_outbound_hosts.contains(h))
        {
            out.push(format!("outbound host {h} no longer allowed"));
        }
        for h in self
            .allowed_outbound_hosts
            .iter()
            .filter(|h| !previous.allowed_outbound_hosts.contains(h))
        {
            out.push(format!("outbound host {h} allowed"));
        }
        for (k, v) in &previous.config {
            match self.config.get(k) {
                None => out.push(format!("config {k} removed")),
                Some(new) if new != v => out.push(format!("config {k} changed")),
                Some(_) => {}
            }
        }
        for k in self
            .config
            .keys()
            .filter(|k| !previous.config.contains_key(*k))
        {
            out.push(format!("config {k} added"));
        }
        out
    }
}

/// The `counts` slot holding a function's unfinished input bytes.
pub(crate) const BYTES_SLOT: u8 = 7;

/// First byte of every stored job: bump it when [`Job`]'s layout changes, and decode old ones.
const JOB_FORMAT: u8 = 8;

pub(crate) fn encode_job(job: &Job) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + job.input.len() + job.log.len());
    out.push(JOB_FORMAT);
    postcard::to_io(job, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub(crate) fn decode_job(bytes: &[u8]) -> Result<Job, String> {
    match bytes.split_first() {
        Some((&JOB_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((7, rest)) => super::legacy::decode_v7(rest),
        Some((6, rest)) => super::legacy::decode_v6(rest),
        Some((5, rest)) => super::legacy::decode_v5(rest),
        Some((4, rest)) => super::legacy::decode_v4(rest),
        Some((3, rest)) => super::legacy::decode_v3(rest),
        Some((v, _)) => Err(format!("job stored in unknown format {v}: upgrade sluice")),
        None => Err("empty job record".into()),
    }
}

/// Decodes a stored job's summary: the input, output and log are borrowed from the record to
/// measure them, never copied.
pub(crate) fn decode_job_summary(bytes: &[u8]) -> Result<JobSummary, String> {
    let Some((&JOB_FORMAT, rest)) = bytes.split_first() else {
        // An older format: decode it whole (rare: records are rewritten as jobs change).
        return decode_job(bytes).map(JobSummary::of);
    };
    let v: JobView<'_> = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
    let input_size = v.input_blob.map_or(v.input.len() as u64, |b| b.size);
    let output_size = v
        .output_blob
        .map(|b| b.size)
        .or(v.output.map(|o| o.len() as u64));
    Ok(JobSummary {
        job: Job {
            function: v.function,
            status: v.status,
            attempts: v.attempts,
            created_at: v.created_at,
            started_at: v.started_at,
            finished_at: v.finished_at,
            input_content_type: v.input_content_type,
            input: Vec::new(),
            output_content_type: v.output_content_type,
            output: None,
            error: v.error,
            log: String::new(),
            correlation_id: v.correlation_id,
            not_before: v.not_before,
            priority: v.priority,
            ready_at: v.ready_at,
            lease_until: v.lease_until,
            history: v.history,
            ordering_key: v.ordering_key,
            ordering_seq: v.ordering_seq,
            version: v.version,
            event: v.event,
            parent: v.parent,
            pipeline: v.pipeline,
            input_blob: v.input_blob,
            output_blob: v.output_blob,
            callback: v.callback,
            hops: v.hops,
            outbound: v.outbound,
            conflicts: v.conflicts,
            earlier_logs: Vec::new(),
            trace_parent: v.trace_parent,
            concurrency_key: v.concurrency_key,
            concurrency_seq: v.concurrency_seq,
            debounce_key: v.debounce_key,
            superseded_by: v.superseded_by,
        },
        input_size,
        output_size,
    })
}

/// [`Job`]'s stored layout with the large fields borrowed (keep the two in step).
#[derive(Deserialize)]
struct JobView<'a> {
    function: String,
    status: JobStatus,
    attempts: u32,
    created_at: u64,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    input_content_type: Option<String>,
    #[serde(borrow)]
    input: &'a [u8],
    output_content_type: Option<String>,
    #[serde(borrow)]
    output: Option<&'a [u8]>,
    error: Option<String>,
    #[serde(borrow)]
    #[allow(dead_code)]
    log: &'a str,
    correlation_id: String,
    not_before: Option<u64>,
    priority: u8,
    ready_at: u64,
    lease_until: Option<u64>,
    history: Vec<crate::job::AttemptRecord>,
    ordering_key: Option<String>,
    ordering_seq: u128,
    version: Option<u32>,
    event: Option<crate::event::EventAttributes>,
    parent: Option<crate::job::Parent>,
    pipeline: Option<crate::job::Pipeline>,
    input_blob: Option<crate::job::BlobRef>,
    output_blob: Option<crate::job::BlobRef>,
    callback: Option<crate::job::Callback>,
    hops: u32,
    outbound: Vec<crate::job::OutboundCall>,
    conflicts: u32,
    /// Earlier logs, borrowed and skipped.
    #[serde(borrow)]
    _earlier_logs: Vec<(u32, u64, &'a str)>,
    trace_parent: Option<u64>,
    concurrency_key: Option<String>,
    concurrency_seq: u128,
    debounce_key: Option<String>,
    superseded_by: Option<u128>,
}

pub(crate) fn encode_function(record: &FunctionRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a function record always serialises")
}

pub(crate) fn decode_function(bytes: &[u8]) -> Result<FunctionRecord, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A published event as stored: its attributes (the data lives on in its delivery jobs) and
/// what it caused.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventRecord {
    /// CloudEvents attributes, with the topic.
    pub attributes: crate::event::EventAttributes,
    /// `datacontenttype`.
    pub content_type: Option<String>,
    /// Size of the data, in bytes.
    pub size: u64,
    /// Id shared by everything the publishing request caused.
    pub correlation_id: String,
    /// The job that emitted it, if a handler did.
    pub parent: Option<crate::job::Parent>,
    /// When it was accepted (ms since the Unix epoch).
    pub published_at: u64,
    /// The delivery jobs it made: (function, job id).
    pub deliveries: Vec<(String, u128)>,
}

const EVENT_FORMAT: u8 = 1;

pub(crate) fn encode_event(event: &EventRecord) -> Vec<u8> {
    let mut out = vec![EVENT_FORMAT];
    postcard::to_io(event, &mut out).expect("writing to a Vec cannot fail");
    out
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<EventRecord, String> {
    match bytes.split_first() {
        Some((&EVENT_FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!(
            "event stored in unknown format {v}: upgrade sluice"
        )),
        None => Err("empty event record".into()),
    }
}

/// What an idempotency key remembers: the request it was first used with and the job it made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    /// SHA-256 of the request's content type and body.
    pub(crate) request_hash: [u8; 32],
    /// The job the first request created.
    pub(crate) job: u128,
    /// When the key was first used (ms since the Unix epoch).
    pub(crate) created_at: u64,
}

impl KeyRecord {
    pub(crate) fn encode(&self) -> [u8; 56] {
        let mut out = [0; 56];
        out[..32].copy_from_slice(&self.request_hash);
        out[32..48].copy_from_slice(&self.job.to_be_bytes());
        out[48..].copy_from_slice(&self.created_at.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 56 {
            return Err(format!("idempotency record of {} bytes", bytes.len()));
        }
        Ok(KeyRecord {
            request_hash: bytes[..32].try_into().expect("32 bytes"),
            job: u128::from_be_bytes(bytes[32..48].try_into().expect("16 bytes")),
            created_at: u64::from_be_bytes(bytes[48..].try_into().expect("8 bytes")),
        })
    }
}
