//! Claim checks: payloads and outputs above the threshold (`--claim-check-bytes`, default 256
//! KiB) are stored once per shard, content-addressed by SHA-256, as chunk rows keyed by
//! (digest, chunk number): redb reads a value whole, so chunks are what make streaming
//! possible. Jobs carry a [`BlobRef`] instead of the bytes.
//!
//! A blob counts its references (each job whose input or output it is). It is written with
//! the first reference and deleted, chunks and all, when the last one goes (the retention
//! sweeper or a purge deleting its jobs). All of it happens inside the writer's transactions,
//! so a blob and the jobs that refer to it are always committed together.

use redb::{ReadableTable, Table};

use super::tables::{BLOB_CHUNKS, BLOBS};
use super::{StoreError, storage};
use crate::job::BlobRef;

/// Bytes per chunk row.
pub(crate) const CHUNK: usize = 256 << 10;

/// Chunk rows a blob of `size` bytes takes.
pub(crate) fn chunks(size: u64) -> u32 {
    size.div_ceil(CHUNK as u64) as u32
}

/// The bytes of a blob being written, handed out one [`CHUNK`] at a time.
pub(crate) trait BlobBytes {
    /// How many bytes there are.
    fn size(&self) -> u64;
    /// Calls `each` with every chunk in order (each [`CHUNK`] bytes, the last one shorter).
    fn each_chunk(
        &self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

impl BlobBytes for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn each_chunk(
        &self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.chunks(CHUNK).try_for_each(each)
    }
}

impl BlobBytes for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }

    fn each_chunk(
        &self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.as_slice().each_chunk(each)
    }
}

/// A spooled output is read from its file a chunk at a time, so its size never costs memory.
impl BlobBytes for crate::output::Spool {
    fn size(&self) -> u64 {
        self.blob().size
    }

    fn each_chunk(
        &self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut failed = None;
        let read = self.for_each_piece(CHUNK, &mut |piece| {
            each(piece).map_err(|e| {
                let message = e.to_string();
                failed = Some(e);
                message
            })
        });
        match (read, failed) {
            (_, Some(e)) => Err(e),
            (Err(message), None) => Err(StoreError::Storage(message)),
            (Ok(()), None) => Ok(()),
        }
    }
}

/// The blob tables of one transaction.
pub(crate) struct BlobTables<'txn> {
    blobs: Table<'txn, &'static [u8], (u64, u64)>,
    chunks: Table<'txn, (&'static [u8], u32), &'static [u8]>,
}

/// How a transaction changed the blobs (applied to the host's totals after its commit).
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct BlobDelta {
    pub(crate) count: i64,
    pub(crate) bytes: i64,
}

impl<'txn> BlobTables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(BlobTables {
            blobs: txn.open_table(BLOBS).map_err(storage)?,
            chunks: txn.open_table(BLOB_CHUNKS).map_err(storage)?,
        })
    }

    /// One more reference to `blob`, writing its chunks from `data` if it is new. `data` may be
    /// empty only for a blob known to exist (e.g. a pipeline stage reusing an output).
    pub(crate) fn add_ref(
        &mut self,
        blob: BlobRef,
        data: &(impl BlobBytes + ?Sized),
        delta: &mut BlobDelta,
    ) -> Result<(), StoreError> {
        let key: &[u8] = &blob.digest;
        let existing = self.blobs.get(key).map_err(storage)?.map(|v| v.value());
        match existing {
            Some((size, refs)) => {
                self.blobs.insert(key, (size, refs + 1)).map_err(storage)?;
            }
            None => {
                if data.size() != blob.size {
                    return Err(StoreError::Storage(format!(
                        "blob {} is referred to but not stored",
                        blob.hex()
                    )));
                }
                let mut n = 0u32;
                let chunks = &mut self.chunks;
                data.each_chunk(&mut |chunk| {
                    chunks.insert((key, n), chunk).map_err(storage)?;
                    n += 1;
                    Ok(())
                })?;
                self.blobs.insert(key, (blob.size, 1)).map_err(storage)?;
                delta.count += 1;
                delta.bytes += blob.size as i64;
            }
        }
        Ok(())
    }

    /// One reference fewer; the last one deletes the blob.
    pub(crate) fn release(
        &mut self,
        blob: BlobRef,
        delta: &mut BlobDelta,
    ) -> Result<(), StoreError> {
        let key: &[u8] = &blob.digest;
        let Some((size, refs)) = self.blobs.get(key).map_err(storage)?.map(|v| v.value()) else {
            return Ok(());
        };
        if refs > 1 {
            self.blobs.insert(key, (size, refs - 1)).map_err(storage)?;
            return Ok(());
        }
        self.blobs.remove(key).map_err(storage)?;
        for n in 0..chunks(blob.size) {
            self.chunks.remove((key, n)).map_err(storage)?;
        }
        delta.count -= 1;
        delta.bytes -= size as i64;
        Ok(())
    }
}

/// Blobs and their bytes in a shard file (read at open).
pub(crate) fn totals(db: &redb::Database) -> Result<(u64, u64), StoreError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(storage)?;
    let table = match txn.open_table(BLOBS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
        Err(e) => return Err(storage(e)),
    };
    let (mut count, mut bytes) = (0, 0);
    for row in table.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        count += 1;
        bytes += v.value().0;
    }
    Ok((count, bytes))
}

/// Reads `len` bytes of a blob from `offset` (fewer at its end) in a read transaction; `None`
/// when this shard does not hold it.
pub(crate) fn read(
    db: &redb::Database,
    digest: &[u8; 32],
    offset: u64,
    len: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(storage)?;
    let blobs = txn.open_table(BLOBS).map_err(storage)?;
    let key: &[u8] = digest;
    let Some((size, _)) = blobs.get(key).map_err(storage)?.map(|v| v.value()) else {
        return Ok(None);
    };
    let chunks = txn.open_table(BLOB_CHUNKS).map_err(storage)?;
    let end = size.min(offset.saturating_add(len as u64));
    let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let mut at = offset;
    while at < end {
        let n = (at / CHUNK as u64) as u32;
        let Some(chunk) = chunks.get((key, n)).map_err(storage)? else {
            return Err(StoreError::Storage(format!(
                "chunk {n} of blob {} is missing",
                hex::encode(digest)
            )));
        };
        let chunk = chunk.value();
        let from = (at - n as u64 * CHUNK as u64) as usize;
        let to = chunk.len().min(from + (end - at) as usize);
        out.extend_from_slice(&chunk[from..to]);
        at += (to - from) as u64;
    }
    Ok(Some(out))
}
