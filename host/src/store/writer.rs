//! A shard's writer thread: the only code that opens write transactions on its shard file.
//!
//! It takes every operation waiting in its queue, applies them in order inside one write
//! transaction, commits with `Durability::Immediate` (one fsync for the whole batch), and only
//! then answers the callers, feeds queued jobs to the scheduler and wakes long-polls. Under load,
//! operations pile up during each fsync and the next batch takes them all: the fsync cost is
//! shared, never paid per job.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::tables::*;
use super::catalog::Deployed;
use super::ids::IdGenerator;
use super::{
    CancelError, NewJob, StoreError, StoreOptions, StoreStats, SubmitError, Submitted, Waiters,
    storage,
};
use crate::job::{
    AttemptRecord, AttemptReport, FailureKind, Job, JobId, JobStatus, MAX_HISTORY, Outcome,
    QueuedJob, bounded_error, now_ms,
};
use crate::manifest::RetryPolicy;

/// Most operations in one commit; more wait for the next.
const MAX_BATCH: usize = 8192;
/// Expired jobs (and, separately, expired keys) the sweeper deletes per commit.
const SWEEP_BATCH: usize = 1000;
/// A commit that starts this soon after the previous one ended is part of a busy stretch.
const BUSY_GAP: Duration = Duration::from_millis(1);

/// One atomic domain operation.
pub(crate) enum Op {
    Submit {
        job: NewJob,
        reply: oneshot::Sender<Result<Submitted, SubmitError>>,
    },
    Start {
        id: JobId,
        attempt: u32,
        at: u64,
        lease_until: u64,
    },
    Finish {
        id: JobId,
        attempt: u32,
        report: AttemptReport,
        retry: RetryPolicy,
    },
    /// Cancels one queued or delayed job.
    Cancel {
        id: JobId,
        reply: oneshot::Sender<Result<Job, CancelError>>,
    },
    /// Moves dead letters of a function back to `queued` (the given ones, or up to `limit`).
    Redrive {
        function: String,
        ids: Option<Vec<JobId>>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<JobId>, StoreError>>,
    },
    /// Deletes dead letters of a function (the given ones, or up to `limit`).
    Purge {
        function: String,
        ids: Option<Vec<JobId>>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<JobId>, StoreError>>,
    },
    /// Cancels every non-terminal job of a function (it was deleted).
    CancelFunction {
        name: String,
        reason: String,
        reply: oneshot::Sender<Result<Vec<JobId>, StoreError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A reply to send once the batch's fate is known.
enum Reply {
    Submit(
        oneshot::Sender<Result<Submitted, SubmitError>>,
        Result<Submitted, SubmitError>,
    ),
    /// A rare operation's answer, given the commit's outcome.
    Other(Answer),
    Shutdown(oneshot::Sender<()>),
}

/// Sends a rare operation's answer: the computed one, or the error that stopped the commit.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// The answer `value` to send on `tx` once the commit succeeded (or the storage error if not).
fn answer<T, E>(tx: oneshot::Sender<Result<T, E>>, value: Result<T, E>) -> Reply
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    Reply::Other(Box::new(move |failed| {
        let _ = tx.send(match failed {
            None => value,
            Some(e) => Err(e.clone().into()),
        });
    }))
}

impl Reply {
    /// Answers with the result computed in the transaction (the commit succeeded).
    fn commit(self) {
        let _ = match self {
            Reply::Submit(tx, r) => tx.send(r).map_err(drop),
            Reply::Other(f) => {
                f(None);
                Ok(())
            }
            Reply::Shutdown(tx) => tx.send(()).map_err(drop),
        };
    }

    /// Answers with the storage error (the batch was not committed).
    fn fail(self, e: &StoreError) {
        let _ = match self {
            Reply::Submit(tx, _) => tx.send(Err(e.clone().into())).map_err(drop),
            Reply::Other(f) => {
                f(Some(e));
                Ok(())
            }
            Reply::Shutdown(tx) => tx.send(()).map_err(drop),
        };
    }
}

/// What a batch did, delivered only after its commit.
#[derive(Default)]
struct Effects {
    replies: Vec<Reply>,
    /// Jobs submitted in this batch.
    accepted: u64,
    /// Failed attempts that will be retried.
    retried: u64,
    /// Jobs that became dead letters (`failed` or `dead`).
    dead_lettered: u64,
    /// Expired jobs and keys deleted.
    swept: u64,
    queued: Vec<QueuedJob>,
    terminal: Vec<JobId>,
    shutdown: bool,
}

/// What every shard writer shares with the store.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) stats: Arc<StoreStats>,
    pub(crate) deployed: Arc<Deployed>,
}

