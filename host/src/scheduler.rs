//! The scheduler moves durable, queued jobs into sandboxes: per function a FIFO of ready jobs and
//! at most `max_concurrency` workers draining it, all sharing one host-wide pool of sandbox slots.
//!
//! It owns no durable state. It learns about jobs from the store's commit feed (and from recovery
//! at start-up), tells the store when an attempt starts and how it ended, and relies on the
//! store's fencing (attempt numbers and statuses) so a stale or cancelled attempt changes nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::job::{AttemptReport, FailureKind, JobId, Outcome, QueuedJob, now_ms};
use crate::runtime::Runtime;
use crate::store::{CommitFeed, Store};

/// How long an attempt runs before its start is committed (and `running` shows). Shorter
/// attempts skip that commit: their start is recorded with their end.
const START_VISIBLE_AFTER: Duration = Duration::from_millis(20);

/// How far past its `timeout_ms` an attempt's lease reaches.
const LEASE_GRACE: Duration = Duration::from_secs(2);

/// Hands queued jobs to sandboxes. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where attempts run: threads of lower OS priority than the API and the writer, so a burst
    /// of events never delays accepting (and answering) requests.
    sandboxes: tokio::runtime::Handle,
    store: Arc<Store>,
    runtime: Arc<Runtime>,
    /// Ready jobs and workers per function.
    state: Mutex<State>,
    /// Host-wide sandbox slots: the pooling allocator's size, never exceeded.
    slots: Arc<Semaphore>,
    /// Set at shutdown: workers finish their attempt and take no new job.
    stopping: AtomicBool,
    /// Cancels every running attempt (shutdown after the grace period).
    abort_all: CancellationToken,
    /// Signalled whenever a worker exits.
    worker_exited: Notify,
}

#[derive(Default)]
struct State {
    functions: HashMap<String, FunctionQueue>,
    /// Workers alive across all functions.
    workers: usize,
    /// Jobs taken by a worker and not yet finished.
    running: HashSet<JobId>,
}

/// One function's ready jobs and workers.
struct FunctionQueue {
    /// Jobs ready to start, oldest first.
    ready: VecDeque<QueuedJob>,
    /// Workers draining `ready` now.
    workers: usize,
    /// The function's `max_concurrency`.
    limit: usize,
    /// Cancels this function's running attempts (force delete).
    cancel: CancellationToken,
}

