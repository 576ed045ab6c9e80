//! A job as the API shows it: in full, and as a listing's summary.

use serde_json::{Value, json};

use crate::job::{Job, JobId, JobStatus, JobSummary, rfc3339};

/// A job in a listing: what [`job_json`] shows without `full`, from its summary.
pub(crate) fn summary_json(id: JobId, summary: &JobSummary) -> Value {
    let mut v = job_json(id, &summary.job, false);
    v["input_size"] = summary.input_size.into();
    v["output_size"] = summary.output_size.into();
    v
}

/// Bytes of a job's input shown as `input_preview`.
pub(crate) const INPUT_PREVIEW: usize = 2048;

/// A job as the API shows it; `full` adds the log, the inline output and the input's start.
pub(crate) fn job_json(id: JobId, job: &Job, full: bool) -> Value {
    let status = job.visible_status();
    let succeeded = status == JobStatus::Succeeded;
    let mut v = json!({
        "id": id.to_string(),
        "function": job.function,
        "status": status,
        "attempts": job.attempts,
        "created_at": rfc3339(job.created_at),
        "started_at": job.started_at.map(rfc3339),
        "finished_at": job.finished_at.map(rfc3339),
        "correlation_id": job.correlation_id,
        "input_content_type": job.input_content_type,
        "output_content_type": job.output_content_type,
        "input_size": job.input_size(),
        "output_size": job.output_size(),
        "output_url": succeeded.then(|| format!("/v1/jobs/{id}/output")),
        "error": job.error,
        "not_before": job.not_before.map(rfc3339),
        "lease_until": job.lease_until.map(rfc3339),
        "priority": job.priority,
        "ordering_key": job.ordering_key,
        "concurrency_key": job.concurrency_key,
        "debounce_key": job.debounce_key,
        "superseded_by": job.superseded_by.map(|id| crate::job::JobId(id).to_string()),
        "version": job.version,
        "parent": job.parent.map(|p| p.to_json()),
        "hops": job.hops,
        "kv_conflicts": job.conflicts,
        "callback": job.callback.as_ref().map(|c| json!({
            "url": c.url,
            "state": c.state,
            "attempts": c.attempts,
            "last_error": c.last_error,
            "next_attempt_at": c.next_at.map(rfc3339),
            "delivered_at": c.delivered_at.map(rfc3339),
        })),
        "event": job.event.as_ref().map(|e| json!({
            "topic": e.topic,
            "id": e.id,
            "source": e.source,
            "type": e.event_type,
            "subject": e.subject,
        })),
        "attempt_history": job.history.iter().enumerate().map(|(i, a)| json!({
            "attempt": a.attempt,
            "version": a.version,
            "started_at": rfc3339(a.started_at),
            "finished_at": rfc3339(a.finished_at),
            "error": a.error,
            "retry_at": a.retry_at.map(rfc3339),
            "log": job.attempt_log(i),
            "outbound": job.outbound.iter()
                .filter(|c| c.attempt == a.attempt && (a.started_at..=a.finished_at).contains(&c.at))
                .map(|c| json!({
                    "method": c.method,
                    "origin": c.origin,
                    "path": c.path,
                    "status": c.status,
                    "error": c.error,
                    "duration_ms": c.duration_ms,
                }))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if full {
        let inline = job
            .output
            .as_deref()
            .filter(|o| o.len() <= crate::job::INLINE_OUTPUT)
            .and_then(|o| std::str::from_utf8(o).ok());
        v["output"] = inline.into();
        v["log"] = job.log.as_str().into();
        // The start of an input held in the record (not a claim check), as text.
        let preview = (job.input_blob.is_none()).then(|| {
            let head = &job.input[..job.input.len().min(INPUT_PREVIEW)];
            String::from_utf8_lossy(head).into_owned()
        });
        v["input_preview"] = preview.into();
    }
    v
}
