//! A shard's writer thread: the only code that opens write transactions on its shard file.
//!
//! It takes every operation waiting in its queue, applies them in order inside one write
//! transaction, commits with `Durability::Immediate` (one fsync for the whole batch), and only
//! then answers the callers, hands ready jobs to the scheduler's waiting leases (see
//! [`super::asks`]) and wakes long-polls. Under load, operations pile up during each fsync and
//! the next batch takes them all: the fsync cost is shared, never paid per job.
//!
//! The writer is also the shard's clock: it wakes when the earliest `delayed` job is due, when
//! a lease runs out, and when the retention sweeper should run. Which transition each operation
//! is: [`super::apply`]; the state changes themselves: [`super::transitions`] (and intake,
//! outbox, ordering, callbacks, leases); a failed file: [`super::broken`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use redb::{Database, Durability};
use tokio::sync::mpsc;

use super::broken::{Broken, REOPEN_FIRST, REOPEN_MAX};
use super::catalog::Deployed;
use super::counts::{CountDeltas, Unfinished};
use super::ids::IdGenerator;
pub(crate) use super::ops::{Effects, Op, reject};
use super::txn::Tables;
use super::{StoreError, StoreOptions, StoreStats, Waiters, storage};
use crate::job::{JobId, ReadyKey, now_ms};
use crate::manifest::RetryPolicy;

/// Most operations in one commit; more wait for the next.
const MAX_BATCH: usize = 8192;
/// A commit that starts this soon after the previous one ended is part of a busy stretch.
const BUSY_GAP: Duration = Duration::from_millis(1);

/// What every shard writer shares with the store.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) stats: Arc<StoreStats>,
    pub(crate) deployed: Arc<Deployed>,
    /// The scheduler's asks for ready jobs, and the functions each shard kept jobs back for.
    pub(crate) asks: Arc<super::asks::Asks>,
    /// Input bytes of unfinished jobs, all shards together (for the host-wide budget).
    pub(crate) queued_bytes: Arc<AtomicU64>,
    /// Unfinished jobs per function, all shards together (for `max_queued`).
    pub(crate) unfinished: Arc<Unfinished>,
    /// Blobs stored and their bytes, all shards together.
    pub(crate) blob_totals: Arc<super::BlobTotals>,
    /// Where due callbacks go.
    pub(crate) callbacks: mpsc::UnboundedSender<Vec<JobId>>,
    /// Per-function outcomes and timings, for `/metrics`.
    pub(crate) tallies: Arc<super::tally::Tallies>,
}

