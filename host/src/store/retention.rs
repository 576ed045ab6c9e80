//! Retention: the sweeper deletes finished jobs (with their outputs, logs, indexes and blob
//! references) and idempotency keys past their periods, in small batches per commit.

use std::time::{Duration, Instant};

use redb::ReadableTable;

use super::tables::*;
use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{StoreError, storage};
use crate::job::{JobId, now_ms};

/// Expired jobs (and, separately, expired keys) the sweeper deletes per commit.
const SWEEP_BATCH: usize = 1000;

impl Writer {
    /// Deletes finished jobs older than the retention period and idempotency keys older than
    /// their window, at most [`SWEEP_BATCH`] of each per commit; returns how many rows went.
    /// A full batch brings the next sweep forward, so a backlog drains in small steps.
    pub(crate) fn sweep(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<u64, StoreError> {
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
                t.correlated
                    .open()?
                    .remove((job.correlation_id.as_str(), id))
                    .map_err(storage)?;
                t.jobs.remove(id).map_err(storage)?;
                t.release_blobs(&job, &mut fx.blobs)?;
                t.forget_callback(JobId(id), &job)?;
                fx.counts.moved(&job.function, Some(job.status), None);
            } else if let Some(event) = t
                .events
                .open()?
                .remove(id)
                .map_err(storage)?
                .and_then(|row| decode_event(row.value()).ok())
            {
                t.correlated
                    .open()?
                    .remove((event.correlation_id.as_str(), id))
                    .map_err(storage)?;
            }
        }
        let mut keys = Vec::new();
        for row in t
            .idempotency_times
            .open()?
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
                .open()?
                .remove((*at, function.as_str(), key.as_str()))
                .map_err(storage)?;
            // The key may have been used again since (a new record): keep that one.
            let current = t
                .idempotency
                .open()?
                .get((function.as_str(), key.as_str()))
                .map_err(storage)?
                .map(|v| KeyRecord::decode(v.value()))
                .transpose()
                .map_err(StoreError::damaged)?;
            if current.is_some_and(|r| r.created_at == *at) {
                t.idempotency
                    .open()?
                    .remove((function.as_str(), key.as_str()))
                    .map_err(storage)?;
            }
        }
        // Markers of key-value writes applied for jobs of other shards: their jobs are gone.
        let markers = if self.shard == super::kv::KV_SHARD {
            t.kv.open()?
                .sweep_markers(now.saturating_sub(self.retention_ms), SWEEP_BATCH)?
        } else {
            0
        };
        let full =
            expired.len() == SWEEP_BATCH || keys.len() == SWEEP_BATCH || markers == SWEEP_BATCH;
        self.next_sweep = Instant::now()
            + if full {
                Duration::ZERO
            } else {
                self.sweep_every
            };
        Ok((expired.len() + keys.len() + markers) as u64)
    }
}
