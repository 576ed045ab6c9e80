//! Functions' key-value state. It lives in shard 0 (the same shard whatever `--store-shards`
//! grows to), one row per key with a version drawn from a per-function counter, so a key
//! deleted and set again never reuses a version a reader saw.
//!
//! An attempt's writes commit only if every key it read still has the version it saw
//! (optimistic concurrency). A job of shard 0 commits them in the transaction that records its
//! success. A job of another shard commits them first, in shard 0, with a marker naming the
//! job, then its success in its own shard: should the host die between the two, the job runs
//! again and the marker keeps its writes from being applied twice (see docs/capabilities.md).

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::writer::Op;
use super::{Store, StoreError, shard_of, storage};
use crate::job::AttemptReport;
use crate::job::{JobId, KvChanges, now_ms};

/// (function, key) -> (version, value).
pub(crate) const KV: TableDefinition<(&str, &str), (u64, &[u8])> = TableDefinition::new("kv");
/// (function, slot) -> number: the version counter and the bytes held.
const KV_META: TableDefinition<(&str, u8), u64> = TableDefinition::new("kv_meta");
/// Jobs of other shards whose writes are applied: job id -> (attempt, when).
const KV_APPLIED: TableDefinition<u128, (u32, u64)> = TableDefinition::new("kv_applied");

const VERSION_SLOT: u8 = 0;
const BYTES_SLOT: u8 = 1;
/// What a stored key costs besides its value.
const KEY_OVERHEAD: u64 = 64;

/// The shard holding every function's key-value state.
pub(crate) const KV_SHARD: usize = 0;

/// What became of an attempt's changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvVerdict {
    /// Committed (with the success, or before it).
    Applied,
    /// This job's writes were applied by an earlier attempt whose success was lost.
    AlreadyApplied,
    /// A key read was changed by another commit: nothing was applied.
    Conflict(String),
    /// The function's state would pass its bound: nothing was applied.
    Full(String),
}

/// The key-value tables of one transaction.
pub(crate) struct KvTables<'txn> {
    values: Table<'txn, (&'static str, &'static str), (u64, &'static [u8])>,
    meta: Table<'txn, (&'static str, u8), u64>,
    applied: Table<'txn, u128, (u32, u64)>,
}

impl<'txn> KvTables<'txn> {
    pub(crate) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(KvTables {
            values: txn.open_table(KV).map_err(storage)?,
            meta: txn.open_table(KV_META).map_err(storage)?,
            applied: txn.open_table(KV_APPLIED).map_err(storage)?,
        })
    }

    fn meta(&self, function: &str, slot: u8) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get((function, slot))
            .map_err(storage)?
            .map_or(0, |v| v.value()))
    }

    /// Applies `changes` if every read still holds and the function's state stays within
    /// `max_bytes`; with `job`, only once for that job (a marker remembers it).
    pub(crate) fn apply(
        &mut self,
        changes: &KvChanges,
        job: Option<(JobId, u32)>,
        max_bytes: u64,
    ) -> Result<KvVerdict, StoreError> {
        let f = changes.function.as_str();
        if let Some((id, _)) = job
            && self.applied.get(id.0).map_err(storage)?.is_some()
        {
            return Ok(KvVerdict::AlreadyApplied);
        }
        for (key, seen) in &changes.reads {
            let now = self
                .values
                .get((f, key.as_str()))
                .map_err(storage)?
                .map_or(0, |v| v.value().0);
            if now != *seen {
                return Ok(KvVerdict::Conflict(format!("key {key:?}")));
            }
        }
        for page in &changes.listed {
            if page_of(&self.values, f, page.skip, page.limit)? != page.keys {
                return Ok(KvVerdict::Conflict(format!(
                    "the listing of its keys from {}",
                    page.skip
                )));
            }
        }
        let mut bytes = self.meta(f, BYTES_SLOT)? as i64;
        for (key, value) in &changes.writes {
            let old = self
                .values
                .get((f, key.as_str()))
                .map_err(storage)?
                .map(|v| v.value().1.len() as u64 + KEY_OVERHEAD + key.len() as u64);
            bytes -= old.unwrap_or(0) as i64;
            if let Some(v) = value {
                bytes += (v.len() + key.len()) as i64 + KEY_OVERHEAD as i64;
            }
        }
        let before = self.meta(f, BYTES_SLOT)?;
        if bytes as u64 > max_bytes && bytes as u64 > before {
            return Ok(KvVerdict::Full(format!(
                "function {f}'s key-value state would hold {bytes} bytes, more than the {max_bytes} allowed (the host operator sets --max-kv-bytes): delete keys first"
            )));
        }
        let mut version = self.meta(f, VERSION_SLOT)?;
        for (key, value) in &changes.writes {
            match value {
                Some(v) => {
                    version += 1;
                    self.values
                        .insert((f, key.as_str()), (version, v.as_slice()))
                        .map_err(storage)?;
                }
                None => {
                    self.values.remove((f, key.as_str())).map_err(storage)?;
                }
            }
        }
        self.meta
            .insert((f, VERSION_SLOT), version)
            .map_err(storage)?;
        self.meta
            .insert((f, BYTES_SLOT), bytes.max(0) as u64)
            .map_err(storage)?;
        if let Some((id, attempt)) = job {
            self.applied
                .insert(id.0, (attempt, now_ms()))
                .map_err(storage)?;
        }
        Ok(KvVerdict::Applied)
    }

    /// Removes every key of `function` (it was deleted).
    pub(crate) fn remove_function(&mut self, function: &str) -> Result<(), StoreError> {
        self.values
            .retain_in((function, "")..=(function, "\u{10ffff}"), |_, _| false)
            .map_err(storage)?;
        self.meta
            .remove((function, VERSION_SLOT))
            .map_err(storage)?;
        self.meta.remove((function, BYTES_SLOT)).map_err(storage)?;
        Ok(())
    }

    /// Forgets the markers of jobs created before `before` (ms since the Unix epoch; a job
    /// id begins with its creation time), at most `limit`. Returns how many.
    pub(crate) fn sweep_markers(&mut self, before: u64, limit: usize) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for row in self
            .applied
            .range(..((before as u128) << 80))
            .map_err(storage)?
            .take(limit)
        {
            old.push(row.map_err(storage)?.0.value());
        }
        for id in &old {
            self.applied.remove(*id).map_err(storage)?;
        }
        Ok(old.len())
    }
}