pub(crate) struct Writer {
    pub(crate) db: Arc<super::datafile::DataFile>,
    rx: crossbeam_channel::Receiver<Op>,
    /// Longest a busy writer waits for the submits it expects before committing.
    commit_delay: Duration,
    pub(crate) shared: Shared,
    /// This shard's job ids.
    pub(crate) ids: IdGenerator,
    /// When the earliest delayed job is due (ms since the Unix epoch).
    pub(crate) next_due: Option<u64>,
    /// Draws retry delays.
    pub(crate) rng: fastrand::Rng,
    /// How long finished jobs are kept, in ms.
    pub(crate) retention_ms: u64,
    /// How long idempotency keys are remembered, in ms.
    pub(crate) key_window_ms: u64,
    /// Host-wide budget of unfinished input bytes.
    pub(crate) max_queued_bytes: u64,
    /// Longest chain of jobs one request may cause.
    pub(crate) max_hops: u32,
    /// Inputs and outputs larger than this are stored as blobs.
    pub(crate) claim_check_bytes: usize,
    /// How failed callbacks are retried.
    pub(crate) callback_retry: RetryPolicy,
    /// This writer's shard: shard [`super::kv::KV_SHARD`] holds the key-value state.
    pub(crate) shard: usize,
    /// Most bytes one function's key-value state may hold.
    pub(crate) max_kv_bytes: u64,
    /// When the earliest callback not with the sender is due.
    pub(crate) next_callback: Option<u64>,
    /// Callbacks handed to the sender and not yet reported back.
    pub(crate) callbacks_sending: HashSet<JobId>,
    /// How often the sweeper looks for expired jobs and keys.
    pub(crate) sweep_every: Duration,
    /// When it looks next.
    pub(crate) next_sweep: Instant,
    /// Jobs handed to the scheduler and not yet finished: never handed out twice.
    pub(crate) claimed: HashSet<JobId>,
    /// Per function, the last ready-table key a refill read: every entry before it is handed
    /// out (or in the scheduler), so the next refill starts after it.
    pub(crate) refill_cursor: HashMap<String, ReadyKey>,
    /// Set when a commit failed: the file is reopened before the next one.
    pub(crate) broken: Option<Broken>,
    /// Operations of failed commits no caller waits on (starts, outcomes, callback results),
    /// applied first once the file works again.
    pub(crate) held: Vec<Op>,
    /// The pause before the last reopen, until a commit works: a file that reopens but fails
    /// its next commit (a disk still full) is tried less and less often.
    pub(crate) reopened_after: Option<Duration>,
    /// Running attempts' leases, enforced here: one that runs out fails its attempt.
    pub(crate) leases: super::leases::Leases,
    /// No lease granted or renewed ends before this (ms since the Unix epoch): set when the
    /// file works again after a failure, so renewals that waited meanwhile cost no attempt.
    pub(crate) lease_floor: u64,
}

