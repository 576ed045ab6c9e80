//! Per-function counters (jobs per status, unfinished input bytes), kept in the `counts` table
//! and changed in the same transaction as the status changes they count.
//!
//! A batch collects its changes here and writes each touched row once, at the end of the batch.

use redb::{ReadableTable, Table};

use super::tables::BYTES_SLOT;
use super::{StoreError, storage};
use crate::job::JobStatus;

/// Slots of one function's row: one per status, then the bytes (slot 7, between `cancelled`
/// and `superseded`, which came later).
pub(crate) const SLOTS: usize = 9;

/// The slot counting `status`.
pub(crate) fn slot(status: JobStatus) -> usize {
    match JobStatus::ALL
        .iter()
        .position(|s| *s == status)
        .expect("every status has a slot")
    {
        n if n < BYTES_SLOT as usize => n,
        n => n + 1,
    }
}

/// One function's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; SLOTS]);

impl Counts {
    /// Jobs in `status`.
    pub fn status(&self, status: JobStatus) -> u64 {
        self.0[slot(status)]
    }

    /// Jobs not yet finished: queued, delayed or running.
    pub fn unfinished(&self) -> u64 {
        self.status(JobStatus::Queued)
            + self.status(JobStatus::Delayed)
            + self.status(JobStatus::Running)
    }

    /// Input bytes of the unfinished jobs.
    pub fn bytes(&self) -> u64 {
        self.0[BYTES_SLOT as usize]
    }

    /// Adds another shard's counters.
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// A batch's changes to the counters, by function.
#[derive(Default)]
pub(crate) struct CountDeltas {
    rows: Vec<(String, [i64; SLOTS])>,
}

impl CountDeltas {
    fn row(&mut self, function: &str) -> &mut [i64; SLOTS] {
        let i = match self.rows.iter().position(|(f, _)| f == function) {
            Some(i) => i,
            None => {
                self.rows.push((function.to_string(), [0; SLOTS]));
                self.rows.len() - 1
            }
        };
        &mut self.rows[i].1
    }

    /// A job of `function` moved from `from` (None: it is new) to `to` (None: it is gone).
    pub(crate) fn moved(&mut self, function: &str, from: Option<JobStatus>, to: Option<JobStatus>) {
        let row = self.row(function);
        if let Some(from) = from {
            row[slot(from)] -= 1;
        }
        if let Some(to) = to {
            row[slot(to)] += 1;
        }
    }

    /// Unfinished input bytes of `function` changed by `delta`.
    pub(crate) fn bytes(&mut self, function: &str, delta: i64) {
        self.row(function)[BYTES_SLOT as usize] += delta;
    }

    /// This batch's change to `function`'s unfinished jobs and bytes so far.
    pub(crate) fn pending_change(&self, function: &str) -> (i64, i64) {
        self.rows
            .iter()
            .find(|(f, _)| f == function)
            .map_or((0, 0), |(_, row)| {
                let unfinished = row[slot(JobStatus::Queued)]
                    + row[slot(JobStatus::Delayed)]
                    + row[slot(JobStatus::Running)];
                (unfinished, row[BYTES_SLOT as usize])
            })
    }

    /// Every function's change of unfinished jobs in this batch.
    pub(crate) fn unfinished_changes(&self) -> impl Iterator<Item = (&str, i64)> {
        self.rows.iter().map(|(f, row)| {
            (
                f.as_str(),
                row[slot(JobStatus::Queued)]
                    + row[slot(JobStatus::Delayed)]
                    + row[slot(JobStatus::Running)],
            )
        })
    }

    /// Change of the unfinished jobs of every function together.
    pub(crate) fn total_unfinished(&self) -> i64 {
        self.unfinished_changes().map(|(_, n)| n).sum()
    }

    /// Change of the unfinished bytes of every function together.
    pub(crate) fn total_bytes(&self) -> i64 {
        self.rows.iter().map(|(_, r)| r[BYTES_SLOT as usize]).sum()
    }

    /// Writes every changed row (the changes stay here, for after the commit).
    pub(crate) fn write(
        &self,
        table: &mut Table<'_, (&'static str, u8), u64>,
    ) -> Result<(), StoreError> {
        for (function, row) in &self.rows {
            for (i, &delta) in row.iter().enumerate() {
                if delta == 0 {
                    continue;
                }
                let key = (function.as_str(), i as u8);
                let current = table.get(key).map_err(storage)?.map_or(0, |v| v.value());
                let next = (current as i64 + delta).max(0) as u64;
                if next == 0 {
                    table.remove(key).map_err(storage)?;
                } else {
                    table.insert(key, next).map_err(storage)?;
                }
            }
        }
        Ok(())
    }
}

/// A function's counters as stored in `table`.
pub(crate) fn read<T>(table: &T, function: &str) -> Result<Counts, StoreError>
where
    T: ReadableTable<(&'static str, u8), u64>,
{
    let mut counts = Counts::default();
    for row in table
        .range((function, 0u8)..=(function, u8::MAX))
        .map_err(storage)?
    {
        let (k, v) = row.map_err(storage)?;
        let slot = k.value().1 as usize;
        if slot < SLOTS {
            counts.0[slot] = v.value();
        }
    }
    Ok(counts)
}

/// Unfinished jobs per function in every shard together, kept in memory for admission
/// (`max_queued`): loaded from the counters at start-up, changed after each commit.
#[derive(Default)]
pub(crate) struct Unfinished(parking_lot::Mutex<std::collections::HashMap<String, u64>>);

impl Unfinished {
    pub(crate) fn get(&self, function: &str) -> u64 {
        self.0.lock().get(function).copied().unwrap_or(0)
    }

    /// Unfinished jobs of every function together.
    pub(crate) fn total(&self) -> u64 {
        self.0.lock().values().sum()
    }

    pub(crate) fn apply(&self, deltas: &CountDeltas) {
        let mut map = self.0.lock();
        for (function, change) in deltas.unfinished_changes() {
            if change == 0 {
                continue;
            }
            let n = map.entry(function.to_string()).or_insert(0);
            *n = (*n as i64 + change).max(0) as u64;
        }
    }

    /// Adds a shard's stored counters.
    pub(crate) fn load<T>(&self, table: &T) -> Result<(), StoreError>
    where
        T: ReadableTable<(&'static str, u8), u64>,
    {
        let mut map = self.0.lock();
        let unfinished = [
            slot(JobStatus::Queued),
            slot(JobStatus::Delayed),
            slot(JobStatus::Running),
        ];
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (function, s) = k.value();
            if unfinished.contains(&(s as usize)) {
                *map.entry(function.to_string()).or_insert(0) += v.value();
            }
        }
        Ok(())
    }
}
