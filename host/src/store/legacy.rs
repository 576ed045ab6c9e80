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
        hops: 0,
        outbound: Vec::new(),
        conflicts: 0,
        earlier_logs: Vec::new(),
        trace_parent: None,
        concurrency_key: None,
        concurrency_seq: 0,
        debounce_key: None,
        superseded_by: None,
    })
}

/// Decodes a format-4 job: today's layout without its last nine fields, `hops` (a chain that
/// began before the upgrade counts from there), `outbound`, `conflicts`, `earlier_logs`
/// and the five fields format 8 added (see [`decode_v7`]).
pub(crate) fn decode_v4(bytes: &[u8]) -> Result<Job, String> {
    // postcard writes a u32, a sequence's length and `None` as one zero byte.
    with_zeros(bytes, 9)
}

/// Decodes a format-5 job: today's layout without its last eight fields, `outbound`,
/// `conflicts`, `earlier_logs` and the five fields format 8 added (see [`decode_v7`]).
pub(crate) fn decode_v5(bytes: &[u8]) -> Result<Job, String> {
    with_zeros(bytes, 8)
}

/// Decodes a format-6 job: today's layout without `earlier_logs` (no earlier attempt's log
/// was kept then) and the four fields format 8 added (see [`decode_v7`]).
pub(crate) fn decode_v6(bytes: &[u8]) -> Result<Job, String> {
    with_zeros(bytes, 6)
}

/// Decodes a format-7 job: today's layout without `trace_parent` (its span starts the
/// Sluice part of its trace), `concurrency_key`, `concurrency_seq`, `debounce_key` and
/// `superseded_by`.
pub(crate) fn decode_v7(bytes: &[u8]) -> Result<Job, String> {
    with_zeros(bytes, 5)
}

/// Decodes today's layout from an older record that lacks its last `n` fields, each of which
/// is a zero or empty value written as one zero byte.
fn with_zeros(bytes: &[u8], n: usize) -> Result<Job, String> {
    let mut today = Vec::with_capacity(bytes.len() + n);
    today.extend_from_slice(bytes);
    today.resize(bytes.len() + n, 0);
    postcard::from_bytes(&today).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobStatus;

    fn job(hops: u32) -> Job {
        Job {
            function: "f".into(),
            status: JobStatus::Queued,
            attempts: 2,
            created_at: 1,
            started_at: Some(2),
            finished_at: None,
            input_content_type: Some("text/plain".into()),
            input: b"in".to_vec(),
            output_content_type: None,
            output: None,
            error: Some("e".into()),
            log: "log".into(),
            correlation_id: "c".into(),
            not_before: None,
            priority: 5,
            ready_at: 3,
            lease_until: None,
            history: Vec::new(),
            ordering_key: Some("k".into()),
            ordering_seq: 4,
            version: Some(1),
            event: None,
            parent: None,
            pipeline: None,
            input_blob: None,
            output_blob: None,
            callback: None,
            hops,
            outbound: Vec::new(),
            conflicts: 0,
            earlier_logs: Vec::new(),
            trace_parent: None,
            concurrency_key: None,
            concurrency_seq: 0,
            debounce_key: None,
            superseded_by: None,
        }
    }

    /// A record written before `hops` existed (format 4) reads back with `hops: 0`; one
    /// written before `outbound` (format 5) with no outbound calls; formats 6 and 7 without
    /// earlier logs and trace parent; today's format keeps them all.
    #[test]
    fn older_formats_read_with_their_missing_fields_empty() {
        let today = crate::store::tables::encode_job(&job(0));
        let mut v4 = today[..today.len() - 9].to_vec();
        v4[0] = 4;
        let read = crate::store::tables::decode_job(&v4).unwrap();
        assert_eq!(format!("{read:?}"), format!("{:?}", job(0)));
        let deep = crate::store::tables::encode_job(&job(300));
        let mut v5 = deep[..deep.len() - 8].to_vec();
        v5[0] = 5;
        assert_eq!(crate::store::tables::decode_job(&v5).unwrap().hops, 300);
        for (format, cut) in [(6, 6), (7, 5)] {
            let mut old = deep[..deep.len() - cut].to_vec();
            old[0] = format;
            let read = crate::store::tables::decode_job(&old).unwrap();
            assert_eq!(format!("{read:?}"), format!("{:?}", job(300)));
        }
        let mut traced = job(1);
        traced.trace_parent = Some(0x00f0_67aa_0ba9_02b7);
        traced.concurrency_key = Some("tenant-a".into());
        traced.concurrency_seq = 99;
        traced.debounce_key = Some("d".into());
        traced.superseded_by = Some(7);
        let read = crate::store::tables::decode_job(&crate::store::tables::encode_job(&traced));
        assert_eq!(format!("{:?}", read.unwrap()), format!("{traced:?}"));
        let mut called = job(300);
        called.outbound.push(crate::job::OutboundCall {
            attempt: 1,
            at: 5,
            method: "POST".into(),
            origin: "https://api.example.com".into(),
            path: "/v1/charge".into(),
            status: Some(201),
            error: None,
            duration_ms: 12,
        });
        let read = crate::store::tables::decode_job(&crate::store::tables::encode_job(&called));
        assert_eq!(format!("{:?}", read.unwrap()), format!("{called:?}"));
    }

    /// A summary is the job without its large fields, measured: from today's format (borrowed)
    /// and from an older one (decoded whole) alike.
    #[test]
    fn a_summary_measures_what_it_leaves_out() {
        let mut big = job(7);
        big.input = vec![1; 300_000];
        big.output = Some(vec![2; 1234]);
        big.log = "x".repeat(5000);
        let today = crate::store::tables::encode_job(&big);
        let expected = crate::job::JobSummary::of(big.clone());
        let summary = crate::store::tables::decode_job_summary(&today).unwrap();
        assert_eq!(summary.input_size, 300_000);
        assert_eq!(summary.output_size, Some(1234));
        assert!(summary.job.input.is_empty() && summary.job.output.is_none());
        assert!(summary.job.log.is_empty());
        assert_eq!(format!("{:?}", summary.job), format!("{:?}", expected.job));
        let mut v4 = today[..today.len() - 9].to_vec();
        v4[0] = 4;
        let old = crate::store::tables::decode_job_summary(&v4).unwrap();
        assert_eq!(old.input_size, 300_000);
        assert_eq!(old.job.hops, 0);
    }
}