impl Scheduler {
    /// A scheduler running at most `slots` sandboxes at once, host-wide.
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        slots: u32,
        sandboxes: tokio::runtime::Handle,
    ) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                sandboxes,
                store,
                runtime,
                state: Mutex::new(State::default()),
                slots: Arc::new(Semaphore::new(slots as usize)),
                stopping: AtomicBool::new(false),
                abort_all: CancellationToken::new(),
                worker_exited: Notify::new(),
            }),
        }
    }

    /// Feeds jobs from the store's commits until the store closes.
    pub async fn consume(self, mut feed: CommitFeed) {
        while let Some(jobs) = feed.recv().await {
            self.enqueue(jobs);
        }
    }

    /// Queues durable jobs and starts workers for them, up to each function's limit.
    pub fn enqueue(&self, jobs: Vec<QueuedJob>) {
        if jobs.is_empty() || self.inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.inner.state.lock();
        let mut touched: Vec<String> = Vec::new();
        for job in jobs {
            let queue = match state.functions.get_mut(&job.function) {
                Some(q) => q,
                None => {
                    let limit = self.limit_of(&job.function);
                    state
                        .functions
                        .entry(job.function.clone())
                        .or_insert_with(|| FunctionQueue::new(limit))
                }
            };
            if touched.last() != Some(&job.function) {
                touched.push(job.function.clone());
            }
            queue.ready.push_back(job);
        }
        for name in touched {
            self.spawn_workers(&mut state, &name);
        }
    }

    /// A function was deployed or its settings changed: apply its new concurrency limit.
    pub fn function_updated(&self, name: &str) {
        let limit = self.limit_of(name);
        let mut state = self.inner.state.lock();
        state
            .functions
            .entry(name.to_string())
            .or_insert_with(|| FunctionQueue::new(limit))
            .limit = limit;
        self.spawn_workers(&mut state, name);
    }

    /// A function was deleted (its pending jobs are already cancelled in the store): drop its
    /// queue and cancel its running attempts.
    pub fn function_removed(&self, name: &str) {
        let mut state = self.inner.state.lock();
        if let Some(queue) = state.functions.get_mut(name) {
            queue.ready.clear();
            queue.cancel.cancel();
            queue.cancel = CancellationToken::new();
        }
    }

    /// True while a worker holds the job (its attempt is starting or running).
    pub fn is_running(&self, id: JobId) -> bool {
        self.inner.state.lock().running.contains(&id)
    }

    /// Attempts held by workers right now, host-wide.
    pub fn running_count(&self) -> usize {
        self.inner.state.lock().running.len()
    }

    /// A queued job was cancelled in the store: drop it from its function's ready queue.
    pub fn forget(&self, function: &str, id: JobId) {
        let mut state = self.inner.state.lock();
        if let Some(queue) = state.functions.get_mut(function) {
            queue.ready.retain(|job| job.id != id);
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

    fn limit_of(&self, name: &str) -> usize {
        self.inner
            .runtime
            .function(name)
            .map_or(1, |f| f.record.settings.max_concurrency as usize)
    }

    fn spawn_workers(&self, state: &mut State, name: &str) {
        let Some(queue) = state.functions.get_mut(name) else {
            return;
        };
        let wanted = queue.limit.min(queue.workers + queue.ready.len());
        let mut spawned = 0;
        while queue.workers < wanted {
            queue.workers += 1;
            spawned += 1;
            let inner = self.inner.clone();
            let cancel = queue.cancel.clone();
            let name = name.to_string();
            self.inner
                .sandboxes
                .spawn(async move { inner.work(name, cancel).await });
        }
        state.workers += spawned;
    }
}

impl Inner {
    /// One worker: runs the function's ready jobs one after another until none is left.
    async fn work(self: Arc<Self>, function: String, mut cancel: CancellationToken) {
        while let Some(job) = self.next_job(&function, &mut cancel) {
            // A job whose function was deleted is already cancelled in the store: skip it.
            let Some(code) = self.runtime.function(&function) else {
                self.state.lock().running.remove(&job.id);
                continue;
            };
            let _slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("the slot semaphore is never closed");
            let attempt = job.attempts + 1;
            let started_at = now_ms();
            let timeout = Duration::from_millis(code.record.settings.timeout_ms);
            // The runtime stops the attempt at its timeout; the lease is the backstop should
            // it not (a host call that never returns): the attempt is dropped, its slot freed,
            // and the job handed out again as a failed attempt.
            let lease = timeout + LEASE_GRACE;
            let lease_until = started_at + lease.as_millis() as u64;
            let run = tokio::time::timeout(lease, self.runtime.run(&code, &job, attempt));
            tokio::pin!(run);
            let expired = |at: u64| AttemptReport {
                outcome: Outcome::Failed {
                    kind: FailureKind::Timeout,
                    message: format!(
                        "lease expired after {} ms: the attempt was cancelled and the job handed out again",
                        lease.as_millis()
                    ),
                },
                log: String::new(),
                started_at,
                finished_at: at,
            };
            // Short attempts go from queued to terminal in one commit; `running` is recorded
            // (and visible) only for attempts still running after START_VISIBLE_AFTER.
            let report = tokio::select! {
                report = tokio::time::timeout(START_VISIBLE_AFTER, &mut run) => match report {
                    Ok(report) => Some(report),
                    Err(_) => {
                        self.store.start(job.id, attempt, started_at, lease_until);
                        tokio::select! {
                            report = &mut run => Some(report),
                            _ = cancel.cancelled() => None,
                            _ = self.abort_all.cancelled() => None,
                        }
                    }
                },
                _ = cancel.cancelled() => None,
                _ = self.abort_all.cancelled() => None,
            };
            let report = report.map(|r| r.unwrap_or_else(|_| expired(now_ms())));
            if let Some(report) = report {
                self.store
                    .finish(job.id, attempt, report, code.record.settings.retry);
            }
            self.state.lock().running.remove(&job.id);
        }
        self.worker_exited.notify_waiters();
    }

    /// The worker's next job. When there is none (or the worker must stop), the worker is
    /// retired under the same lock, so an `enqueue` racing with it never counts a worker that is
    /// about to leave and always starts a new one for its job.
    fn next_job(&self, function: &str, cancel: &mut CancellationToken) -> Option<QueuedJob> {
        let mut state = self.state.lock();
        let stopping = self.stopping.load(Ordering::Relaxed);
        if let Some(queue) = state.functions.get_mut(function) {
            // A lowered limit retires the surplus workers.
            if !stopping
                && queue.workers <= queue.limit
                && let Some(job) = queue.ready.pop_front()
            {
                *cancel = queue.cancel.clone();
                state.running.insert(job.id);
                return Some(job);
            }
            queue.workers -= 1;
        }
        state.workers -= 1;
        None
    }
}

impl FunctionQueue {
    fn new(limit: usize) -> Self {
        FunctionQueue {
            ready: VecDeque::new(),
            workers: 0,
            limit,
            cancel: CancellationToken::new(),
        }
    }
}