impl Writer {
    pub(crate) fn new(
        shard: usize,
        db: Arc<super::datafile::DataFile>,
        rx: crossbeam_channel::Receiver<Op>,
        options: &StoreOptions,
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
            max_queued_bytes: options.max_queued_bytes,
            max_hops: options.max_hops,
            claim_check_bytes: options.claim_check_bytes,
            callback_retry: options.callback_retry,
            shard,
            max_kv_bytes: options.max_kv_bytes,
            // Callbacks left by a previous process are looked for at once.
            next_callback: Some(0),
            callbacks_sending: HashSet::new(),
            sweep_every,
            next_sweep: Instant::now() + sweep_every,
            shared,
            ids: IdGenerator::new(shard),
            next_due,
            rng: fastrand::Rng::new(),
            claimed: HashSet::new(),
            refill_cursor: HashMap::new(),
            broken: None,
            held: Vec::new(),
            reopened_after: None,
            leases: Default::default(),
            lease_floor: 0,
        }
    }

    pub(crate) fn run(&mut self) {
        let mut batch = Vec::with_capacity(1024);
        // Submits answered by the last commit, and when it ended.
        let mut answered = 0;
        let mut last_commit = Instant::now();
        loop {
            // Wait for work, until the earliest delayed job is due, or until the next sweep. A
            // writer whose file failed waits for work or its next try to reopen it: its timers
            // need the file, and waking for them would only spin.
            let wait = match &self.broken {
                Some(broken) => broken.next_try.saturating_duration_since(Instant::now()),
                None => {
                    let mut wait = self.next_sweep.saturating_duration_since(Instant::now());
                    let leases = self.leases.next_expiry();
                    for due in [self.next_due, self.next_callback, leases]
                        .into_iter()
                        .flatten()
                    {
                        wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms())));
                    }
                    wait
                }
            };
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
            self.unclaim(&mut batch);
            answered = batch
                .iter()
                .filter(|op| matches!(op, Op::Submit { .. }))
                .count();
            let shutdown = if self.heal() {
                if !self.held.is_empty() {
                    batch.splice(0..0, std::mem::take(&mut self.held));
                }
                self.commit(&mut batch)
            } else {
                self.refuse(&mut batch)
            };
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
        // A panic inside redb (a malformed page) fails the batch like a storage error.
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.apply_all(batch, &mut fx)
        }));
        let result = match applied {
            Ok(result) => result.map_err(|e| e.in_file(self.db.path())),
            Err(panic) => Err(StoreError::panicked(self.db.path(), &*panic)),
        };
        match result {
            Ok(()) => {
                self.reopened_after = None;
                let s = &self.shared.stats;
                s.commits.fetch_add(1, Relaxed);
                s.ops.fetch_add(ops, Relaxed);
                s.accepted.fetch_add(fx.accepted, Relaxed);
                s.published.fetch_add(fx.published, Relaxed);
                s.retried.fetch_add(fx.retried, Relaxed);
                s.dead_lettered.fetch_add(fx.dead_lettered, Relaxed);
                s.swept.fetch_add(fx.swept, Relaxed);
                s.finished.fetch_add(fx.terminal.len() as u64, Relaxed);
                let bytes = fx.counts.total_bytes();
                if bytes >= 0 {
                    self.shared.queued_bytes.fetch_add(bytes as u64, Relaxed);
                } else {
                    self.shared
                        .queued_bytes
                        .fetch_sub(bytes.unsigned_abs(), Relaxed);
                }
                self.shared.unfinished.apply(&fx.counts);
                add_signed(&self.shared.blob_totals.count, fx.blobs.count);
                add_signed(&self.shared.blob_totals.bytes, fx.blobs.bytes);
                self.shared.tallies.add(std::mem::take(&mut fx.noted));
                for reply in fx.replies {
                    reply.commit();
                }
                for id in &fx.released {
                    self.claimed.remove(id);
                }
                for function in &fx.drained {
                    self.shared.asks.drained(self.shard, function);
                }
                self.shared.asks.hand_out(
                    self.shard,
                    std::mem::take(&mut fx.ready),
                    &mut self.claimed,
                    &mut self.refill_cursor,
                );
                self.shared.waiters.wake(&fx.terminal);
                for id in &fx.callbacks_finished {
                    self.callbacks_sending.remove(id);
                }
                if !fx.callbacks_due.is_empty() {
                    self.callbacks_sending
                        .extend(fx.callbacks_due.iter().copied());
                    let _ = self.shared.callbacks.send(fx.callbacks_due);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a batch of {ops} operations was not committed");
                // Operations the failure came before (the file would not even start a
                // transaction) are answered like the rest.
                for op in batch.drain(..) {
                    reject(op, &mut fx);
                }
                // Delayed jobs noted in the failed batch are not durable; look again next time,
                // and read the ready table again for whatever this batch would have handed out.
                self.next_due = Some(0);
                self.next_callback = Some(0);
                self.refill_cursor.clear();
                let ready = std::mem::take(&mut fx.ready);
                self.shared
                    .asks
                    .overflowing(self.shard, ready.into_iter().map(|j| j.function));
                for reply in std::mem::take(&mut fx.replies) {
                    reply.fail(&e);
                }
                // redb fails every later operation on a file that had an I/O error: reopen it
                // (after a pause, so a full disk is not hammered), then apply what no caller
                // waits on again.
                // Leases this batch found run out are still running on record.
                for (id, attempt, until) in std::mem::take(&mut fx.expired_leases) {
                    self.leases.grant(id, attempt, until);
                }
                // A damaged record fails every batch that touches it: keeping its operations
                // to apply again would fail every later batch too, and reopening mends nothing.
                if matches!(e, StoreError::Backend(_) | StoreError::Storage(_)) {
                    self.held.append(&mut fx.held);
                    let backoff = self
                        .reopened_after
                        .map_or(REOPEN_FIRST, |last| (last * 2).min(REOPEN_MAX));
                    self.broken = Some(Broken {
                        error: e,
                        backoff,
                        next_try: Instant::now() + backoff,
                    });
                } else {
                    self.lost(&mut fx);
                }
            }
        }
        batch.clear();
        fx.shutdown
    }

    /// Applies the batch's unclaims (jobs an ask dropped before taking them) at once, whatever
    /// becomes of the commit: they only change what this writer holds in memory.
    fn unclaim(&mut self, batch: &mut Vec<Op>) {
        if !batch.iter().any(|op| matches!(op, Op::Unclaim { .. })) {
            return;
        }
        batch.retain_mut(|op| {
            let Op::Unclaim { jobs } = op else {
                return true;
            };
            for (id, function) in jobs.drain(..) {
                self.claimed.remove(&id);
                self.refill_cursor.remove(&function);
                self.shared.asks.overflowing(self.shard, [function]);
            }
            false
        });
    }

    fn apply_all(&mut self, batch: &mut Vec<Op>, fx: &mut Effects) -> Result<(), StoreError> {
        let db = self.db.get()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut result = Ok(());
        let started = Instant::now();
        let mut changed = batch.iter().any(Op::writes);
        {
            let mut t = Tables::open(&txn)?;
            if self.next_due.is_some_and(|due| due <= now_ms()) {
                changed = true;
                if let Err(e) = self.promote_due(&mut t, fx) {
                    result = Err(e);
                }
            }
            if result.is_ok() && self.leases.next_expiry().is_some_and(|due| due <= now_ms()) {
                changed = true;
                result = self.expire_leases(&mut t, fx);
            }
            if result.is_ok() && self.next_callback.is_some_and(|due| due <= now_ms()) {
                result = self.due_callbacks(&mut t, fx);
            }
            if result.is_ok() && Instant::now() >= self.next_sweep {
                match self.sweep(&mut t, fx) {
                    Ok(swept) => {
                        changed |= swept > 0;
                        fx.swept += swept;
                    }
                    Err(e) => result = Err(e),
                }
            }
            // Each operation is taken out of the batch as it is applied, so should applying
            // one panic (redb, on a malformed page), the rest stay in the batch and are
            // answered with the failure.
            for slot in batch.iter_mut() {
                let op = std::mem::replace(slot, Op::Refill);
                if result.is_ok() {
                    result = self.apply(op, &mut t, fx);
                } else {
                    // Keep collecting replies so every caller hears about the failure.
                    reject(op, fx);
                }
            }
            batch.clear();
            if result.is_ok() {
                result = self.refill(&mut t, fx);
            }
            if result.is_ok() {
                result = fx.counts.write(&mut t.counts);
            }
        }
        result?;
        if !changed {
            // Only a timer or a refill: nothing was written, no commit, no fsync.
            txn.abort().map_err(storage)?;
            return Ok(());
        }
        let applied = Instant::now();
        txn.commit().map_err(storage)?;
        let s = &self.shared.stats;
        s.apply_us
            .fetch_add((applied - started).as_micros() as u64, Relaxed);
        s.commit_us
            .fetch_add(applied.elapsed().as_micros() as u64, Relaxed);
        Ok(())
    }
}

/// Runs once at open, before the writer thread: every job the previous process left running is
/// queued again (its attempt died with that process), read from the ready table only; `delayed`
/// jobs stay delayed. Also creates the tables on a new file. Returns when the earliest delayed
/// job is due and the shard's unfinished input bytes.
pub(crate) fn recover(
    db: &Database,
    unfinished: &Unfinished,
) -> Result<(Option<u64>, u64), StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Storage(e.to_string()))?;
    let (next_due, bytes);
    {
        let mut t = Tables::open(&txn)?;
        t.open_all()?;
        let mut counts = CountDeltas::default();
        t.requeue_running(&mut counts)?;
        counts.write(&mut t.counts)?;
        unfinished.load(&t.counts)?;
        next_due = t.first_delayed()?;
        bytes = t.total_bytes()?;
    }
    txn.commit().map_err(storage)?;
    Ok((next_due, bytes))
}

/// Adds a signed change to a counter.
fn add_signed(counter: &AtomicU64, change: i64) {
    if change >= 0 {
        counter.fetch_add(change as u64, Relaxed);
    } else {
        counter.fetch_sub(change.unsigned_abs(), Relaxed);
    }
}
