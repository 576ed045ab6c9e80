//! The store's seam: the operations the rest of the host asks of durable state, as traits.
//! Everything above the store (API, scheduler, functions service, webhook sender, runtime)
//! holds an `Arc<dyn Backend>`; the redb store ([`Store`]) is one implementation, and a
//! multi-host backend implements the same traits (and passes the same conformance suite,
//! the conformance suite).
//!
//! Three sides:
//! - [`JobStore`]: what clients ask: submit (one, a batch, events to topics), cancel, redrive,
//!   purge, reads and long-polls, blobs, key-value state.
//! - [`Dispatch`]: what the scheduler and the sender ask: leases on ready jobs, an
//!   attempt's start (with a lease the store enforces), its renewal, its outcome (with what
//!   it emitted), callbacks' results.
//! - [`FunctionCatalog`]: what is deployed: deploy, configure, rollback, pause, remove,
//!   compiled artifacts, secrets, host settings.
//!
//! Each write is answered only once it is durable. The traits are object safe: writes return
//! boxed futures ([`Pending`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::{
    CallbackFeed, CallbackResult, CancelError, Correlated, Counts, DeadLetterSelection,
    DeleteError, DeployBase, EventRecord, FunctionRecord, FunctionTally, JobPage, JobQuery,
    NewEvent, NewJob, Published, PutSecret, RollbackError, SealedSecret, Store, StoreError,
    StoreStats, SubmitError, Submitted, kv::KvVerdict,
};
use crate::job::{AttemptReport, Job, JobId, KvChanges, QueuedJob};
use crate::manifest::{RetryPolicy, Settings};

/// A key's committed version (0: absent) and value.
pub type Versioned = (u64, Option<Vec<u8>>);

/// A store call in flight: a write resolves once it is durable (or refused), a read once
/// answered.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Jobs, events, blobs and key-value state, as clients see them.
pub trait JobStore: Send + Sync {
    /// Accepts one job: answered once it is durable.
    fn submit(&self, job: NewJob) -> Pending<'_, Result<Submitted, SubmitError>>;
    /// Accepts several jobs together, or none.
    fn submit_batch(&self, jobs: Vec<NewJob>) -> Pending<'_, Result<Vec<JobId>, SubmitError>>;
    /// Publishes events with one delivery job per matching subscriber, together or not at all.
    fn publish(&self, events: Vec<NewEvent>) -> Pending<'_, Result<Vec<Published>, SubmitError>>;
    /// Cancels a queued or delayed job.
    fn cancel(&self, id: JobId) -> Pending<'_, Result<Job, CancelError>>;
    /// Moves dead letters of a function back to `queued`; returns those moved.
    fn redrive<'a>(
        &'a self,
        function: &'a str,
        which: DeadLetterSelection,
    ) -> Pending<'a, Result<Vec<JobId>, StoreError>>;
    /// Deletes dead letters of a function; returns those deleted.
    fn purge<'a>(
        &'a self,
        function: &'a str,
        which: DeadLetterSelection,
    ) -> Pending<'a, Result<Vec<JobId>, StoreError>>;
    /// One job, as last committed.
    fn job<'a>(&'a self, id: JobId) -> Pending<'a, Result<Option<Job>, StoreError>>;
    /// The job once it is terminal, or as it is after `timeout` (`None`: no such job).
    fn wait_terminal(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Pending<'_, Result<Option<Job>, StoreError>>;
    /// A page of jobs, newest first.
    fn jobs<'a>(&'a self, query: &'a JobQuery) -> Pending<'a, Result<JobPage, StoreError>>;
    /// Every job and event carrying a correlation id.
    fn correlated<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> Pending<'a, Result<Correlated, StoreError>>;
    /// One published event.
    fn event<'a>(&'a self, id: JobId) -> Pending<'a, Result<Option<EventRecord>, StoreError>>;
    /// A function's jobs per status and unfinished bytes.
    fn counts<'a>(&'a self, function: &'a str) -> Pending<'a, Result<Counts, StoreError>>;
    /// A function's unfinished jobs.
    fn pending_count<'a>(&'a self, function: &'a str) -> Pending<'a, Result<u64, StoreError>>;
    /// When the function's oldest ready job became ready.
    fn oldest_ready<'a>(
        &'a self,
        function: &'a str,
    ) -> Pending<'a, Result<Option<u64>, StoreError>>;
    /// Part of a stored blob (`None`: no such blob).
    fn read_blob<'a>(
        &'a self,
        digest: &'a [u8; 32],
        offset: u64,
        len: usize,
    ) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Blobs stored and their bytes.
    fn blob_totals(&self) -> (u64, u64);
    /// Input bytes of unfinished jobs, host-wide.
    fn queued_bytes(&self) -> u64;
    /// A function's key: its committed version (0: absent) and value.
    fn kv_get<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> Pending<'a, Result<Versioned, StoreError>>;
    /// A function's keys starting with `prefix`, in order.
    fn kv_keys<'a>(
        &'a self,
        function: &'a str,
        prefix: Option<&'a str>,
        skip: usize,
        limit: usize,
    ) -> Pending<'a, Result<Vec<String>, StoreError>>;
    /// Sets or deletes keys of a function's state, durably.
    fn kv_write(&self, changes: KvChanges) -> Pending<'_, Result<KvVerdict, StoreError>>;
    /// Counters of what the store has done since start.
    fn stats(&self) -> &StoreStats;
    /// Per-function outcomes and attempt timings since start.
    fn tallies(&self) -> Vec<(String, FunctionTally)>;
}

