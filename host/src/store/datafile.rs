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

fn open(path: &std::path::Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))
}
