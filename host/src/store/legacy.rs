//! Jobs stored by earlier releases, read back into today's [`Job`]: a data directory written
//! by an older Sluice opens without migration (each job is rewritten in the new format the next
//! time it changes).

use serde::Deserialize;

use crate::job::{AttemptRecord, Job, JobStatus};

/// A job as format 3 stored it: no ordering key, no versions.
#[derive(Deserialize)]
struct JobV3 {
    function: String,
    status: JobStatus,
    attempts: u32,
    created_at: u64,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    input_content_type: Option<String>,
    #[serde(with = "serde_bytes")]
    input: Vec<u8>,
    output_content_type: Option<String>,
    #[serde(with = "serde_bytes")]
    output: Option<Vec<u8>>,
    error: Option<String>,
    log: String,
    correlation_id: String,
    not_before: Option<u64>,
    priority: u8,
    ready_at: u64,
    lease_until: Option<u64>,
    history: Vec<AttemptV3>,
}

#[derive(Deserialize)]
struct AttemptV3 {
    attempt: u32,
    started_at: u64,
    finished_at: u64,
    error: Option<String>,
    retry_at: Option<u64>,
}

/// Decodes a format-3 job (the bytes after its format byte).
pub(crate) fn decode_v3(bytes: &[u8]) -> Result<Job, String> {
    let old: JobV3 = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    Ok(Job {
        function: old.function,
        status: old.status,
        attempts: old.attempts,
        created_at: old.created_at,
        started_at: old.started_at,
        finished_at: old.finished_at,
        input_content_type: old.input_content_type,
        input: old.input,
        output_content_type: old.output_content_type,
        output: old.output,
        error: old.error,
        log: old.log,
        correlation_id: old.correlation_id,
        not_before: old.not_before,
        priority: old.priority,
        ready_at: old.ready_at,
        lease_until: old.lease_until,
        history: old
            .history
            .into_iter()
            .map(|a| AttemptRecord {
                attempt: a.attempt,
                started_at: a.started_at,
                finished_at: a.finished_at,
                error: a.error,
                retry_at: a.retry_at,
                version: 0,
            })
            .collect(),
        ordering_key: None,
        ordering_seq: 0,
        version: None,
        event: None,
        parent: None,
        pipeline: None,
        input_blob: None,
        output_blob: None,
        callback: None,
    })
}
