//! The job: the unit of work a function runs, its id, its statuses and what an attempt produced.
//!
//! These types are shared by the store (which persists them), the scheduler (which moves jobs
//! between statuses) and the API (which shows them).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::EventAttributes;

mod attempt;
mod callback;

pub use attempt::*;
pub use callback::*;

/// A job's id: a ULID (time-ordered, so newer jobs sort after older ones), shown as its
/// 26-character Crockford base32 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u128);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

impl FromStr for JobId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(|u| JobId(u.0))
    }
}

/// Where a job is in its life. The last five are terminal: a job never leaves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Durable and waiting for a free slot of its function.
    Queued,
    /// Waiting for a not-before time or a retry.
    Delayed,
    /// An attempt is running in a sandbox.
    Running,
    /// The handler returned a response; the output is stored.
    Succeeded,
    /// The handler failed permanently (or trapped, timed out, or its error was not retryable).
    Failed,
    /// Every allowed attempt failed.
    Dead,
    /// Cancelled before it could finish (e.g. its function was force-deleted).
    Cancelled,
    /// Replaced, before it started, by a newer job with the same debounce key
    /// ([`Job::superseded_by`] names it).
    Superseded,
}

impl JobStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Queued,
        JobStatus::Delayed,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Dead,
        JobStatus::Cancelled,
        JobStatus::Superseded,
    ];

    /// True for the statuses a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::Dead
                | JobStatus::Cancelled
                | JobStatus::Superseded
        )
    }

    /// The status's name as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Delayed => "delayed",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Superseded => "superseded",
        }
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown job status {s:?}; use one of {}", names.join(", "))
            })
    }
}

/// Everything stored about a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    /// The function that runs it.
    pub function: String,
    /// Current status, as last committed.
    pub status: JobStatus,
    /// Attempts started so far (the attempt number of the latest one).
    pub attempts: u32,
    /// When the submit was accepted (ms since the Unix epoch).
    pub created_at: u64,
    /// When the latest attempt started.
    pub started_at: Option<u64>,
    /// When the job reached a terminal status.
    pub finished_at: Option<u64>,
    /// Media type the client submitted the input with.
    pub input_content_type: Option<String>,
    /// The input bytes, exactly as submitted.
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Media type the handler gave its output.
    pub output_content_type: Option<String>,
    /// The handler's output, once succeeded.
    #[serde(with = "serde_bytes")]
    pub output: Option<Vec<u8>>,
    /// Why the job failed, for a person to read.
    pub error: Option<String>,
    /// The handler's captured stdout, stderr and log lines (bounded).
    pub log: String,
    /// Id shared by everything one request caused.
    pub correlation_id: String,
    /// While `delayed`: when it may run again (ms since the Unix epoch).
    pub not_before: Option<u64>,
    /// 0-9, higher first; equal priorities run in the order they became ready.
    pub priority: u8,
    /// When it last became ready to run (accepted, due after a delay, or redriven).
    pub ready_at: u64,
    /// While `running`: when the attempt's lease ends. A worker still running it then cancels
    /// it and the job is handed out again (as a failed attempt).
    pub lease_until: Option<u64>,
    /// The latest attempts, oldest first (at most [`MAX_HISTORY`]).
    pub history: Vec<AttemptRecord>,
    /// The ordering key it was submitted with: jobs of one function with the same key run one
    /// at a time, in submission order.
    pub ordering_key: Option<String>,
    /// Its place in its key's queue (0 without a key); a redrive puts it at the end again.
    pub ordering_seq: u128,
    /// The function version that ran (or runs) the latest attempt.
    pub version: Option<u32>,
    /// For a topic delivery: the event's CloudEvents attributes, as the handler sees them.
    pub event: Option<EventAttributes>,
    /// What caused this job: an event (a topic delivery) or a job; `None`: a request.
    pub parent: Option<Parent>,
    /// Its place in a pipeline (`then` in the manifest), if it is part of one.
    pub pipeline: Option<Pipeline>,
    /// A large input, stored once as a blob (`input` is then empty).
    pub input_blob: Option<BlobRef>,
    /// A large output, stored once as a blob (`output` is then `None`).
    pub output_blob: Option<BlobRef>,
    /// The webhook to call when the job ends, and how its delivery went.
    pub callback: Option<Callback>,
    /// Jobs between this one and the request that began its chain: 0 for a submit or a
    /// delivery of a client's event, one more for each enqueue, emitted event or pipeline
    /// stage after it.
    pub hops: u32,
    /// Outbound HTTP requests its attempts made (the latest [`MAX_OUTBOUND_KEPT`], each naming
    /// its attempt), shown in the attempt history.
    pub outbound: Vec<OutboundCall>,
    /// Attempts that ran again because a key-value read was changed by another commit
    /// before theirs (they do not count against `max_attempts`, up to [`MAX_CONFLICTS`]).
    pub conflicts: u32,
    /// The logs of earlier attempts (`log` is the latest one's), each cut to
    /// [`MAX_EARLIER_LOG`] bytes, for the attempts still in `history`.
    pub earlier_logs: Vec<AttemptLog>,
    /// The caller's span when a traced request (a W3C `traceparent` naming the trace its
    /// correlation id is) caused it, or the span of the emitted event it delivers: its own
    /// span hangs under this one (see `crate::trace`).
    pub trace_parent: Option<u64>,
    /// Its concurrency key: jobs of one key run at most `key_concurrency` at once and take
    /// turns with other keys (see `crate::flow`).
    pub concurrency_key: Option<String>,
    /// Its place in its concurrency key's queue (set when it joins it).
    pub concurrency_seq: u128,
    /// Its debounce key: a newer submit with the same key, while this job waits, replaces it.
    pub debounce_key: Option<String>,
    /// The job that replaced it (status `superseded`).
    pub superseded_by: Option<u128>,
}