/// The attempt side: what the scheduler and the callback sender ask.
pub trait Dispatch: Send + Sync {
    /// Leases up to `max` ready jobs of `function` (at least one: it waits until one is ready),
    /// in dispatch order: highest priority first, then oldest; a job behind its ordering key's
    /// head is not ready. The scheduler pulls: it asks when it has room and holds what it gets
    /// until each attempt starts ([`Dispatch::start`]) and ends ([`Dispatch::finish`]). A
    /// leased job is handed to no one else meanwhile; a future dropped unanswered gives back
    /// what it was handed. (redb: one host, a lease not yet started lasts while the process
    /// does; a backend shared by several hosts also expires leases not started.)
    fn lease<'a>(
        &'a self,
        function: &'a str,
        max: usize,
    ) -> Pending<'a, Result<Vec<QueuedJob>, StoreError>>;
    /// Due webhook callbacks, for the one sender (taken once).
    fn take_callbacks(&self) -> Option<CallbackFeed>;
    /// The version of `function` the catalog holds now, where other hosts deploy too (a host
    /// whose loaded code is older waits for its copy before it starts an attempt). `None`:
    /// this host deploys alone and loads every deploy before it is answered.
    fn catalog_version(&self, function: &str) -> Option<u32> {
        let _ = function;
        None
    }
    /// Reserves the next start of an attempt of `function` under a rate shared by every host
    /// (one start per `interval`): when it may start, in µs since the Unix epoch. `None`: this
    /// store serves one host, whose scheduler paces the function alone.
    fn reserve_start<'a>(
        &'a self,
        function: &'a str,
        interval: std::time::Duration,
    ) -> Pending<'a, Result<Option<u64>, StoreError>> {
        let _ = (function, interval);
        Box::pin(async { Ok(None) })
    }
    /// Records an attempt's start (fenced by attempt number).
    fn start(&self, id: JobId, attempt: u32, at: u64, lease_until: u64, version: u32);
    /// Extends a running attempt's lease to `lease_until`. A lease that runs out fails its
    /// attempt (the job is retried and handed out again); renew well before it does.
    fn renew(&self, id: JobId, attempt: u32, lease_until: u64);
    /// Records how an attempt ended (fenced: ignored unless it is the job's current attempt);
    /// a failure is retried under `retry`.
    fn finish(&self, id: JobId, attempt: u32, report: AttemptReport, retry: RetryPolicy);
    /// Commits a success's key-value writes where they live, before its finish; a conflict
    /// turns the report into the failure that runs the job again.
    fn settle_kv(
        &self,
        id: JobId,
        attempt: u32,
        report: AttemptReport,
    ) -> Pending<'_, AttemptReport>;
    /// Records how a webhook delivery attempt went.
    fn callback_done(&self, id: JobId, result: CallbackResult);
}

