//! The store owns redb: every durable fact (functions, compiled artifacts, jobs) and every
//! write. Nothing else in the host imports redb.
//!
//! Files: `catalog.redb` holds what is deployed; jobs live in shard files (`jobs-N.redb`), each
//! with its own writer thread, so shards commit (and fsync) in parallel. A job's id names its
//! shard; a submit goes to the least busy shard.
//!
//! Writes are a small set of atomic domain operations (submit, start, finish, cancel-function
//! on a shard; deploy, save-artifact, remove-function on the catalog). A shard's writer batches
//! whatever is waiting into one `Durability::Immediate` commit (group commit). An awaited
//! operation is answered only after the commit that holds it: a `202 Accepted` always means
//! durable. After each commit the writer hands newly queued jobs to the scheduler's waiting
//! leases ([`Store::lease`]) and wakes long-polls waiting on jobs that became terminal.
//!
//! Reads open their own read transaction and see only committed state, so a status is never shown
//! before the commit that made it.
//!
//! Durable points: submit (job + pending index), start (status `running`, attempt number; only
//! for attempts that run longer than a moment), finish (terminal status, output, log, and the
//! start when it was not recorded), deploy (component, artifact, function), delete (function
//! removed, then its remaining jobs cancelled shard by shard).
//!
//! ## Layout
//! - `catalog`: what is deployed (functions, versions, components, artifacts, secrets);
//!   `deployed`: the store's operations on it.
//! - `shard`, `writer`, `ops`: one job file, the writer thread that owns its transactions, and
//!   the operations it applies.
//! - `machine`: the rules of a job's life as pure functions (fences, what an ending leads to);
//!   `intake`: new jobs (submit, admission, insertion); `transitions`: each later change of a
//!   job's state, applying them; `ordering` (ordering keys), `publish` (events
//!   and their deliveries), `outbox` (what a success emits, pipelines), `callbacks` (webhook
//!   delivery state), `blobs` (claim checks), `retention` (the sweeper).
//! - `txn`: the tables of one write transaction; `tables`, `legacy`: table definitions and
//!   encodings (and earlier job formats).
//! - `counts`, `asks`, `ids`: per-function counters, leases asked for, job ids.
//! - `kv`: functions' key-value state (in shard 0), committed with the success that wrote it.
//! - `errors`, `requests`: what operations take, answer and refuse.

mod apply;
mod asks;
mod blobs;
mod broken;
mod callbacks;
mod catalog;
mod check;
mod counts;
mod datafile;
mod dataset;
mod debounce;
mod deployed;
mod errors;
mod ids;
mod intake;
mod keys;
pub mod kv;
mod leases;
mod legacy;
mod machine;
pub mod nats;
mod ops;
mod ordering;
mod outbox;
mod publish;
mod reads;
mod requests;
mod retention;
mod seam;
mod secrets;
mod settle;
mod shard;
mod tables;
mod tally;
mod transitions;
mod txn;
mod versions;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::job::{AttemptReport, Job, JobId, QueuedJob};
use crate::manifest::RetryPolicy;
use catalog::Catalog;
pub use check::{FileCheck, check};
pub use counts::Counts;
pub use errors::*;
use ids::{MAX_SHARDS, shard_of};
pub use kv::KvVerdict;
use reads::Waiters;
pub(crate) use requests::AttemptStart;
pub use requests::*;
pub use seam::{Backend, Dispatch, FunctionCatalog, JobStore, Pending};
pub use secrets::{PutSecret, SealedSecret};
use shard::Shard;
pub use tables::{EventRecord, FunctionRecord};
pub use tally::{BUCKETS_MS, FunctionTally, Histogram};
use writer::{Op, Shared};

/// An ask waiting in [`Store::lease`]: dropped unanswered, it is retracted and gives back the
/// jobs handed to it meanwhile.
struct Ask<'a> {
    store: &'a Store,
    function: &'a str,
    number: u64,
    jobs: mpsc::UnboundedReceiver<Vec<QueuedJob>>,
    taken: bool,
}