/// A job as listings show it: its record without the input, output and log (left empty), and
/// their sizes. Listings read these, so a page of 1000 large jobs costs no more than its JSON.
#[derive(Clone, Debug)]
pub struct JobSummary {
    /// The job, with `input`, `output` and `log` empty.
    pub job: Job,
    /// Size of the input in bytes.
    pub input_size: u64,
    /// Size of the output in bytes, if there is one.
    pub output_size: Option<u64>,
}

impl JobSummary {
    /// The summary of a whole job (its large fields dropped).
    pub fn of(mut job: Job) -> JobSummary {
        let input_size = job.input_size();
        let output_size = job.output_size();
        job.input = Vec::new();
        job.output = None;
        job.log = String::new();
        JobSummary {
            job,
            input_size,
            output_size,
        }
    }
}

/// A payload or output stored once by the host (a claim check): what a job carries instead of
/// the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the content.
    pub digest: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

impl BlobRef {
    /// The reference of `data` (hashes it: keep large data off latency-bound threads).
    pub fn of(data: &[u8]) -> BlobRef {
        use sha2::Digest;
        BlobRef {
            digest: sha2::Sha256::digest(data).into(),
            size: data.len() as u64,
        }
    }

    /// The digest as lowercase hex.
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

impl Job {
    /// Size of the input in bytes, inline or stored as a blob.
    pub fn input_size(&self) -> u64 {
        self.input_blob.map_or(self.input.len() as u64, |b| b.size)
    }

    /// Adds an ended attempt to the history, which keeps the latest [`MAX_HISTORY`], with its
    /// log: the previous attempt's log moves to `earlier_logs` (cut), this one's is `log`.
    pub fn push_attempt(&mut self, record: AttemptRecord, log: String) {
        let previous = std::mem::replace(&mut self.log, log);
        if let Some(last) = self.history.last()
            && !previous.is_empty()
        {
            self.earlier_logs.push(AttemptLog {
                attempt: last.attempt,
                started_at: last.started_at,
                log: cut(&previous, MAX_EARLIER_LOG),
            });
        }
        self.history.push(record);
        if self.history.len() > MAX_HISTORY {
            let excess = self.history.len() - MAX_HISTORY;
            self.history.drain(..excess);
        }
        let oldest = self.history.first().map_or(0, |a| a.started_at);
        self.earlier_logs.retain(|l| l.started_at >= oldest);
    }

    /// The log of the attempt in `history` at `index`: the latest attempt's is `log`.
    pub fn attempt_log(&self, index: usize) -> &str {
        let Some(record) = self.history.get(index) else {
            return "";
        };
        if index + 1 == self.history.len() {
            return &self.log;
        }
        self.earlier_logs
            .iter()
            .find(|l| l.attempt == record.attempt && l.started_at == record.started_at)
            .map_or("", |l| l.log.as_str())
    }

    /// Size of the output in bytes, if there is one.
    pub fn output_size(&self) -> Option<u64> {
        self.output_blob
            .map(|b| b.size)
            .or(self.output.as_ref().map(|o| o.len() as u64))
    }

