//! Key-value state for handlers (`wasi:keyvalue` store, atomics and batch) on the function's
//! one bucket, `default`. Reads see the committed state plus the attempt's own writes; writes
//! are staged in the sandbox and reach the store only with the attempt's success, together
//! with the version of every key the attempt read, so the store can refuse a success whose
//! reads were changed by another commit (optimistic concurrency: the job runs again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::component::Resource;

use super::bindings::wasi::keyvalue::{atomics, batch, store};
use super::sandbox::Sandbox;
use crate::job::KvChanges;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most keys one attempt may write.
pub const MAX_WRITES: usize = 1000;
/// Most bytes of values one attempt may write.
pub const MAX_WRITTEN_BYTES: usize = 16 << 20;
/// Keys one `list-keys` call answers at most.
const PAGE: usize = 1000;
/// The one bucket a function has.
pub const BUCKET: &str = "default";

/// The handle a guest holds for its bucket (there is only its function's).
pub struct Bucket;

/// Where committed key-value state is read from.
pub trait KvSource: Send + Sync {
    /// The committed version (0: absent) and value of `key` of `function`.
    fn get(&self, function: &str, key: &str) -> Result<(u64, Option<Vec<u8>>), String>;
    /// Committed keys of `function` in order, skipping `skip`, at most `limit`.
    fn keys(&self, function: &str, skip: usize, limit: usize) -> Result<Vec<String>, String>;
}

impl KvSource for super::StoreReads {
    fn get(&self, function: &str, key: &str) -> Result<(u64, Option<Vec<u8>>), String> {
        super::resolve(self.0.kv_get(function, key)).map_err(|e| e.to_string())
    }
    fn keys(&self, function: &str, skip: usize, limit: usize) -> Result<Vec<String>, String> {
        super::resolve(self.0.kv_keys(function, None, skip, limit)).map_err(|e| e.to_string())
    }
}

/// One attempt's view of its function's state: what it read (with versions) and what it
/// staged.
pub(crate) struct KvAttempt {
    source: Arc<dyn KvSource>,
    function: String,
    /// Version of each key when first read (0: absent).
    reads: HashMap<String, u64>,
    /// Pages of committed keys listed.
    listed: Vec<crate::job::KeyPage>,
    /// Staged writes (`None`: delete).
    writes: BTreeMap<String, Option<Vec<u8>>>,
    written: usize,
    /// Why writes are refused here (a batch), if so.
    read_only: Option<&'static str>,
}

type Outcome<T> = Result<T, store::Error>;

fn other(message: impl Into<String>) -> store::Error {
    store::Error::Other(message.into())
}

impl KvAttempt {
    pub(crate) fn new(source: Arc<dyn KvSource>, function: String) -> Self {
        KvAttempt {
            source,
            function,
            reads: HashMap::new(),
            listed: Vec::new(),
            writes: BTreeMap::new(),
            written: 0,
            read_only: None,
        }
    }

    /// The same, refusing every write with `why`.
    pub(crate) fn read_only(source: Arc<dyn KvSource>, function: String, why: &'static str) -> Self {
        KvAttempt {
            read_only: Some(why),
            ..KvAttempt::new(source, function)
        }
    }

