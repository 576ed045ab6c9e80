//! Claim checks on JetStream: a large input or output is stored once in the object store
//! (`<p>-objects`, object `blob.<sha-256>`, content-addressed: storing it again changes
//! nothing) and the job carries its reference, as with the embedded store. Blobs are kept:
//! they are not yet released when their last job is deleted.

use tokio::io::AsyncReadExt;

use super::{NatsBackend, failed};
use crate::job::BlobRef;
use crate::store::StoreError;

impl NatsBackend {
    fn blob_name(digest: &[u8; 32]) -> String {
        format!("blob.{}", hex::encode(digest))
    }

    /// Stores `bytes` as blob `blob` (once: a blob already stored is left as it is).
    pub(super) async fn keep_blob(&self, blob: BlobRef, bytes: &[u8]) -> Result<(), StoreError> {
        let name = Self::blob_name(&blob.digest);
        if self
            .objects
            .info(&name)
            .await
            .is_ok_and(|info| !info.deleted && info.size as u64 == blob.size)
        {
            return Ok(());
        }
        super::patiently("storing a blob", |_| false, || self.put_object(&name, bytes)).await
    }

    /// Stores an output streamed to a spool file as its blob (read from the file, never whole
    /// in memory; once: a blob already stored is left as it is).
    pub(super) async fn keep_spool(&self, spool: &crate::output::Spool) -> Result<(), StoreError> {
        let blob = spool.blob();
        let name = Self::blob_name(&blob.digest);
        if self
            .objects
            .info(&name)
            .await
            .is_ok_and(|info| !info.deleted && info.size as u64 == blob.size)
        {
            return Ok(());
        }
        super::patiently("storing a streamed output", |_| false, || async {
            let mut file = tokio::fs::File::open(spool.path()).await.map_err(failed)?;
            self.objects.put(name.as_str(), &mut file).await.map_err(failed)?;
            Ok::<_, StoreError>(())
        })
        .await
    }

    /// `len` bytes of a blob from `offset` (`None`: no such blob).
    pub(super) async fn blob_part(
        &self,
        digest: &[u8; 32],
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut object = match self.objects.get(Self::blob_name(digest)).await {
            Ok(object) => object,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(failed(e)),
        };
        // Read up to the part, then the part (objects are read from their start).
        let mut skip = offset;
        let mut scratch = vec![0u8; 64 * 1024];
        while skip > 0 {
            let want = skip.min(scratch.len() as u64) as usize;
            let n = object.read(&mut scratch[..want]).await.map_err(failed)?;
            if n == 0 {
                return Ok(Some(Vec::new()));
            }
            skip -= n as u64;
        }
        let mut part = Vec::with_capacity(len);
        let mut limited = (&mut object).take(len as u64);
        limited.read_to_end(&mut part).await.map_err(failed)?;
        Ok(Some(part))
    }
}
