//! One attempt of a leased job: run it in its sandbox, make its start visible (with a store
//! lease, renewed while it runs) if it outlasts a moment, and report how it ended.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Inner, release_hold};
use crate::job::{AttemptReport, FailureKind, Outcome, QueuedJob, now_ms};
use crate::runtime::LoadedFunction;

/// How long an attempt runs before its start is committed (and `running` shows). Shorter
/// attempts skip that commit: their start is recorded with their end.
const START_VISIBLE_AFTER: Duration = Duration::from_millis(20);

/// How far past its `timeout_ms` the scheduler's own backstop lets an attempt run.
const LEASE_GRACE: Duration = Duration::from_secs(2);
/// How long the store's lease on a running attempt lasts without renewal; the scheduler renews
/// it every third of that while the attempt runs. A lease that runs out (this host died, hung,
/// or lost touch with the store) fails the attempt in the store and hands the job out again.
const STORE_LEASE: Duration = Duration::from_secs(30);

impl Inner {
    /// Runs the job's next attempt and reports its end to the store (nothing, if it was
    /// cancelled). Returns whether the worker still holds the job (it lets go once the attempt
    /// is over, before its finish is committed).
    pub(super) async fn attempt(
        &self,
        code: &LoadedFunction,
        job: &QueuedJob,
        cancel: &CancellationToken,
    ) -> bool {
        let attempt = job.attempts + 1;
        let started_at = now_ms();
        let timeout = Duration::from_millis(code.record.settings.timeout_ms);
        // The runtime stops the attempt at its timeout; the lease is the backstop should
        // it not (a host call that never returns): the attempt is dropped, its slot freed,
        // and the job handed out again as a failed attempt.
        let lease = timeout + LEASE_GRACE;
        let lease_until = started_at + (START_VISIBLE_AFTER + STORE_LEASE).as_millis() as u64;
        let blobs = self.blobs.clone();
        let state = self.kv.clone();
        let run = tokio::time::timeout(lease, self.runtime.run(code, job, attempt, blobs, state));
        tokio::pin!(run);
        let expired = |at: u64| AttemptReport {
            outcome: Outcome::Failed {
                kind: FailureKind::Timeout,
                message: format!(
                    "lease expired after {} ms: the attempt was cancelled and the job handed out again",
                    lease.as_millis()
                ),
            },
            log: String::new(),
            started_at,
            finished_at: at,
            version: code.record.version,
            emitted: Vec::new(),
            then: None,
            outbound: Vec::new(),
            kv: None,
        };
        // Short attempts go from queued to terminal in one commit; `running` is recorded
        // (and visible) only for attempts still running after START_VISIBLE_AFTER.
        let report = tokio::select! {
            report = tokio::time::timeout(START_VISIBLE_AFTER, &mut run) => match report {
                Ok(report) => Some(report),
                Err(_) => {
                    self.store.start(
                        job.id,
                        attempt,
                        started_at,
                        lease_until,
                        code.record.version,
                    );
                    // Renewed while the attempt runs; the store fails it if this stops.
                    let renewing = async {
                        let mut every = tokio::time::interval(STORE_LEASE / 3);
                        every.tick().await;
                        loop {
                            every.tick().await;
                            let until = now_ms() + STORE_LEASE.as_millis() as u64;
                            self.store.renew(job.id, attempt, until);
                        }
                    };
                    tokio::select! {
                        report = &mut run => Some(report),
                        _ = renewing => None,
                        _ = cancel.cancelled() => None,
                        _ = self.abort_all.cancelled() => None,
                    }
                }
            },
            _ = cancel.cancelled() => None,
            _ = self.abort_all.cancelled() => None,
        };
        let report = report.map(|r| r.unwrap_or_else(|_| expired(now_ms())));
        let mut held = true;
        if let Some(report) = report {
            // The attempt is over: from here a cancel may win (the finish is then fenced
            // out), but a job whose finish is committed is never shown as held.
            release_hold(&mut self.state.lock().running, job.id);
            held = false;
            let report = self.store.settle_kv(job.id, attempt, report).await;
            self.store
                .finish(job.id, attempt, report, code.record.settings.retry);
        }
        held
    }
}