impl Drop for Ask<'_> {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.store.asks.retract(self.function, self.number);
        let mut back: Vec<Vec<(JobId, String)>> = vec![Vec::new(); self.store.shards.len()];
        while let Ok(jobs) = self.jobs.try_recv() {
            for job in jobs {
                back[shard_of(job.id)].push((job.id, job.function));
            }
        }
        for (shard, jobs) in back.into_iter().enumerate() {
            if !jobs.is_empty() {
                self.store.shards[shard].send(Op::Unclaim { jobs });
            }
        }
    }
}

/// Jobs whose webhook callback is due, for the webhook sender.
pub type CallbackFeed = mpsc::UnboundedReceiver<Vec<JobId>>;

pub use callbacks::CallbackResult;

/// Dead letters redriven or purged per commit.
const DEAD_LETTER_BATCH: usize = 1000;

/// Rows a single listing request examines at most; it returns a cursor to continue.
const MAX_SCAN: usize = 10_000;

/// Counters of the writer's work, for `/metrics` and the benchmark.
#[derive(Default, Debug)]
pub struct StoreStats {
    /// Jobs accepted (committed submits).
    pub accepted: AtomicU64,
    /// Jobs that reached a terminal status (committed).
    pub finished: AtomicU64,
    /// Events published to topics (committed).
    pub published: AtomicU64,
    /// Failed attempts whose job was delayed for a retry.
    pub retried: AtomicU64,
    /// Jobs that ended `failed` or `dead` (entered a dead-letter queue).
    pub dead_lettered: AtomicU64,
    /// Expired jobs and idempotency keys deleted by the retention sweeper.
    pub swept: AtomicU64,
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Operations in those commits.
    pub ops: AtomicU64,
    /// Time spent applying operations (building the transaction), in microseconds.
    pub apply_us: AtomicU64,
    /// Time spent in `commit` (writing pages and fsync), in microseconds.
    pub commit_us: AtomicU64,
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// redb page cache, in bytes, shared out between the files.
    pub cache_bytes: usize,
    /// How long a busy writer waits to gather more operations into one commit.
    pub commit_delay: Duration,
    /// Job shards (files committing in parallel). A data directory keeps the shards it has:
    /// asking for fewer than exist opens them all.
    pub shards: usize,
    /// How long `succeeded` and `cancelled` jobs are kept before the sweeper deletes them.
    pub job_retention: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Host-wide budget of unfinished work (inputs plus a record's cost per job); beyond it
    /// submits get 429.
    pub max_queued_bytes: u64,
    /// Longest chain of jobs one request may cause; further jobs are dead-lettered.
    pub max_hops: u32,
    /// Payloads and outputs larger than this are stored once as blobs (claim checks).
    pub claim_check_bytes: usize,
    /// How failed webhook callbacks are retried.
    pub callback_retry: RetryPolicy,
    /// Most bytes one function's key-value state may hold (keys, values, a record's cost each).
    pub max_kv_bytes: u64,
}

/// Handle to the durable state. Cheap to share (`Arc`); reads run on the caller's thread,
/// writes go through the shards' writer threads (the catalog's rare writes run on a blocking
/// thread).
pub struct Store {
    /// What is deployed.
    catalog: Arc<Catalog>,
    /// The job files; a job's id names its shard.
    shards: Vec<Shard>,
    /// Where the next submit starts looking for the least busy shard.
    next_shard: AtomicUsize,
    /// Long-polls waiting for a job to become terminal.
    waiters: Arc<Waiters>,
    /// What the writers have done so far.
    stats: Arc<StoreStats>,
    /// Per-function outcomes and timings since start.
    tallies: Arc<tally::Tallies>,
    /// The callback sender's feed of due callbacks, until taken.
    callbacks: parking_lot::Mutex<Option<CallbackFeed>>,
    /// Leases asked for and not yet answered.
    asks: Arc<asks::Asks>,
    /// Unfinished input bytes, all shards together.
    queued_bytes: Arc<AtomicU64>,
    /// Blobs stored, and their bytes, all shards together.
    blob_totals: Arc<BlobTotals>,
}

/// Blobs stored and their bytes (maintained by the writers after each commit).
#[derive(Default, Debug)]
pub struct BlobTotals {
    /// Blobs stored.
    pub count: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
}

impl Store {
    /// Opens (or creates) the catalog and the job shards in `data_dir`, requeues jobs the
    /// previous process left running, and starts one writer thread per shard.
    pub fn open(data_dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let path_of = |n| shard_path(data_dir, n);
        let catalog_path = data_dir.join("catalog.redb");
        dataset::check_catalog(data_dir, &catalog_path, path_of, MAX_SHARDS)?;
        let wanted = options.shards.clamp(1, MAX_SHARDS);
        // The cache is split between the files; the count is known once the catalog is read.
        let present = (0..MAX_SHARDS).filter(|n| path_of(*n).exists()).count();
        let cache = options.cache_bytes / (wanted.max(present) + 1);
        let catalog = Arc::new(Catalog::open(&catalog_path, cache)?);
        let dataset = dataset::settle(&catalog.db, data_dir, path_of, MAX_SHARDS, wanted, true)?;
        let count = dataset.shards;
        let (callbacks_tx, callbacks) = mpsc::unbounded_channel();
        let shared = Shared {
            waiters: Arc::new(Waiters::default()),
            stats: Arc::new(StoreStats::default()),
            deployed: catalog.deployed().clone(),
            // Every deployed function may have ready jobs left from before the start.
            asks: Arc::new(asks::Asks::new(count, catalog.deployed().names())),
            queued_bytes: Arc::new(AtomicU64::new(0)),
            unfinished: Arc::default(),
            blob_totals: Arc::default(),
            callbacks: callbacks_tx,
            tallies: Arc::default(),
        };
        let mut shards = Vec::with_capacity(count);
        for n in 0..count {
            shards.push(Shard::open(
                n,
                &shard_path(data_dir, n),
                &dataset,
                cache,
                options,
                shared.clone(),
            )?);
        }
        dataset::record(&catalog.db, &dataset)?;
        let store = Store {
            catalog,
            shards,
            next_shard: AtomicUsize::new(0),
            waiters: shared.waiters,
            stats: shared.stats,
            tallies: shared.tallies,
            asks: shared.asks,
            queued_bytes: shared.queued_bytes,
            blob_totals: shared.blob_totals,
            callbacks: parking_lot::Mutex::new(Some(callbacks)),
        };
        Ok(store)
    }