pub(crate) struct Writer {
    db: Arc<Database>,
    rx: crossbeam_channel::Receiver<Op>,
    /// Longest a busy writer waits for the submits it expects before committing.
    commit_delay: Duration,
    feed: mpsc::UnboundedSender<Vec<QueuedJob>>,
    waiters: Arc<Waiters>,
    stats: Arc<StoreStats>,
    /// Names of deployed functions, so a submit checks existence without a table read.
    deployed: Arc<Deployed>,
    /// This shard's job ids.
    ids: IdGenerator,
    /// When the earliest delayed job is due (ms since the Unix epoch).
    next_due: Option<u64>,
    /// Draws retry delays.
    rng: fastrand::Rng,
    /// How long finished jobs are kept, in ms.
    retention_ms: u64,
    /// How long idempotency keys are remembered, in ms.
    key_window_ms: u64,
    /// How often the sweeper looks for expired jobs and keys.
    sweep_every: Duration,
    /// When it looks next.
    next_sweep: Instant,
}

impl Writer {
    pub(crate) fn new(
        shard: usize,
        db: Arc<Database>,
        rx: crossbeam_channel::Receiver<Op>,
        options: &StoreOptions,
        feed: mpsc::UnboundedSender<Vec<QueuedJob>>,
        shared: Shared,
        next_due: Option<u64>,
    ) -> Self {
        // Often enough that nothing outlives its period by more than a quarter of it.
        let sweep_every = (options.job_retention.min(options.idempotency_window) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(30));
        Writer {
            db,
            rx,
            commit_delay: options.commit_delay,
            retention_ms: options.job_retention.as_millis() as u64,
            key_window_ms: options.idempotency_window.as_millis() as u64,
            sweep_every,
            next_sweep: Instant::now() + sweep_every,
            feed,
            waiters: shared.waiters,
            stats: shared.stats,
            deployed: shared.deployed,
            ids: IdGenerator::new(shard),
            next_due,
            rng: fastrand::Rng::new(),
        }
    }

