//! Every change of a job's state, as the writer applies it inside its batch's transaction.
//!
//! Each transition keeps the indexes and counters in step with the job record in the same
//! transaction: `ready` (queued and running jobs, in dispatch order), `delayed` (by due time),
//! `dead_letters`, `finished` (by age, for retention), `function_jobs` (listing) and `counts`.

use std::collections::HashSet;

use bytes::Bytes;

use redb::{ReadableTable, Table, WriteTransaction};

use super::blobs::{BlobBytes, BlobDelta, BlobTables};
use super::counts::CountDeltas;
use super::machine::Next;
use super::tables::*;
use super::writer::{Effects, Writer};
use super::{AttemptStart, CancelError, NewJob, StoreError, SubmitError, Submitted, storage};
use crate::job::{
    AttemptRecord, AttemptReport, BlobRef, FailureKind, JOB_RECORD_BYTES, Job, JobId, JobStatus,
    MAX_HISTORY, MAX_OUTBOUND_KEPT, Outcome, Pipeline, QueuedJob, bounded_error, now_ms, ready_key,
};
use crate::manifest::RetryPolicy;
use crate::output::Output;

/// Delayed jobs moved to the ready queue per commit.
const MAX_PROMOTE: usize = 10_000;

/// A table opened on first use: most batches touch only the job, index and count tables, and
/// opening one costs a lookup in the file's table directory.
pub(crate) struct Lazy<'txn, T> {
    txn: &'txn WriteTransaction,
    opener: fn(&'txn WriteTransaction) -> Result<T, StoreError>,
    value: Option<T>,
}

