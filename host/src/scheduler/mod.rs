//! The scheduler moves durable, ready jobs into sandboxes: per function a window of its ready
//! queue (highest priority first, then oldest) and at most `max_concurrency` workers draining it,
//! started no faster than `rate_per_second`, all sharing one host-wide pool of sandbox slots.
//!
//! It owns no durable state. The ready queue lives in the store; the scheduler pulls: per
//! function one task leases ready jobs from the store ([`crate::store::Dispatch::lease`]) while
//! the function holds fewer than [`HOLD`] (waiting or running), so host memory does not grow
//! with the queue. It tells the store when an attempt starts (renewing its lease while it runs)
//! and how it ended, and relies on the store's fencing (attempt numbers and statuses) so a
//! stale or cancelled attempt changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::job::{JobId, QueuedJob};
use crate::runtime::Runtime;
use crate::store::Backend;

mod attempt;
mod breaker;
mod keys;
mod leasing;

/// Jobs of one function the scheduler holds at most (waiting for a worker, or running); the
/// rest of its queue waits in the store.
pub const HOLD: usize = 1024;

/// Hands queued jobs to sandboxes. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where spans of jobs and attempts go.
    tracer: crate::trace::Tracer,
    /// Where attempts run: threads of lower OS priority than the API and the writer, so a burst
    /// of events never delays accepting (and answering) requests.
    sandboxes: tokio::runtime::Handle,
    store: Arc<dyn Backend>,
    /// The store as the runtime reads it: claim-checked payloads, key-value state.
    blobs: Arc<dyn crate::runtime::BlobSource>,
    kv: Arc<dyn crate::runtime::kv::KvSource>,
    runtime: Arc<Runtime>,
    /// Ready jobs and workers per function.
    state: Mutex<State>,
    /// Host-wide sandbox slots: the pooling allocator's size, never exceeded.
    slots: Arc<Semaphore>,
    /// Set at shutdown: workers finish their attempt and take no new job.
    stopping: AtomicBool,
    /// Cancels every running attempt (shutdown after the grace period).
    abort_all: CancellationToken,
    /// Cancelled when shutdown starts: attempts not yet started (waiting for their rate) are
    /// left queued.
    stop_starting: CancellationToken,
    /// Signalled whenever a worker exits.
    worker_exited: Notify,
    /// The functions' leasing tasks: all gone once shutdown returns.
    leasing: tokio_util::task::TaskTracker,
}

#[derive(Default)]
struct State {
    functions: HashMap<String, FunctionQueue>,
    /// Workers alive across all functions.
    workers: usize,
    /// Jobs taken by a worker and not yet finished.
    /// Jobs held by a worker, with how many (two, briefly, when a job whose lease ran out in
    /// the store is handed out again while its old attempt still runs here).
    running: HashMap<JobId, u32>,
}

/// One function's window of ready jobs, its workers and its pace.
struct FunctionQueue {
    /// Jobs ready to start, in dispatch order.
    ready: keys::Ready,
    /// Workers draining `ready` now.
    workers: usize,
    /// Attempts running now.
    running: usize,
    /// The function's `max_concurrency`.
    limit: usize,
    /// Paused: it starts nothing (its running attempts finish).
    paused: bool,
    /// Time between two attempt starts (`rate_per_second`), if limited.
    interval: Option<Duration>,
    /// When the next attempt may start under that rate (reserved when a worker takes a job).
    next_start: tokio::time::Instant,
    /// When the last attempt actually started under that rate.
    last_start: Option<tokio::time::Instant>,
    /// Cancels this function's running attempts (force delete).
    cancel: CancellationToken,
    /// False once deleted (kept so its exiting workers find their counts).
    deployed: bool,
    /// Signalled when a job leaves the window (room for another lease).
    room: Arc<Notify>,
    /// Its concurrency keys' limits and what each runs.
    keys: keys::Keys,
    /// Its circuit breaker.
    breaker: breaker::Breaker,
    /// Signalled when its rate changes: workers waiting on a start reserved under the old
    /// rate start now (a rate lifted or raised takes effect at once).
    repaced: Arc<Notify>,
    /// A worker waits for the open breaker's cool-down to end (the others retired).
    breaker_waiter: bool,
    /// The attempt that probes the half-open breaker, while it runs.
    probe: Option<JobId>,
    /// The breaker closed: workers retired while it was open are started again.
    respawn: bool,
    /// Stops the task leasing this function's jobs (deleted).
    leasing: CancellationToken,
}

