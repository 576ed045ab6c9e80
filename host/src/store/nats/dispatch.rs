//! The attempt side on JetStream: a lease is a delivery of the function's consumer (its ack
//! wait the lease's length), a start and a renewal are in-progress acks, an outcome is a
//! compare-and-set on the record, then an ack (ended) or a negative ack with the retry's delay.
//! A delivery of a job still `running` is a lease that ran out: its attempt is failed as
//! expired (under the retry policy) before the job is handed out again.

use std::sync::Weak;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{NatsBackend, failed};
use async_nats::jetstream::consumer::PullConsumer;
use crate::job::{AttemptReport, FailureKind, JobId, Outcome, QueuedJob, now_ms};
use crate::manifest::RetryPolicy;
use crate::store::seam::{Dispatch, Pending};
use crate::store::{CallbackFeed, CallbackResult, StoreError};

/// The largest input or output kept in a job record (larger ones are claim checks: blobs in
/// the object store).
pub(super) const MAX_INLINE: usize = 512 * 1024;

/// How long one pull waits for a job.
const PULL_WAIT: Duration = Duration::from_millis(250);

/// How long the pull for the rest of a lease waits for jobs said to be waiting (fewer come
/// when the function's `max_concurrency` is reached: the pull then ends at this expiry).
const REST_WAIT: Duration = Duration::from_millis(5);

/// Tasks applying starts, renewals and outcomes (each job's in order: a job always goes to the
/// same task). Each waits on the cluster's answers, so there are many.
const WORKERS: usize = 64;

/// Deliveries of one pull looked at (their records read) at once.
const ADMIT_AT_ONCE: usize = 32;

/// Deliveries of a queue message with no record (100 ms apart) before it is dropped: its
/// submit wrote the message and stopped before the record (it was never answered `202`).
const ORPHAN_AFTER_DELIVERIES: i64 = 600;

/// A start, renewal or outcome, for the job's task.
pub(super) enum Op {
    Start {
        id: JobId,
        attempt: u32,
        at: u64,
        lease_until: u64,
        version: u32,
    },
    Renew {
        id: JobId,
        attempt: u32,
        lease_until: u64,
    },
    /// A client's cancel, after the job's earlier changes.
    Cancel {
        id: JobId,
        reply: tokio::sync::oneshot::Sender<Result<crate::job::Job, crate::store::CancelError>>,
    },
    Finish {
        id: JobId,
        attempt: u32,
        report: Box<AttemptReport>,
        retry: RetryPolicy,
    },
    /// A webhook delivery attempt's result.
    CallbackDone { id: JobId, result: CallbackResult },
}

/// Starts the tasks that apply [`Op`]s; they end when the backend is dropped.
pub(super) fn workers(backend: Weak<NatsBackend>) -> Vec<mpsc::UnboundedSender<Op>> {
    (0..WORKERS)
        .map(|_| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Op>();
            let backend = backend.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                while let Some(op) = rx.recv().await {
                    let Some(backend) = backend.upgrade() else {
                        return;
                    };
                    if let Err(e) = backend.apply(op, &mut rng).await {
                        tracing::warn!(error = %e, "a job's change did not reach NATS; its lease runs out and it runs again");
                    }
                }
            });
            tx
        })
        .collect()
}