/// What is deployed, and the host's own settings.
pub trait FunctionCatalog: Send + Sync {
    /// Stores a deploy (component, compiled artifact, record) as the function's next version,
    /// if `base` is still current (else [`StoreError::Changed`], nothing stored).
    fn deploy(
        &self,
        record: FunctionRecord,
        wasm: Bytes,
        artifact_key: String,
        artifact: Vec<u8>,
        base: DeployBase,
    ) -> Pending<'_, Result<FunctionRecord, StoreError>>;
    /// New settings, same code, as a new version (`None`: not deployed).
    fn configure<'a>(
        &'a self,
        name: &'a str,
        settings: Settings,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>>;
    /// An earlier version made current again, as a new version.
    fn rollback<'a>(
        &'a self,
        name: &'a str,
        to: Option<u32>,
    ) -> Pending<'a, Result<FunctionRecord, RollbackError>>;
    /// Pauses or resumes a function (`None`: not deployed).
    fn set_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>>;
    /// Deletes a function (with `force`, cancelling its unfinished jobs).
    fn delete_function<'a>(
        &'a self,
        name: &'a str,
        force: bool,
    ) -> Pending<'a, Result<Vec<JobId>, DeleteError>>;
    /// One deployed function.
    fn function<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>>;
    /// Every deployed function.
    fn functions<'a>(&'a self) -> Pending<'a, Result<Vec<FunctionRecord>, StoreError>>;
    /// Every version of a function, oldest first.
    fn versions<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Vec<FunctionRecord>, StoreError>>;
    /// A stored component's bytes.
    fn component<'a>(&'a self, digest: &'a str)
    -> Pending<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// A compiled artifact.
    fn artifact<'a>(&'a self, key: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Stores a compiled artifact.
    fn save_artifact(&self, key: String, artifact: Vec<u8>) -> Pending<'_, Result<(), StoreError>>;
    /// Sets a function's sealed secret.
    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        name: &'a str,
        sealed: Vec<u8>,
        max: usize,
    ) -> Pending<'a, Result<PutSecret, StoreError>>;
    /// Deletes a function's secret (false: there was none).
    fn delete_secret<'a>(
        &'a self,
        function: &'a str,
        name: &'a str,
    ) -> Pending<'a, Result<bool, StoreError>>;
    /// A function's sealed secrets.
    fn secrets<'a>(
        &'a self,
        function: &'a str,
    ) -> Pending<'a, Result<Vec<SealedSecret>, StoreError>>;
    /// A host setting, stored as `initial` when there is none.
    fn setting_or_init<'a>(
        &'a self,
        key: &'a str,
        initial: Vec<u8>,
    ) -> Pending<'a, Result<Vec<u8>, StoreError>>;
    /// Names of functions whose catalog entry or secrets changed, possibly on another host
    /// sharing this backend, for the one functions service to follow (taken once; `None`:
    /// nothing but this host changes the catalog).
    fn take_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>>;
    /// Stores a host setting.
    fn set_setting<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> Pending<'a, Result<(), StoreError>>;
}

/// A whole backend: the three sides, and a shutdown that commits everything pending.
pub trait Backend: JobStore + Dispatch + FunctionCatalog {
    /// Commits everything sent so far and closes the files; later writes are refused.
    fn shutdown(&self) -> Pending<'_, ()>;
}

