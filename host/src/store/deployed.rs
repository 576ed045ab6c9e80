//! The store's side of what is deployed: functions, their versions, components and compiled
//! artifacts, secrets and host settings, all in the catalog file (rare writes, each its own
//! durable commit on a blocking thread), and deleting a function with its jobs.

use bytes::Bytes;

use super::tables::{ARTIFACTS, COMPONENTS};
use super::*;

impl Store {
    /// Stores a deployed function with its component and compiled artifact, in one commit,
    /// if what it was worked out from (`base`) is still current.
    pub async fn deploy(
        &self,
        record: FunctionRecord,
        wasm: Bytes,
        artifact_key: String,
        artifact: Vec<u8>,
        base: DeployBase,
    ) -> Result<FunctionRecord, StoreError> {
        let catalog = self.catalog.clone();
        blocking(move || catalog.deploy(record, &wasm, &artifact_key, &artifact, base)).await
    }

    /// Gives a deployed function new settings, keeping its code, as a new version; `None` when
    /// it is not deployed.
    pub async fn configure(
        &self,
        name: &str,
        settings: crate::manifest::Settings,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let catalog = self.catalog.clone();
        let name = name.to_string();
        blocking(move || catalog.configure(&name, settings)).await
    }

    /// Makes an earlier version current again (code and settings) as a new version: `to`, or
    /// the one before the current.
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u32>,
    ) -> Result<FunctionRecord, RollbackError> {
        let catalog = self.catalog.clone();
        let name = name.to_string();
        blocking(move || catalog.rollback(&name, to)).await?
    }

    /// Pauses (accepts jobs, starts none) or resumes a function; `None` when not deployed.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let catalog = self.catalog.clone();
        let name = name.to_string();
        blocking(move || catalog.set_paused(&name, paused)).await
    }

    /// A host setting (e.g. the webhook signing secrets), stored as `initial` the first time
    /// it is asked for.
    pub async fn setting_or_init(
        &self,
        key: &str,
        initial: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let catalog = self.catalog.clone();
        let key = key.to_string();
        blocking(move || catalog.setting_or_init(&key, &initial)).await
    }

    /// Stores a host setting.
    pub async fn set_setting(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let catalog = self.catalog.clone();
        let key = key.to_string();
        blocking(move || catalog.set_setting(&key, &value)).await
    }

    /// Sets a function's secret to a sealed value, durably (see [`PutSecret`]).
    pub async fn put_secret(
        &self,
        function: &str,
        name: &str,
        sealed: Vec<u8>,
        max: usize,
    ) -> Result<PutSecret, StoreError> {
        let catalog = self.catalog.clone();
        let (function, name) = (function.to_string(), name.to_string());
        blocking(move || catalog.put_secret(&function, &name, &sealed, crate::job::now_ms(), max))
            .await
    }

    /// Removes a function's secret, durably; false when it had none of that name.
    pub async fn delete_secret(&self, function: &str, name: &str) -> Result<bool, StoreError> {
        let catalog = self.catalog.clone();
        let (function, name) = (function.to_string(), name.to_string());
        blocking(move || catalog.delete_secret(&function, &name)).await
    }

    /// A function's secrets (sealed), by name.
    pub fn secrets(&self, function: &str) -> Result<Vec<SealedSecret>, StoreError> {
        self.catalog.secrets(function)
    }

    /// A function's versions, oldest first (empty when it is not deployed).
    pub fn versions(&self, name: &str) -> Result<Vec<FunctionRecord>, StoreError> {
        self.catalog.versions(name)
    }

    /// Stores a compiled artifact (after an engine upgrade made the old one unusable).
    pub async fn save_artifact(&self, key: String, artifact: Vec<u8>) -> Result<(), StoreError> {
        let catalog = self.catalog.clone();
        blocking(move || catalog.save_artifact(&key, &artifact)).await
    }

    /// Removes a function. Refused while it has queued or running jobs unless `force`, which
    /// cancels them. Returns the cancelled jobs.
    ///
    /// Submits are refused from the moment the function leaves the catalog; any job accepted
    /// just before that moment is cancelled with the rest, so none is left without a function.
    pub async fn delete_function(
        &self,
        name: &str,
        force: bool,
    ) -> Result<Vec<JobId>, DeleteError> {
        if !self.catalog.deployed().contains(name) {
            return Err(DeleteError::NotFound(name.to_string()));
        }
        if !force {
            let pending = self.pending_count(name)?;
            if pending > 0 {
                return Err(DeleteError::Busy {
                    name: name.to_string(),
                    pending,
                });
            }
        }
        let catalog = self.catalog.clone();
        let owned = name.to_string();
        if !blocking(move || catalog.remove_function(&owned)).await? {
            return Err(DeleteError::NotFound(name.to_string()));
        }
        let reason = if force {
            format!("cancelled: function {name:?} was deleted with force=true")
        } else {
            format!("cancelled: function {name:?} was deleted as this job was accepted")
        };
        let mut cancelled = Vec::new();
        for shard in &self.shards {
            let (name, reason) = (name.to_string(), reason.clone());
            cancelled.extend(
                shard
                    .call(|reply| Op::CancelFunction {
                        name,
                        reason,
                        reply,
                    })
                    .await??,
            );
        }
        Ok(cancelled)
    }

    /// One deployed function.
    pub fn function(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        self.catalog.function(name)
    }

    /// Every deployed function, by name.
    pub fn functions(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        self.catalog.functions()
    }

    /// A component's wasm bytes, by digest.
    pub fn component(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.catalog.blob(COMPONENTS, digest)
    }

    /// A compiled artifact, by key.
    pub fn artifact(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.catalog.blob(ARTIFACTS, key)
    }
}
