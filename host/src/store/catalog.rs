//! The catalog: what is deployed (functions, their components, compiled artifacts), in its own
//! redb file. Catalog writes are rare (deploys, deletes); each is its own
//! `Durability::Immediate` transaction, run on a blocking thread. The shard writers check
//! submits against the in-memory set of deployed names kept here.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::RwLock;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::tables::*;
use super::{RollbackError, StoreError, storage};
use crate::manifest::Subscription;

/// The deployed functions with their `max_queued` and subscriptions, shared with every shard
/// writer so a submit checks existence and admission, and a publish finds its subscribers,
/// without a read transaction.
#[derive(Default)]
pub(crate) struct Deployed(RwLock<HashMap<String, Entry>>);

/// What a writer needs to know of one deployed function.
struct Entry {
    max_queued: u64,
    subscriptions: Vec<Subscription>,
    retry: crate::manifest::RetryPolicy,
    /// Unfinished jobs of one concurrency key let into the ready queue at once: twice its
    /// `key_concurrency` (the scheduler runs at most that many; the rest are its next turns,
    /// started without waiting for the commit that ends the ones before).
    key_window: u32,
    /// Weights of keys that have one (others weigh 1): their windows grow with them.
    key_weights: std::collections::BTreeMap<String, u32>,
    /// Where jobs take their concurrency key from, for jobs the store makes itself
    /// (deliveries, emitted jobs, pipeline stages): a JSON rule reads their input.
    key_rule: Option<crate::flow::KeyRule>,
    /// `debounce_ms` and `debounce_max_ms`, when it debounces.
    debounce: Option<(u64, Option<u64>)>,
}

impl Deployed {
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.0.read().contains_key(name)
    }

    /// The function's `max_queued`, if it is deployed.
    pub(crate) fn max_queued(&self, name: &str) -> Option<u64> {
        self.0.read().get(name).map(|e| e.max_queued)
    }

    /// How many unfinished jobs of the function's concurrency key `key` the ready queue takes
    /// at once: its window times the key's weight (1 when the function is not deployed).
    pub(crate) fn key_window(&self, name: &str, key: &str) -> u32 {
        self.0.read().get(name).map_or(1, |e| {
            e.key_window
                .saturating_mul(e.key_weights.get(key).copied().unwrap_or(1))
        })
    }

    /// The concurrency key the function's JSON rule finds in `input`, if it has one.
    pub(crate) fn key_of(&self, name: &str, input: &[u8]) -> Option<String> {
        match self.0.read().get(name)?.key_rule.as_ref()? {
            rule @ crate::flow::KeyRule::Json(_) => rule.key_of(None, input),
            crate::flow::KeyRule::Header(_) => None,
        }
    }

    /// The function's `debounce_ms` and `debounce_max_ms`, when it is deployed and debounces.
    pub(crate) fn debounce(&self, name: &str) -> Option<(u64, Option<u64>)> {
        self.0.read().get(name)?.debounce
    }

    /// The function's retry policy, if it is deployed.
    pub(crate) fn retry(&self, name: &str) -> Option<crate::manifest::RetryPolicy> {
        self.0.read().get(name).map(|e| e.retry)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.0.read().keys().cloned().collect()
    }

    /// The functions subscribed to `topic` for events of `event_type`, by name.
    pub(crate) fn subscribers(&self, topic: &str, event_type: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .0
            .read()
            .iter()
            .filter(|(_, e)| {
                e.subscriptions
                    .iter()
                    .any(|s| s.topic == topic && s.matches(event_type))
            })
            .map(|(name, _)| name.clone())
            .collect();
        out.sort_unstable();
        out
    }

    fn set(&self, record: &FunctionRecord) {
        self.0.write().insert(
            record.name.clone(),
            Entry {
                max_queued: record.settings.max_queued,
                subscriptions: record.subscriptions.clone(),
                retry: record.settings.retry,
                key_window: record.settings.key_window().saturating_mul(2),
                key_rule: record.concurrency_key.clone(),
                key_weights: record.key_weights.clone(),
                debounce: record
                    .settings
                    .debounce_ms
                    .map(|wait| (wait, record.settings.debounce_max_ms)),
            },
        );
    }
}

/// Records `record` as its version in the history (paused state aside).
fn put_version(txn: &redb::WriteTransaction, record: &FunctionRecord) -> Result<(), StoreError> {
    let snapshot = FunctionRecord {
        paused: false,
        ..record.clone()
    };
    txn.open_table(VERSIONS)
        .map_err(storage)?
        .insert(
            (record.name.as_str(), record.version),
            encode_function(&snapshot).as_slice(),
        )
        .map_err(storage)?;
    Ok(())
}

/// A catalog record that does not decode.
pub(crate) fn damaged(detail: String) -> StoreError {
    StoreError::Damaged {
        file: "catalog.redb".into(),
        detail,
    }
}