    /// The status the API shows: a pipeline's head stands for the whole chain, `running` until
    /// its last stage ends, then that stage's terminal status (or the failing stage's).
    pub fn visible_status(&self) -> JobStatus {
        match &self.pipeline {
            Some(Pipeline::Head { ended: None, .. }) => JobStatus::Running,
            Some(Pipeline::Head {
                ended: Some(status),
                ..
            }) => *status,
            _ => self.status,
        }
    }
}

/// A job's place in a pipeline: the job a client submitted to the first function (the head)
/// stands for the whole chain; each later stage is a job of the next function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pipeline {
    /// The first stage, standing for the chain.
    Head {
        /// Every stage's job, in order, starting with the head itself.
        stages: Vec<u128>,
        /// How the chain ended, once its last stage did.
        ended: Option<JobStatus>,
    },
    /// A later stage.
    Stage {
        /// The chain's head.
        head: u128,
    },
}

/// What caused a job or an event (the other is a request from outside).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Parent {
    /// A published event (its Sluice id).
    Event(u128),
    /// A job.
    Job(u128),
}

impl Parent {
    /// `{"kind": "event"|"job", "id": ...}`, as the API shows it.
    pub fn to_json(self) -> serde_json::Value {
        let (kind, id) = match self {
            Parent::Event(id) => ("event", id),
            Parent::Job(id) => ("job", id),
        };
        serde_json::json!({ "kind": kind, "id": JobId(id).to_string() })
    }
}

/// Attempts kept on a job; older ones are dropped first.
pub const MAX_HISTORY: usize = 25;

/// What an unfinished job costs in the host's budget of unfinished work (`--max-queued-bytes`)
/// besides its input: its record. So a flood of empty jobs fills the budget too.
pub const JOB_RECORD_BYTES: u64 = 128;

/// Outputs up to this size (valid UTF-8) are shown inline in a job's JSON and in callback
/// payloads; larger ones are linked (`output_url`).
pub const INLINE_OUTPUT: usize = 64 << 10;

/// Priority of a job that does not ask for one.
pub const DEFAULT_PRIORITY: u8 = 5;
/// Highest priority.
pub const MAX_PRIORITY: u8 = 9;

/// A job's place in its function's ready queue: higher priority first, then the time it became
/// ready, then its id.
pub type ReadyKey = (u8, u64, JobId);

/// The ready-queue place of a job with `priority` that became ready at `ready_at`.
pub fn ready_key(priority: u8, ready_at: u64, id: JobId) -> ReadyKey {
    (MAX_PRIORITY - priority.min(MAX_PRIORITY), ready_at, id)
}

/// A job as the scheduler holds it between its durable submit and its attempt: what the
/// sandbox needs, without reading the store again.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    /// The job's id.
    pub id: JobId,
    /// 0-9, higher first.
    pub priority: u8,
    /// When it became ready.
    pub ready_at: u64,
    /// The function that runs it.
    pub function: String,
    /// Attempts already started (the next attempt is `attempts + 1`).
    pub attempts: u32,
    /// Media type of the input.
    pub content_type: Option<String>,
    /// The input bytes (shared, never copied per hand-off).
    pub input: Bytes,
    /// When the job was accepted (ms since the Unix epoch).
    pub created_at: u64,
    /// Id shared by everything one request caused.
    pub correlation_id: String,
    /// For a topic delivery: the event's attributes.
    pub event: Option<Box<EventAttributes>>,
    /// A large input stored as a blob (`input` is then empty): read it in chunks.
    pub input_blob: Option<BlobRef>,
    /// The event or job that caused it (none: a request).
    pub parent: Option<Parent>,
    /// The span its own hangs under, when not its parent's (see [`Job::trace_parent`]).
    pub trace_parent: Option<u64>,
    /// Its concurrency key, if any.
    pub concurrency_key: Option<String>,
}

impl QueuedJob {
    /// The job as the scheduler needs it, from its stored record.
    pub fn from_job(id: JobId, job: Job) -> QueuedJob {
        QueuedJob {
            id,
            priority: job.priority,
            ready_at: job.ready_at,
            function: job.function,
            attempts: job.attempts,
            content_type: job.input_content_type,
            input: Bytes::from(job.input),
            created_at: job.created_at,
            correlation_id: job.correlation_id,
            event: job.event.map(Box::new),
            input_blob: job.input_blob,
            parent: job.parent,
            trace_parent: job.trace_parent,
            concurrency_key: job.concurrency_key,
        }
    }

    /// Its place in the ready queue.
    pub fn ready_key(&self) -> ReadyKey {
        ready_key(self.priority, self.ready_at, self.id)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Milliseconds since the Unix epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
