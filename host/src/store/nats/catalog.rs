//! The catalog on JetStream: function records in KV buckets (every change a compare-and-set on
//! the current record, by the same rules as the embedded store: [`crate::store::versions`]),
//! components and compiled artifacts in the object store.

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use futures_util::StreamExt;

use super::{NatsBackend, failed, failed_because};
use crate::job::{JobId, now_ms};
use crate::manifest::Settings;
use crate::store::seam::{FunctionCatalog, Pending};
use crate::store::tables::{decode_function, encode_function};
use crate::store::{
    DeleteError, DeployBase, FunctionRecord, PutSecret, RollbackError, SealedSecret, StoreError,
    versions,
};

/// The object holding a component.
fn component_object(digest: &str) -> String {
    format!("component.{digest}")
}

/// The object holding a compiled artifact.
fn artifact_object(key: &str) -> String {
    format!("artifact.{}", hex::encode(key))
}

impl NatsBackend {
    /// A function's current record and its revision.
    async fn current(&self, name: &str) -> Result<Option<(FunctionRecord, u64)>, StoreError> {
        let entry = super::patiently(
            "reading a function",
            |_| false,
            || self.functions.entry(name),
        )
        .await
        .map_err(failed)?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return Ok(None);
        }
        let record = decode_function(&entry.value)
            .map_err(|e| failed_because(format!("function {name} does not decode: {e}")))?;
        Ok(Some((record, entry.revision)))
    }

    /// A function's current record.
    pub(super) async fn function_record(
        &self,
        name: &str,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        Ok(self.current(name).await?.map(|(record, _)| record))
    }

    /// Stores `record` as the function's current record over `revision` (`None`: it is new);
    /// false when another change came first. Its version is kept after.
    async fn store_current(
        &self,
        record: &FunctionRecord,
        revision: Option<u64>,
        new_version: bool,
    ) -> Result<bool, StoreError> {
        let bytes: Bytes = encode_function(record).into();
        let stored = match revision {
            Some(revision) => self
                .functions
                .update(&record.name, bytes.clone(), revision)
                .await
                .map_err(|e| {
                    e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
                }),
            None => self
                .functions
                .create(&record.name, bytes.clone())
                .await
                .map_err(|e| e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists),
        };
        match stored {
            Ok(revision) => {
                self.saw(record, revision);
                // Kept once it won: two hosts racing for one version number never leave the
                // loser's record under it.
                if new_version {
                    let key = format!("{}.{}", record.name, record.version);
                    super::patiently(
                        "keeping a version",
                        |_| false,
                        || self.versions.put(&key, bytes.clone()),
                    )
                    .await
                    .map_err(failed)?;
                }
                Ok(true)
            }
            Err(true) => Ok(false),
            Err(false) => Err(failed_because(format!(
                "storing function {} failed",
                record.name
            ))),
        }
    }

    pub(super) async fn put_object(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut reader = bytes;
        self.objects.put(name, &mut reader).await.map_err(failed)?;
        Ok(())
    }

    async fn object(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.objects.get(name).await {
            Ok(mut object) => {
                let mut bytes = Vec::new();
                object.read_to_end(&mut bytes).await.map_err(failed)?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(failed(e)),
        }
    }

    async fn deploy_record(
        &self,
        record: FunctionRecord,
        wasm: Bytes,
        artifact_key: String,
        artifact: Vec<u8>,
        base: DeployBase,
    ) -> Result<FunctionRecord, StoreError> {
        if self
            .object(&component_object(&record.digest))
            .await?
            .is_none()
        {
            self.put_object(&component_object(&record.digest), &wasm)
                .await?;
        }
        self.put_object(&artifact_object(&artifact_key), &artifact)
            .await?;
        loop {
            let current = self.current(&record.name).await?;
            let previous = current.as_ref().map(|(r, _)| r);
            let Some(next) = versions::deployed(record.clone(), previous, base)? else {
                let previous = previous
                    .cloned()
                    .expect("unchanged over a previous version");
                self.ensure_queue(&previous).await?;
                return Ok(previous);
            };
            // The queue exists before the record that lets jobs in (and other hosts lease).
            self.ensure_queue(&next).await?;
            if self
                .store_current(&next, current.as_ref().map(|(_, rev)| *rev), true)
                .await?
            {
                return Ok(next);
            }
        }
    }

    /// Applies `change` to the current record until it lands (`None`: not deployed; the
    /// change answering `None` changes nothing).
    async fn change<T>(
        &self,
        name: &str,
        new_version: bool,
        change: impl Fn(&FunctionRecord) -> Result<Option<FunctionRecord>, T>,
    ) -> Result<Option<Result<FunctionRecord, T>>, StoreError> {
        loop {
            let Some((current, revision)) = self.current(name).await? else {
                return Ok(None);
            };
            let next = match change(&current) {
                Ok(Some(next)) => next,
                Ok(None) => return Ok(Some(Ok(current))),
                Err(e) => return Ok(Some(Err(e))),
            };
            self.ensure_queue(&next).await?;
            if self
                .store_current(&next, Some(revision), new_version)
                .await?
            {
                return Ok(Some(Ok(next)));
            }
        }
    }

    /// Cancels every unfinished job in a function's queue; returns those cancelled.
    async fn cancel_queue(&self, name: &str) -> Result<Vec<JobId>, StoreError> {
        let Ok(mut stream) = self.js.get_stream(self.queue_stream(name)).await else {
            return Ok(Vec::new());
        };
        let state = stream.info().await.map_err(failed)?.state.clone();
        let mut cancelled = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let Some(id) = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|s| s.parse::<JobId>().ok())
            else {
                continue;
            };
            if self.cancel_deleted(id, name).await? {
                cancelled.push(id);
            }
        }
        Ok(cancelled)
    }

    /// Cancels job `id` of deleted function `name` unless it ended; true if it did.
    pub(super) async fn cancel_deleted(&self, id: JobId, name: &str) -> Result<bool, StoreError> {
        loop {
            let Some((mut job, revision)) = self.record(id).await? else {
                return Ok(false);
            };
            if job.status.is_terminal() {
                return Ok(false);
            }
            let from = job.status;
            job.status = crate::job::JobStatus::Cancelled;
            job.finished_at = Some(now_ms());
            job.error = Some(format!("cancelled: function {name} was deleted"));
            if self.replace_ending(id, &mut job, revision).await? {
                self.not_running(id).await;
                self.moved(name, Some(from), Some(job.status)).await?;
                return Ok(true);
            }
        }
    }

    /// The keys of a bucket starting with `prefix` that have ever been written (deleted ones
    /// too while their markers last: callers read each entry). One request for the stream's
    /// subjects, no consumer (a consumer per listing piles up on a busy cluster: a stream takes
    /// 1,000 at most).
    pub(super) async fn keys_of(
        bucket: &async_nats::jetstream::kv::Store,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let filter = format!("{}{prefix}>", bucket.prefix);
        let mut subjects = super::patiently("listing keys", |_| false, || {
            bucket.stream.info_with_subjects(filter.clone())
        })
        .await
        .map_err(failed)?;
        let mut keys = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(failed)?;
            if let Some(key) = subject.strip_prefix(bucket.prefix.as_str()) {
                keys.push(key.to_string());
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }
}

