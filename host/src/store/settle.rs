//! What an attempt's end does to its job record, as a pure function every backend shares:
//! the attempt's place in the history, the new status under the retry policy (with the time a
//! retry waits for), the error, the requests it made. Where the output is kept, the timer that
//! wakes a delayed job and what a terminal job sets off (emitted jobs, pipeline, callback) are
//! the backend's.

use super::machine::Next;
use crate::job::{
    AttemptRecord, AttemptReport, Job, JobStatus, MAX_OUTBOUND_KEPT, Outcome, bounded_error, now_ms,
};
use crate::manifest::RetryPolicy;
use crate::output::Output;

/// What recording an attempt's end asks of the backend.
pub(crate) struct Settled {
    /// The status the job had before.
    pub(crate) from: JobStatus,
    /// A success's output, for the backend to keep (inline or as a blob).
    pub(crate) output: Option<Output>,
    /// The job waits until then (a retry or a rerun after a conflict): wake it then.
    pub(crate) delayed_until: Option<u64>,
    /// The failure is retried under the policy (not a rerun after a conflict).
    pub(crate) retried: bool,
}

/// Records attempt `attempt`'s end (`report`, its log and outbound requests taken) on `job`,
/// a failure retried under `retry` (delays drawn from `rng`).
pub(crate) fn settle(
    job: &mut Job,
    attempt: u32,
    report: &mut AttemptReport,
    retry: &RetryPolicy,
    rng: &mut fastrand::Rng,
) -> Settled {
    let from = job.status;
    job.attempts = attempt;
    job.started_at = Some(report.started_at);
    job.lease_until = None;
    job.version = Some(report.version);
    let mut record = AttemptRecord {
        attempt,
        started_at: report.started_at,
        finished_at: report.finished_at,
        error: None,
        retry_at: None,
        version: report.version,
    };
    let mut settled = Settled {
        from,
        output: None,
        delayed_until: None,
        retried: false,
    };
    let outcome = std::mem::replace(
        &mut report.outcome,
        Outcome::Failed {
            kind: crate::job::FailureKind::Retryable,
            message: String::new(),
        },
    );
    match outcome {
        Outcome::Succeeded {
            output,
            content_type,
        } => {
            job.status = JobStatus::Succeeded;
            job.output_content_type = content_type;
            job.error = None;
            settled.output = Some(output);
        }
        Outcome::Failed { kind, message } => {
            let message = bounded_error(&message);
            record.error = Some(message.clone());
            match super::machine::after_attempt(Some(kind), attempt, job.conflicts, retry) {
                Next::Rerun => {
                    // Not a failure of the handler: it runs again soon, on fresh state, after a
                    // short random pause that grows with its conflicts, so attempts racing for
                    // one key spread out instead of colliding again.
                    job.conflicts += 1;
                    let ceiling = super::machine::rerun_ceiling_ms(job.conflicts);
                    let at = now_ms() + rng.u64(0..=ceiling);
                    record.retry_at = Some(at);
                    job.status = JobStatus::Delayed;
                    job.not_before = Some(at);
                    job.error = Some(message);
                    settled.delayed_until = Some(at);
                }
                Next::Failed => {
                    job.status = JobStatus::Failed;
                    job.error = Some(message);
                }
                Next::Dead => {
                    job.status = JobStatus::Dead;
                    job.error = Some(format!(
                        "gave up after {attempt} attempt(s); the last failed with: {message}"
                    ));
                }
                Next::Retry | Next::Succeeded => {
                    let delay = retry.delay_ms(attempt - 1, rng);
                    let at = report.finished_at.max(now_ms()) + delay;
                    record.retry_at = Some(at);
                    job.status = JobStatus::Delayed;
                    job.not_before = Some(at);
                    job.error = Some(message);
                    settled.delayed_until = Some(at);
                    settled.retried = true;
                }
            }
        }
    }
    job.push_attempt(record, std::mem::take(&mut report.log));
    // The requests an attempt made stay on record with the attempts still shown.
    job.outbound.append(&mut report.outbound);
    let oldest = job.history.first().map_or(0, |a| a.started_at);
    job.outbound.retain(|c| c.at >= oldest);
    if job.outbound.len() > MAX_OUTBOUND_KEPT {
        let excess = job.outbound.len() - MAX_OUTBOUND_KEPT;
        job.outbound.drain(..excess);
    }
    if job.status.is_terminal() {
        job.finished_at = Some(report.finished_at);
    }
    settled
}
