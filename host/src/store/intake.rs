//! New jobs, as the writer accepts them inside its batch's transaction: submits, batches,
//! admission (`max_queued`, the host's budget), idempotency keys, the hop limit, insertion into
//! the indexes, in the same transaction as the job record.

use bytes::Bytes;

use redb::ReadableTable;

use super::tables::*;
use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{NewJob, StoreError, SubmitError, Submitted, storage};
use crate::job::{
    BlobRef, JOB_RECORD_BYTES, Job, JobId, JobStatus, Pipeline, QueuedJob, now_ms, ready_key,
};

impl Writer {
    /// Accepts one job (or finds the job its idempotency key made).
    pub(crate) fn submit(
        &mut self,
        new: NewJob,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Result<Submitted, SubmitError>, StoreError> {
        let Some(max_queued) = self.shared.deployed.max_queued(&new.function) else {
            return Ok(Err(SubmitError::FunctionNotFound(new.function)));
        };
        let now = now_ms();
        if let Some(key) = &new.idempotency {
            let known = t
                .idempotency
                .open()?
                .get((new.function.as_str(), key.key.as_str()))
                .map_err(storage)?
                .map(|v| KeyRecord::decode(v.value()))
                .transpose()
                .map_err(StoreError::damaged)?;
            // A key past its window is forgotten even before the sweeper deletes it.
            if let Some(known) = known.filter(|k| k.created_at + self.key_window_ms > now) {
                return Ok(if known.request_hash == key.request_hash {
                    Ok(Submitted::Existing(JobId(known.job)))
                } else {
                    Err(SubmitError::IdempotencyConflict(key.key.clone()))
                });
            }
        }
        if let Err(e) = self.admit(
            &new.function,
            max_queued,
            1,
            new.input_blob.map_or(new.input.len() as u64, |b| b.size),
            fx,
        )? {
            return Ok(Err(e));
        }
        let id = self.ids.generate();
        if let Some(key) = &new.idempotency {
            let record = KeyRecord {
                request_hash: key.request_hash,
                job: id.0,
                created_at: now,
            };
            t.idempotency
                .open()?
                .insert(
                    (new.function.as_str(), key.key.as_str()),
                    record.encode().as_slice(),
                )
                .map_err(storage)?;
            t.idempotency_times
                .open()?
                .insert((now, new.function.as_str(), key.key.as_str()), ())
                .map_err(storage)?;
        }
        self.insert_job(id, new, now, t, fx)?;
        Ok(Ok(Submitted::New(id)))
    }

    /// Accepts jobs of one function together, or none of them.
    pub(crate) fn submit_batch(
        &mut self,
        jobs: Vec<NewJob>,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Result<Vec<JobId>, SubmitError>, StoreError> {
        let Some(first) = jobs.first() else {
            return Ok(Ok(Vec::new()));
        };
        let function = first.function.clone();
        let Some(max_queued) = self.shared.deployed.max_queued(&function) else {
            return Ok(Err(SubmitError::FunctionNotFound(function)));
        };
        let bytes = jobs
            .iter()
            .map(|j| j.input_blob.map_or(j.input.len() as u64, |b| b.size))
            .sum();
        if let Err(e) = self.admit(&function, max_queued, jobs.len() as u64, bytes, fx)? {
            return Ok(Err(e));
        }
        let now = now_ms();
        let mut ids = Vec::with_capacity(jobs.len());
        for job in jobs {
            let id = self.ids.generate();
            self.insert_job(id, job, now, t, fx)?;
            ids.push(id);
        }
        Ok(Ok(ids))
    }

    /// Refuses `n` more jobs (`bytes` of input) beyond the function's `max_queued` unfinished
    /// jobs or the host-wide budget (see [`Writer::admit_budget`]).
    pub(crate) fn admit(
        &mut self,
        function: &str,
        max_queued: u64,
        n: u64,
        bytes: u64,
        fx: &mut Effects,
    ) -> Result<Result<(), SubmitError>, StoreError> {
        if let Err(e) = self.admit_queue(function, max_queued, n, fx) {
            return Ok(Err(e));
        }
        Ok(self.admit_budget(n, bytes, fx))
    }

    /// Refuses `n` more jobs beyond the function's `max_queued` unfinished jobs.
    pub(crate) fn admit_queue(
        &self,
        function: &str,
        max_queued: u64,
        n: u64,
        fx: &Effects,
    ) -> Result<(), SubmitError> {
        // All shards' committed count, plus this batch's change so far. (Another shard's
        // batch in flight is not seen: with several shards a limit can be passed by at most
        // that batch.)
        let stored = self.shared.unfinished.get(function);
        let (change, _) = fx.counts.pending_change(function);
        let unfinished = (stored as i64 + change).max(0) as u64;
        if unfinished + n > max_queued {
            return Err(SubmitError::QueueFull {
                function: function.to_string(),
                max_queued,
            });
        }
        Ok(())
    }

    /// Refuses `jobs` more jobs with `bytes` of input beyond the host-wide budget of unfinished
    /// work, where each unfinished job costs its input plus [`JOB_RECORD_BYTES`] for its record:
    /// a flood of empty jobs fills the budget too.
    pub(crate) fn admit_budget(
        &self,
        jobs: u64,
        bytes: u64,
        fx: &Effects,
    ) -> Result<(), SubmitError> {
        let stored = self
            .shared
            .queued_bytes
            .load(std::sync::atomic::Ordering::Relaxed) as i64
            + fx.counts.total_bytes();
        let records = self.shared.unfinished.total() as i64 + fx.counts.total_unfinished();
        let held = stored.max(0) as u64 + records.max(0) as u64 * JOB_RECORD_BYTES;
        if held + bytes + jobs * JOB_RECORD_BYTES > self.max_queued_bytes {
            return Err(SubmitError::BudgetExhausted {
                budget: self.max_queued_bytes,
            });
        }
        Ok(())
    }

    /// Stores a new job: `queued` in the ready table, or `delayed` until its not-before time.
    pub(crate) fn insert_job(
        &mut self,
        id: JobId,
        new: NewJob,
        now: u64,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let mut new = new;
        if let Some(key) = new.debounce_key.clone()
            && let Some(due) = self.debounce(id, &new.function, &key, now, t, fx)?
        {
            new.not_before = Some(due);
        }
        let delayed = match super::machine::on_submit(new.not_before, now) {
            super::machine::Accepted::Delayed(at) => Some(at),
            super::machine::Accepted::Queued => None,
        };
        // A correlation id the job got from elsewhere is indexed; its own id needs no index.
        if let Some(correlation) = &new.correlation_id {
            t.correlated
                .open()?
                .insert((correlation.as_str(), id.0), KIND_JOB)
                .map_err(storage)?;
        }
        // A large input is stored once as a blob (a claim check); the job refers to it.
        let input_blob = match new.input_blob {
            Some(blob) => Some(blob),
            None if new.input.len() > self.claim_check_bytes => Some(BlobRef::of(&new.input)),
            None => None,
        };
        if let Some(blob) = input_blob {
            t.blobs
                .open()?
                .add_ref(blob, &new.input[..], &mut fx.blobs)?;
        }
        if new.concurrency_key.is_none() && input_blob.is_none() {
            new.concurrency_key = self.shared.deployed.key_of(&new.function, &new.input);
        }
        let (mut job, input) = record_of(id, new, now, delayed, input_blob);
        if job.hops > self.max_hops {
            return self.insert_too_deep(id, job, now, t, fx);
        }
        // A job id is a fresh, increasing number: it is also the job's place in its key's queue.
        t.join_key(id, &mut job, id.0)?;
        // A concurrency key's place is taken once the job may run by its ordering key too.
        if delayed.is_none() && t.may_run(id, &job)? {
            self.join_concurrency(id, &mut job, t)?;
        }
        t.put_job(id, &job)?;
        t.function_jobs
            .insert((job.function.as_str(), id.0), ())
            .map_err(storage)?;
        fx.counts.moved(&job.function, None, Some(job.status));
        fx.counts.bytes(&job.function, job.input_size() as i64);
        fx.accepted += 1;
        match delayed {
            Some(at) => self.delay(id, at, t)?,
            // Behind its key's head: it enters the ready queue when the jobs before it end.
            None if !self.admits(id, &job, t)? => {}
            None => {
                t.ready_insert(id, &job)?;
                self.note_ready(&job.function, id, &job);
                fx.ready.push(QueuedJob {
                    id,
                    priority: job.priority,
                    ready_at: job.ready_at,
                    function: job.function,
                    attempts: 0,
                    content_type: job.input_content_type,
                    input: if input_blob.is_some() {
                        Bytes::new()
                    } else {
                        input
                    },
                    created_at: now,
                    correlation_id: job.correlation_id,
                    event: job.event.map(Box::new),
                    input_blob,
                    parent: job.parent,
                    trace_parent: job.trace_parent,
                    concurrency_key: job.concurrency_key,
                });
            }
        }
        Ok(())
    }

    /// Puts a job in the timer index and wakes the writer in time for it.
    pub(crate) fn delay(
        &mut self,
        id: JobId,
        at: u64,
        t: &mut Tables<'_>,
    ) -> Result<(), StoreError> {
        t.delayed.open()?.insert((at, id.0), ()).map_err(storage)?;
        self.next_due = Some(self.next_due.map_or(at, |d| d.min(at)));
        Ok(())
    }

    /// A job entered the ready table ahead of where refills had read to: read from the start.
    pub(crate) fn note_ready(&mut self, function: &str, id: JobId, job: &Job) {
        if let Some(cursor) = self.refill_cursor.get(function)
            && ready_key(job.priority, job.ready_at, id) < *cursor
        {
            self.refill_cursor.remove(function);
        }
    }

    /// Stores a job that is further from its request than `max_hops` as a dead letter that
    /// never ran: a handler or pipeline that enqueues or publishes in a loop ends there instead
    /// of running forever. A redrive runs it anyway (its own children end the same way).
    fn insert_too_deep(
        &mut self,
        id: JobId,
        mut job: Job,
        now: u64,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        dead_too_deep(&mut job, self.max_hops, now);
        t.function_jobs
            .insert((job.function.as_str(), id.0), ())
            .map_err(storage)?;
        t.dead_letters
            .open()?
            .insert((job.function.as_str(), id.0), ())
            .map_err(storage)?;
        fx.counts.moved(&job.function, None, Some(JobStatus::Dead));
        fx.accepted += 1;
        fx.dead_lettered += 1;
        fx.terminal.push(id);
        if matches!(job.pipeline, Some(Pipeline::Stage { .. })) {
            self.advance_pipeline(id, &mut job, None, t, fx)?;
        }
        self.schedule_callback(id, &mut job, t)?;
        t.put_job(id, &job)?;
        Ok(())
    }
}

/// Makes `job`, further than `max_hops` from its request, a dead letter that never ran: a
/// handler or pipeline that enqueues or publishes in a loop ends there instead of running
/// forever. A redrive runs it anyway (its own children end the same way).
pub(crate) fn dead_too_deep(job: &mut Job, max_hops: u32, now: u64) {
    job.status = JobStatus::Dead;
    job.not_before = None;
    job.finished_at = Some(now);
    job.error = Some(format!(
        "dead-lettered without running: it is {} jobs away from the request that began its chain, past the host's limit of {} (--max-hops). Does a handler enqueue or publish in a loop, or a pipeline lead back to itself? Redrive it to run it anyway",
        job.hops, max_hops
    ));
}

/// The record of a job accepted as `id` at `now` (`delayed`: not before then; `input_blob`: its
/// input is kept as that blob), and its input bytes.
pub(crate) fn record_of(
    id: JobId,
    new: NewJob,
    now: u64,
    delayed: Option<u64>,
    input_blob: Option<BlobRef>,
) -> (Job, Bytes) {
    let job = Job {
        function: new.function,
        status: if delayed.is_some() {
            JobStatus::Delayed
        } else {
            JobStatus::Queued
        },
        attempts: 0,
        created_at: now,
        started_at: None,
        finished_at: None,
        input_content_type: new.content_type,
        input: if input_blob.is_some() {
            Vec::new()
        } else {
            new.input.to_vec()
        },
        output_content_type: None,
        output: None,
        error: None,
        log: String::new(),
        correlation_id: new.correlation_id.unwrap_or_else(|| id.to_string()),
        not_before: delayed,
        priority: new.priority,
        ready_at: now,
        lease_until: None,
        history: Vec::new(),
        ordering_key: new.ordering_key,
        ordering_seq: 0,
        version: None,
        event: new.event.map(|e| *e),
        parent: new.parent,
        pipeline: new.pipeline,
        input_blob,
        output_blob: None,
        callback: new.callback.map(crate::job::Callback::new),
        hops: new.hops,
        outbound: Vec::new(),
        conflicts: 0,
        earlier_logs: Vec::new(),
        trace_parent: new.trace_parent,
        concurrency_key: new.concurrency_key,
        concurrency_seq: 0,
        debounce_key: new.debounce_key,
        superseded_by: None,
    };
    (job, new.input)
}
