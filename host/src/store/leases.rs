//! Attempts' leases, as the store enforces them. An attempt's start grants its job a lease until
//! a time the dispatcher chose; the dispatcher renews it while the attempt runs. A lease that
//! runs out (its host died, hung, or lost touch) ends the attempt as a failed one, so the job
//! is retried (or dead-lettered) and handed out again; a late report from that attempt is then
//! fenced out by its attempt number. Leases live in the writer's memory: a restart requeues
//! every running job anyway (see `writer::recover`).

use std::collections::{BTreeSet, HashMap};

use crate::job::JobId;

/// The leases of one shard's running attempts.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// (until, job), earliest first.
    by_time: BTreeSet<(u64, JobId)>,
    /// Each leased job's attempt and its lease's end.
    by_job: HashMap<JobId, (u32, u64)>,
}

impl Leases {
    /// Attempt `attempt` of `id` holds a lease until `until` (replacing an earlier attempt's).
    pub(crate) fn grant(&mut self, id: JobId, attempt: u32, until: u64) {
        self.end(id);
        self.by_job.insert(id, (attempt, until));
        self.by_time.insert((until, id));
    }

    /// Extends the lease of attempt `attempt` of `id` to `until`; false when that attempt
    /// holds no lease (it ended, expired, or never started here).
    pub(crate) fn renew(&mut self, id: JobId, attempt: u32, until: u64) -> bool {
        match self.by_job.get(&id) {
            Some(&(held, old)) if held == attempt => {
                self.by_time.remove(&(old, id));
                let until = until.max(old);
                self.by_time.insert((until, id));
                self.by_job.insert(id, (attempt, until));
                true
            }
            _ => false,
        }
    }

    /// The job's lease ends (its attempt finished, or the job was cancelled).
    pub(crate) fn end(&mut self, id: JobId) {
        if let Some((_, until)) = self.by_job.remove(&id) {
            self.by_time.remove(&(until, id));
        }
    }

    /// When the earliest lease runs out.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.by_time.first().map(|(until, _)| *until)
    }

    /// Removes and returns the leases that ran out by `now`: (job, attempt, until).
    pub(crate) fn expired(&mut self, now: u64) -> Vec<(JobId, u32, u64)> {
        let mut out = Vec::new();
        while let Some(&(until, id)) = self.by_time.first() {
            if until > now {
                break;
            }
            self.by_time.pop_first();
            if let Some((attempt, _)) = self.by_job.remove(&id) {
                out.push((id, attempt, until));
            }
        }
        out
    }

    /// Every lease lasts at least until `floor`: after the store could not write for a while,
    /// attempts whose renewals waited meanwhile are not failed for it.
    pub(crate) fn postpone_all(&mut self, floor: u64) {
        let late: Vec<(u64, JobId)> = self.by_time.range(..(floor, JobId(0))).copied().collect();
        for (until, id) in late {
            self.by_time.remove(&(until, id));
            self.by_time.insert((floor, id));
            if let Some(entry) = self.by_job.get_mut(&id) {
                entry.1 = floor;
            }
        }
    }
}

/// The lease transitions the writer applies: a renewal on record, and the attempts whose lease
/// ran out failed.
mod transitions {
    use super::super::StoreError;
    use super::super::ops::Effects;
    use super::super::txn::Tables;
    use super::super::writer::Writer;
    use crate::job::{AttemptReport, FailureKind, JobId, JobStatus, Outcome, now_ms};

    impl Writer {
        /// Extends the lease of a running attempt, on record too (`lease_until`); a renewal from an
        /// attempt that holds no lease (it ended or ran out) changes nothing.
        pub(crate) fn renew(
            &mut self,
            id: JobId,
            attempt: u32,
            lease_until: u64,
            t: &mut Tables<'_>,
        ) -> Result<(), StoreError> {
            let lease_until = lease_until.max(self.lease_floor);
            if !self.leases.renew(id, attempt, lease_until) {
                return Ok(());
            }
            if let Some(mut job) = t.job(id)?
                && job.status == JobStatus::Running
                && job.attempts == attempt
            {
                job.lease_until = Some(lease_until.max(job.lease_until.unwrap_or(0)));
                t.put_job(id, &job)?;
            }
            Ok(())
        }

        /// Fails every attempt whose lease ran out (no word from it: its host stopped, hung, or
        /// lost touch): the job is retried under its function's policy and handed out again.
        pub(crate) fn expire_leases(
            &mut self,
            t: &mut Tables<'_>,
            fx: &mut Effects,
        ) -> Result<(), StoreError> {
            let now = now_ms();
            for (id, attempt, until) in self.leases.expired(now) {
                debug_assert!(super::super::machine::lease_expired(until, now));
                // Granted back if this batch does not commit.
                fx.expired_leases.push((id, attempt, until));
                let Some(job) = t.job(id)? else { continue };
                let retry = self
                    .shared
                    .deployed
                    .retry(&job.function)
                    .unwrap_or(crate::manifest::Settings::DEFAULT.retry);
                let started_at = job.started_at.unwrap_or(now);
                let report = AttemptReport {
                    outcome: Outcome::Failed {
                        kind: FailureKind::Timeout,
                        message: format!(
                            "lease expired at {}: no word from attempt {attempt} (its host stopped, hung or lost touch); the job was handed out again",
                            crate::job::rfc3339(job.lease_until.unwrap_or(now))
                        ),
                    },
                    log: String::new(),
                    started_at,
                    finished_at: now,
                    version: job.version.unwrap_or(0),
                    emitted: Vec::new(),
                    then: None,
                    outbound: Vec::new(),
                    kv: None,
                };
                self.finish(id, attempt, report, retry, t, fx)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_unless_renewed_by_their_attempt() {
        let mut l = Leases::default();
        l.grant(JobId(1), 1, 100);
        l.grant(JobId(2), 3, 150);
        assert_eq!(l.next_expiry(), Some(100));
        assert!(l.renew(JobId(1), 1, 200));
        assert!(
            !l.renew(JobId(2), 2, 500),
            "another attempt's renewal is refused"
        );
        assert!(!l.renew(JobId(9), 1, 500));
        assert_eq!(l.expired(160), [(JobId(2), 3, 150)]);
        assert_eq!(l.next_expiry(), Some(200));
        l.end(JobId(1));
        assert_eq!(l.expired(u64::MAX), []);
        // A new attempt's grant replaces the old lease.
        l.grant(JobId(3), 1, 10);
        l.grant(JobId(3), 2, 20);
        assert_eq!(l.expired(u64::MAX), [(JobId(3), 2, 20)]);
        // After an outage, every lease lasts at least until the floor.
        l.grant(JobId(4), 1, 10);
        l.grant(JobId(5), 1, 900);
        l.postpone_all(500);
        assert_eq!(l.next_expiry(), Some(500));
        assert_eq!(l.expired(499), []);
        assert_eq!(l.expired(500), [(JobId(4), 1, 500)]);
        assert!(l.renew(JobId(5), 1, 950));
    }
}