impl Scheduler {
    /// A scheduler running at most `slots` sandboxes at once, host-wide.
    pub fn new(
        store: Arc<dyn Backend>,
        runtime: Arc<Runtime>,
        slots: u32,
        sandboxes: tokio::runtime::Handle,
        tracer: crate::trace::Tracer,
    ) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                tracer,
                sandboxes,
                blobs: Arc::new(crate::runtime::StoreReads(store.clone())),
                kv: Arc::new(crate::runtime::StoreReads(store.clone())),
                store,
                runtime,
                state: Mutex::new(State::default()),
                slots: Arc::new(Semaphore::new(slots as usize)),
                stopping: AtomicBool::new(false),
                abort_all: CancellationToken::new(),
                stop_starting: CancellationToken::new(),
                worker_exited: Notify::new(),
                leasing: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    /// Queues leased jobs and starts workers for them, up to each function's limit.
    fn enqueue(&self, jobs: Vec<QueuedJob>) {
        if jobs.is_empty() || self.inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.inner.state.lock();
        let mut touched: Vec<String> = Vec::new();
        for job in jobs {
            // A job of a function deleted meanwhile is cancelled in the store: drop it.
            let Some(queue) = state
                .functions
                .get_mut(&job.function)
                .filter(|q| q.deployed)
            else {
                continue;
            };
            if touched.last() != Some(&job.function) {
                touched.push(job.function.clone());
            }
            queue.ready.insert(job);
        }
        for name in touched {
            self.spawn_workers(&mut state, &name);
        }
    }

    /// A function was deployed (or loaded at start-up), its settings changed, or it was paused
    /// or resumed: apply its concurrency limit, rate and pause; a new function gets its window
    /// of the ready queue.
    pub fn function_updated(&self, name: &str) {
        let Some(code) = self.inner.runtime.function(name) else {
            return;
        };
        let settings = code.record.settings;
        let mut state = self.inner.state.lock();
        let queue = state
            .functions
            .entry(name.to_string())
            .or_insert_with(FunctionQueue::new);
        let new = !queue.deployed;
        queue.deployed = true;
        queue.limit = settings.max_concurrency as usize;
        queue.paused = code.record.paused;
        let interval = settings
            .rate_per_second
            .map(|r| Duration::from_secs_f64(1.0 / r as f64));
        if interval != queue.interval {
            // Starts reserved under the old rate are taken again under the new one.
            queue.interval = interval;
            queue.next_start = tokio::time::Instant::now();
            queue.last_start = None;
            queue.repaced.notify_waiters();
        }
        queue.keys.configure(
            settings.key_concurrency,
            settings.key_rate_per_second,
            code.record.key_weights.clone(),
        );
        queue
            .breaker
            .configure(settings.breaker_failures, settings.breaker_cooldown_ms);
        self.spawn_workers(&mut state, name);
        if new {
            leasing::queue_leasing(&mut state, name, self);
        }
    }

    /// A function was deleted (its unfinished jobs are already cancelled in the store): drop its
    /// window and cancel its running attempts.
    pub fn function_removed(&self, name: &str) {
        let mut state = self.inner.state.lock();
        if let Some(queue) = state.functions.get_mut(name) {
            queue.deployed = false;
            queue.ready.clear();
            queue.cancel.cancel();
            queue.cancel = CancellationToken::new();
            queue.leasing.cancel();
        }
    }

    /// Attempts of `function` running now.
    pub fn running_in(&self, function: &str) -> usize {
        self.inner
            .state
            .lock()
            .functions
            .get(function)
            .map_or(0, |q| q.running)
    }

    /// True while a worker holds the job (its attempt is starting or running).
    pub fn is_running(&self, id: JobId) -> bool {
        self.inner.state.lock().running.contains_key(&id)
    }

    /// The function's circuit breaker as stats show it (`None`: not loaded here).
    pub fn breaker(&self, function: &str) -> Option<serde_json::Value> {
        let state = self.inner.state.lock();
        let queue = state.functions.get(function)?;
        Some(queue.breaker.to_json(tokio::time::Instant::now()))
    }

    /// Per function: whether its breaker holds starts back, and how often it opened.
    pub fn breakers(&self) -> Vec<(String, bool, u64)> {
        let state = self.inner.state.lock();
        let mut out: Vec<_> = state
            .functions
            .iter()
            .filter(|(_, q)| q.deployed)
            .map(|(name, q)| (name.clone(), q.breaker.is_open(), q.breaker.opened()))
            .collect();
        out.sort();
        out
    }

    /// Attempts held by workers right now, host-wide.
    pub fn running_count(&self) -> usize {
        self.inner.state.lock().running.len()
    }