    fn check_key(key: &str) -> Outcome<()> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(other(format!(
                "a key is 1 to {MAX_KEY} bytes, not {}",
                key.len()
            )));
        }
        Ok(())
    }

    /// The value as this attempt sees it: its own write, else the committed one (remembering
    /// the version read).
    fn get(&mut self, key: &str) -> Outcome<Option<Vec<u8>>> {
        Self::check_key(key)?;
        if let Some(staged) = self.writes.get(key) {
            return Ok(staged.clone());
        }
        let (version, value) = self
            .source
            .get(&self.function, key)
            .map_err(|e| other(format!("reading {key:?} failed: {e}")))?;
        self.reads.entry(key.to_string()).or_insert(version);
        Ok(value)
    }

    fn stage(&mut self, key: String, value: Option<Vec<u8>>) -> Outcome<()> {
        if let Some(why) = self.read_only {
            return Err(other(why));
        }
        Self::check_key(&key)?;
        let size = value.as_ref().map_or(0, Vec::len);
        if size > MAX_VALUE {
            return Err(other(format!(
                "a value is at most {MAX_VALUE} bytes, not {size}: keep large data in the job's output or an outside store"
            )));
        }
        if !self.writes.contains_key(&key) && self.writes.len() >= MAX_WRITES {
            return Err(other(format!(
                "an attempt may write at most {MAX_WRITES} keys"
            )));
        }
        if self.written + size > MAX_WRITTEN_BYTES {
            return Err(other(format!(
                "an attempt may write at most {} MiB of values",
                MAX_WRITTEN_BYTES >> 20
            )));
        }
        self.written += size;
        self.writes.insert(key, value);
        Ok(())
    }

    fn increment(&mut self, key: String, delta: u64) -> Outcome<u64> {
        if let Some(why) = self.read_only {
            return Err(other(why));
        }
        let current = match self.get(&key)? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    other(format!(
                        "{key:?} does not hold a number (increment keeps decimal text)"
                    ))
                })?,
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| other(format!("incrementing {key:?} overflows")))?;
        self.stage(key, Some(next.to_string().into_bytes()))?;
        Ok(next)
    }

    fn list(&mut self, cursor: Option<u64>) -> Outcome<store::KeyResponse> {
        let skip = cursor.unwrap_or(0).min(usize::MAX as u64) as usize;
        let committed = self
            .source
            .keys(&self.function, skip, PAGE)
            .map_err(|e| other(format!("listing keys failed: {e}")))?;
        // A listing is a read too: the success commits only if this page is unchanged then.
        self.listed.push(crate::job::KeyPage {
            skip,
            limit: PAGE,
            keys: committed.clone(),
        });
        let next = (committed.len() == PAGE).then_some((skip + PAGE) as u64);
        let mut keys: Vec<String> = committed
            .into_iter()
            .filter(|k| !matches!(self.writes.get(k), Some(None)))
            .collect();
        if skip == 0 {
            // The attempt's own new keys, on the first page.
            for (k, v) in &self.writes {
                if v.is_some() && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            keys.sort();
        }
        Ok(store::KeyResponse { keys, cursor: next })
    }

    /// What the attempt did, for the store to commit with its success; `None` when it wrote
    /// nothing (a read-only attempt needs no check).
    pub(crate) fn changes(&mut self) -> Option<KvChanges> {
        if self.writes.is_empty() {
            return None;
        }
        let mut reads: Vec<(String, u64)> = self.reads.drain().collect();
        reads.sort();
        Some(KvChanges {
            function: self.function.clone(),
            reads,
            listed: std::mem::take(&mut self.listed),
            writes: std::mem::take(&mut self.writes).into_iter().collect(),
        })
    }
}

impl store::Host for Sandbox {
    fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        if !(identifier.is_empty() || identifier == BUCKET) {
            return Err(store::Error::NoSuchStore);
        }
        self.table
            .push(Bucket)
            .map_err(|e| other(format!("too many open buckets: {e}")))
    }
}

impl store::HostBucket for Sandbox {
    fn get(&mut self, _: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        self.kv.get(&key)
    }

    fn set(&mut self, _: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        self.kv.stage(key, Some(value))
    }

    fn delete(&mut self, _: Resource<Bucket>, key: String) -> Outcome<()> {
        self.kv.stage(key, None)
    }

    fn exists(&mut self, _: Resource<Bucket>, key: String) -> Outcome<bool> {
        Ok(self.kv.get(&key)?.is_some())
    }

    fn list_keys(
        &mut self,
        _: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Outcome<store::KeyResponse> {
        self.kv.list(cursor)
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Sandbox {
    fn increment(&mut self, _: Resource<Bucket>, key: String, delta: u64) -> Outcome<u64> {
        self.kv.increment(key, delta)
    }
}

impl batch::Host for Sandbox {
    fn get_many(
        &mut self,
        _: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        keys.into_iter()
            .map(|k| Ok(self.kv.get(&k)?.map(|v| (k, v))))
            .collect()
    }

    fn set_many(&mut self, _: Resource<Bucket>, pairs: Vec<(String, Vec<u8>)>) -> Outcome<()> {
        pairs
            .into_iter()
            .try_for_each(|(k, v)| self.kv.stage(k, Some(v)))
    }

    fn delete_many(&mut self, _: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        keys.into_iter().try_for_each(|k| self.kv.stage(k, None))
    }
}
