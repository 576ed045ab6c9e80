//! Debounce: a submit with a `Sluice-Debounce-Key` waits `debounce_ms` before it may start,
//! and a newer submit with the same key within that wait replaces it: the waiting job ends
//! `superseded`, naming its successor, and the successor waits `debounce_ms` from its own
//! submit, but never past `debounce_max_ms` after the first submit of the burst (so a steady
//! stream of submits still runs at least that often).
//!
//! The `debounce` table maps (function, key) to the key's waiting job and when its burst began;
//! the entry goes when that job stops waiting (it is due, or cancelled).

use redb::ReadableTable;

use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{StoreError, storage};
use crate::job::{Job, JobId, JobStatus, now_ms};

impl Writer {
    /// A new job `id` of `function` with debounce key `key`, submitted at `now`: replaces the
    /// key's waiting job, if any, and returns when the new job becomes due; `None` when the
    /// function debounces nothing (it was redeployed without `debounce_ms` meanwhile).
    pub(crate) fn debounce(
        &mut self,
        id: JobId,
        function: &str,
        key: &str,
        now: u64,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Option<u64>, StoreError> {
        let Some((wait, max)) = self.shared.deployed.debounce(function) else {
            return Ok(None);
        };
        let waiting = t
            .debounce
            .open()?
            .get((function, key))
            .map_err(storage)?
            .map(|v| v.value());
        let mut burst_began = now;
        if let Some((old, began)) = waiting
            && let Some(mut job) = t.job(JobId(old))?
            && job.status == JobStatus::Delayed
        {
            self.supersede(JobId(old), &mut job, id, t, fx)?;
            burst_began = began;
        }
        t.debounce
            .open()?
            .insert((function, key), (id.0, burst_began))
            .map_err(storage)?;
        let due = now + wait;
        Ok(Some(max.map_or(due, |max| due.min(burst_began + max).max(now))))
    }

    /// Ends waiting job `id` as `superseded` by job `by`.
    fn supersede(
        &mut self,
        id: JobId,
        job: &mut Job,
        by: JobId,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        if let Some(at) = job.not_before {
            t.delayed.open()?.remove((at, id.0)).map_err(storage)?;
        }
        let now = now_ms();
        fx.counts
            .moved(&job.function, Some(job.status), Some(JobStatus::Superseded));
        fx.noted
            .push(super::tally::Noted::Ended(job.function.clone(), JobStatus::Superseded));
        fx.counts.bytes(&job.function, -(job.input_size() as i64));
        job.status = JobStatus::Superseded;
        job.superseded_by = Some(by.0);
        job.not_before = None;
        job.finished_at = Some(now);
        t.finished.insert((now, id.0), ()).map_err(storage)?;
        self.schedule_callback(id, job, t)?;
        t.put_job(id, job)?;
        fx.terminal.push(id);
        Ok(())
    }

    /// Job `id` stopped waiting (it is due, or it was cancelled): its debounce key, if it still
    /// names it, forgets it, and the next submit with the key starts a new burst.
    pub(crate) fn forget_debounce(
        &mut self,
        id: JobId,
        job: &Job,
        t: &mut Tables<'_>,
    ) -> Result<(), StoreError> {
        let Some(key) = &job.debounce_key else {
            return Ok(());
        };
        let table = t.debounce.open()?;
        let names_it = table
            .get((job.function.as_str(), key.as_str()))
            .map_err(storage)?
            .is_some_and(|v| v.value().0 == id.0);
        if names_it {
            table
                .remove((job.function.as_str(), key.as_str()))
                .map_err(storage)?;
        }
        Ok(())
    }
}