/// The failed outcome a verdict makes of a success, if it is not applied.
pub(crate) fn failure(verdict: KvVerdict) -> Option<crate::job::Outcome> {
    use crate::job::{FailureKind, Outcome};
    match verdict {
        KvVerdict::Applied | KvVerdict::AlreadyApplied => None,
        KvVerdict::Conflict(key) => Some(Outcome::Failed {
            kind: FailureKind::Conflict,
            message: format!(
                "{key} was changed by another commit after this attempt read it; nothing it did was kept, and it runs again"
            ),
        }),
        KvVerdict::Full(message) => Some(Outcome::Failed {
            kind: FailureKind::Retryable,
            message,
        }),
    }
}

/// The committed version (0: absent) and value of `key` of `function`.
pub(crate) fn get(
    db: &redb::Database,
    function: &str,
    key: &str,
) -> Result<(u64, Option<Vec<u8>>), StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(KV) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, None)),
        Err(e) => return Err(storage(e)),
    };
    Ok(match table.get((function, key)).map_err(storage)? {
        Some(v) => {
            let (version, value) = v.value();
            (version, Some(value.to_vec()))
        }
        None => (0, None),
    })
}

/// The committed keys of `function` after skipping `skip`, at most `limit`, as a listing in
/// the commit's own transaction sees them.
fn page_of(
    values: &impl ReadableTable<(&'static str, &'static str), (u64, &'static [u8])>,
    function: &str,
    skip: usize,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for row in values
        .range((function, "")..=(function, "\u{10ffff}"))
        .map_err(storage)?
        .skip(skip)
        .take(limit)
    {
        out.push(row.map_err(storage)?.0.value().1.to_string());
    }
    Ok(out)
}

/// Keys of `function` starting with `prefix`, in order, after skipping `skip`, at most
/// `limit`.
pub(crate) fn keys(
    db: &redb::Database,
    function: &str,
    prefix: Option<&str>,
    skip: usize,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(KV) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(e)),
    };
    let prefix = prefix.unwrap_or("");
    let mut out = Vec::new();
    for row in table
        .range((function, prefix)..=(function, "\u{10ffff}"))
        .map_err(storage)?
        .skip(skip)
    {
        let (key, _) = row.map_err(storage)?;
        let key = key.value().1;
        if !key.starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push(key.to_string());
    }
    Ok(out)
}

impl Store {
    /// The committed version (0: absent) and value of a function's key.
    pub fn kv_get(&self, function: &str, key: &str) -> Result<(u64, Option<Vec<u8>>), StoreError> {
        self.shards[KV_SHARD].read(|db| get(db, function, key))
    }

    /// A function's keys starting with `prefix`, in order: at most `limit`, after skipping
    /// `skip`.
    pub fn kv_keys(
        &self,
        function: &str,
        prefix: Option<&str>,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.shards[KV_SHARD].read(|db| keys(db, function, prefix, skip, limit))
    }

    /// Writes keys of a function's state (the API's `PUT`/`DELETE`), durably; bumps their
    /// versions, so attempts that read them run again.
    pub async fn kv_write(&self, changes: crate::job::KvChanges) -> Result<KvVerdict, StoreError> {
        self.shards[KV_SHARD]
            .call(|reply| Op::KvWrite { changes, reply })
            .await?
    }

    /// Before a success of a job outside the key-value shard is recorded: commits its
    /// key-value changes there (once per job), and turns the report into the failure a
    /// conflict or a full store makes of it. Jobs of the key-value shard commit their changes
    /// with their success instead.
    pub async fn settle_kv(
        &self,
        id: JobId,
        attempt: u32,
        mut report: AttemptReport,
    ) -> AttemptReport {
        if shard_of(id) == KV_SHARD || report.kv.is_none() {
            return report;
        }
        let Some(changes) = report.kv.take() else {
            return report;
        };
        let verdict = self.shards[KV_SHARD]
            .call(|reply| Op::KvCommit {
                id,
                attempt,
                changes,
                reply,
            })
            .await
            .and_then(|r| r);
        let failed = match verdict {
            Ok(verdict) => failure(verdict),
            Err(e) => Some(crate::job::Outcome::Failed {
                kind: crate::job::FailureKind::Retryable,
                message: format!(
                    "its key-value writes could not be committed ({e}); it runs again"
                ),
            }),
        };
        if let Some(outcome) = failed {
            report.outcome = outcome;
            report.emitted.clear();
        }
        report
    }
}