/// The catalog file and the deployed names it holds.
pub(crate) struct Catalog {
    pub(super) db: Database,
    deployed: Arc<Deployed>,
}

impl Catalog {
    /// Opens (or creates) the catalog file and loads the deployed names.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = super::datafile::open(path, cache_bytes)?;
        let catalog = Catalog {
            db,
            deployed: Arc::default(),
        };
        let txn = catalog.write()?;
        {
            txn.open_table(FUNCTIONS).map_err(storage)?;
            txn.open_table(COMPONENTS).map_err(storage)?;
            txn.open_table(ARTIFACTS).map_err(storage)?;
            txn.open_table(VERSIONS).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
            txn.open_table(SECRETS).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        for record in catalog.functions()? {
            catalog.deployed.set(&record);
            // Functions deployed before versions were kept start their history now.
            if catalog.versions(&record.name)?.is_empty() {
                let txn = catalog.write()?;
                put_version(&txn, &record)?;
                txn.commit().map_err(storage)?;
            }
        }
        Ok(catalog)
    }

    pub(crate) fn deployed(&self) -> &Arc<Deployed> {
        &self.deployed
    }

    pub(super) fn write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        Ok(txn)
    }

    /// Stores a function with its component and artifact in one commit. The same code with the
    /// same settings changes nothing and returns the stored record; otherwise the version grows.
    pub(crate) fn deploy(
        &self,
        record: FunctionRecord,
        wasm: &[u8],
        artifact_key: &str,
        artifact: &[u8],
        base: super::DeployBase,
    ) -> Result<FunctionRecord, StoreError> {
        let txn = self.write()?;
        let record = {
            let mut functions = txn.open_table(FUNCTIONS).map_err(storage)?;
            let previous = functions
                .get(record.name.as_str())
                .map_err(storage)?
                .map(|v| decode_function(v.value()))
                .transpose()
                .map_err(super::catalog::damaged)?;
            let record = match super::versions::deployed(record, previous.as_ref(), base) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    let previous = previous.expect("an unchanged deploy has a previous version");
                    drop(functions);
                    txn.abort().map_err(storage)?;
                    self.deployed.set(&previous);
                    return Ok(previous);
                }
                Err(e) => {
                    drop(functions);
                    txn.abort().map_err(storage)?;
                    return Err(e);
                }
            };
            let mut components = txn.open_table(COMPONENTS).map_err(storage)?;
            if components
                .get(record.digest.as_str())
                .map_err(storage)?
                .is_none()
            {
                components
                    .insert(record.digest.as_str(), wasm)
                    .map_err(storage)?;
            }
            txn.open_table(ARTIFACTS)
                .map_err(storage)?
                .insert(artifact_key, artifact)
                .map_err(storage)?;
            functions
                .insert(record.name.as_str(), encode_function(&record).as_slice())
                .map_err(storage)?;
            put_version(&txn, &record)?;
            record
        };
        txn.commit().map_err(storage)?;
        // Submits are accepted only once the function is durable.
        self.deployed.set(&record);
        Ok(record)
    }

    /// Gives a deployed function new settings (same code) as a new version; `None` when it is
    /// not deployed. The same settings change nothing.
    pub(crate) fn configure(
        &self,
        name: &str,
        settings: crate::manifest::Settings,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let txn = self.write()?;
        let record = {
            let mut functions = txn.open_table(FUNCTIONS).map_err(storage)?;
            let current = functions
                .get(name)
                .map_err(storage)?
                .map(|v| decode_function(v.value()))
                .transpose()
                .map_err(super::catalog::damaged)?;
            let Some(current) = current else {
                return Ok(None);
            };
            let Some(record) = super::versions::configured(&current, settings) else {
                return Ok(Some(current));
            };
            functions
                .insert(name, encode_function(&record).as_slice())
                .map_err(storage)?;
            put_version(&txn, &record)?;
            record
        };
        txn.commit().map_err(storage)?;
        self.deployed.set(&record);
        Ok(Some(record))
    }

    /// Makes an earlier version current again, code and settings together, as a new version
    /// (`to`: that version; `None`: the one before the current). The paused state is kept.
    pub(crate) fn rollback(
        &self,
        name: &str,
        to: Option<u32>,
    ) -> Result<Result<FunctionRecord, RollbackError>, StoreError> {
        let txn = self.write()?;
        let record = {
            let mut functions = txn.open_table(FUNCTIONS).map_err(storage)?;
            let current = functions
                .get(name)
                .map_err(storage)?
                .map(|v| decode_function(v.value()))
                .transpose()
                .map_err(super::catalog::damaged)?;
            let Some(current) = current else {
                return Ok(Err(RollbackError::NotFound(name.to_string())));
            };
            let to = match super::versions::rollback_target(&current, to) {
                Ok(to) => to,
                Err(e) => return Ok(Err(e)),
            };
            let versions = txn.open_table(VERSIONS).map_err(storage)?;
            let target = versions
                .get((name, to))
                .map_err(storage)?
                .map(|v| decode_function(v.value()))
                .transpose()
                .map_err(super::catalog::damaged)?;
            drop(versions);
            let Some(target) = target else {
                return Ok(Err(RollbackError::UnknownVersion {
                    name: name.to_string(),
                    to,
                }));
            };
            let record = super::versions::rolled_back(&current, target);
            functions
                .insert(name, encode_function(&record).as_slice())
                .map_err(storage)?;
            put_version(&txn, &record)?;
            record
        };
        txn.commit().map_err(storage)?;
        self.deployed.set(&record);
        Ok(Ok(record))
    }

    /// Pauses or resumes a function (no new version); `None` when it is not deployed.
    pub(crate) fn set_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let txn = self.write()?;
        let record = {
            let mut functions = txn.open_table(FUNCTIONS).map_err(storage)?;
            let current = functions
                .get(name)
                .map_err(storage)?
                .map(|v| decode_function(v.value()))
                .transpose()
                .map_err(super::catalog::damaged)?;
            let Some(mut record) = current else {
                return Ok(None);
            };
            if record.paused == paused {
                return Ok(Some(record));
            }
            record.paused = paused;
            functions
                .insert(name, encode_function(&record).as_slice())
                .map_err(storage)?;
            record
        };
        txn.commit().map_err(storage)?;
        Ok(Some(record))
    }

    /// A function's versions, oldest first; empty when it is not deployed.
    pub(crate) fn versions(&self, name: &str) -> Result<Vec<FunctionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(VERSIONS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table
            .range((name, 0u32)..=(name, u32::MAX))
            .map_err(storage)?
        {
            let (_, v) = row.map_err(storage)?;
            out.push(decode_function(v.value()).map_err(super::catalog::damaged)?);
        }
        Ok(out)
    }

    /// Stores a compiled artifact (after an engine upgrade made the old one unusable).
    pub(crate) fn save_artifact(&self, key: &str, artifact: &[u8]) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(ARTIFACTS)
            .map_err(storage)?
            .insert(key, artifact)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Removes a function; false when it was not deployed. Submits are refused from the moment
    /// this starts; if the commit fails, the function is deployed again.
    pub(crate) fn remove_function(&self, name: &str) -> Result<bool, StoreError> {
        if self.deployed.0.write().remove(name).is_none() {
            return Ok(false);
        }
        let result = self.write().and_then(|txn| {
            txn.open_table(FUNCTIONS)
                .map_err(storage)?
                .remove(name)
                .map_err(storage)?;
            // A later deploy of the name starts a new history at version 1, with no secrets.
            txn.open_table(VERSIONS)
                .map_err(storage)?
                .retain_in((name, 0u32)..=(name, u32::MAX), |_, _| false)
                .map_err(storage)?;
            txn.open_table(SECRETS)
                .map_err(storage)?
                .retain_in((name, "")..=(name, "\u{10ffff}"), |_, _| false)
                .map_err(storage)?;
            txn.commit().map_err(storage)
        });
        if result.is_err()
            && let Ok(Some(record)) = self.function(name)
        {
            self.deployed.set(&record);
        }
        result.map(|()| true)
    }

    /// One deployed function.
    pub(crate) fn function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FUNCTIONS).map_err(storage)?;
        let Some(row) = table.get(name).map_err(storage)? else {
            return Ok(None);
        };
        decode_function(row.value())
            .map(Some)
            .map_err(super::catalog::damaged)
    }

    /// Every deployed function, by name.
    pub(crate) fn functions(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(FUNCTIONS).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(decode_function(v.value()).map_err(super::catalog::damaged)?);
        }
        Ok(out)
    }

    /// The host setting stored under `key`; when there is none, `initial` is stored first.
    pub(crate) fn setting_or_init(&self, key: &str, initial: &[u8]) -> Result<Vec<u8>, StoreError> {
        let txn = self.write()?;
        let value = {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let stored = meta.get(key).map_err(storage)?.map(|v| v.value().to_vec());
            match stored {
                Some(value) => {
                    drop(meta);
                    txn.abort().map_err(storage)?;
                    return Ok(value);
                }
                None => {
                    meta.insert(key, initial).map_err(storage)?;
                    initial.to_vec()
                }
            }
        };
        txn.commit().map_err(storage)?;
        Ok(value)
    }

    /// Stores a host setting under `key`.
    pub(crate) fn set_setting(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.write()?;
        txn.open_table(META)
            .map_err(storage)?
            .insert(key, value)
            .map_err(storage)?;
        txn.commit().map_err(storage)
    }

    /// Bytes stored under `key` in a blob table (components, artifacts).
    pub(crate) fn blob(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(table).map_err(storage)?;
        Ok(table.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }
}