impl JobStore for Store {
    fn submit(&self, job: NewJob) -> Pending<'_, Result<Submitted, SubmitError>> {
        Box::pin(Store::submit(self, job))
    }
    fn submit_batch(&self, jobs: Vec<NewJob>) -> Pending<'_, Result<Vec<JobId>, SubmitError>> {
        Box::pin(Store::submit_batch(self, jobs))
    }
    fn publish(&self, events: Vec<NewEvent>) -> Pending<'_, Result<Vec<Published>, SubmitError>> {
        Box::pin(Store::publish(self, events))
    }
    fn cancel(&self, id: JobId) -> Pending<'_, Result<Job, CancelError>> {
        Box::pin(Store::cancel(self, id))
    }
    fn redrive<'a>(
        &'a self,
        function: &'a str,
        which: DeadLetterSelection,
    ) -> Pending<'a, Result<Vec<JobId>, StoreError>> {
        Box::pin(Store::redrive(self, function, which))
    }
    fn purge<'a>(
        &'a self,
        function: &'a str,
        which: DeadLetterSelection,
    ) -> Pending<'a, Result<Vec<JobId>, StoreError>> {
        Box::pin(Store::purge(self, function, which))
    }
    fn job<'a>(&'a self, id: JobId) -> Pending<'a, Result<Option<Job>, StoreError>> {
        Box::pin(std::future::ready(Store::job(self, id)))
    }
    fn wait_terminal(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Pending<'_, Result<Option<Job>, StoreError>> {
        Box::pin(Store::wait_terminal(self, id, timeout))
    }
    fn jobs<'a>(&'a self, query: &'a JobQuery) -> Pending<'a, Result<JobPage, StoreError>> {
        Box::pin(std::future::ready(Store::jobs(self, query)))
    }
    fn correlated<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> Pending<'a, Result<Correlated, StoreError>> {
        Box::pin(std::future::ready(Store::correlated(self, correlation_id)))
    }
    fn event<'a>(&'a self, id: JobId) -> Pending<'a, Result<Option<EventRecord>, StoreError>> {
        Box::pin(std::future::ready(Store::event(self, id)))
    }
    fn counts<'a>(&'a self, function: &'a str) -> Pending<'a, Result<Counts, StoreError>> {
        Box::pin(std::future::ready(Store::counts(self, function)))
    }
    fn pending_count<'a>(&'a self, function: &'a str) -> Pending<'a, Result<u64, StoreError>> {
        Box::pin(std::future::ready(Store::pending_count(self, function)))
    }
    fn oldest_ready<'a>(
        &'a self,
        function: &'a str,
    ) -> Pending<'a, Result<Option<u64>, StoreError>> {
        Box::pin(std::future::ready(Store::oldest_ready(self, function)))
    }
    fn read_blob<'a>(
        &'a self,
        digest: &'a [u8; 32],
        offset: u64,
        len: usize,
    ) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(std::future::ready(Store::read_blob(
            self, digest, offset, len,
        )))
    }
    fn blob_totals(&self) -> (u64, u64) {
        Store::blob_totals(self)
    }
    fn queued_bytes(&self) -> u64 {
        Store::queued_bytes(self)
    }
    fn kv_get<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> Pending<'a, Result<Versioned, StoreError>> {
        Box::pin(std::future::ready(Store::kv_get(self, function, key)))
    }
    fn kv_keys<'a>(
        &'a self,
        function: &'a str,
        prefix: Option<&'a str>,
        skip: usize,
        limit: usize,
    ) -> Pending<'a, Result<Vec<String>, StoreError>> {
        Box::pin(std::future::ready(Store::kv_keys(
            self, function, prefix, skip, limit,
        )))
    }
    fn kv_write(&self, changes: KvChanges) -> Pending<'_, Result<KvVerdict, StoreError>> {
        Box::pin(Store::kv_write(self, changes))
    }
    fn stats(&self) -> &StoreStats {
        Store::stats(self)
    }
    fn tallies(&self) -> Vec<(String, FunctionTally)> {
        Store::tallies(self)
    }
}

