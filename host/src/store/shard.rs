//! One shard: a redb file of jobs with its own writer thread.
//!
//! Shards commit in parallel (each fsync covers its own file), which is what lets the store take
//! more durable jobs per second than one file's fsync rate allows. A job lives in one shard for
//! its whole life; its id names the shard.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase};
use tokio::sync::oneshot;

use super::counts::{self, Counts};
use super::datafile::DataFile;
use super::tables::*;
use super::writer::{self, Op, Shared, Writer};
use super::{Correlated, JobPage, JobQuery, MAX_SCAN, StoreError, StoreOptions, storage};
use crate::job::{Job, JobId, MAX_PRIORITY};

pub(crate) struct Shard {
    /// The shard's file, for read transactions (the writer thread holds the same one, and
    /// reopens it after a storage error).
    db: Arc<DataFile>,
    /// The writer thread's queue of operations.
    ops: crossbeam_channel::Sender<Op>,
    /// Awaited operations sent and not yet answered: how busy the writer is.
    inflight: AtomicUsize,
    /// The writer thread, joined at shutdown so the file is closed before the host stops.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shard {
    /// Opens (or creates) shard `number`, requeues the jobs the previous process left running,
    /// and starts its writer (which hands ready jobs out to the scheduler's asks).
    pub(crate) fn open(
        number: usize,
        path: &Path,
        dataset: &super::dataset::Dataset,
        cache_bytes: usize,
        options: &StoreOptions,
        shared: Shared,
    ) -> Result<Shard, StoreError> {
        let db = Arc::new(DataFile::open(path.to_path_buf(), cache_bytes)?);
        db.read(|file| super::dataset::check_shard(file, path, dataset, number))?;
        let (next_due, bytes) = db.read(|file| writer::recover(file, &shared.unfinished))?;
        shared
            .queued_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        let (blobs, blob_bytes) = db.read(super::blobs::totals)?;
        shared.blob_totals.count.fetch_add(blobs, Relaxed);
        shared.blob_totals.bytes.fetch_add(blob_bytes, Relaxed);
        let (ops, rx) = crossbeam_channel::unbounded();
        let mut w = Writer::new(number, db.clone(), rx, options, shared, next_due);
        let writer = std::thread::Builder::new()
            .name(format!("sluice-writer-{number}"))
            .spawn(move || w.run())
            .map_err(|e| StoreError::Storage(format!("cannot start a writer thread: {e}")))?;
        let shard = Shard {
            db,
            ops,
            inflight: AtomicUsize::new(0),
            writer: Mutex::new(Some(writer)),
        };
        Ok(shard)
    }

