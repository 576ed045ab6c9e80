//! Concurrency keys' queues: a key's unfinished jobs that are due wait in the `concurrency`
//! table in the order they became due, and only its first places (the key's window: twice
//! `Settings::key_window`, the scheduler running at most half of them) are ever in the ready
//! queue. The transition that ends one lets the
//! next in, in the same transaction, at the back of the ready queue: keys with work take turns
//! however many jobs each has queued (see `crate::flow`).
//!
//! Each place records whether its job was let in (`admitted`), so a release reads only the
//! key's window of places and loads just the jobs that enter now.
//!
//! A job joins its key's queue when it is due (submitted without a delay, or promoted when its
//! delay ran out), so a job delayed for an hour holds no place; one waiting for a retry keeps
//! its place (it is one of the key's attempts in progress). It leaves when it ends.

use redb::ReadableTable;

use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{StoreError, storage};
use crate::job::{Job, JobId, JobStatus, QueuedJob, now_ms};

impl Tables<'_> {
    /// The first `n` places of a concurrency key's queue: (seq, job, admitted).
    fn key_window(
        &mut self,
        function: &str,
        key: &str,
        n: usize,
    ) -> Result<Vec<(u128, JobId, bool)>, StoreError> {
        let mut out = Vec::with_capacity(n.min(64));
        for row in self
            .concurrency
            .open()?
            .range((function, key, 0u128)..=(function, key, u128::MAX))
            .map_err(storage)?
            .take(n)
        {
            let (k, v) = row.map_err(storage)?;
            let (id, admitted) = v.value();
            out.push((k.value().2, JobId(id), admitted));
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
            rows.push((key.to_string(), seq, JobId(v.value().0)));
        }
        for (key, seq, _) in &rows {
            self.concurrency
                .open()?
                .remove((function, key.as_str(), *seq))
                .map_err(storage)?;
        }
        Ok(rows.into_iter().map(|(_, _, id)| id).collect())
    }

    /// Records that the job in place `seq` of a key's queue was let into the ready queue.
    fn mark_admitted(
        &mut self,
        function: &str,
        key: &str,
        seq: u128,
        id: JobId,
    ) -> Result<(), StoreError> {
        self.concurrency
            .open()?
            .insert((function, key, seq), (id.0, true))
            .map_err(storage)?;
        Ok(())
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
            .insert((job.function.as_str(), key.as_str(), seq), (id.0, false))
            .map_err(storage)?;
        Ok(())
    }

    /// Whether a due job may enter the ready queue: it is its ordering key's head (if it has
    /// one) and within its concurrency key's window (if it has one), where its place is then
    /// marked as let in. The caller puts it in the ready queue when this says yes.
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
        // A job let in before keeps its turn (a retry, even after the window shrank).
        let own = t
            .concurrency
            .open()?
            .get((job.function.as_str(), key.as_str(), job.concurrency_seq))
            .map_err(storage)?
            .map(|v| v.value());
        if own == Some((id.0, true)) {
            return Ok(true);
        }
        let window = self.shared.deployed.key_window(&job.function, key) as usize;
        let place = t
            .key_window(&job.function, key, window)?
            .into_iter()
            .find(|(_, j, _)| *j == id);
        match place {
            Some((seq, _, admitted)) => {
                if !admitted {
                    t.mark_admitted(&job.function, key, seq, id)?;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A job with a concurrency key ended: it leaves its key's queue, and the queued jobs now
    /// in the key's window that were not let in yet enter the ready queue (at its back).
    pub(crate) fn release_concurrency(
        &mut self,
        job: &Job,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(key) = job.concurrency_key.as_deref() else {
            return Ok(());
        };
        if job.concurrency_seq == 0 {
            return Ok(());
        }
        let function = job.function.as_str();
        t.concurrency
            .open()?
            .remove((function, key, job.concurrency_seq))
            .map_err(storage)?;
        let window = self.shared.deployed.key_window(function, key) as usize;
        for (seq, next, admitted) in t.key_window(function, key, window)? {
            if admitted {
                continue;
            }
            let Some(mut waiting) = t.job(next)? else {
                continue;
            };
            if waiting.status != JobStatus::Queued || !t.may_run(next, &waiting)? {
                continue;
            }
            t.mark_admitted(function, key, seq, next)?;
            waiting.ready_at = now_ms();
            t.ready_insert(next, &waiting)?;
            t.put_job(next, &waiting)?;
            self.note_ready(function, next, &waiting);
            fx.ready.push(QueuedJob::from_job(next, waiting));
        }
        Ok(())
    }
}
