//! Every change of a job's state, as the writer applies it inside its batch's transaction.
//!
//! Each transition keeps the indexes and counters in step with the job record in the same
//! transaction: `ready` (queued and running jobs, in dispatch order), `delayed` (by due time),
//! `dead_letters`, `finished` (by age, for retention), `function_jobs` (listing) and `counts`.

use std::collections::HashSet;

use redb::ReadableTable;

use super::blobs::BlobBytes;
use super::tally::Noted;
use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{AttemptStart, CancelError, StoreError, storage};
use crate::job::{
    AttemptReport, BlobRef, FailureKind, Job, JobId, JobStatus, Outcome, Pipeline, QueuedJob,
    now_ms,
};
use crate::manifest::RetryPolicy;
use crate::output::Output;

/// Delayed jobs moved to the ready queue per commit.
const MAX_PROMOTE: usize = 10_000;

impl Writer {
    /// Records that an attempt of a queued job started (fenced: only the next attempt).
    pub(crate) fn start(
        &mut self,
        id: JobId,
        start: AttemptStart,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        if let Some(mut job) = t.job(id)?
            && super::machine::may_start(job.status, job.attempts, start.attempt)
        {
            job.status = JobStatus::Running;
            job.attempts = start.attempt;
            job.started_at = Some(start.at);
            job.lease_until = Some(start.lease_until);
            self.leases
                .grant(id, start.attempt, start.lease_until.max(self.lease_floor));
            job.version = Some(start.version);
            t.put_job(id, &job)?;
            fx.counts.moved(
                &job.function,
                Some(JobStatus::Queued),
                Some(JobStatus::Running),
            );
        }
        Ok(())
    }