    /// Due webhook callbacks, for the sender (at start-up: those a previous process left).
    /// Taken once.
    pub fn take_callbacks(&self) -> Option<CallbackFeed> {
        self.callbacks.lock().take()
    }

    /// Leases up to `max` ready jobs of `function`, in dispatch order (highest priority first,
    /// then oldest), waiting until there is at least one. At start-up this includes the jobs
    /// the previous process left queued or running. A job leased is not handed out again until
    /// its attempt ends (or its lease runs out once started); dropping the future before it is
    /// answered gives back whatever it was handed.
    pub async fn lease(&self, function: &str, max: usize) -> Vec<QueuedJob> {
        let asked = self.asks.register(function, max.max(1));
        for shard in asked.poke {
            self.shards[shard].send(Op::Refill);
        }
        let mut ask = Ask {
            store: self,
            function,
            number: asked.number,
            jobs: asked.jobs,
            taken: false,
        };
        let mut leased = ask.jobs.recv().await.unwrap_or_default();
        self.asks.retract(function, ask.number);
        // Jobs another shard handed out before the retraction came with this answer.
        while let Ok(more) = ask.jobs.try_recv() {
            leased.extend(more);
        }
        ask.taken = true;
        leased
    }

    /// The shard holding a job, if the id names one of ours.
    fn shard(&self, id: JobId) -> Option<&Shard> {
        self.shards.get(shard_of(id))
    }

    /// The shard a new job goes to: the one with the fewest operations waiting for a commit.
    fn least_busy(&self) -> &Shard {
        let start = self.next_shard.fetch_add(1, Relaxed);
        let n = self.shards.len();
        (0..n)
            .map(|i| &self.shards[(start + i) % n])
            .min_by_key(|s| s.load())
            .expect("the store has at least one shard")
    }