    /// A queued job was cancelled in the store: drop it from its function's window.
    pub fn forget(&self, function: &str, id: JobId) {
        let mut state = self.inner.state.lock();
        let Some(queue) = state.functions.get_mut(function) else {
            return;
        };
        if let Some(key) = queue.ready.place_of(id) {
            queue.ready.remove(&key);
            drop(state);
            self.inner.release(function);
        }
    }

    /// Jobs waiting for a slot, per function (what this process holds in memory).
    pub fn backlog(&self) -> HashMap<String, (usize, usize)> {
        let state = self.inner.state.lock();
        state
            .functions
            .iter()
            .map(|(k, q)| (k.clone(), (q.ready.len(), q.workers)))
            .collect()
    }

    /// Stops starting attempts, waits up to `grace` for running ones, then cancels the rest
    /// (they stay durable as `running` and are queued again at the next start).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.stop_starting.cancel();
        // Leasing stops at once (a lease dropped unanswered gives its jobs back).
        self.inner.leasing.close();
        self.inner.leasing.wait().await;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let exited = self.inner.worker_exited.notified();
            if self.inner.state.lock().workers == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, exited).await.is_err() {
                break;
            }
        }
        tracing::warn!(
            "grace period over: cancelling running attempts; they run again at the next start"
        );
        self.inner.abort_all.cancel();
        // Cancelled workers exit at once; wait for them so nothing runs past shutdown.
        loop {
            let exited = self.inner.worker_exited.notified();
            if self.inner.state.lock().workers == 0 {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), exited).await;
        }
    }

    fn spawn_workers(&self, state: &mut State, name: &str) {
        self.inner.spawn_workers(state, name);
    }
}

impl Inner {
    /// Starts workers for `name`'s ready jobs, up to its limit.
    fn spawn_workers(self: &Arc<Self>, state: &mut State, name: &str) {
        let Some(queue) = state.functions.get_mut(name) else {
            return;
        };
        if queue.paused {
            return;
        }
        let wanted = queue.limit.min(queue.workers + queue.ready.len());
        let mut spawned = 0;
        while queue.workers < wanted {
            queue.workers += 1;
            spawned += 1;
            let inner = self.clone();
            let cancel = queue.cancel.clone();
            let name = name.to_string();
            self.sandboxes
                .spawn(async move { inner.work(name, cancel).await });
        }
        state.workers += spawned;
    }