impl NatsBackend {
    /// Cancels a job after the changes sent for it before (a job's changes apply in order).
    pub(super) async fn cancel_in_order(
        &self,
        id: JobId,
    ) -> Result<crate::job::Job, crate::store::CancelError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(id, Op::Cancel { id, reply });
        answer
            .await
            .unwrap_or(Err(crate::store::CancelError::Store(StoreError::Closed)))
    }

    fn send(&self, id: JobId, op: Op) {
        let _ = self.dispatch[(id.0 % WORKERS as u128) as usize].send(op);
    }

    async fn apply(&self, op: Op, rng: &mut fastrand::Rng) -> Result<(), StoreError> {
        match op {
            Op::Renew {
                id,
                attempt,
                lease_until,
            } => {
                let acker = self.held.lock().get(&id).map(|h| h.acker.clone());
                if let Some(acker) = acker
                    && let Err(e) = acker.ack_with(AckKind::Progress).await
                {
                    tracing::debug!(%id, error = %e, "renewing a delivery failed");
                }
                loop {
                    let Some((mut job, revision)) = self.record(id).await? else {
                        return Ok(());
                    };
                    if job.status != crate::job::JobStatus::Running || job.attempts != attempt {
                        return Ok(());
                    }
                    job.lease_until = Some(lease_until.max(job.lease_until.unwrap_or(0)));
                    if self.replace(id, &job, revision).await? {
                        return Ok(());
                    }
                }
            }
            Op::Cancel { id, reply } => {
                let _ = reply.send(self.cancel_now(id).await);
                Ok(())
            }
            Op::CallbackDone { id, result } => self.callback_result(id, result, rng).await,
            Op::Start {
                id,
                attempt,
                at,
                lease_until,
                version,
            } => {
                let mut hint = true;
                loop {
                let found = if std::mem::take(&mut hint) {
                    self.record_hint(id).await?
                } else {
                    self.record(id).await?
                };
                let Some((mut job, revision)) = found else {
                    return Ok(());
                };
                if !crate::store::machine::may_start(job.status, job.attempts, attempt) {
                    // A stale hint says nothing: look at the record itself.
                    if self.known.lock().remove(&id).is_some() {
                        continue;
                    }
                    return Ok(());
                }
                let from = job.status;
                job.status = crate::job::JobStatus::Running;
                job.attempts = attempt;
                job.started_at = Some(at);
                job.lease_until = Some(lease_until);
                job.version = Some(version);
                if self.replace(id, &job, revision).await? {
                    let (running, counted) = tokio::join!(
                        self.running
                            .put(Self::job_key(id), lease_until.to_string().into()),
                        self.moved(&job.function, Some(from), Some(job.status))
                    );
                    running.map_err(failed)?;
                    counted?;
                    return Ok(());
                }
                }
            }
            Op::Finish {
                id,
                attempt,
                mut report,
                retry,
            } => {
                let finished = self
                    .finish_attempt(id, attempt, &mut report, retry, rng)
                    .await;
                if finished.is_err() {
                    // The outcome did not land: the delivery goes back, so the job is handed
                    // out again (or, had the outcome landed after all, acknowledged then).
                    self.release(id, Some(Some(Duration::from_millis(100))))
                        .await;
                }
                finished
            }
        }
    }

    /// Records an attempt's end (fenced) and lets go of its delivery.
    async fn finish_attempt(
        &self,
        id: JobId,
        attempt: u32,
        report: &mut AttemptReport,
        retry: RetryPolicy,
        rng: &mut fastrand::Rng,
    ) -> Result<(), StoreError> {
        // An output streamed to a spool file goes to the object store first (its claim check).
        if let Outcome::Succeeded {
            output: crate::output::Output::Spooled(spool),
            ..
        } = &report.outcome
        {
            self.keep_spool(spool).await?;
        }
        let emitted = std::mem::take(&mut report.emitted);
        let mut hint = true;
        loop {
            let found = if std::mem::take(&mut hint) {
                self.record_hint(id).await?
            } else {
                self.record(id).await?
            };
            let Some((mut job, revision)) = found else {
                self.release(id, None).await;
                return Ok(());
            };
            if !crate::store::machine::is_current(job.status, job.attempts, attempt) {
                // A stale hint says nothing: look at the record itself.
                if self.known.lock().remove(&id).is_some() {
                    continue;
                }
                if job.status.is_terminal() {
                    self.release(id, None).await;
                } else if self
                    .held
                    .lock()
                    .get(&id)
                    .is_some_and(|h| h.attempt == attempt)
                {
                    // The delivery this host holds was for the attempt that ended (its lease
                    // ran out and the job moved on): it goes back, due when the job is.
                    let wait = job.not_before.map_or(0, |at| at.saturating_sub(now_ms()));
                    self.release(id, Some(Some(Duration::from_millis(wait))))
                        .await;
                }
                return Ok(());
            }
            let mut attempt_report = clone_report(report);
            // What a success emitted is planned before the success is recorded: what cannot
            // be kept fails the attempt instead (for good: the same emits would fail again).
            let mut planned = None;
            if matches!(attempt_report.outcome, Outcome::Succeeded { .. }) && !emitted.is_empty()
            {
                let plan = self.plan_emitted(id, &job, emitted.clone()).and_then(|fanout| {
                    let entry = fanout.encode();
                    self.check_size(&entry)?;
                    Ok((fanout, bytes::Bytes::from(entry)))
                });
                match plan {
                    Ok(plan) => {
                        // Large inputs it causes are stored before the entry naming them.
                        for (blob, bytes) in &plan.0.blobs {
                            self.keep_blob(*blob, bytes).await?;
                        }
                        planned = Some(plan)
                    }
                    Err(e) => {
                        attempt_report.outcome = Outcome::Failed {
                            kind: FailureKind::Permanent,
                            message: format!(
                                "the handler succeeded, but what it emitted cannot be kept: {e}"
                            ),
                        }
                    }
                }
            }
            let settled =
                crate::store::settle::settle(&mut job, attempt, &mut attempt_report, &retry, rng);
            // A large output is stored once, as a blob (a claim check); a streamed one is
            // stored already.
            if let Some(crate::output::Output::Spooled(spool)) = &settled.output {
                job.output_blob = Some(spool.blob());
                job.output = None;
            }
            if let Some(crate::output::Output::Memory { bytes, blob }) = settled.output {
                let blob = blob.or_else(|| {
                    (bytes.len() > MAX_INLINE).then(|| crate::job::BlobRef::of(&bytes))
                });
                match blob {
                    Some(blob) => {
                        self.keep_blob(blob, &bytes).await?;
                        job.output_blob = Some(blob);
                        job.output = None;
                    }
                    None => job.output = Some(bytes),
                }
            }
            // What the outcome causes: a success's emits, a pipeline's next stage or end.
            let mut fanout = planned
                .filter(|_| job.status == crate::job::JobStatus::Succeeded)
                .map(|(fanout, _)| fanout)
                .unwrap_or_default();
            if job.status.is_terminal() {
                self.plan_pipeline(id, &mut job, attempt_report.then.take(), &mut fanout);
            }
            let planned = (!fanout.is_empty()).then(|| {
                let entry = bytes::Bytes::from(fanout.encode());
                (fanout, entry)
            });
            self.schedule_callback(id, &mut job).await?;
            let key = Self::outbox_key(id);
            let stored = match &planned {
                // The outcome and what it causes land together, or neither does.
                Some((_, entry)) => {
                    self.replace_with_outbox(id, &job, revision, &key, entry.clone())
                        .await?
                }
                None => self.replace(id, &job, revision).await?,
            };
            if stored {
                let delay = settled
                    .delayed_until
                    .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
                let released = async {
                    match delay {
                        Some(delay) => self.release_until(id, &job.function, delay).await,
                        None => self.release(id, None).await,
                    }
                };
                let (_, counted, _) = tokio::join!(
                    self.not_running(id),
                    self.moved(&job.function, Some(settled.from), Some(job.status)),
                    released
                );
                counted?;
                if let Some((fanout, _)) = &planned {
                    self.fan_out(&key, fanout, false).await;
                }
                return Ok(());
            }
        }
    }

    /// Lets go of a job's delivery: acked (`None` or `Some(None)`: the job ended) or handed
    /// out again after the delay.
    pub(super) async fn release(&self, id: JobId, again_after: Option<Option<Duration>>) {
        let Some(Held { acker, .. }) = self.held.lock().remove(&id) else {
            return;
        };
        self.known.lock().remove(&id);
        let result = match again_after.flatten() {
            Some(delay) => acker.ack_with(AckKind::Nak(Some(delay))).await,
            None => acker.double_ack().await,
        };
        if let Err(e) = result {
            tracing::warn!(%id, error = %e, "could not acknowledge a delivery; it is delivered again and fenced");
        }
    }

    /// Leases up to `max` ready jobs of `function`, waiting until one is ready.
    async fn lease_jobs(&self, function: &str, max: usize) -> Result<Vec<QueuedJob>, StoreError> {
        loop {
            let Some(consumer) = self.queue(function).await? else {
                // Not deployed (yet): ask again in a moment.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            // Deliveries drawn but not handed out yet go back at once if this future is dropped.
            let mut drawn = Drawn(Vec::new());
            // First a pull for one job, answered as soon as one is ready (a pull for more would
            // wait its whole expiry for them). Short: a pull waiting while the function runs its
            // `max_concurrency` is not served when a slot frees (the next one is).
            let mut refused = self.pull(&consumer, 1, PULL_WAIT, &mut drawn).await?;
            // Then whatever else is ready now: as many as the first delivery says are waiting
            // (a pull for more than are delivered waits out its expiry, so that is short).
            let waiting = drawn
                .0
                .first()
                .and_then(|m| m.info().ok())
                .map_or(0, |info| info.pending as usize);
            if !refused && waiting > 0 && max > 1 {
                refused = self
                    .pull(&consumer, (max - 1).min(waiting), REST_WAIT, &mut drawn)
                    .await?;
            }
            if refused && drawn.0.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            // Each delivery on its own: one that cannot be looked at now (a server is going
            // away) comes back after the lease time, and never costs the others their hand-out
            // (a job admitted is held by this host: dropping it would strand it).
            // Admitted jobs are held by this host: should this future be dropped before it
            // answers, they go back.
            let mut leased = Admitted {
                backend: self.me.clone(),
                jobs: Vec::new(),
            };
            // Looked at together (a record read each); each admitted job is kept as soon as
            // its look ends, so a drop gives every one of them back.
            let mut looks = futures_util::stream::iter(std::mem::take(&mut drawn.0))
                .map(|message| self.admit(message))
                .buffer_unordered(ADMIT_AT_ONCE);
            while let Some(admitted) = looks.next().await {
                match admitted {
                    Ok(Some(job)) => leased.jobs.push(job),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(function, error = %e, "a delivery could not be looked at; it comes back after the lease time");
                    }
                }
            }
            drop(looks);
            // In queue order (the looks end in any order).
            leased.jobs.sort_by_key(|job| job.id);
            if !leased.jobs.is_empty() {
                return Ok(std::mem::take(&mut leased.jobs));
            }
        }
    }

    /// Pulls up to `max` deliveries into `drawn`, waiting up to `wait` for the first. True
    /// when the pull ended early: the function runs its `max_concurrency` already (the
    /// cluster answers 409) or a server is going away.
    async fn pull(
        &self,
        consumer: &PullConsumer,
        max: usize,
        wait: Duration,
        drawn: &mut Drawn,
    ) -> Result<bool, StoreError> {
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .map_err(failed)?;
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => drawn.0.push(message),
                Err(e) => {
                    tracing::debug!(error = %e, "a pull ended early");
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// What a delivery becomes: a job handed out, or `None` (skipped: ended, not due, lease
    /// expired and retried later, record not written yet).
    async fn admit(
        &self,
        message: async_nats::jetstream::Message,
    ) -> Result<Option<QueuedJob>, StoreError> {
        let id = std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|s| s.parse::<JobId>().ok());
        let Some(id) = id else {
            let _ = message.ack_with(AckKind::Term).await;
            return Ok(None);
        };
        loop {
            let Some((job, revision)) = self.record(id).await? else {
                let delivered = message.info().map(|i| i.delivered).unwrap_or(0);
                if delivered > ORPHAN_AFTER_DELIVERIES {
                    // Its submit never wrote the record (never answered 202): drop it.
                    let _ = message.ack_with(AckKind::Term).await;
                } else {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_millis(100))))
                        .await;
                }
                return Ok(None);
            };
            let now = now_ms();
            match job.status {
                s if s.is_terminal() => {
                    let _ = message.double_ack().await;
                    return Ok(None);
                }
                crate::job::JobStatus::Delayed if job.not_before.is_some_and(|at| at > now) => {
                    let wait = job.not_before.unwrap_or(now) - now;
                    self.later(message, id, &job.function, Duration::from_millis(wait))
                        .await;
                    return Ok(None);
                }
                crate::job::JobStatus::Running => {
                    // Delivered again while running: the lease ran out (a host died or hung),
                    // or is about to, renewed on record by a host whose acks were lost.
                    if let Some(until) = job.lease_until.filter(|until| *until > now) {
                        let wait = Duration::from_millis(until - now);
                        let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
                        return Ok(None);
                    }
                    match self.expire(id).await? {
                        Some(Some(wait)) => {
                            self.later(message, id, &job.function, wait).await;
                            return Ok(None);
                        }
                        Some(None) => {
                            let _ = message.double_ack().await;
                            return Ok(None);
                        }
                        // Due again at once (or changed meanwhile): look again.
                        None => continue,
                    }
                }
                crate::job::JobStatus::Delayed => {
                    // Due: queued again (as the embedded store's timer does) before it runs.
                    let mut due = job.clone();
                    due.status = crate::job::JobStatus::Queued;
                    due.not_before = None;
                    due.ready_at = now;
                    if !self.replace(id, &due, revision).await? {
                        continue;
                    }
                    self.moved(&due.function, Some(job.status), Some(due.status))
                        .await?;
                    let (acker_message, acker) = message.split();
                    drop(acker_message);
                    let held = Held {
                        attempt: due.attempts + 1,
                        acker: std::sync::Arc::new(acker),
                    };
                    self.held.lock().insert(id, held);
                    return Ok(Some(QueuedJob::from_job(id, due)));
                }
                _ => {
                    self.noted(id, &job, revision);
                    let (acker_message, acker) = message.split();
                    drop(acker_message);
                    let held = Held {
                        attempt: job.attempts + 1,
                        acker: std::sync::Arc::new(acker),
                    };
                    self.held.lock().insert(id, held);
                    return Ok(Some(QueuedJob::from_job(id, job)));
                }
            }
        }
    }
}