    /// Accepts jobs of one function together (one commit), or none of them.
    pub async fn submit_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, SubmitError> {
        // Jobs with ordering keys go to their key's shard (a batch carries at most one key).
        let n = self.shards.len();
        let ordered = jobs
            .iter()
            .find_map(|j| j.ordering_key.as_deref().map(|k| (j.function.as_str(), k)));
        let limited = jobs
            .iter()
            .find_map(|j| j.concurrency_key.as_deref().map(|k| (j.function.as_str(), k)));
        let shard = match (ordered, limited) {
            (Some((function, key)), _) => &self.shards[ordering_shard(function, key, n)],
            (None, Some((function, key))) => &self.shards[concurrency_shard(function, key, n)],
            (None, None) => self.least_busy(),
        };
        shard.call(|reply| Op::SubmitBatch { jobs, reply }).await?
    }

    /// Publishes events to their topics: each event and one delivery job per matching
    /// subscriber, all in one durable commit (on one shard), or nothing (429 when the host's
    /// budget cannot take every delivery). Deliveries do not count against a subscriber's
    /// `max_queued`.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<Published>, SubmitError> {
        self.least_busy()
            .call(|reply| Op::Publish { events, reply })
            .await?
    }

    /// Accepts a job: answers once it is durable. A job with an ordering key goes to the shard
    /// the key names (its key's queue lives there); else one with an idempotency key goes to
    /// the shard that key names, where the key's record lives.
    pub async fn submit(&self, job: NewJob) -> Result<Submitted, SubmitError> {
        let n = self.shards.len();
        let f = job.function.as_str();
        let shard = if let Some(key) = &job.ordering_key {
            &self.shards[ordering_shard(f, key, n)]
        } else if let Some(key) = &job.debounce_key {
            // The key's waiting job is on this shard (an idempotency key is looked up here too).
            &self.shards[key_shard(f, &format!("\0debounce\0{key}"), n)]
        } else if let Some(key) = &job.idempotency {
            &self.shards[key_shard(f, &key.key, n)]
        } else if let Some(key) = &job.concurrency_key {
            &self.shards[concurrency_shard(f, key, n)]
        } else {
            self.least_busy()
        };
        shard.call(|reply| Op::Submit { job, reply }).await?
    }

    /// Records that `attempt` of a queued job started at `at` on function `version` and holds
    /// its lease until `lease_until` (fenced: ignored unless the job is queued with
    /// `attempt - 1` attempts). Not awaited: the attempt runs while the commit happens.
    pub fn start(&self, id: JobId, attempt: u32, at: u64, lease_until: u64, version: u32) {
        if let Some(shard) = self.shard(id) {
            shard.send(Op::Start {
                id,
                start: AttemptStart {
                    attempt,
                    at,
                    lease_until,
                    version,
                },
            });
        }
    }

    /// Extends the lease of `attempt` of job `id` to `lease_until` (while the attempt runs).
    pub fn renew(&self, id: JobId, attempt: u32, lease_until: u64) {
        if let Some(shard) = self.shard(id) {
            shard.send(Op::Renew {
                id,
                attempt,
                lease_until,
            });
        }
    }

    /// Records how `attempt` ended (fenced: ignored unless the job is running that attempt); a
    /// failure is retried under `retry`.
    pub fn finish(&self, id: JobId, attempt: u32, report: AttemptReport, retry: RetryPolicy) {
        if let Some(shard) = self.shard(id) {
            shard.send(Op::Finish {
                id,
                attempt,
                report,
                retry,
            });
        }
    }

    /// Records how a webhook delivery attempt of job `id` went (not awaited).
    pub fn callback_done(&self, id: JobId, result: CallbackResult) {
        if let Some(shard) = self.shard(id) {
            shard.send(Op::CallbackDone { id, result });
        }
    }