    /// One worker: runs the function's ready jobs one after another until none is left.
    async fn work(self: Arc<Self>, function: String, mut cancel: CancellationToken) {
        loop {
            let (job, start_at) = match self.next_job(&function, &mut cancel) {
                Next::Job(job, start_at) => (job, start_at),
                Next::Retire => break,
                Next::WaitForBreaker(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = cancel.cancelled() => {}
                        _ = self.stop_starting.cancelled() => {}
                    }
                    if let Some(q) = self.state.lock().functions.get_mut(&function) {
                        q.breaker_waiter = false;
                    }
                    continue;
                }
            };
            // A job whose function was deleted is already cancelled in the store: skip it.
            let Some(mut code) = self.runtime.function(&function) else {
                self.done(&job, true);
                continue;
            };
            // Another host deployed a newer version: this host's copy follows within moments
            // (see `functions`); the attempt waits for it rather than run the old code.
            if let Some(current) = self.store.catalog_version(&function)
                && current > code.record.version
            {
                code = self.newer_code(&function, current).await.unwrap_or(code);
            }
            // Paced by the function's rate limit (the start time was reserved under the lock).
            let mut batch = vec![job];
            if let Some(at) = start_at {
                let repaced = self.repaced(&function);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = repaced.notified() => {}
                    _ = cancel.cancelled() => { self.done_all(&batch); continue; }
                    _ = self.stop_starting.cancelled() => { self.done_all(&batch); continue; }
                }
            }
            // A batch function: more of its ready jobs join this one, for a while.
            self.gather(&function, &code, &mut batch, &cancel).await;
            let _slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the slot semaphore is never closed");
            // A rate shared by several hosts: the cluster's reservation, taken with the slot in
            // hand, so the start follows the time reserved.
            if let Some(at) = self.shared_pace(&function).await {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = cancel.cancelled() => { self.done_all(&batch); continue; }
                    _ = self.stop_starting.cancelled() => { self.done_all(&batch); continue; }
                }
            }
            // The reservation above paces without holding a slot; this makes the actual starts
            // at least one interval apart even when a worker was slow to get its slot.
            if let Some(at) = self.pace(&function) {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = cancel.cancelled() => { self.done_all(&batch); continue; }
                    _ = self.stop_starting.cancelled() => { self.done_all(&batch); continue; }
                }
            }
            let held = self.attempt(&code, &batch, &cancel).await;
            for (job, held) in batch.iter().zip(held) {
                self.done(job, held);
            }
            // A breaker that just closed retired every worker but this one: back to full.
            let mut state = self.state.lock();
            if let Some(queue) = state.functions.get_mut(&function)
                && std::mem::take(&mut queue.respawn)
            {
                self.spawn_workers(&mut state, &function);
            }
        }
        self.worker_exited.notify_waiters();
    }

    /// `function`'s code once this host has loaded `version` or later (10 s at most).
    async fn newer_code(
        &self,
        function: &str,
        version: u32,
    ) -> Option<Arc<crate::runtime::LoadedFunction>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            match self.runtime.function(function) {
                Some(code) if code.record.version >= version => return Some(code),
                None => return None,
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        tracing::warn!(function, version, "version not loaded here within 10 s; running the one loaded");
        None
    }

    /// Under a rate limit kept by a store several hosts share: when this attempt may start by
    /// the store's reservation. A store that cannot answer leaves the host's own pacing alone
    /// (logged): the rate then holds per host.
    async fn shared_pace(&self, function: &str) -> Option<tokio::time::Instant> {
        let interval = self.state.lock().functions.get(function)?.interval?;
        match self.store.reserve_start(function, interval).await {
            Ok(Some(at_us)) => {
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                let wait = Duration::from_micros(at_us.saturating_sub(now_us));
                (!wait.is_zero()).then(|| tokio::time::Instant::now() + wait)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(function, error = %e, "the shared start rate was not reserved; pacing on this host only");
                None
            }
        }
    }

    /// Under a rate limit: when this attempt may actually start (at least one interval after the
    /// function's previous start), if that is later than now.
    fn pace(&self, function: &str) -> Option<tokio::time::Instant> {
        let mut state = self.state.lock();
        let queue = state.functions.get_mut(function)?;
        let interval = queue.interval?;
        let now = tokio::time::Instant::now();
        let at = queue
            .last_start
            .map_or(now, |last| (last + interval).max(now));
        queue.last_start = Some(at);
        (at > now).then_some(at)
    }

    /// A job left the scheduler (its finish is on its way to the store): its room in the
    /// function's window goes back to the store. `held`: the worker still counts as holding
    /// the job (it let go already when its attempt ended).
    fn done(&self, job: &QueuedJob, held: bool) {
        let function = job.function.as_str();
        let deployed = {
            let mut state = self.state.lock();
            if held {
                release_hold(&mut state.running, job.id);
            }
            match state.functions.get_mut(function) {
                Some(queue) => {
                    queue.running = queue.running.saturating_sub(1);
                    // A probe that never reported lets another probe.
                    if queue.probe == Some(job.id) {
                        queue.probe = None;
                        queue.breaker.probe_dropped();
                    }
                    queue
                        .keys
                        .ended(job.concurrency_key.as_deref(), tokio::time::Instant::now());
                    queue.deployed
                }
                None => false,
            }
        };
        if deployed {
            self.release(function);
        }
    }

    /// What signals a change of `function`'s rate.
    fn repaced(&self, function: &str) -> Arc<Notify> {
        self.state
            .lock()
            .functions
            .get(function)
            .map_or_else(|| Arc::new(Notify::new()), |q| q.repaced.clone())
    }

    /// Jobs taken for an attempt that will not start (cancelled, or the host stops).
    fn done_all(&self, jobs: &[QueuedJob]) {
        for job in jobs {
            self.done(job, true);
        }
    }

    /// For a function that takes batches (`batch.max_size` above 1, a component with
    /// `handle-batch`): adds its ready jobs of the first job's concurrency key to `batch` until
    /// it is full or `batch.max_wait_ms` passed since the first, each counted as taken like
    /// the first.
    async fn gather(
        &self,
        function: &str,
        code: &crate::runtime::LoadedFunction,
        batch: &mut Vec<QueuedJob>,
        cancel: &CancellationToken,
    ) {
        let settings = code.record.settings;
        let Some(max) = settings.batch_max_size.filter(|n| *n > 1 && code.takes_batches()) else {
            return;
        };
        let max = max as usize;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(settings.batch_max_wait_ms.unwrap_or(0));
        loop {
            self.take_more(function, max, batch);
            if batch.len() >= max || tokio::time::Instant::now() >= deadline {
                return;
            }
            let next = (tokio::time::Instant::now() + Duration::from_millis(5)).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = cancel.cancelled() => return,
                _ = self.stop_starting.cancelled() => return,
            }
        }
    }

    /// Moves ready jobs of `function` that may start now into `batch`, up to `max` in all.
    fn take_more(&self, function: &str, max: usize, batch: &mut Vec<QueuedJob>) {
        let mut state = self.state.lock();
        let State {
            functions, running, ..
        } = &mut *state;
        let Some(queue) = functions.get_mut(function) else {
            return;
        };
        let now = tokio::time::Instant::now();
        // Only jobs of the first one's concurrency key: tenants never share a sandbox call.
        let key = batch[0].concurrency_key.clone();
        while batch.len() < max && !queue.paused && !self.stopping.load(Ordering::Relaxed) {
            if !queue.keys.may_start(key.as_deref(), now) {
                return;
            }
            let Some(place) = queue.ready.first_of_key(key.as_deref()) else {
                return;
            };
            let Some(job) = queue.ready.remove(&place) else {
                return;
            };
            queue.running += 1;
            queue.keys.started(job.concurrency_key.as_deref(), now);
            *running.entry(job.id).or_default() += 1;
            batch.push(job);
        }
    }

    /// One more job of `function` fits in the scheduler: its leasing task may ask for more.
    fn release(&self, function: &str) {
        if let Some(queue) = self.state.lock().functions.get(function) {
            queue.room.notify_one();
        }
    }

    /// The worker's next job. When there is none (or the worker must stop), the worker is
    /// retired under the same lock, so an `enqueue` racing with it never counts a worker that is
    /// about to leave and always starts a new one for its job.
    ///
    /// Also returns when the attempt may start under the function's rate limit, if later than
    /// now. While the function's breaker is open, one worker waits for the cool-down to end.
    fn next_job(&self, function: &str, cancel: &mut CancellationToken) -> Next {
        let mut state = self.state.lock();
        let stopping = self.stopping.load(Ordering::Relaxed);
        if let Some(queue) = state.functions.get_mut(function) {
            // A lowered limit retires the surplus workers.
            let now = tokio::time::Instant::now();
            if !stopping
                && !queue.paused
                && queue.workers <= queue.limit
                && let Some((place, key_start)) = queue.keys.pick(&queue.ready, now)
            {
                let probe = match queue.breaker.gate(now) {
                    breaker::Gate::Pass => false,
                    breaker::Gate::Probe => true,
                    breaker::Gate::Closed(Some(until)) if !queue.breaker_waiter => {
                        queue.breaker_waiter = true;
                        return Next::WaitForBreaker(until);
                    }
                    breaker::Gate::Closed(_) => {
                        queue.workers -= 1;
                        state.workers -= 1;
                        return Next::Retire;
                    }
                };
                let job = queue.ready.remove(&place).expect("picked from the window");
                if probe {
                    queue.probe = Some(job.id);
                }
                *cancel = queue.cancel.clone();
                queue.running += 1;
                queue.keys.started(job.concurrency_key.as_deref(), now);
                let start_at = queue.interval.map(|interval| {
                    let at = queue.next_start.max(key_start.unwrap_or(now));
                    queue.next_start = at + interval;
                    at
                });
                *state.running.entry(job.id).or_default() += 1;
                return Next::Job(job, start_at.or(key_start));
            }
            queue.workers -= 1;
        }
        state.workers -= 1;
        Next::Retire
    }
}

impl FunctionQueue {
    fn new() -> Self {
        FunctionQueue {
            ready: keys::Ready::default(),
            workers: 0,
            running: 0,
            limit: 1,
            paused: false,
            interval: None,
            next_start: tokio::time::Instant::now(),
            last_start: None,
            cancel: CancellationToken::new(),
            deployed: false,
            room: Arc::new(Notify::new()),
            leasing: CancellationToken::new(),
            keys: keys::Keys::default(),
            breaker: breaker::Breaker::default(),
            repaced: Arc::new(Notify::new()),
            breaker_waiter: false,
            probe: None,
            respawn: false,
        }
    }
}

/// What a worker does next.
enum Next {
    /// Run this job (not before the time given).
    Job(QueuedJob, Option<tokio::time::Instant>),
    /// Wait for the open breaker's cool-down to end, then ask again.
    WaitForBreaker(tokio::time::Instant),
    /// Leave (counted out already).
    Retire,
}

/// One worker lets go of a job it held.
fn release_hold(running: &mut HashMap<JobId, u32>, id: JobId) {
    if let Some(n) = running.get_mut(&id) {
        *n -= 1;
        if *n == 0 {
            running.remove(&id);
        }
    }
}