    pub(crate) fn run(&mut self) {
        let mut batch = Vec::with_capacity(1024);
        // Submits answered by the last commit, and when it ended.
        let mut answered = 0;
        let mut last_commit = Instant::now();
        loop {
            // Wait for work, until the earliest delayed job is due, or until the next sweep.
            let mut wait = self.next_sweep.saturating_duration_since(Instant::now());
            if let Some(due) = self.next_due {
                wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms())));
            }
            match self.rx.recv_timeout(wait) {
                Ok(op) => batch.push(op),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
            // Clients answered by the last commit usually submit again at once, a moment after
            // the next commit would start without them. On a busy stretch, wait (briefly) until
            // as many submits are in the batch as the last commit answered: one fsync then covers
            // them all instead of each group of clients missing every other commit. An idle host
            // commits at once.
            if answered >= 2 && !self.commit_delay.is_zero() && last_commit.elapsed() < BUSY_GAP {
                self.gather(&mut batch, answered);
            }
            answered = batch
                .iter()
                .filter(|op| matches!(op, Op::Submit { .. }))
                .count();
            let shutdown = self.commit(&mut batch);
            last_commit = Instant::now();
            if shutdown {
                return;
            }
        }
    }

    /// Adds operations to `batch` until it holds `submits` submits, or `commit_delay` passed.
    fn gather(&self, batch: &mut Vec<Op>, submits: usize) {
        let deadline = Instant::now() + self.commit_delay;
        let mut have = batch
            .iter()
            .filter(|op| matches!(op, Op::Submit { .. }))
            .count();
        while have < submits && batch.len() < MAX_BATCH {
            match self.rx.recv_deadline(deadline) {
                Ok(op) => {
                    have += matches!(op, Op::Submit { .. }) as usize;
                    let stop = matches!(op, Op::Shutdown { .. });
                    batch.push(op);
                    if stop {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Applies and commits one batch; returns true when a shutdown was requested.
    fn commit(&mut self, batch: &mut Vec<Op>) -> bool {
        let mut fx = Effects::default();
        let ops = batch.len() as u64;
        let result = self.apply_all(batch, &mut fx);
        match result {
            Ok(()) => {
                let s = &self.stats;
                s.commits.fetch_add(1, Relaxed);
                s.ops.fetch_add(ops, Relaxed);
                s.accepted.fetch_add(fx.accepted, Relaxed);
                s.retried.fetch_add(fx.retried, Relaxed);
                s.dead_lettered.fetch_add(fx.dead_lettered, Relaxed);
                s.swept.fetch_add(fx.swept, Relaxed);
                s.finished.fetch_add(fx.terminal.len() as u64, Relaxed);
                for reply in fx.replies {
                    reply.commit();
                }
                if !fx.queued.is_empty() {
                    let _ = self.feed.send(fx.queued);
                }
                self.waiters.wake(&fx.terminal);
            }
            Err(e) => {
                tracing::error!(error = %e, "a batch of {} operations was not committed", batch.len());
                // Delayed jobs noted in the failed batch are not durable; look again next time.
                self.next_due = Some(0);
                for reply in fx.replies {
                    reply.fail(&e);
                }
            }
        }
        batch.clear();
        fx.shutdown
    }

    fn apply_all(&mut self, batch: &mut Vec<Op>, fx: &mut Effects) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut result = Ok(());
        let started = Instant::now();
        let mut changed = !batch.is_empty();
        {
            let mut t = Tables::open(&txn)?;
            if self.next_due.is_some_and(|due| due <= now_ms()) {
                changed = true;
                if let Err(e) = self.promote_due(&mut t, fx) {
                    result = Err(e);
                }
            }
            if result.is_ok() && Instant::now() >= self.next_sweep {
                match self.sweep(&mut t) {
                    Ok(swept) => {
                        changed |= swept > 0;
                        fx.swept += swept;
                    }
                    Err(e) => result = Err(e),
                }
            }
            for op in batch.drain(..) {
                if result.is_ok() {
                    result = self.apply(op, &mut t, fx);
                } else {
                    // Keep collecting replies so every caller hears about the failure.
                    self.reject(op, fx);
                }
            }
        }
        result?;
        if !changed {
            // Only a timer fired and there was nothing to do: no commit, no fsync.
            txn.abort().map_err(storage)?;
            return Ok(());
        }
        let applied = Instant::now();
        txn.commit().map_err(storage)?;
        self.stats
            .apply_us
            .fetch_add((applied - started).as_micros() as u64, Relaxed);
        self.stats
            .commit_us
            .fetch_add(applied.elapsed().as_micros() as u64, Relaxed);
        Ok(())
    }

    fn reject(&self, op: Op, fx: &mut Effects) {
        match op {
            Op::Submit { reply, .. } => fx
                .replies
                .push(Reply::Submit(reply, Err(StoreError::Closed.into()))),
            Op::CancelFunction { reply, .. }
            | Op::Redrive { reply, .. }
            | Op::Purge { reply, .. } => fx.replies.push(answer(reply, Ok(vec![]))),
            Op::Cancel { reply, .. } => fx.replies.push(answer(reply, Err(StoreError::Closed.into()))),
            Op::Shutdown { reply } => {
                fx.shutdown = true;
                fx.replies.push(Reply::Shutdown(reply))
            }
            Op::Start { .. } | Op::Finish { .. } => {}
        }
    }

    fn apply(&mut self, op: Op, t: &mut Tables<'_>, fx: &mut Effects) -> Result<(), StoreError> {
        match op {
            Op::Submit { job, reply } => {
                let result = self.submit(job, t, fx);
                fx.replies.push(Reply::Submit(reply, result?));
            }
            Op::Start {
                id,
                attempt,
                at,
                lease_until,
            } => {
                if let Some(mut job) = t.job(id)?
                    && job.status == JobStatus::Queued
                    && job.attempts + 1 == attempt
                {
                    job.status = JobStatus::Running;
                    job.attempts = attempt;
                    job.started_at = Some(at);
                    job.lease_until = Some(lease_until);
                    t.put_job(id, &job)?;
                }
            }
            Op::Finish {
                id,
                attempt,
                report,
                retry,
            } => self.finish(id, attempt, report, retry, t, fx)?,
            Op::CancelFunction {
                name,
                reason,
                reply,
            } => {
                let cancelled = self.cancel_function(&name, &reason, t, fx)?;
                fx.replies.push(answer(reply, Ok(cancelled)));
            }
            Op::Cancel { id, reply } => {
                let result = self.cancel(id, t, fx)?;
                fx.replies.push(answer(reply, result));
            }
            Op::Redrive {
                function,
                ids,
                limit,
                reply,
            } => {
                let ids = t.dead_letters_of(&function, ids, limit)?;
                for &id in &ids {
                    self.redrive(&function, id, t, fx)?;
                }
                fx.replies.push(answer(reply, Ok(ids)));
            }
            Op::Purge {
                function,
                ids,
                limit,
                reply,
            } => {
                let ids = t.dead_letters_of(&function, ids, limit)?;
                for &id in &ids {
                    t.dead_letters.remove((function.as_str(), id.0)).map_err(storage)?;
                    t.function_jobs.remove((function.as_str(), id.0)).map_err(storage)?;
                    t.jobs.remove(id.0).map_err(storage)?;
                }
                fx.replies.push(answer(reply, Ok(ids)));
            }
            Op::Shutdown { reply } => {
                fx.shutdown = true;
                fx.replies.push(Reply::Shutdown(reply));
            }
        }
        Ok(())
    }

    /// Inserts a new job; a missing function is the caller's error, not a batch failure.
    fn submit(
        &mut self,
        new: NewJob,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Result<Submitted, SubmitError>, StoreError> {
        if !self.deployed.contains(&new.function) {
            return Ok(Err(SubmitError::FunctionNotFound(new.function)));
        }
        let created_at = now_ms();
        if let Some(key) = &new.idempotency {
            let known = t
                .idempotency
                .get((new.function.as_str(), key.key.as_str()))
                .map_err(storage)?
                .map(|v| KeyRecord::decode(v.value()))
                .transpose()
                .map_err(StoreError::Storage)?;
            // A key past its window is forgotten even before the sweeper deletes it.
            if let Some(known) = known.filter(|k| k.created_at + self.key_window_ms > created_at)
            {
                return Ok(if known.request_hash == key.request_hash {
                    Ok(Submitted::Existing(JobId(known.job)))
                } else {
                    Err(SubmitError::IdempotencyConflict(key.key.clone()))
                });
            }
        }
        let id = self.ids.generate();
        if let Some(key) = &new.idempotency {
            let record = KeyRecord {
                request_hash: key.request_hash,
                job: id.0,
                created_at,
            };
            t.idempotency
                .insert(
                    (new.function.as_str(), key.key.as_str()),
                    record.encode().as_slice(),
                )
                .map_err(storage)?;
            t.idempotency_times
                .insert((created_at, new.function.as_str(), key.key.as_str()), ())
                .map_err(storage)?;
        }
        let correlation_id = new.correlation_id.unwrap_or_else(|| id.to_string());
        let job = Job {
            function: new.function,
            status: JobStatus::Queued,
            attempts: 0,
            created_at,
            started_at: None,
            finished_at: None,
            input_content_type: new.content_type,
            input: new.input.to_vec(),
            output_content_type: None,
            output: None,
            error: None,
            log: String::new(),
            correlation_id,
            not_before: None,
            lease_until: None,
            history: Vec::new(),
        };
        t.put_job(id, &job)?;
        t.pending
            .insert((job.function.as_str(), id.0), ())
            .map_err(storage)?;
        t.function_jobs
            .insert((job.function.as_str(), id.0), ())
            .map_err(storage)?;
        fx.accepted += 1;
        fx.queued.push(QueuedJob {
            id,
            function: job.function,
            attempts: 0,
            content_type: job.input_content_type,
            input: new.input,
            created_at,
            correlation_id: job.correlation_id,
        });
        Ok(Ok(Submitted::New(id)))
    }

    /// Records how an attempt ended. Fenced: only the job's current attempt may finish it. A
    /// short attempt may finish before its start was recorded: then the job is still queued,
    /// one attempt behind. A failed attempt is retried (`delayed`) while attempts are left,
    /// unless its error was permanent; a job that ends `failed` or `dead` becomes a dead letter.
    fn finish(
        &mut self,
        id: JobId,
        attempt: u32,
        report: AttemptReport,
        retry: RetryPolicy,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(mut job) = t.job(id)? else {
            return Ok(());
        };
        let current = (job.status == JobStatus::Running && job.attempts == attempt)
            || (job.status == JobStatus::Queued && job.attempts + 1 == attempt);
        if !current {
            return Ok(());
        }
        job.attempts = attempt;
        job.started_at = Some(report.started_at);
        job.lease_until = None;
        job.log = report.log;
        let mut record = AttemptRecord {
            attempt,
            started_at: report.started_at,
            finished_at: report.finished_at,
            error: None,
            retry_at: None,
        };
        match report.outcome {
            Outcome::Succeeded {
                output,
                content_type,
            } => {
                job.status = JobStatus::Succeeded;
                job.output = Some(output);
                job.output_content_type = content_type;
                job.error = None;
            }
            Outcome::Failed { kind, message } => {
                let message = bounded_error(&message);
                record.error = Some(message.clone());
                if kind == FailureKind::Permanent {
                    job.status = JobStatus::Failed;
                    job.error = Some(message);
                } else if attempt >= retry.max_attempts {
                    job.status = JobStatus::Dead;
                    job.error = Some(format!(
                        "gave up after {attempt} attempt(s); the last failed with: {message}"
                    ));
                } else {
                    let delay = retry.delay_ms(attempt - 1, &mut self.rng);
                    let at = report.finished_at.max(now_ms()) + delay;
                    record.retry_at = Some(at);
                    job.status = JobStatus::Delayed;
                    job.not_before = Some(at);
                    job.error = Some(message);
                    t.delayed.insert((at, id.0), ()).map_err(storage)?;
                    fx.retried += 1;
                    self.next_due = Some(self.next_due.map_or(at, |d| d.min(at)));
                }
            }
        }
        job.history.push(record);
        if job.history.len() > MAX_HISTORY {
            let excess = job.history.len() - MAX_HISTORY;
            job.history.drain(..excess);
        }
        if job.status.is_terminal() {
            job.finished_at = Some(report.finished_at);
            t.pending
                .remove((job.function.as_str(), id.0))
                .map_err(storage)?;
            if matches!(job.status, JobStatus::Failed | JobStatus::Dead) {
                t.dead_letters
                    .insert((job.function.as_str(), id.0), ())
                    .map_err(storage)?;
                fx.dead_lettered += 1;
            } else {
                t.finished
                    .insert((report.finished_at, id.0), ())
                    .map_err(storage)?;
            }
            fx.terminal.push(id);
        }
        t.put_job(id, &job)?;
        Ok(())
    }

    /// Cancels a queued or delayed job; anything else is refused with its status.
    fn cancel(
        &mut self,
        id: JobId,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Result<Job, CancelError>, StoreError> {
        let Some(mut job) = t.job(id)? else {
            return Ok(Err(CancelError::NotFound(id)));
        };
        match job.status {
            JobStatus::Queued => {}
            JobStatus::Delayed => {
                if let Some(at) = job.not_before {
                    t.delayed.remove((at, id.0)).map_err(storage)?;
                }
            }
            status => return Ok(Err(CancelError::NotCancellable { id, status })),
        }
        let now = now_ms();
        job.status = JobStatus::Cancelled;
        job.not_before = None;
        job.finished_at = Some(now);
        job.error = Some("cancelled by request".into());
        t.finished.insert((now, id.0), ()).map_err(storage)?;
        t.pending
            .remove((job.function.as_str(), id.0))
            .map_err(storage)?;
        t.put_job(id, &job)?;
        fx.terminal.push(id);
        Ok(Ok(job))
    }

    /// Puts a dead letter back in its function's queue: same id, attempts counted from zero.
    fn redrive(
        &mut self,
        function: &str,
        id: JobId,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        t.dead_letters.remove((function, id.0)).map_err(storage)?;
        let Some(mut job) = t.job(id)? else {
            return Ok(());
        };
        job.status = JobStatus::Queued;
        job.attempts = 0;
        job.started_at = None;
        job.finished_at = None;
        job.error = None;
        job.output = None;
        job.output_content_type = None;
        t.pending.insert((function, id.0), ()).map_err(storage)?;
        t.put_job(id, &job)?;
        fx.queued.push(QueuedJob {
            id,
            function: job.function,
            attempts: 0,
            content_type: job.input_content_type,
            input: Bytes::from(job.input),
            created_at: job.created_at,
            correlation_id: job.correlation_id,
        });
        Ok(())
    }

    /// Moves every delayed job whose time has come back to `queued` (up to a bound per commit),
    /// and notes when the next one is due.
    fn promote_due(&mut self, t: &mut Tables<'_>, fx: &mut Effects) -> Result<(), StoreError> {
        const MAX_PROMOTE: usize = 10_000;
        let now = now_ms();
        let mut due = Vec::new();
        for row in t
            .delayed
            .range(..=(now, u128::MAX))
            .map_err(storage)?
            .take(MAX_PROMOTE)
        {
            due.push(row.map_err(storage)?.0.value());
        }
        for &(at, id) in &due {
            t.delayed.remove((at, id)).map_err(storage)?;
            let id = JobId(id);
            let Some(mut job) = t.job(id)? else { continue };
            if job.status != JobStatus::Delayed {
                continue;
            }
            job.status = JobStatus::Queued;
            job.not_before = None;
            t.put_job(id, &job)?;
            fx.queued.push(QueuedJob {
                id,
                function: job.function,
                attempts: job.attempts,
                content_type: job.input_content_type,
                input: Bytes::from(job.input),
                created_at: job.created_at,
                correlation_id: job.correlation_id,
            });
        }
        self.next_due = t.first_delayed()?;
        Ok(())
    }

    /// Deletes finished jobs older than the retention period and idempotency keys older than
    /// their window, at most [`SWEEP_BATCH`] of each per commit; returns how many rows went.
    /// A full batch brings the next sweep forward, so a backlog drains in small steps.
    fn sweep(&mut self, t: &mut Tables<'_>) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut expired = Vec::new();
        for row in t
            .finished
            .range(..(now.saturating_sub(self.retention_ms), 0u128))
            .map_err(storage)?
            .take(SWEEP_BATCH)
        {
            expired.push(row.map_err(storage)?.0.value());
        }
        for &(at, id) in &expired {
            t.finished.remove((at, id)).map_err(storage)?;
            if let Some(job) = t.job(JobId(id))? {
                t.function_jobs
                    .remove((job.function.as_str(), id))
                    .map_err(storage)?;
                t.jobs.remove(id).map_err(storage)?;
            }
        }
        let mut keys = Vec::new();
        for row in t
            .idempotency_times
            .range(..(now.saturating_sub(self.key_window_ms), "", ""))
            .map_err(storage)?
            .take(SWEEP_BATCH)
        {
            let (k, _) = row.map_err(storage)?;
            let (at, function, key) = k.value();
            keys.push((at, function.to_string(), key.to_string()));
        }
        for (at, function, key) in &keys {
            t.idempotency_times
                .remove((*at, function.as_str(), key.as_str()))
                .map_err(storage)?;
            // The key may have been used again since (a new record): keep that one.
            let current = t
                .idempotency
                .get((function.as_str(), key.as_str()))
                .map_err(storage)?
                .map(|v| KeyRecord::decode(v.value()))
                .transpose()
                .map_err(StoreError::Storage)?;
            if current.is_some_and(|r| r.created_at == *at) {
                t.idempotency
                    .remove((function.as_str(), key.as_str()))
                    .map_err(storage)?;
            }
        }
        let full = expired.len() == SWEEP_BATCH || keys.len() == SWEEP_BATCH;
        self.next_sweep = Instant::now()
            + if full {
                Duration::ZERO
            } else {
                self.sweep_every
            };
        Ok((expired.len() + keys.len()) as u64)
    }

    /// Cancels the function's non-terminal jobs, read from its range of the pending index.
    fn cancel_function(
        &mut self,
        name: &str,
        reason: &str,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut pending = Vec::new();
        for row in t
            .pending
            .range((name, 0u128)..=(name, u128::MAX))
            .map_err(storage)?
        {
            pending.push(JobId(row.map_err(storage)?.0.value().1));
        }
        let now = now_ms();
        for &id in &pending {
            if let Some(mut job) = t.job(id)? {
                if let Some(at) = job.not_before.take() {
                    t.delayed.remove((at, id.0)).map_err(storage)?;
                }
                job.status = JobStatus::Cancelled;
                job.finished_at = Some(now);
                job.error = Some(reason.to_string());
                t.finished.insert((now, id.0), ()).map_err(storage)?;
                t.put_job(id, &job)?;
            }
            t.pending.remove((name, id.0)).map_err(storage)?;
            fx.terminal.push(id);
        }
        Ok(pending)
    }
}

/// The tables a batch writes, opened once per transaction.
struct Tables<'txn> {
    jobs: Table<'txn, u128, &'static [u8]>,
    pending: Table<'txn, (&'static str, u128), ()>,
    function_jobs: Table<'txn, (&'static str, u128), ()>,
    delayed: Table<'txn, (u64, u128), ()>,
    dead_letters: Table<'txn, (&'static str, u128), ()>,
    finished: Table<'txn, (u64, u128), ()>,
    idempotency: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    idempotency_times: Table<'txn, (u64, &'static str, &'static str), ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            jobs: txn.open_table(JOBS).map_err(storage)?,
            pending: txn.open_table(PENDING).map_err(storage)?,
            function_jobs: txn.open_table(FUNCTION_JOBS).map_err(storage)?,
            delayed: txn.open_table(DELAYED).map_err(storage)?,
            dead_letters: txn.open_table(DEAD_LETTERS).map_err(storage)?,
            finished: txn.open_table(FINISHED).map_err(storage)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(storage)?,
            idempotency_times: txn.open_table(IDEMPOTENCY_TIMES).map_err(storage)?,
        })
    }

    /// When the earliest delayed job is due.
    fn first_delayed(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .delayed
            .first()
            .map_err(storage)?
            .map(|(k, _)| k.value().0))
    }

    /// The given ids that are dead letters of `function`, or (no ids) up to `limit` of its
    /// dead letters, oldest first.
    fn dead_letters_of(
        &self,
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

    fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.jobs.get(id.0).map_err(storage)? {
            Some(row) => decode_job(row.value())
                .map(Some)
                .map_err(StoreError::Storage),
            None => Ok(None),
        }
    }

    fn put_job(&mut self, id: JobId, job: &Job) -> Result<(), StoreError> {
        self.jobs
            .insert(id.0, encode_job(job).as_slice())
            .map_err(storage)?;
        Ok(())
    }
}

