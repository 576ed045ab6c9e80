//! Concurrency keys' queues: a key's unfinished jobs that are due wait in the `concurrency`
//! table in the order they became due, and only its first `key_concurrency` (the key's window,
//! `Settings::key_window`) are ever in the ready queue. The transition that ends one lets the
//! next in, in the same transaction, at the back of the ready queue: keys with work take turns
//! however many jobs each has queued (see `crate::flow`).
//!
//! A job joins its key's queue when it is due (submitted without a delay, or promoted when its
//! delay ran out), so a job delayed for an hour holds no place; one waiting for a retry keeps
//! its place (it is one of the key's attempts in progress). It leaves when it ends.

use redb::ReadableTable;

use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{StoreError, storage};
use crate::job::{Job, JobId, JobStatus, QueuedJob, now_ms, ready_key};

impl Tables<'_> {
    /// The first `n` jobs of a concurrency key's queue (its window when `n` is the window).
    pub(crate) fn key_window(
        &mut self,
        function: &str,
        key: &str,
        n: usize,
    ) -> Result<Vec<(u128, JobId)>, StoreError> {
        let mut out = Vec::with_capacity(n.min(64));
        for row in self
            .concurrency
            .open()?
            .range((function, key, 0u128)..=(function, key, u128::MAX))
            .map_err(storage)?
            .take(n)
        {
            let (k, v) = row.map_err(storage)?;
            out.push((k.value().2, JobId(v.value())));
        }
        Ok(out)
    }

    /// Every unfinished job of `function` in a concurrency key's queue, removed from them.
    pub(crate) fn take_concurrency(&mut self, function: &str) -> Result<Vec<JobId>, StoreError> {
        let mut rows = Vec::new();
        for row in self
            .concurrency
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
            self.concurrency
                .open()?
                .remove((function, key.as_str(), *seq))
                .map_err(storage)?;
        }
        Ok(rows.into_iter().map(|(_, _, id)| id).collect())
    }

    /// True when the job is in the ready table.
    fn is_ready(&mut self, id: JobId, job: &Job) -> Result<bool, StoreError> {
        let (rank, at, _) = ready_key(job.priority, job.ready_at, id);
        Ok(self
            .ready
            .get((job.function.as_str(), rank, at, id.0))
            .map_err(storage)?
            .is_some())
    }
}

impl Writer {
    /// A due job with a concurrency key takes its place at the end of its key's queue (once:
    /// a job that holds a place keeps it; a redriven one was given `concurrency_seq` 0).
    pub(crate) fn join_concurrency(
        &mut self,
        id: JobId,
        job: &mut Job,
        t: &mut Tables<'_>,
    ) -> Result<(), StoreError> {
        let Some(key) = &job.concurrency_key else {
            return Ok(());
        };
        if job.concurrency_seq != 0 {
            return Ok(());
        }
        let seq = self.ids.generate().0;
        job.concurrency_seq = seq;
        t.concurrency
            .open()?
            .insert((job.function.as_str(), key.as_str(), seq), id.0)
            .map_err(storage)?;
        Ok(())
    }

    /// True when a due job may enter the ready queue: it is its ordering key's head (if it has
    /// one) and within its concurrency key's window (if it has one).
    pub(crate) fn admits(
        &mut self,
        id: JobId,
        job: &Job,
        t: &mut Tables<'_>,
    ) -> Result<bool, StoreError> {
        if !t.may_run(id, job)? {
            return Ok(false);
        }
        let Some(key) = &job.concurrency_key else {
            return Ok(true);
        };
        let window = self.shared.deployed.key_window(&job.function) as usize;
        Ok(t
            .key_window(&job.function, key, window)?
            .iter()
            .any(|(_, j)| *j == id))
    }

    /// A job with a concurrency key ended: it leaves its key's queue, and the queued jobs now
    /// in the key's window that are not in the ready queue yet enter it (at its back).
    pub(crate) fn release_concurrency(
        &mut self,
        job: &Job,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(key) = job.concurrency_key.clone() else {
            return Ok(());
        };
        if job.concurrency_seq == 0 {
            return Ok(());
        }
        t.concurrency
            .open()?
            .remove((job.function.as_str(), key.as_str(), job.concurrency_seq))
            .map_err(storage)?;
        let window = self.shared.deployed.key_window(&job.function) as usize;
        for (_, next) in t.key_window(&job.function, &key, window)? {
            let Some(mut waiting) = t.job(next)? else {
                continue;
            };
            if waiting.status != JobStatus::Queued
                || t.is_ready(next, &waiting)?
                || !t.may_run(next, &waiting)?
            {
                continue;
            }
            waiting.ready_at = now_ms();
            t.ready_insert(next, &waiting)?;
            t.put_job(next, &waiting)?;
            self.note_ready(&waiting.function, next, &waiting);
            fx.ready.push(QueuedJob::from_job(next, waiting));
        }
        Ok(())
    }
}
