//! A shard's redb file, reopened after a storage error. redb latches an I/O failure (a full
//! disk, say): every later operation on that `Database` fails until it is closed and opened
//! again. The writer does that here once the trouble may be over; meanwhile readers and
//! writers get a clear `StoreError` (the API's `503 storage_unavailable`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redb::Database;

use super::StoreError;

/// The open database of one shard file, or none while it is being reopened.
pub(crate) struct DataFile {
    path: PathBuf,
    cache_bytes: usize,
    db: RwLock<Option<Arc<Database>>>,
}

impl DataFile {
    /// Opens (or creates) the file.
    pub(crate) fn open(path: PathBuf, cache_bytes: usize) -> Result<DataFile, StoreError> {
        let db = open(&path, cache_bytes)?;
        Ok(DataFile {
            path,
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Runs a read on the database, naming the file in damage reports and turning a panic
    /// inside redb (some malformed pages make it panic) into one.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.get()?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&db))) {
            Ok(result) => result.map_err(|e| e.in_file(&self.path)),
            Err(panic) => Err(StoreError::panicked(&self.path, &*panic)),
        }
    }

    /// The database, unless it is being reopened after a storage error.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.db.read().clone().ok_or_else(|| {
            StoreError::Storage(format!(
                "{} is being reopened after a storage error; retry shortly",
                self.path.display()
            ))
        })
    }

    /// Closes the database and opens it again (redb repairs it if the failed commit left it
    /// needing that). Waits up to a second for readers to let go of the old one.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        // A file removed or emptied meanwhile would be created again, empty: refuse instead.
        if !std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0) {
            return Err(StoreError::Storage(format!(
                "{} was removed or emptied while the host ran: stop the host and restore the data directory (docs/delivery.md#checking-and-restoring-a-data-directory)",
                self.path.display()
            )));
        }
        let old = self.db.write().take();
        if let Some(mut old) = old {
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still_shared) => {
                        // A reader still holds it: put it back and try again later.
                        *self.db.write() = Some(still_shared);
                        return Err(StoreError::Storage(format!(
                            "{} is still in use; reopening it later",
                            self.path.display()
                        )));
                    }
                }
            }
        }
        let db = open(&self.path, self.cache_bytes)?;
        *self.db.write() = Some(Arc::new(db));
        Ok(())
    }
}

/// Opens (or creates) a redb file; a file redb panics on while opening (a malformed page) is
/// reported as damaged.
pub(crate) fn open(path: &std::path::Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let opened =
        std::panic::catch_unwind(|| Database::builder().set_cache_size(cache_bytes).create(path))
            .map_err(|panic| StoreError::panicked(path, &*panic))?;
    opened.map_err(|e| match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Damaged {
                file: path.display().to_string(),
                detail,
            }
        }
        e => StoreError::Storage(format!("cannot open {}: {e}", path.display())),
    })
}
