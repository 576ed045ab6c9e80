//! The store's reads: jobs, listings, events, counts, blobs, and long-polls that wait for a
//! job to become terminal (woken by the writers after each commit). Reads never go through a
//! writer: each opens a read transaction on the file that holds what it wants.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::*;
use crate::job::{Job, JobId};

impl Store {
    /// Every function's outcomes and attempt timings since start (committed ones only).
    pub fn tallies(&self) -> Vec<(String, FunctionTally)> {
        self.tallies.snapshot()
    }

    /// Blobs stored (claim checks) and their bytes, host-wide.
    pub fn blob_totals(&self) -> (u64, u64) {
        (
            self.blob_totals.count.load(Relaxed),
            self.blob_totals.bytes.load(Relaxed),
        )
    }

    /// Reads `len` bytes of the blob `digest` from `offset` (fewer at its end); `None` when no
    /// shard holds it.
    pub fn read_blob(
        &self,
        digest: &[u8; 32],
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        for shard in &self.shards {
            if let Some(bytes) = shard.read_blob(digest, offset, len)? {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// Input bytes of unfinished jobs, host-wide.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Relaxed)
    }

    /// Everything carrying `correlation_id` (and the job or event whose id it is), every shard.
    pub fn correlated(&self, correlation_id: &str) -> Result<Correlated, StoreError> {
        let mut all = Correlated::default();
        for shard in &self.shards {
            let found = shard.correlated(correlation_id)?;
            all.jobs.extend(found.jobs);
            all.events.extend(found.events);
        }
        if let Ok(id) = correlation_id.parse::<JobId>()
            && let Some(shard) = self.shard(id)
        {
            if !all.jobs.iter().any(|(j, _)| *j == id)
                && let Some(job) = shard.job(id)?
            {
                all.jobs.push((id, crate::job::JobSummary::of(job)));
            }
            if !all.events.iter().any(|(e, _)| *e == id)
                && let Some(event) = shard.event(id)?
            {
                all.events.push((id, event));
            }
        }
        all.jobs.sort_unstable_by_key(|(id, _)| *id);
        all.events.sort_unstable_by_key(|(id, _)| *id);
        Ok(all)
    }

    /// One published event.
    pub fn event(&self, id: JobId) -> Result<Option<EventRecord>, StoreError> {
        match self.shard(id) {
            Some(shard) => shard.event(id),
            None => Ok(None),
        }
    }

    /// What the writers have done since the store opened.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// One job, as last committed.
    pub fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.shard(id) {
            Some(shard) => shard.job(id),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for a job to be terminal; returns it as last committed.
    pub async fn wait_terminal(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Result<Option<Job>, StoreError> {
        let rx = self.waiters.register(id);
        let job = self.job(id)?;
        match &job {
            Some(j) if !j.visible_status().is_terminal() && !timeout.is_zero() => {
                let _ = tokio::time::timeout(timeout, rx).await;
                self.job(id)
            }
            _ => Ok(job),
        }
    }

    /// Jobs, newest first, filtered and paginated: each shard's page, merged.
    pub fn jobs(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let mut merged = Vec::new();
        // Below the highest point where a shard stopped early, that shard has unexamined rows:
        // this page ends there and the next continues from it.
        let mut floor: Option<JobId> = None;
        for shard in &self.shards {
            let page = shard.jobs(query)?;
            merged.extend(page.jobs);
            floor = floor.max(page.next_cursor);
        }
        merged.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        if let Some(floor) = floor {
            merged.retain(|(id, _)| *id >= floor);
        }
        let mut next_cursor = floor;
        if merged.len() > query.limit {
            merged.truncate(query.limit);
        }
        if merged.len() == query.limit {
            next_cursor = merged.last().map(|(id, _)| *id).max(next_cursor);
        }
        Ok(JobPage {
            jobs: merged,
            next_cursor,
        })
    }

    /// A function's counters (jobs per status, unfinished bytes), all shards together.
    pub fn counts(&self, function: &str) -> Result<Counts, StoreError> {
        let mut total = Counts::default();
        for shard in &self.shards {
            total.add(&shard.counts(function)?);
        }
        Ok(total)
    }

    /// Unfinished jobs of one function (queued, delayed or running), from its counters.
    pub fn pending_count(&self, function: &str) -> Result<u64, StoreError> {
        Ok(self.counts(function)?.unfinished())
    }

    /// When the function's oldest ready job became ready (ms since the Unix epoch), if any.
    pub fn oldest_ready(&self, function: &str) -> Result<Option<u64>, StoreError> {
        let mut oldest: Option<u64> = None;
        for shard in &self.shards {
            if let Some(at) = shard.oldest_ready(function)? {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        Ok(oldest)
    }
}

/// Long-polls waiting for jobs to become terminal, woken by the writer after each commit.
#[derive(Default)]
pub(crate) struct Waiters {
    /// Waiting senders by job; empty most of the time, so the writer's check is one lock.
    by_job: Mutex<HashMap<JobId, Vec<oneshot::Sender<()>>>>,
}

impl Waiters {
    fn register(&self, id: JobId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.by_job.lock();
        let list = map.entry(id).or_default();
        list.retain(|s| !s.is_closed());
        list.push(tx);
        rx
    }

    pub(crate) fn wake(&self, ids: &[JobId]) {
        let mut map = self.by_job.lock();
        if map.is_empty() {
            return;
        }
        for id in ids {
            for tx in map.remove(id).into_iter().flatten() {
                let _ = tx.send(());
            }
        }
    }
}