impl Dispatch for Store {
    fn lease<'a>(
        &'a self,
        function: &'a str,
        max: usize,
    ) -> Pending<'a, Result<Vec<QueuedJob>, StoreError>> {
        Box::pin(async move { Ok(Store::lease(self, function, max).await) })
    }
    fn take_callbacks(&self) -> Option<CallbackFeed> {
        Store::take_callbacks(self)
    }
    fn start(&self, id: JobId, attempt: u32, at: u64, lease_until: u64, version: u32) {
        Store::start(self, id, attempt, at, lease_until, version)
    }
    fn renew(&self, id: JobId, attempt: u32, lease_until: u64) {
        Store::renew(self, id, attempt, lease_until)
    }
    fn finish(&self, id: JobId, attempt: u32, report: AttemptReport, retry: RetryPolicy) {
        Store::finish(self, id, attempt, report, retry)
    }
    fn settle_kv(
        &self,
        id: JobId,
        attempt: u32,
        report: AttemptReport,
    ) -> Pending<'_, AttemptReport> {
        Box::pin(Store::settle_kv(self, id, attempt, report))
    }
    fn callback_done(&self, id: JobId, result: CallbackResult) {
        Store::callback_done(self, id, result)
    }
}

impl FunctionCatalog for Store {
    fn deploy(
        &self,
        record: FunctionRecord,
        wasm: Bytes,
        artifact_key: String,
        artifact: Vec<u8>,
        base: DeployBase,
    ) -> Pending<'_, Result<FunctionRecord, StoreError>> {
        Box::pin(Store::deploy(
            self,
            record,
            wasm,
            artifact_key,
            artifact,
            base,
        ))
    }
    fn configure<'a>(
        &'a self,
        name: &'a str,
        settings: Settings,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>> {
        Box::pin(Store::configure(self, name, settings))
    }
    fn rollback<'a>(
        &'a self,
        name: &'a str,
        to: Option<u32>,
    ) -> Pending<'a, Result<FunctionRecord, RollbackError>> {
        Box::pin(Store::rollback(self, name, to))
    }
    fn set_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>> {
        Box::pin(Store::set_paused(self, name, paused))
    }
    fn delete_function<'a>(
        &'a self,
        name: &'a str,
        force: bool,
    ) -> Pending<'a, Result<Vec<JobId>, DeleteError>> {
        Box::pin(Store::delete_function(self, name, force))
    }
    fn function<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>> {
        Box::pin(std::future::ready(Store::function(self, name)))
    }
    fn functions<'a>(&'a self) -> Pending<'a, Result<Vec<FunctionRecord>, StoreError>> {
        Box::pin(std::future::ready(Store::functions(self)))
    }
    fn versions<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Vec<FunctionRecord>, StoreError>> {
        Box::pin(std::future::ready(Store::versions(self, name)))
    }
    fn component<'a>(
        &'a self,
        digest: &'a str,
    ) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(std::future::ready(Store::component(self, digest)))
    }
    fn artifact<'a>(&'a self, key: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(std::future::ready(Store::artifact(self, key)))
    }
    fn save_artifact(&self, key: String, artifact: Vec<u8>) -> Pending<'_, Result<(), StoreError>> {
        Box::pin(Store::save_artifact(self, key, artifact))
    }
    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        name: &'a str,
        sealed: Vec<u8>,
        max: usize,
    ) -> Pending<'a, Result<PutSecret, StoreError>> {
        Box::pin(Store::put_secret(self, function, name, sealed, max))
    }
    fn delete_secret<'a>(
        &'a self,
        function: &'a str,
        name: &'a str,
    ) -> Pending<'a, Result<bool, StoreError>> {
        Box::pin(Store::delete_secret(self, function, name))
    }
    fn secrets<'a>(
        &'a self,
        function: &'a str,
    ) -> Pending<'a, Result<Vec<SealedSecret>, StoreError>> {
        Box::pin(std::future::ready(Store::secrets(self, function)))
    }
    fn setting_or_init<'a>(
        &'a self,
        key: &'a str,
        initial: Vec<u8>,
    ) -> Pending<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(Store::setting_or_init(self, key, initial))
    }
    fn take_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        None
    }
    fn set_setting<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> Pending<'a, Result<(), StoreError>> {
        Box::pin(Store::set_setting(self, key, value))
    }
}

impl Backend for Store {
    fn shutdown(&self) -> Pending<'_, ()> {
        Box::pin(Store::shutdown(self))
    }
}
