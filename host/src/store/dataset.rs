//! The data directory's identity: which files make up one host's data. The catalog records a
//! random dataset id and how many job shards there are; each shard file records the id and its
//! number. Opening checks them before anything else, so a job file that was deleted, emptied or
//! copied in from another directory (or a catalog that went missing) is refused with what to do,
//! instead of the host starting empty and answering 404 for jobs it accepted.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::tables::META;
use super::{StoreError, storage};

/// The shard file's identity record, under [`KEY`].
const SHARD_IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// The key of the identity record, in the catalog's `meta` table and each shard's `identity`.
const KEY: &str = "dataset";
/// Where a refusal sends the operator.
const RESTORE: &str = "restore it from a backup of the whole data directory (docs/delivery.md#checking-and-restoring-a-data-directory)";

/// What the catalog records about the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Dataset {
    /// Random, made when the directory was first used.
    pub(crate) id: String,
    /// How many job shard files there are (`jobs-0.redb` ..).
    pub(crate) shards: usize,
}

/// What a shard file records about itself.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ShardIdentity {
    id: String,
    shard: usize,
}

/// A file as found on disk, before it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Missing,
    /// Present with no bytes (redb would quietly make a new, empty database of it).
    Empty,
    Present,
}

fn found(path: &Path) -> Found {
    match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => Found::Empty,
        Ok(_) => Found::Present,
        Err(_) => Found::Missing,
    }
}