    /// Runs a read on the shard's file (see [`DataFile::read`]).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.read(f)
    }

    /// Awaited operations waiting for this shard's commits.
    pub(crate) fn load(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    /// Sends an operation and waits for the commit that holds it.
    pub(crate) async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<T>) -> Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inflight.fetch_add(1, Relaxed);
        let _done = Decrement(&self.inflight);
        self.ops.send(op(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Sends an operation nobody waits for.
    pub(crate) fn send(&self, op: Op) {
        let _ = self.ops.send(op);
    }

    /// Stops the writer after everything sent so far is committed, and waits for it.
    pub(crate) async fn shutdown(&self) {
        let _ = self.call(|reply| Op::Shutdown { reply }).await;
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// One job, as last committed.
    pub(crate) fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(JOBS).map_err(storage)?;
            let Some(row) = table.get(id.0).map_err(storage)? else {
                return Ok(None);
            };
            decode_job(row.value())
                .map(Some)
                .map_err(StoreError::damaged)
        })
    }

    /// Reads part of a blob this shard holds (`None`: it holds no such blob).
    pub(crate) fn read_blob(
        &self,
        digest: &[u8; 32],
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .read(|db| super::blobs::read(db, digest, offset, len))
    }

    /// One published event, as committed.
    pub(crate) fn event(&self, id: JobId) -> Result<Option<EventRecord>, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(EVENTS).map_err(storage)?;
            let Some(row) = table.get(id.0).map_err(storage)? else {
                return Ok(None);
            };
            decode_event(row.value())
                .map(Some)
                .map_err(StoreError::damaged)
        })
    }

    /// This shard's jobs and events carrying `correlation_id` (at most [`MAX_SCAN`]).
    pub(crate) fn correlated(&self, correlation_id: &str) -> Result<Correlated, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let index = txn.open_table(CORRELATED).map_err(storage)?;
            let jobs = txn.open_table(JOBS).map_err(storage)?;
            let events = txn.open_table(EVENTS).map_err(storage)?;
            let mut out = Correlated::default();
            for row in index
                .range((correlation_id, 0u128)..=(correlation_id, u128::MAX))
                .map_err(storage)?
                .take(MAX_SCAN)
            {
                let (k, kind) = row.map_err(storage)?;
                let id = k.value().1;
                if kind.value() == KIND_EVENT {
                    if let Some(v) = events.get(id).map_err(storage)? {
                        out.events.push((
                            JobId(id),
                            decode_event(v.value()).map_err(StoreError::damaged)?,
                        ));
                    }
                } else if let Some(v) = jobs.get(id).map_err(storage)? {
                    out.jobs.push((
                        JobId(id),
                        decode_job_summary(v.value()).map_err(StoreError::damaged)?,
                    ));
                }
            }
            Ok(out)
        })
    }

    /// This shard's part of a listing: newest first, at most `query.limit` matches and
    /// [`MAX_SCAN`] rows; the cursor is the last row examined when it stopped early.
    pub(crate) fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let jobs = txn.open_table(JOBS).map_err(storage)?;
            let before = query.before.map_or(u128::MAX, |id| id.0);
            let mut page = JobPage {
                jobs: Vec::new(),
                next_cursor: None,
            };
            let mut scanned = 0;
            let mut visit =
                |id: u128, bytes: &[u8], page: &mut JobPage| -> Result<bool, StoreError> {
                    scanned += 1;
                    let summary = decode_job_summary(bytes).map_err(StoreError::damaged)?;
                    if query.status.is_none_or(|s| s == summary.job.status) {
                        page.jobs.push((JobId(id), summary));
                    }
                    if page.jobs.len() >= query.limit || scanned >= MAX_SCAN {
                        page.next_cursor = Some(JobId(id));
                        return Ok(false);
                    }
                    Ok(true)
                };
            if let Some(function) = &query.function {
                let index = if query.dead_letters {
                    txn.open_table(DEAD_LETTERS).map_err(storage)?
                } else {
                    txn.open_table(FUNCTION_JOBS).map_err(storage)?
                };
                for row in index
                    .range((function.as_str(), 0u128)..(function.as_str(), before))
                    .map_err(storage)?
                    .rev()
                {
                    let id = row.map_err(storage)?.0.value().1;
                    let Some(job) = jobs.get(id).map_err(storage)? else {
                        continue;
                    };
                    if !visit(id, job.value(), &mut page)? {
                        break;
                    }
                }
            } else {
                for row in jobs.range(..before).map_err(storage)?.rev() {
                    let (id, job) = row.map_err(storage)?;
                    if !visit(id.value(), job.value(), &mut page)? {
                        break;
                    }
                }
            }
            Ok(page)
        })
    }

    /// A function's counters in this shard.
    pub(crate) fn counts(&self, function: &str) -> Result<Counts, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(COUNTS).map_err(storage)?;
            counts::read(&table, function)
        })
    }

    /// When the function's oldest ready job in this shard became ready: the first entry of
    /// each priority's range of the ready table.
    pub(crate) fn oldest_ready(&self, function: &str) -> Result<Option<u64>, StoreError> {
        self.db.read(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(READY).map_err(storage)?;
            let mut oldest: Option<u64> = None;
            for rank in 0..=MAX_PRIORITY {
                let first = table
                    .range((function, rank, 0u64, 0u128)..=(function, rank, u64::MAX, u128::MAX))
                    .map_err(storage)?
                    .next();
                if let Some(row) = first {
                    let at = row.map_err(storage)?.0.value().2;
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
            Ok(oldest)
        })
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
