//! The tables of one write transaction, opened once per batch (the rarely used ones on first
//! use), with the small reads and writes every transition shares. The writer opens them; the
//! transitions change them.

use redb::{ReadableTable, Table, WriteTransaction};

use super::blobs::{BlobDelta, BlobTables};
use super::counts::CountDeltas;
use super::tables::*;
use super::{StoreError, storage};
use crate::job::{AttemptRecord, Job, JobId, JobStatus, now_ms, ready_key};

/// The error of an attempt the host's process did not see end.
const INTERRUPTED: &str = "interrupted: the host stopped while this attempt ran (killed, or its shutdown grace period ended); the job was queued again when the host started";

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
    pub(crate) concurrency:
        Lazy<'txn, Table<'txn, (&'static str, &'static str, u128), (u128, bool)>>,
    pub(crate) debounce: Lazy<'txn, Table<'txn, (&'static str, &'static str), (u128, u64)>>,
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
            concurrency: Lazy::new(txn, |txn| txn.open_table(CONCURRENCY).map_err(storage)),
            debounce: Lazy::new(txn, |txn| txn.open_table(DEBOUNCE).map_err(storage)),
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
        self.concurrency.open()?;
        self.debounce.open()?;
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
                .map_err(StoreError::damaged),
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

    /// Start-up: every `running` job goes back to `queued` (its attempt died with the process);
    /// the attempt stays in the job's history as interrupted.
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
                // The attempt died with the process: it stays on record, with why it ended.
                let now = now_ms();
                job.push_attempt(
                    AttemptRecord {
                        attempt: job.attempts,
                        started_at: job.started_at.unwrap_or(now),
                        finished_at: now,
                        error: Some(INTERRUPTED.into()),
                        retry_at: Some(now),
                        version: job.version.unwrap_or(0),
                    },
                    String::new(),
                );
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