impl NatsBackend {
    /// Fails the running attempt of a job whose lease ran out, under its function's retry
    /// policy. Returns what becomes of its delivery: `Some(Some(wait))` handed out again after
    /// `wait` (a retry), `Some(None)` acknowledged (the job ended), `None`: the job was not
    /// expired after all.
    pub(super) async fn expire(&self, id: JobId) -> Result<Option<Option<Duration>>, StoreError> {
        loop {
            let Some((mut job, revision)) = self.record(id).await? else {
                self.not_running(id).await;
                return Ok(Some(None));
            };
            let now = now_ms();
            if job.status != crate::job::JobStatus::Running
                || !crate::store::machine::lease_expired(job.lease_until.unwrap_or(0), now)
            {
                return Ok(None);
            }
            let retry = self
                .function_record(&job.function)
                .await?
                .map(|f| f.settings.retry)
                .unwrap_or(crate::manifest::Settings::DEFAULT.retry);
            let attempt = job.attempts;
            let mut report = AttemptReport {
                outcome: Outcome::Failed {
                    kind: FailureKind::Timeout,
                    message: "lease expired: the host running the attempt stopped renewing it; the job was handed out again".into(),
                },
                log: String::new(),
                started_at: job.started_at.unwrap_or(now),
                finished_at: now,
                version: job.version.unwrap_or(0),
                emitted: Vec::new(),
                then: None,
                outbound: Vec::new(),
                kv: None,
            };
            let settled = crate::store::settle::settle(
                &mut job,
                attempt,
                &mut report,
                &retry,
                &mut fastrand::Rng::new(),
            );
            if !self.replace_ending(id, &mut job, revision).await? {
                continue;
            }
            self.not_running(id).await;
            self.moved(&job.function, Some(settled.from), Some(job.status))
                .await?;
            return Ok(Some(
                settled
                    .delayed_until
                    .map(|at| Duration::from_millis(at.saturating_sub(now_ms()))),
            ));
        }
    }

