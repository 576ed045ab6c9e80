//! What an attempt produced and what a job keeps of it: the report the runtime hands the store
//! (outcome, log, emissions, outbound calls, key-value changes) and the record left on the job.

use serde::{Deserialize, Serialize};

/// Bytes kept of each earlier attempt's log (the latest attempt's is kept whole, in `log`).
pub const MAX_EARLIER_LOG: usize = 2048;

/// The log of an attempt before the latest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// The attempt's number.
    pub attempt: u32,
    /// When it started (with the number, it names the attempt: numbers restart after a redrive).
    pub started_at: u64,
    /// Its log, cut at a character boundary to [`MAX_EARLIER_LOG`] bytes.
    pub log: String,
}

/// Key-value conflicts a job may have before further ones count as failed attempts.
pub const MAX_CONFLICTS: u32 = 100;

/// What a successful attempt did to its function's key-value state: the versions of the keys
/// it read (0: absent), the pages of keys it listed, and the writes it staged (`None`: delete).
/// Committed with the success only if every key read still has its version and every listed
/// page still holds the same keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvChanges {
    /// The function whose state it is.
    pub function: String,
    /// Keys read, with the version seen.
    pub reads: Vec<(String, u64)>,
    /// Pages of committed keys listed: (keys skipped, most asked for, the keys seen).
    pub listed: Vec<KeyPage>,
    /// Keys written (`Some(value)`) or deleted (`None`).
    pub writes: Vec<(String, Option<Vec<u8>>)>,
}

/// One page of a function's committed keys, as an attempt listed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys skipped before the page.
    pub skip: usize,
    /// Most keys the page could hold.
    pub limit: usize,
    /// The keys it held, in order.
    pub keys: Vec<String>,
}

/// Outbound requests a job keeps on record at most (the latest).
pub const MAX_OUTBOUND_KEPT: usize = 256;

/// One outbound HTTP request an attempt made, as its job's history shows it. The query string
/// is left out: it often holds credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundCall {
    /// The attempt that made it.
    pub attempt: u32,
    /// When it was sent (ms since the Unix epoch): within its attempt's start and end.
    pub at: u64,
    /// Its HTTP method.
    pub method: String,
    /// `scheme://host[:port]`.
    pub origin: String,
    /// The path, without the query.
    pub path: String,
    /// The response status, when one arrived.
    pub status: Option<u16>,
    /// Why no response arrived (refused, timed out, connection failed).
    pub error: Option<String>,
    /// From the request until its response headers (or its failure), in milliseconds.
    pub duration_ms: u32,
}

/// Work an attempt emitted, committed only with its success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emission {
    /// An event for a topic's subscribers.
    Publish {
        /// The topic.
        topic: String,
        /// The event's `type`.
        event_type: String,
        /// Its data.
        data: Vec<u8>,
        /// Media type of the data.
        content_type: Option<String>,
    },
    /// A job of a function.
    Enqueue {
        /// The function.
        function: String,
        /// Its input.
        data: Vec<u8>,
        /// Media type of the input.
        content_type: Option<String>,
        /// 0-9.
        priority: u8,
        /// Milliseconds before it may run.
        delay_ms: Option<u64>,
    },
}

impl Emission {
    /// Bytes of data it carries.
    pub fn size(&self) -> usize {
        match self {
            Emission::Publish { data, .. } | Emission::Enqueue { data, .. } => data.len(),
        }
    }
}

/// Longest error message kept for one attempt, in bytes.
pub const MAX_ERROR_BYTES: usize = 4096;

/// What one finished attempt left on its job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt's number (1 for the first; counting restarts after a redrive).
    pub attempt: u32,
    /// When it started (ms since the Unix epoch).
    pub started_at: u64,
    /// When it ended.
    pub finished_at: u64,
    /// Why it failed (bounded), or `None` when it succeeded.
    pub error: Option<String>,
    /// When the next attempt may start, if this one was retried.
    pub retry_at: Option<u64>,
    /// The function version that ran it.
    pub version: u32,
}

/// `text`, cut at a character boundary to at most `max` bytes (marked with `…` when cut).
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `message`, cut at a character boundary to at most [`MAX_ERROR_BYTES`].
pub fn bounded_error(message: &str) -> String {
    if message.len() <= MAX_ERROR_BYTES {
        return message.to_string();
    }
    let mut end = MAX_ERROR_BYTES - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// How an attempt ended, as the runtime reports it to the store.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The handler returned a response.
    Succeeded {
        /// The output: in memory, or spooled to disk when it is large.
        output: crate::output::Output,
        /// Media type the handler gave.
        content_type: Option<String>,
    },
    /// The attempt failed; `kind` says how, `message` says why.
    Failed {
        /// What kind of failure this was.
        kind: FailureKind,
        /// A message for a person.
        message: String,
    },
}

/// What kind of failure ended an attempt. Only [`FailureKind::Permanent`] ends a job at once;
/// every other kind is retried while attempts are left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler returned a retryable error.
    Retryable,
    /// The handler returned a permanent error.
    Permanent,
    /// The sandbox trapped (panic, `unreachable`, out of bounds, stack overflow, ...).
    Trap,
    /// The attempt ran past the function's `timeout_ms`.
    Timeout,
    /// The sandbox could not be set up (e.g. the memory limit is below the module's minimum).
    Instantiate,
    /// A key the attempt read was changed by another commit before its own: it runs again at
    /// once, and does not count as a failed attempt (up to [`MAX_CONFLICTS`]).
    Conflict,
}

/// The record of one finished attempt.
#[derive(Clone, Debug)]
pub struct AttemptReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Captured stdout, stderr and log lines (already bounded).
    pub log: String,
    /// When it started (ms since the Unix epoch).
    pub started_at: u64,
    /// When it ended (ms since the Unix epoch).
    pub finished_at: u64,
    /// The function version that ran it.
    pub version: u32,
    /// What it emitted (only a successful attempt's is ever committed).
    pub emitted: Vec<Emission>,
    /// The pipeline's next function in the version that ran it (`then`), if any.
    pub then: Option<String>,
    /// The outbound HTTP requests it made, whatever its outcome (they happened).
    pub outbound: Vec<OutboundCall>,
    /// Its key-value reads and writes, when it succeeded and wrote something.
    pub kv: Option<KvChanges>,
}