    /// Cancels a `queued` or `delayed` job; returns it as committed.
    pub async fn cancel(&self, id: JobId) -> Result<Job, CancelError> {
        let shard = self.shard(id).ok_or(CancelError::NotFound(id))?;
        shard.call(|reply| Op::Cancel { id, reply }).await?
    }

    /// Moves dead letters of `function` back to `queued` (same ids, attempts counted from zero);
    /// returns the jobs redriven.
    pub async fn redrive(
        &self,
        function: &str,
        which: DeadLetterSelection,
    ) -> Result<Vec<JobId>, StoreError> {
        self.each_dead_letter_batch(function, which, |function, ids, limit, reply| Op::Redrive {
            function,
            ids,
            limit,
            reply,
        })
        .await
    }

    /// Deletes dead letters of `function` for good; returns the jobs purged.
    pub async fn purge(
        &self,
        function: &str,
        which: DeadLetterSelection,
    ) -> Result<Vec<JobId>, StoreError> {
        self.each_dead_letter_batch(function, which, |function, ids, limit, reply| Op::Purge {
            function,
            ids,
            limit,
            reply,
        })
        .await
    }

    /// Runs a dead-letter operation on every shard involved, in commits of at most
    /// [`DEAD_LETTER_BATCH`] jobs, so "all" never builds one huge transaction.
    async fn each_dead_letter_batch(
        &self,
        function: &str,
        which: DeadLetterSelection,
        op: impl Fn(
            String,
            Option<Vec<JobId>>,
            usize,
            oneshot::Sender<Result<Vec<JobId>, StoreError>>,
        ) -> Op,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut done = Vec::new();
        match which {
            DeadLetterSelection::Ids(ids) => {
                let mut by_shard: HashMap<usize, Vec<JobId>> = HashMap::new();
                for id in ids {
                    if shard_of(id) < self.shards.len() {
                        by_shard.entry(shard_of(id)).or_default().push(id);
                    }
                }
                for (n, ids) in by_shard {
                    for chunk in ids.chunks(DEAD_LETTER_BATCH) {
                        let chunk = Some(chunk.to_vec());
                        let f = function.to_string();
                        done.extend(
                            self.shards[n]
                                .call(|reply| op(f, chunk, DEAD_LETTER_BATCH, reply))
                                .await??,
                        );
                    }
                }
            }
            DeadLetterSelection::All => {
                for shard in &self.shards {
                    loop {
                        let f = function.to_string();
                        let batch = shard
                            .call(|reply| op(f, None, DEAD_LETTER_BATCH, reply))
                            .await??;
                        let last = batch.len() < DEAD_LETTER_BATCH;
                        done.extend(batch);
                        if last {
                            break;
                        }
                    }
                }
            }
        }
        done.sort_unstable();
        Ok(done)
    }

    /// Waits until everything sent so far is committed, then stops the writers and closes the
    /// files. Later writes fail with [`StoreError::Closed`].
    pub async fn shutdown(&self) {
        for shard in &self.shards {
            shard.shutdown().await;
        }
    }
}

/// The shard holding a function's idempotency key: stable across restarts.
fn key_shard(function: &str, key: &str, shards: usize) -> usize {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(function.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    (u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % shards as u64) as usize
}

/// The shard holding a function's ordering key's queue: stable across restarts.
fn ordering_shard(function: &str, key: &str, shards: usize) -> usize {
    key_shard(function, &format!("\0ordering\0{key}"), shards)
}

/// The shard holding a concurrency key's queue: a key's jobs submitted by clients all go
/// there, so its window holds across shards. (Jobs the store makes itself, whose rule finds
/// a key in their input, stay on their parent's shard: with several shards such a key's
/// window is per shard, and the scheduler still bounds the key's attempts exactly.)
fn concurrency_shard(function: &str, key: &str, shards: usize) -> usize {
    key_shard(function, &format!("\0concurrency\0{key}"), shards)
}

/// The file of job shard `n`.
fn shard_path(data_dir: &Path, n: usize) -> std::path::PathBuf {
    data_dir.join(format!("jobs-{n}.redb"))
}

/// Runs a catalog write on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Storage(format!("a catalog write did not finish: {e}")))?
}