impl<'txn, T> Lazy<'txn, T> {
    fn new(
        txn: &'txn WriteTransaction,
        opener: fn(&'txn WriteTransaction) -> Result<T, StoreError>,
    ) -> Self {
        Lazy {
            txn,
            opener,
            value: None,
        }
    }

    /// The table, opened now if this transaction has not used it yet.
    pub(crate) fn open(&mut self) -> Result<&mut T, StoreError> {
        if self.value.is_none() {
            self.value = Some((self.opener)(self.txn)?);
        }
        Ok(self.value.as_mut().expect("opened above"))
    }
}

/// The tables a batch writes, opened once per transaction (the rarely used ones on first use).
pub(crate) struct Tables<'txn> {
    pub(crate) jobs: Table<'txn, u128, &'static [u8]>,
    pub(crate) ready: Table<'txn, (&'static str, u8, u64, u128), ()>,
    pub(crate) function_jobs: Table<'txn, (&'static str, u128), ()>,
    pub(crate) delayed: Lazy<'txn, Table<'txn, (u64, u128), ()>>,
    pub(crate) dead_letters: Lazy<'txn, Table<'txn, (&'static str, u128), ()>>,
    pub(crate) finished: Table<'txn, (u64, u128), ()>,
    pub(crate) idempotency: Lazy<'txn, Table<'txn, (&'static str, &'static str), &'static [u8]>>,
    pub(crate) idempotency_times: Lazy<'txn, Table<'txn, (u64, &'static str, &'static str), ()>>,
    pub(crate) ordering: Lazy<'txn, Table<'txn, (&'static str, &'static str, u128), u128>>,
    pub(crate) events: Lazy<'txn, Table<'txn, u128, &'static [u8]>>,
    pub(crate) correlated: Lazy<'txn, Table<'txn, (&'static str, u128), u8>>,
    pub(crate) counts: Table<'txn, (&'static str, u8), u64>,
    pub(crate) blobs: Lazy<'txn, BlobTables<'txn>>,
    pub(crate) callbacks: Lazy<'txn, Table<'txn, (u64, u128), ()>>,
    pub(crate) kv: Lazy<'txn, super::kv::KvTables<'txn>>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            jobs: txn.open_table(JOBS).map_err(storage)?,
            ready: txn.open_table(READY).map_err(storage)?,
            function_jobs: txn.open_table(FUNCTION_JOBS).map_err(storage)?,
            delayed: Lazy::new(txn, |txn| txn.open_table(DELAYED).map_err(storage)),
            dead_letters: Lazy::new(txn, |txn| txn.open_table(DEAD_LETTERS).map_err(storage)),
            finished: txn.open_table(FINISHED).map_err(storage)?,
            idempotency: Lazy::new(txn, |txn| txn.open_table(IDEMPOTENCY).map_err(storage)),
            idempotency_times: Lazy::new(txn, |txn| {
                txn.open_table(IDEMPOTENCY_TIMES).map_err(storage)
            }),
            ordering: Lazy::new(txn, |txn| txn.open_table(ORDERING).map_err(storage)),
            events: Lazy::new(txn, |txn| txn.open_table(EVENTS).map_err(storage)),
            correlated: Lazy::new(txn, |txn| txn.open_table(CORRELATED).map_err(storage)),
            counts: txn.open_table(COUNTS).map_err(storage)?,
            blobs: Lazy::new(txn, BlobTables::open),
            callbacks: Lazy::new(txn, |txn| txn.open_table(CALLBACKS).map_err(storage)),
            kv: Lazy::new(txn, super::kv::KvTables::open),
        })
    }

    /// Opens every table, so a new file has them all before any reader looks for one.
    pub(crate) fn open_all(&mut self) -> Result<(), StoreError> {
        self.delayed.open()?;
        self.dead_letters.open()?;
        self.idempotency.open()?;
        self.idempotency_times.open()?;
        self.ordering.open()?;
        self.events.open()?;
        self.correlated.open()?;
        self.blobs.open()?;
        self.callbacks.open()?;
        Ok(())
    }

    pub(crate) fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.jobs.get(id.0).map_err(storage)? {
            Some(row) => decode_job(row.value())
                .map(Some)
                .map_err(StoreError::Storage),
            None => Ok(None),
        }
    }

    pub(crate) fn put_job(&mut self, id: JobId, job: &Job) -> Result<(), StoreError> {
        self.jobs
            .insert(id.0, encode_job(job).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    pub(crate) fn ready_insert(&mut self, id: JobId, job: &Job) -> Result<(), StoreError> {
        let (rank, at, _) = ready_key(job.priority, job.ready_at, id);
        self.ready
            .insert((job.function.as_str(), rank, at, id.0), ())
            .map_err(storage)?;
        Ok(())
    }

    pub(crate) fn ready_remove(&mut self, id: JobId, job: &Job) -> Result<(), StoreError> {
        let (rank, at, _) = ready_key(job.priority, job.ready_at, id);
        self.ready
            .remove((job.function.as_str(), rank, at, id.0))
            .map_err(storage)?;
        Ok(())
    }

    /// A job is deleted: its input and output blobs lose a reference.
    pub(crate) fn release_blobs(
        &mut self,
        job: &Job,
        delta: &mut BlobDelta,
    ) -> Result<(), StoreError> {
        for blob in [job.input_blob, job.output_blob].into_iter().flatten() {
            self.blobs.open()?.release(blob, delta)?;
        }
        Ok(())
    }

    /// When the earliest delayed job is due.
    pub(crate) fn first_delayed(&mut self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .delayed
            .open()?
            .first()
            .map_err(storage)?
            .map(|(k, _)| k.value().0))
    }

    /// Input bytes of this shard's unfinished jobs, every function together.
    pub(crate) fn total_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for row in self.counts.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            if k.value().1 == BYTES_SLOT {
                total += v.value();
            }
        }
        Ok(total)
    }

    /// Start-up: every `running` job goes back to `queued` (its attempt died with the process).
    pub(crate) fn requeue_running(&mut self, counts: &mut CountDeltas) -> Result<(), StoreError> {
        let mut ids = Vec::new();
        for row in self.ready.iter().map_err(storage)? {
            ids.push(JobId(row.map_err(storage)?.0.value().3));
        }
        for id in ids {
            let Some(mut job) = self.job(id)? else {
                continue;
            };
            if job.status == JobStatus::Running {
                job.status = JobStatus::Queued;
                job.lease_until = None;
                self.put_job(id, &job)?;
                counts.moved(
                    &job.function,
                    Some(JobStatus::Running),
                    Some(JobStatus::Queued),
                );
            }
        }
        Ok(())
    }

    /// The given ids that are dead letters of `function`, or (no ids) up to `limit` of its
    /// dead letters, oldest first.
    pub(crate) fn dead_letters_of(
        &mut self,
        function: &str,
        ids: Option<Vec<JobId>>,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut out = Vec::new();
        match ids {
            Some(ids) => {
                for id in ids {
                    if self
                        .dead_letters
                        .open()?
                        .get((function, id.0))
                        .map_err(storage)?
                        .is_some()
                    {
                        out.push(id);
                    }
                }
            }
            None => {
                for row in self
                    .dead_letters
                    .open()?
                    .range((function, 0u128)..=(function, u128::MAX))
                    .map_err(storage)?
                    .take(limit)
                {
                    out.push(JobId(row.map_err(storage)?.0.value().1));
                }
            }
        }
        Ok(out)
    }
}

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
                .map_err(StoreError::Storage)?;
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
        let delayed = new.not_before.filter(|&at| at > now);
        // A correlation id the job got from elsewhere is indexed; its own id needs no index.
        if let Some(correlation) = &new.correlation_id {
            t.correlated
                .open()?
                .insert((correlation.as_str(), id.0), KIND_JOB)
                .map_err(storage)?;
        }
        let correlation_id = new.correlation_id.unwrap_or_else(|| id.to_string());
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
        let mut job = Job {
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
            correlation_id,
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
        };
        if job.hops > self.max_hops {
            return self.insert_too_deep(id, job, now, t, fx);
        }
        // A job id is a fresh, increasing number: it is also the job's place in its key's queue.
        t.join_key(id, &mut job, id.0)?;
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
            None if !t.may_run(id, &job)? => {}
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
                        new.input
                    },
                    created_at: now,
                    correlation_id: job.correlation_id,
                    event: job.event.map(Box::new),
                    input_blob,
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
        job.status = JobStatus::Dead;
        job.not_before = None;
        job.finished_at = Some(now);
        job.error = Some(format!(
            "dead-lettered without running: it is {} jobs away from the request that began its chain, past the host's limit of {} (--max-hops). Does a handler enqueue or publish in a loop, or a pipeline lead back to itself? Redrive it to run it anyway",
            job.hops, self.max_hops
        ));
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
        // Whatever happens, the scheduler no longer holds this job.
        fx.released.push(id);
        let Some(mut job) = t.job(id)? else {
            return Ok(());
        };
        if !super::machine::is_current(job.status, job.attempts, attempt) {
            return Ok(());
        }
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
        let from = job.status;
        t.ready_remove(id, &job)?;
        job.attempts = attempt;
        job.started_at = Some(report.started_at);
        job.lease_until = None;
        job.version = Some(report.version);
        job.log = report.log;
        let mut record = AttemptRecord {
            attempt,
            started_at: report.started_at,
            finished_at: report.finished_at,
            error: None,
            retry_at: None,
            version: report.version,
        };
        match report.outcome {
            Outcome::Succeeded {
                output,
                content_type,
            } => {
                job.status = JobStatus::Succeeded;
                job.output_content_type = content_type;
                job.error = None;
                // A large output is stored once as a blob, like a large input; a spooled one
                // is copied in a chunk at a time.
                let stored: Option<(BlobRef, &dyn BlobBytes)> = match &output {
                    Output::Spooled(spool) => Some((spool.blob(), spool)),
                    Output::Memory {
                        bytes,
                        blob: Some(blob),
                    } => Some((*blob, bytes)),
                    Output::Memory { bytes, blob: None }
                        if bytes.len() > self.claim_check_bytes =>
                    {
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
            Outcome::Failed { kind, message } => {
                let message = bounded_error(&message);
                record.error = Some(message.clone());
                match super::machine::after_attempt(Some(kind), attempt, job.conflicts, &retry) {
                    Next::Rerun => {
                        // Not a failure of the handler: it runs again soon, on fresh state,
                        // after a short random pause that grows with its conflicts, so
                        // attempts racing for one key spread out instead of colliding again.
                        job.conflicts += 1;
                        let ceiling = super::machine::rerun_ceiling_ms(job.conflicts);
                        let at = now_ms() + self.rng.u64(0..=ceiling);
                        record.retry_at = Some(at);
                        job.status = JobStatus::Delayed;
                        job.not_before = Some(at);
                        job.error = Some(message);
                        self.delay(id, at, t)?;
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
                        let delay = retry.delay_ms(attempt - 1, &mut self.rng);
                        let at = report.finished_at.max(now_ms()) + delay;
                        record.retry_at = Some(at);
                        job.status = JobStatus::Delayed;
                        job.not_before = Some(at);
                        job.error = Some(message);
                        self.delay(id, at, t)?;
                        fx.retried += 1;
                    }
                }
            }
        }
        job.history.push(record);
        if job.history.len() > MAX_HISTORY {
            let excess = job.history.len() - MAX_HISTORY;
            job.history.drain(..excess);
        }
        // The requests an attempt made stay on record with the attempts still shown.
        job.outbound.append(&mut report.outbound);
        let oldest = job.history.first().map_or(0, |a| a.started_at);
        job.outbound.retain(|c| c.at >= oldest);
        if job.outbound.len() > MAX_OUTBOUND_KEPT {
            let excess = job.outbound.len() - MAX_OUTBOUND_KEPT;
            job.outbound.drain(..excess);
        }
        fx.counts.moved(&job.function, Some(from), Some(job.status));
        if job.status.is_terminal() {
            job.finished_at = Some(report.finished_at);
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
            return self.release_key(&job, t, fx);
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
        match job.status {
            JobStatus::Queued | JobStatus::Running => t.ready_remove(id, job)?,
            JobStatus::Delayed => {
                if let Some(at) = job.not_before {
                    t.delayed.open()?.remove((at, id.0)).map_err(storage)?;
                }
            }
            _ => return Ok(()),
        }
        let now = now_ms();
        fx.counts
            .moved(&job.function, Some(job.status), Some(JobStatus::Cancelled));
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
        job.status = JobStatus::Queued;
        job.attempts = 0;
        job.conflicts = 0;
        job.started_at = None;
        job.finished_at = None;
        job.error = None;
        job.output = None;
        job.output_content_type = None;
        job.ready_at = now_ms();
        // It will end again: that end gets its own callback.
        if let Some(callback) = &mut job.callback {
            t.forget_callback_row(id, callback)?;
            *callback = crate::job::Callback {
                round: callback.round + 1,
                ..crate::job::Callback::new(std::mem::take(&mut callback.url))
            };
        }
        // Back at the end of its key's queue, behind the jobs submitted since.
        let seq = self.ids.generate().0;
        t.join_key(id, &mut job, seq)?;
        t.put_job(id, &job)?;
        if t.may_run(id, &job)? {
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
            t.put_job(id, &job)?;
            fx.counts.moved(
                &job.function,
                Some(JobStatus::Delayed),
                Some(JobStatus::Queued),
            );
            // Behind its key's head, it waits (queued) for the jobs before it.
            if t.may_run(id, &job)? {
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
        for id in t.take_keyed(name)? {
            if seen.insert(id) {
                ids.push(id);
            }
        }
        for &id in &ids {
            if let Some(mut job) = t.job(id)? {
                self.cancel_job(id, &mut job, reason, t, fx)?;
            }
        }
        self.overflow.remove(name);
        self.refill_cursor.remove(name);
        Ok(ids)
    }

    /// Reads ready jobs left in the table for every function the scheduler has room for, in
    /// dispatch order, from where the last refill stopped. They are handed out after the commit.
    pub(crate) fn refill(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        if self.overflow.is_empty() {
            return Ok(());
        }
        let functions: Vec<String> = self.overflow.iter().cloned().collect();
        let mut in_batch: Option<HashSet<JobId>> = None;
        for function in functions {
            let pending = fx.ready.iter().filter(|j| j.function == function).count();
            let want = self
                .shared
                .demand
                .available(&function)
                .saturating_sub(pending);
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