impl FunctionCatalog for NatsBackend {
    fn deploy(
        &self,
        record: FunctionRecord,
        wasm: Bytes,
        artifact_key: String,
        artifact: Vec<u8>,
        base: DeployBase,
    ) -> Pending<'_, Result<FunctionRecord, StoreError>> {
        Box::pin(self.deploy_record(record, wasm, artifact_key, artifact, base))
    }
    fn configure<'a>(
        &'a self,
        name: &'a str,
        settings: Settings,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>> {
        Box::pin(async move {
            let changed = self
                .change(name, true, |current| {
                    Ok::<_, StoreError>(versions::configured(current, settings))
                })
                .await?;
            changed.transpose()
        })
    }
    fn rollback<'a>(
        &'a self,
        name: &'a str,
        to: Option<u32>,
    ) -> Pending<'a, Result<FunctionRecord, RollbackError>> {
        Box::pin(async move {
            loop {
                let Some((current, _)) = self.current(name).await? else {
                    return Err(RollbackError::NotFound(name.into()));
                };
                let to = versions::rollback_target(&current, to)?;
                let Some(target) = self
                    .versions
                    .get(format!("{name}.{to}"))
                    .await
                    .map_err(failed)?
                else {
                    return Err(RollbackError::UnknownVersion {
                        name: name.into(),
                        to,
                    });
                };
                let target = decode_function(&target)
                    .map_err(|e| failed_because(format!("version {to} of {name}: {e}")))?;
                let version = current.version;
                let changed = self
                    .change(name, true, |now| {
                        if now.version != version {
                            // Changed meanwhile: work it out again.
                            return Err(());
                        }
                        Ok(Some(versions::rolled_back(now, target.clone())))
                    })
                    .await?;
                match changed {
                    Some(Ok(record)) => return Ok(record),
                    Some(Err(())) => continue,
                    None => return Err(RollbackError::NotFound(name.into())),
                }
            }
        })
    }
    fn set_paused<'a>(
        &'a self,
        name: &'a str,
        paused: bool,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>> {
        Box::pin(async move {
            let changed = self
                .change(name, false, |current| {
                    Ok::<_, StoreError>((current.paused != paused).then(|| FunctionRecord {
                        paused,
                        ..current.clone()
                    }))
                })
                .await?;
            changed.transpose()
        })
    }
    fn delete_function<'a>(
        &'a self,
        name: &'a str,
        force: bool,
    ) -> Pending<'a, Result<Vec<JobId>, DeleteError>> {
        Box::pin(async move {
            if self.current(name).await?.is_none() {
                return Err(DeleteError::NotFound(name.into()));
            }
            let pending = self.counts_of(name).await?.unfinished();
            if pending > 0 && !force {
                return Err(DeleteError::Busy {
                    name: name.into(),
                    pending,
                });
            }
            // Submits stop first; then every job still in its queue is cancelled.
            self.functions.delete(name).await.map_err(failed)?;
            self.view.write().remove(name);
            self.queues.lock().remove(name);
            let cancelled = self.cancel_queue(name).await?;
            let _ = self.js.delete_stream(self.queue_stream(name)).await;
            if let Err(e) = self.forget_notes(name).await {
                tracing::warn!(function = name, error = %e, "a deleted function's job notes were not removed");
            }
            if let Err(e) = self.forget_state(name).await {
                tracing::warn!(function = name, error = %e, "a deleted function's key-value state was not removed");
            }
            Ok(cancelled)
        })
    }
    fn function<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Option<FunctionRecord>, StoreError>> {
        Box::pin(self.function_record(name))
    }
    fn functions<'a>(&'a self) -> Pending<'a, Result<Vec<FunctionRecord>, StoreError>> {
        // As this host's catalog watch has it (listed often: `/metrics`, `/v1/functions`).
        Box::pin(async move {
            let mut records: Vec<FunctionRecord> = self
                .view
                .read()
                .values()
                .map(|(record, _)| record.clone())
                .collect();
            records.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(records)
        })
    }
    fn versions<'a>(
        &'a self,
        name: &'a str,
    ) -> Pending<'a, Result<Vec<FunctionRecord>, StoreError>> {
        Box::pin(async move {
            if self.current(name).await?.is_none() {
                return Ok(Vec::new());
            }
            let mut records = Vec::new();
            for key in Self::keys_of(&self.versions, &format!("{name}.")).await? {
                if let Some(bytes) = self.versions.get(&key).await.map_err(failed)? {
                    records.push(
                        decode_function(&bytes)
                            .map_err(|e| failed_because(format!("{key}: {e}")))?,
                    );
                }
            }
            records.retain(|r| r.name == name);
            records.sort_by_key(|r| r.version);
            Ok(records)
        })
    }
    fn component<'a>(
        &'a self,
        digest: &'a str,
    ) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move { self.object(&component_object(digest)).await })
    }
    fn artifact<'a>(&'a self, key: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move { self.object(&artifact_object(key)).await })
    }
    fn save_artifact(&self, key: String, artifact: Vec<u8>) -> Pending<'_, Result<(), StoreError>> {
        Box::pin(async move { self.put_object(&artifact_object(&key), &artifact).await })
    }
    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        name: &'a str,
        sealed: Vec<u8>,
        max: usize,
    ) -> Pending<'a, Result<PutSecret, StoreError>> {
        Box::pin(async move {
            if self.current(function).await?.is_none() {
                return Ok(PutSecret::NoFunction);
            }
            let key = format!("{function}.{}", hex::encode(name));
            let existing = Self::keys_of(&self.secrets, &format!("{function}.")).await?;
            if !existing.contains(&key) && existing.len() >= max {
                return Ok(PutSecret::TooMany);
            }
            let mut value = now_ms().to_be_bytes().to_vec();
            value.extend_from_slice(&sealed);
            self.secrets.put(&key, value.into()).await.map_err(failed)?;
            Ok(PutSecret::Stored)
        })
    }
    fn delete_secret<'a>(
        &'a self,
        function: &'a str,
        name: &'a str,
    ) -> Pending<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = format!("{function}.{}", hex::encode(name));
            if self.secrets.get(&key).await.map_err(failed)?.is_none() {
                return Ok(false);
            }
            self.secrets.delete(&key).await.map_err(failed)?;
            Ok(true)
        })
    }
    fn secrets<'a>(
        &'a self,
        function: &'a str,
    ) -> Pending<'a, Result<Vec<SealedSecret>, StoreError>> {
        Box::pin(async move {
            let mut secrets = Vec::new();
            for key in Self::keys_of(&self.secrets, &format!("{function}.")).await? {
                let Some(value) = self.secrets.get(&key).await.map_err(failed)? else {
                    continue;
                };
                let name = key
                    .rsplit_once('.')
                    .and_then(|(_, hexed)| hex::decode(hexed).ok())
                    .and_then(|n| String::from_utf8(n).ok());
                let (Some(name), true) = (name, value.len() >= 8) else {
                    return Err(failed_because(format!("secret {key} is damaged")));
                };
                secrets.push(SealedSecret {
                    name,
                    updated_at: u64::from_be_bytes(value[..8].try_into().expect("8 bytes")),
                    sealed: value[8..].to_vec(),
                });
            }
            secrets.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(secrets)
        })
    }
    fn setting_or_init<'a>(
        &'a self,
        key: &'a str,
        initial: Vec<u8>,
    ) -> Pending<'a, Result<Vec<u8>, StoreError>> {
        Box::pin(async move {
            let key = hex::encode(key);
            match self.settings.create(&key, initial.clone().into()).await {
                Ok(_) => Ok(initial),
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    Ok(self
                        .settings
                        .get(&key)
                        .await
                        .map_err(failed)?
                        .map(|b| b.to_vec())
                        .unwrap_or(initial))
                }
                Err(e) => Err(failed(e)),
            }
        })
    }
    fn take_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.changes.lock().take()
    }
    fn set_setting<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
    ) -> Pending<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.settings
                .put(hex::encode(key), value.into())
                .await
                .map_err(failed)?;
            Ok(())
        })
    }
}

impl crate::store::seam::Backend for NatsBackend {
    fn shutdown(&self) -> Pending<'_, ()> {
        Box::pin(async move {
            let _ = self.client.flush().await;
        })
    }
}