    /// Drops a job from the index of running attempts.
    pub(super) async fn not_running(&self, id: JobId) {
        let subject = format!("$KV.{}-running.{}", self.options.prefix, Self::job_key(id));
        if let Err(e) = self.running_stream.purge().filter(subject).await {
            tracing::debug!(%id, error = %e, "an ended attempt stays in the running index; the sweep drops it");
        }
    }

    /// Every `period`: fails the running attempts whose lease ran out (any host does; the
    /// compare-and-set lets one win) and keeps this host's leased jobs that have not started
    /// yet from being handed out elsewhere.
    pub(super) async fn sweep(backend: Weak<NatsBackend>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let Some(backend) = backend.upgrade() else {
                return;
            };
            if let Err(e) = backend.sweep_once().await {
                tracing::warn!(error = %e, "sweeping expired leases failed; trying again");
            }
        }
    }

    /// Every `period` (a quarter of the lease): keeps this host's deliveries from running out
    /// while their jobs wait in its scheduler or run, and lets go of those whose job ended
    /// meanwhile (cancelled, possibly on another host). Apart from the expiry sweep, so a slow
    /// sweep never lets a held delivery lapse.
    pub(super) async fn keep_held(backend: Weak<NatsBackend>, period: Duration) {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            let Some(backend) = backend.upgrade() else {
                return;
            };
            let held: Vec<_> = backend
                .held
                .lock()
                .iter()
                .map(|(id, h)| (*id, h.acker.clone()))
                .collect();
            for (_, acker) in &held {
                let _ = acker.ack_with(AckKind::Progress).await;
            }
            for (id, _) in held {
                if let Ok(Some((job, _))) = backend.record(id).await
                    && job.status.is_terminal()
                {
                    backend.release(id, None).await;
                }
            }
        }
    }

    async fn sweep_once(&self) -> Result<(), StoreError> {
        let keys = Self::keys_of(&self.running, "j.").await?;
        let now = now_ms();
        for key in keys {
            let until = self
                .running
                .get(&key)
                .await
                .map_err(failed)?
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
            if until.is_some_and(|until| !crate::store::machine::lease_expired(until, now)) {
                continue;
            }
            let Some(id) = key.strip_prefix("j.").and_then(|s| s.parse::<JobId>().ok()) else {
                continue;
            };
            match self.expire(id).await? {
                Some(Some(wait)) if self.held.lock().contains_key(&id) => {
                    let function = self.record_hint(id).await?.map(|(job, _)| job.function);
                    match function {
                        Some(function) => self.release_until(id, &function, wait).await,
                        None => self.release(id, None).await,
                    }
                }
                Some(after) => self.release(id, Some(after)).await,
                // Not running any more (its end's purge of the entry did not land): drop it.
                None if self
                    .record(id)
                    .await?
                    .is_none_or(|(job, _)| job.status != crate::job::JobStatus::Running) =>
                {
                    self.not_running(id).await
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// A delivery this host holds: the attempt it was handed out for, and its acknowledger.
pub(super) struct Held {
    pub(super) attempt: u32,
    pub(super) acker: std::sync::Arc<async_nats::jetstream::message::Acker>,
}

/// Deliveries drawn and not yet handed out: negatively acked (delivered again at once) when
/// dropped.
struct Drawn(Vec<async_nats::jetstream::Message>);

impl Drop for Drawn {
    fn drop(&mut self) {
        for message in self.0.drain(..) {
            tokio::spawn(async move {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

/// Jobs admitted by a lease and not yet handed out: given back (handed out again at once)
/// when dropped.
struct Admitted {
    backend: Weak<NatsBackend>,
    jobs: Vec<QueuedJob>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let ids: Vec<JobId> = self.jobs.drain(..).map(|job| job.id).collect();
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let Some(backend) = backend.upgrade() else {
                return;
            };
            for id in ids {
                backend.release(id, Some(Some(Duration::ZERO))).await;
            }
        });
    }
}

/// A copy of a report to settle again after a lost compare-and-set.
fn clone_report(report: &AttemptReport) -> AttemptReport {
    AttemptReport {
        outcome: match &report.outcome {
            Outcome::Succeeded {
                output,
                content_type,
            } => Outcome::Succeeded {
                output: match output {
                    crate::output::Output::Memory { bytes, blob } => {
                        crate::output::Output::Memory {
                            bytes: bytes.clone(),
                            blob: *blob,
                        }
                    }
                    crate::output::Output::Spooled(spool) => {
                        crate::output::Output::Spooled(spool.clone())
                    }
                },
                content_type: content_type.clone(),
            },
            Outcome::Failed { kind, message } => Outcome::Failed {
                kind: *kind,
                message: message.clone(),
            },
        },
        log: report.log.clone(),
        started_at: report.started_at,
        finished_at: report.finished_at,
        version: report.version,
        emitted: Vec::new(),
        then: report.then.clone(),
        outbound: report.outbound.clone(),
        kv: None,
    }
}

impl Dispatch for NatsBackend {
    fn lease<'a>(
        &'a self,
        function: &'a str,
        max: usize,
    ) -> Pending<'a, Result<Vec<QueuedJob>, StoreError>> {
        Box::pin(self.lease_jobs(function, max))
    }
    fn catalog_version(&self, function: &str) -> Option<u32> {
        self.view.read().get(function).map(|(record, _)| record.version)
    }
    fn reserve_start<'a>(
        &'a self,
        function: &'a str,
        interval: std::time::Duration,
    ) -> Pending<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move { Ok(Some(self.reserve(function, interval).await?)) })
    }
    fn take_callbacks(&self) -> Option<CallbackFeed> {
        let (feed, tx) = self.callbacks.lock().take()?;
        tokio::spawn(NatsBackend::pull_callbacks(self.me.clone(), tx));
        Some(feed)
    }
    fn start(&self, id: JobId, attempt: u32, at: u64, lease_until: u64, version: u32) {
        self.send(
            id,
            Op::Start {
                id,
                attempt,
                at,
                lease_until,
                version,
            },
        );
        self.send(
            id,
            Op::Renew {
                id,
                attempt,
                lease_until,
            },
        );
    }
    fn renew(&self, id: JobId, attempt: u32, lease_until: u64) {
        // Out of the job's order, so a renewal never waits behind other jobs' outcomes on the
        // same worker: it is fenced (a compare-and-set on a record still `running` in this
        // attempt), so one that lands after the attempt ended changes nothing.
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let op = Op::Renew {
                id,
                attempt,
                lease_until,
            };
            if let Err(e) = me.apply(op, &mut fastrand::Rng::new()).await {
                tracing::warn!(%id, error = %e, "a lease was not renewed; it is tried again shortly");
            }
        });
    }
    fn finish(&self, id: JobId, attempt: u32, report: AttemptReport, retry: RetryPolicy) {
        self.send(
            id,
            Op::Finish {
                id,
                attempt,
                report: Box::new(report),
                retry,
            },
        );
    }
    fn settle_kv(
        &self,
        id: JobId,
        attempt: u32,
        mut report: AttemptReport,
    ) -> Pending<'_, AttemptReport> {
        Box::pin(async move {
            if !matches!(report.outcome, Outcome::Succeeded { .. }) {
                report.kv = None;
                return report;
            }
            let Some(changes) = report.kv.take() else {
                return report;
            };
            // Writes are committed only for an attempt whose success can still be recorded:
            // the job's current attempt, with emits this backend can keep (the finish fails
            // the others, and their writes must not stay behind).
            match self.record(id).await {
                Ok(Some((job, _))) => {
                    let current =
                        crate::store::machine::is_current(job.status, job.attempts, attempt);
                    let keepable = report.emitted.is_empty()
                        || self
                            .plan_emitted(id, &job, report.emitted.clone())
                            .and_then(|fanout| self.check_size(&fanout.encode()))
                            .is_ok();
                    if !current || !keepable {
                        return report;
                    }
                }
                Ok(None) => return report,
                Err(e) => {
                    report.outcome = Outcome::Failed {
                        kind: FailureKind::Retryable,
                        message: format!(
                            "its key-value writes could not be committed ({e}); it runs again"
                        ),
                    };
                    report.emitted.clear();
                    return report;
                }
            }
            let failed = match self
                .state_write(&changes, Some(id), self.options.max_kv_bytes)
                .await
            {
                Ok(verdict) => crate::store::kv::failure(verdict),
                Err(StoreError::Unsupported(message)) => Some(Outcome::Failed {
                    kind: FailureKind::Permanent,
                    message,
                }),
                Err(e) => Some(Outcome::Failed {
                    kind: FailureKind::Retryable,
                    message: format!(
                        "its key-value writes could not be committed ({e}); it runs again"
                    ),
                }),
            };
            if let Some(outcome) = failed {
                report.outcome = outcome;
                report.emitted.clear();
            }
            report
        })
    }
    fn callback_done(&self, id: JobId, result: CallbackResult) {
        self.send(id, Op::CallbackDone { id, result });
    }
}