    /// Records how an attempt ended. Fenced: only the job's current attempt may finish it. A
    /// short attempt may finish before its start was recorded: then the job is still queued,
    /// one attempt behind. A failed attempt is retried (`delayed`) while attempts are left,
    /// unless its error was permanent; a job that ends `failed` or `dead` becomes a dead letter.
    pub(crate) fn finish(
        &mut self,
        id: JobId,
        attempt: u32,
        report: AttemptReport,
        retry: RetryPolicy,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(mut job) = t.job(id)? else {
            fx.released.push(id);
            return Ok(());
        };
        if !super::machine::is_current(job.status, job.attempts, attempt) {
            // A stale attempt's report. The scheduler's hold on the job ends with it only when
            // nothing can hand the job out again; a job whose lease ran out may be held by its
            // next attempt already.
            if job.status.is_terminal() {
                fx.released.push(id);
            }
            return Ok(());
        }
        // The scheduler no longer holds this job.
        fx.released.push(id);
        self.leases.end(id);
        let mut report = report;
        // What a success emits must fit its targets' `max_queued` and the host's budget, or
        // the success is not recorded: the attempt fails (retryable) and emits nothing.
        if let Outcome::Succeeded { output, .. } = &report.outcome {
            let next = report.then.as_deref().map(|f| (f, output.len() as usize));
            let cost = self.emitted_cost(&report.emitted, next);
            if let Err(e) = self.admit_emitted(&job.function, &cost, fx) {
                report.outcome = Outcome::Failed {
                    kind: FailureKind::Retryable,
                    message: format!(
                        "the handler succeeded, but what it emitted ({} jobs, {} bytes) does not fit: {e}; nothing it emitted was kept, and the attempt runs again later",
                        cost.jobs, cost.bytes
                    ),
                };
                report.emitted.clear();
            }
        }
        // Key-value writes commit with the success, if every key the attempt read still has
        // the version it saw (a job of another shard committed them already: `settle_kv`).
        if let Some(changes) = report.kv.take()
            && matches!(report.outcome, Outcome::Succeeded { .. })
        {
            let verdict = if self.shard == super::kv::KV_SHARD {
                t.kv.open()?.apply(&changes, None, self.max_kv_bytes)?
            } else {
                super::kv::KvVerdict::Full(
                    "the key-value writes reached the wrong shard; the attempt runs again".into(),
                )
            };
            if let Some(failed) = super::kv::failure(verdict) {
                report.outcome = failed;
                report.emitted.clear();
            }
        }
        fx.noted.push(Noted::Attempt {
            function: job.function.clone(),
            ran_ms: report.finished_at.saturating_sub(report.started_at),
            waited_ms: report.started_at.saturating_sub(job.ready_at),
        });
        t.ready_remove(id, &job)?;
        let settled = super::settle::settle(&mut job, attempt, &mut report, &retry, &mut self.rng);
        let from = settled.from;
        if let Some(output) = settled.output {
            // A large output is stored once as a blob, like a large input; a spooled one is
            // copied in a chunk at a time.
            let stored: Option<(BlobRef, &dyn BlobBytes)> = match &output {
                Output::Spooled(spool) => Some((spool.blob(), spool)),
                Output::Memory {
                    bytes,
                    blob: Some(blob),
                } => Some((*blob, bytes)),
                Output::Memory { bytes, blob: None } if bytes.len() > self.claim_check_bytes => {
                    Some((BlobRef::of(bytes), bytes))
                }
                Output::Memory { .. } => None,
            };
            if let Some((blob, bytes)) = stored {
                t.blobs.open()?.add_ref(blob, bytes, &mut fx.blobs)?;
                job.output_blob = Some(blob);
                job.output = None;
            } else if let Output::Memory { bytes, .. } = output {
                job.output = Some(bytes);
            }
        }
        if let Some(at) = settled.delayed_until {
            self.delay(id, at, t)?;
        }
        fx.retried += settled.retried as u64;
        fx.counts.moved(&job.function, Some(from), Some(job.status));
        if job.status.is_terminal() {
            fx.noted
                .push(Noted::Ended(job.function.clone(), job.status));
            fx.counts.bytes(&job.function, -(job.input_size() as i64));
            if super::machine::is_dead_letter(job.status) {
                t.dead_letters
                    .open()?
                    .insert((job.function.as_str(), id.0), ())
                    .map_err(storage)?;
                fx.dead_lettered += 1;
            } else {
                t.finished
                    .insert((report.finished_at, id.0), ())
                    .map_err(storage)?;
            }
            if job.status == JobStatus::Succeeded {
                self.commit_emitted(id, &job, std::mem::take(&mut report.emitted), t, fx)?;
            }
            self.advance_pipeline(id, &mut job, report.then.take(), t, fx)?;
            // A pipeline's head stays `running` while later stages run.
            if job.visible_status().is_terminal() {
                fx.terminal.push(id);
            }
            self.schedule_callback(id, &mut job, t)?;
            t.put_job(id, &job)?;
            if super::machine::releases_key(job.status) {
                self.release_key(&job, t, fx)?;
            }
            return Ok(());
        }
        t.put_job(id, &job)?;
        Ok(())
    }

