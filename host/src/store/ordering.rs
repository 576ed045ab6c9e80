//! Ordering keys: jobs of one function with the same key run one at a time, in submission
//! order. Each key's unfinished jobs are queued in the `ordering` table; only the first (the
//! key's head) is ever in the ready queue, and the transition that ends it puts the next one in,
//! in the same transaction.

use redb::ReadableTable;

use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{StoreError, storage};
use crate::job::{Job, JobId, QueuedJob, now_ms};

impl Tables<'_> {
    /// The first unfinished job of an ordering key (its head), if any.
    pub(crate) fn key_head(
        &mut self,
        function: &str,
        key: &str,
    ) -> Result<Option<JobId>, StoreError> {
        Ok(self
            .ordering
            .open()?
            .range((function, key, 0u128)..=(function, key, u128::MAX))
            .map_err(storage)?
            .next()
            .transpose()
            .map_err(storage)?
            .map(|(_, v)| JobId(v.value())))
    }

    /// True when the job may enter the ready queue: it has no ordering key, or it is its key's
    /// head.
    pub(crate) fn may_run(&mut self, id: JobId, job: &Job) -> Result<bool, StoreError> {
        let head = match &job.ordering_key {
            None => None,
            Some(key) => Some(self.key_head(&job.function, key)?.map_or(0, |h| h.0)),
        };
        Ok(super::machine::may_enter_ready(id.0, head))
    }

    /// Puts a job at the end of its ordering key's queue (a new place in it).
    pub(crate) fn join_key(
        &mut self,
        id: JobId,
        job: &mut Job,
        seq: u128,
    ) -> Result<(), StoreError> {
        if let Some(key) = &job.ordering_key {
            job.ordering_seq = seq;
            self.ordering
                .open()?
                .insert((job.function.as_str(), key.as_str(), seq), id.0)
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Every unfinished job of `function` that has an ordering key, removed from the key queues.
    pub(crate) fn take_keyed(&mut self, function: &str) -> Result<Vec<JobId>, StoreError> {
        let mut rows = Vec::new();
        for row in self
            .ordering
            .open()?
            .range((function, "", 0u128)..)
            .map_err(storage)?
        {
            let (k, v) = row.map_err(storage)?;
            let (f, key, seq) = k.value();
            if f != function {
                break;
            }
            rows.push((key.to_string(), seq, JobId(v.value())));
        }
        for (key, seq, _) in &rows {
            self.ordering
                .open()?
                .remove((function, key.as_str(), *seq))
                .map_err(storage)?;
        }
        Ok(rows.into_iter().map(|(_, _, id)| id).collect())
    }
}

impl Writer {
    /// A job ended: it leaves its concurrency key's queue (see `super::keys`) and its ordering
    /// key's, and the next job of the ordering key (if queued) enters the ready queue. A
    /// delayed next job enters it when it is due.
    pub(crate) fn release_key(
        &mut self,
        job: &Job,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        self.release_concurrency(job, t, fx)?;
        let Some(key) = &job.ordering_key else {
            return Ok(());
        };
        t.ordering
            .open()?
            .remove((job.function.as_str(), key.as_str(), job.ordering_seq))
            .map_err(storage)?;
        let Some(next) = t.key_head(&job.function, key)? else {
            return Ok(());
        };
        let Some(mut waiting) = t.job(next)? else {
            return Ok(());
        };
        if super::machine::next_head_enters_ready(waiting.status) {
            // The new head takes its concurrency key's place now (see `super::keys`).
            self.join_concurrency(next, &mut waiting, t)?;
            if self.admits(next, &waiting, t)? {
                waiting.ready_at = now_ms();
                t.ready_insert(next, &waiting)?;
                t.put_job(next, &waiting)?;
                self.note_ready(&waiting.function, next, &waiting);
                fx.ready.push(QueuedJob::from_job(next, waiting));
            } else {
                t.put_job(next, &waiting)?;
            }
        }
        Ok(())
    }
}