/// Runs once at open, before the writer thread: every job the previous process left queued or
/// running is queued again (its running attempt died with that process), read from the pending
/// index only (`delayed` jobs stay delayed). Also creates the tables on a new file. Returns the
/// requeued jobs and when the earliest delayed job is due.
pub(crate) fn recover(db: &Database) -> Result<(Vec<QueuedJob>, Option<u64>), StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Storage(e.to_string()))?;
    let mut recovered = Vec::new();
    let next_due;
    {
        let mut t = Tables::open(&txn)?;
        let mut ids = Vec::new();
        for row in t.pending.iter().map_err(storage)? {
            ids.push(JobId(row.map_err(storage)?.0.value().1));
        }
        for id in ids {
            let Some(mut job) = t.job(id)? else { continue };
            if job.status == JobStatus::Delayed {
                // Its timer is in the delayed index; the writer promotes it when due.
                continue;
            }
            if job.status == JobStatus::Running {
                job.status = JobStatus::Queued;
                job.lease_until = None;
                t.put_job(id, &job)?;
            }
            recovered.push(QueuedJob {
                id,
                function: job.function,
                attempts: job.attempts,
                content_type: job.input_content_type,
                input: Bytes::from(job.input),
                created_at: job.created_at,
                correlation_id: job.correlation_id,
            });
        }
        next_due = t.first_delayed()?;
    }
    txn.commit().map_err(storage)?;
    Ok((recovered, next_due))
}