/// The shard files present (non-empty or empty) in `data_dir`, by number.
fn shard_files(path_of: impl Fn(usize) -> PathBuf, max: usize) -> Vec<(usize, Found)> {
    (0..max)
        .map(|n| (n, found(&path_of(n))))
        .filter(|(_, f)| *f != Found::Missing)
        .collect()
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// Before the catalog is opened: a catalog that is missing or empty while job files exist
/// means the functions and their settings are gone; refuse rather than start without them.
pub(crate) fn check_catalog(
    data_dir: &Path,
    catalog: &Path,
    path_of: impl Fn(usize) -> PathBuf,
    max: usize,
) -> Result<(), StoreError> {
    let state = found(catalog);
    if state == Found::Present {
        return Ok(());
    }
    let shards = shard_files(&path_of, max);
    if shards.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = shards
        .iter()
        .map(|(n, _)| format!("jobs-{n}.redb"))
        .collect();
    Err(StoreError::Storage(format!(
        "{} is {} but {} holds job files ({}): the deployed functions and their settings are gone. Stop, and {RESTORE}; or, to start with no data, move the whole directory away",
        name(catalog),
        if state == Found::Empty {
            "empty (0 bytes)"
        } else {
            "missing"
        },
        name(data_dir),
        listed.join(", ")
    )))
}

/// After the catalog is open: the dataset it records, or (a new directory, or one from before
/// identities were recorded) a new one adopting the shard files present, recorded at once with
/// no shards required (so an interrupted first start keeps its id). Checks every recorded
/// shard file is there and not empty. Returns the dataset with `shards` at least `wanted` and
/// covering every file present; [`record`] stores it once every shard is open. `adopt: false`
/// (an offline check) writes nothing.
pub(crate) fn settle(
    catalog: &Database,
    data_dir: &Path,
    path_of: impl Fn(usize) -> PathBuf,
    max: usize,
    wanted: usize,
    adopt: bool,
) -> Result<Dataset, StoreError> {
    let present = shard_files(&path_of, max);
    let recorded = {
        let txn = catalog.begin_read().map_err(storage)?;
        match txn.open_table(META) {
            Ok(meta) => meta
                .get(KEY)
                .map_err(storage)?
                .map(|v| {
                    serde_json::from_slice::<Dataset>(v.value()).map_err(|e| {
                        StoreError::Storage(format!(
                            "the catalog's dataset record does not decode ({e}): the catalog is damaged; run `sluice check --data {}`",
                            name(data_dir)
                        ))
                    })
                })
                .transpose()?,
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        }
    };
    let mut dataset = match recorded {
        Some(d) => {
            for n in 0..d.shards {
                let path = path_of(n);
                match found(&path) {
                    Found::Present => {}
                    state => {
                        return Err(StoreError::Storage(format!(
                            "{} is {}, but the catalog records {} job shard file(s) in {}: the jobs it held would be lost. Stop, and {RESTORE}",
                            name(&path),
                            if state == Found::Empty {
                                "empty (0 bytes)"
                            } else {
                                "missing"
                            },
                            d.shards,
                            name(data_dir)
                        )));
                    }
                }
            }
            d
        }
        None => {
            // A directory from before identities were kept adopts its files as they are; they
            // must run from jobs-0 without a gap.
            if let Some(gap) = (0..present.len()).find(|n| !present.iter().any(|(m, _)| m == n)) {
                return Err(StoreError::Storage(format!(
                    "{} is missing while later job files exist: the jobs it held would be lost. Stop, and {RESTORE}",
                    name(&path_of(gap))
                )));
            }
            if let Some((n, _)) = present.iter().find(|(_, f)| *f == Found::Empty) {
                return Err(StoreError::Storage(format!(
                    "{} is empty (0 bytes): the jobs it held would be lost. Stop, and {RESTORE}",
                    name(&path_of(*n))
                )));
            }
            let fresh = Dataset {
                id: new_id()?,
                shards: 0,
            };
            if adopt {
                record(catalog, &fresh)?;
            }
            fresh
        }
    };
    let highest = present.iter().map(|(n, _)| n + 1).max().unwrap_or(0);
    dataset.shards = dataset.shards.max(wanted).max(highest);
    Ok(dataset)
}

/// Checks that an open shard file belongs to `dataset` as shard `n`, or stamps it (a new file,
/// or one from before identities were kept).
pub(crate) fn check_shard(
    db: &Database,
    path: &Path,
    dataset: &Dataset,
    n: usize,
) -> Result<(), StoreError> {
    identify(db, path, dataset, n, true)
}

/// Checks that a shard file belongs to `dataset` as shard `n`, changing nothing (one without
/// an identity passes: the next start stamps it).
pub(crate) fn verify_shard(
    db: &Database,
    path: &Path,
    dataset: &Dataset,
    n: usize,
) -> Result<(), StoreError> {
    identify(db, path, dataset, n, false)
}

fn identify(
    db: &Database,
    path: &Path,
    dataset: &Dataset,
    n: usize,
    stamp: bool,
) -> Result<(), StoreError> {
    let stored = {
        let txn = db.begin_read().map_err(storage)?;
        match txn.open_table(SHARD_IDENTITY) {
            Ok(t) => t.get(KEY).map_err(storage)?.map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(storage(e)),
        }
    };
    let expected = ShardIdentity {
        id: dataset.id.clone(),
        shard: n,
    };
    match stored {
        Some(bytes) => {
            let identity: ShardIdentity = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Storage(format!(
                    "{}: its identity record does not decode ({e}); the file is damaged. Run `sluice check`, or {RESTORE}",
                    name(path)
                ))
            })?;
            if identity != expected {
                return Err(StoreError::Storage(format!(
                    "{} belongs to another data directory or position (dataset {}, shard {}; this directory is dataset {}, and the file is in place of shard {n}): it was copied or renamed in. Put the right file back, or {RESTORE}",
                    name(path),
                    identity.id,
                    identity.shard,
                    dataset.id
                )));
            }
            Ok(())
        }
        None if !stamp => Ok(()),
        None => {
            let mut txn = db.begin_write().map_err(storage)?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            {
                let mut t = txn.open_table(SHARD_IDENTITY).map_err(storage)?;
                let bytes = serde_json::to_vec(&expected).expect("an identity always encodes");
                t.insert(KEY, bytes.as_slice()).map_err(storage)?;
            }
            txn.commit().map_err(storage)
        }
    }
}

/// Stores the dataset in the catalog (once every shard file is open and stamped, so a crash
/// in between leaves stamped files the next start adopts).
pub(crate) fn record(catalog: &Database, dataset: &Dataset) -> Result<(), StoreError> {
    let mut txn = catalog.begin_write().map_err(storage)?;
    txn.set_durability(redb::Durability::Immediate)
        .map_err(|e| StoreError::Storage(e.to_string()))?;
    {
        let mut meta = txn.open_table(META).map_err(storage)?;
        let bytes = serde_json::to_vec(dataset).expect("a dataset always encodes");
        meta.insert(KEY, bytes.as_slice()).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

fn new_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Storage(format!("no randomness for a dataset id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