    /// Cancels a queued or delayed job; anything else is refused with its status.
    pub(crate) fn cancel(
        &mut self,
        id: JobId,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Result<Job, CancelError>, StoreError> {
        let Some(mut job) = t.job(id)? else {
            return Ok(Err(CancelError::NotFound(id)));
        };
        if !super::machine::may_cancel(job.status) {
            return Ok(Err(CancelError::NotCancellable {
                id,
                status: job.status,
            }));
        }
        self.cancel_job(id, &mut job, "cancelled by request", t, fx)?;
        Ok(Ok(job))
    }

    /// Ends a queued, delayed or running job as `cancelled`.
    pub(crate) fn cancel_job(
        &mut self,
        id: JobId,
        job: &mut Job,
        reason: &str,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        self.leases.end(id);
        match job.status {
            JobStatus::Queued | JobStatus::Running => t.ready_remove(id, job)?,
            JobStatus::Delayed => {
                if let Some(at) = job.not_before {
                    t.delayed.open()?.remove((at, id.0)).map_err(storage)?;
                }
                self.forget_debounce(id, job, t)?;
            }
            _ => return Ok(()),
        }
        let now = now_ms();
        fx.counts
            .moved(&job.function, Some(job.status), Some(JobStatus::Cancelled));
        fx.noted
            .push(Noted::Ended(job.function.clone(), JobStatus::Cancelled));
        fx.counts.bytes(&job.function, -(job.input_size() as i64));
        job.status = JobStatus::Cancelled;
        job.not_before = None;
        job.lease_until = None;
        job.finished_at = Some(now);
        job.error = Some(reason.to_string());
        t.finished.insert((now, id.0), ()).map_err(storage)?;
        // A cancelled stage (cancelled by a client, or its function deleted) ends its pipeline.
        if matches!(job.pipeline, Some(Pipeline::Stage { .. })) {
            self.advance_pipeline(id, job, None, t, fx)?;
        }
        self.schedule_callback(id, job, t)?;
        t.put_job(id, job)?;
        fx.terminal.push(id);
        fx.released.push(id);
        self.release_key(job, t, fx)
    }

    /// Puts a dead letter back in its function's queue: same id, attempts counted from zero.
    pub(crate) fn redrive(
        &mut self,
        function: &str,
        id: JobId,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        t.dead_letters
            .open()?
            .remove((function, id.0))
            .map_err(storage)?;
        let Some(mut job) = t.job(id)? else {
            return Ok(());
        };
        fx.counts
            .moved(function, Some(job.status), Some(JobStatus::Queued));
        fx.counts.bytes(function, job.input_size() as i64);
        super::machine::redriven(&mut job, now_ms());
        // It will end again: that end gets its own callback.
        if let Some(callback) = &mut job.callback {
            t.forget_callback_row(id, callback)?;
            super::callbacks::next_round(callback);
        }
        // Back at the end of its key's queue, behind the jobs submitted since.
        let seq = self.ids.generate().0;
        t.join_key(id, &mut job, seq)?;
        job.concurrency_seq = 0;
        if t.may_run(id, &job)? {
            self.join_concurrency(id, &mut job, t)?;
        }
        t.put_job(id, &job)?;
        if self.admits(id, &job, t)? {
            t.ready_insert(id, &job)?;
            self.note_ready(function, id, &job);
            fx.ready.push(QueuedJob::from_job(id, job));
        }
        Ok(())
    }

    /// Deletes a dead letter for good.
    pub(crate) fn purge(
        &mut self,
        function: &str,
        id: JobId,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        t.dead_letters
            .open()?
            .remove((function, id.0))
            .map_err(storage)?;
        t.function_jobs.remove((function, id.0)).map_err(storage)?;
        if let Some(job) = t.job(id)? {
            fx.counts.moved(function, Some(job.status), None);
            t.correlated
                .open()?
                .remove((job.correlation_id.as_str(), id.0))
                .map_err(storage)?;
            t.jobs.remove(id.0).map_err(storage)?;
            t.release_blobs(&job, &mut fx.blobs)?;
            t.forget_callback(id, &job)?;
        }
        Ok(())
    }

    /// Moves every delayed job whose time has come to the ready queue (up to a bound per
    /// commit), and notes when the next one is due.
    pub(crate) fn promote_due(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut due = Vec::new();
        for row in t
            .delayed
            .open()?
            .range(..=(now, u128::MAX))
            .map_err(storage)?
            .take(MAX_PROMOTE)
        {
            due.push(row.map_err(storage)?.0.value());
        }
        for &(at, id) in &due {
            t.delayed.open()?.remove((at, id)).map_err(storage)?;
            let id = JobId(id);
            let Some(mut job) = t.job(id)? else { continue };
            if job.status != JobStatus::Delayed {
                continue;
            }
            job.status = JobStatus::Queued;
            job.not_before = None;
            job.ready_at = now;
            self.forget_debounce(id, &job, t)?;
            if t.may_run(id, &job)? {
                self.join_concurrency(id, &mut job, t)?;
            }
            t.put_job(id, &job)?;
            fx.counts.moved(
                &job.function,
                Some(JobStatus::Delayed),
                Some(JobStatus::Queued),
            );
            // Behind its key's head, or past its concurrency key's window, it waits (queued)
            // for the jobs before it.
            if self.admits(id, &job, t)? {
                t.ready_insert(id, &job)?;
                self.note_ready(&job.function.clone(), id, &job);
                fx.ready.push(QueuedJob::from_job(id, job));
            }
        }
        self.next_due = t.first_delayed()?;
        Ok(())
    }

    /// Cancels every unfinished job of a deleted function: its range of the ready table, and
    /// its delayed jobs (the timer index is by time, so this reads all delayed jobs: deleting
    /// a function is rare).
    pub(crate) fn cancel_function(
        &mut self,
        name: &str,
        reason: &str,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut ids = Vec::new();
        for row in t
            .ready
            .range((name, 0u8, 0u64, 0u128)..=(name, u8::MAX, u64::MAX, u128::MAX))
            .map_err(storage)?
        {
            ids.push(JobId(row.map_err(storage)?.0.value().3));
        }
        let mut delayed = Vec::new();
        for row in t.delayed.open()?.iter().map_err(storage)? {
            delayed.push(JobId(row.map_err(storage)?.0.value().1));
        }
        for id in delayed {
            if t.job(id)?.is_some_and(|j| j.function == name) {
                ids.push(id);
            }
        }
        // Jobs waiting behind their key's head are in neither index; emptying the key queues
        // first also keeps each cancel from handing the next job of its key out.
        let mut seen: HashSet<JobId> = ids.iter().copied().collect();
        for id in t.take_keyed(name)?.into_iter().chain(t.take_concurrency(name)?) {
            if seen.insert(id) {
                ids.push(id);
            }
        }
        for &id in &ids {
            if let Some(mut job) = t.job(id)? {
                self.cancel_job(id, &mut job, reason, t, fx)?;
            }
        }
        self.shared.asks.drained(self.shard, name);
        self.refill_cursor.remove(name);
        Ok(ids)
    }

    /// Reads ready jobs left in the table for every function an ask waits for, in dispatch
    /// order, from where the last refill stopped. They are handed out after the commit.
    pub(crate) fn refill(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let functions = self.shared.asks.wanted_overflow(self.shard);
        let mut in_batch: Option<HashSet<JobId>> = None;
        for (function, wanted) in functions {
            let pending = fx.ready.iter().filter(|j| j.function == function).count();
            let want = wanted.saturating_sub(pending);
            if want == 0 {
                continue;
            }
            let in_batch = in_batch.get_or_insert_with(|| fx.ready.iter().map(|j| j.id).collect());
            let f = function.as_str();
            let start = match self.refill_cursor.get(f) {
                Some(&(rank, at, id)) => std::ops::Bound::Excluded((f, rank, at, id.0)),
                None => std::ops::Bound::Included((f, 0u8, 0u64, 0u128)),
            };
            let end = std::ops::Bound::Included((f, u8::MAX, u64::MAX, u128::MAX));
            let mut found = Vec::new();
            let mut exhausted = true;
            let mut last = None;
            for row in t
                .ready
                .range::<(&str, u8, u64, u128)>((start, end))
                .map_err(storage)?
            {
                let (rank, at, id) = {
                    let k = row.map_err(storage)?.0;
                    let (_, rank, at, id) = k.value();
                    (rank, at, JobId(id))
                };
                last = Some((rank, at, id));
                if self.claimed.contains(&id) || in_batch.contains(&id) {
                    continue;
                }
                found.push(id);
                if found.len() == want {
                    exhausted = false;
                    break;
                }
            }
            if let Some(last) = last {
                self.refill_cursor.insert(function.clone(), last);
            }
            for id in found {
                if let Some(job) = t.job(id)? {
                    fx.ready.push(QueuedJob::from_job(id, job));
                }
            }
            if exhausted {
                fx.drained.push(function);
            }
        }
        Ok(())
    }
}
