//! The functions service: every change to what is deployed (deploy, configure, pause, resume,
//! rollback, remove, secrets, loading at start) as one operation that keeps the three places a
//! function lives in step: the catalog (durable), the runtime (its loaded code, settings and
//! secrets) and the scheduler (its queue). API handlers and the CLI only parse and render.
//!
//! Order of every change: validate, prepare the code (the one place that loads a stored
//! artifact or compiles), commit to the catalog, then make it current in the runtime and tell
//! the scheduler. A failure before the commit changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::job::{JobId, now_ms};
use crate::manifest::{Bounds, Manifest, ManifestError};
use crate::runtime::{Compiled, ComponentError, LoadedFunction, Runtime};
use crate::scheduler::Scheduler;
use crate::store::{
    Backend, DeleteError, DeployBase, FunctionRecord, PutSecret, RollbackError, SealedSecret,
    StoreError,
};
use crate::vault::{self, Vault};

/// Why a change to a function was refused; nothing changed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionsError {
    /// No function of that name is deployed.
    #[error("function {0:?} is not deployed")]
    NotFound(String),
    /// The manifest or settings are invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `then` would close a pipeline cycle.
    #[error(
        "then = {then:?} makes a pipeline cycle ({path}): a pipeline must end, so remove `then` from one of them"
    )]
    PipelineCycle {
        /// The `then` asked for.
        then: String,
        /// The cycle, `a -> b -> a`.
        path: String,
    },
    /// The component is not a valid Sluice handler.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// An earlier version's component is no longer stored.
    #[error("the component of version {version} is no longer stored: deploy it again")]
    ComponentMissing {
        /// The version whose code is gone.
        version: u32,
    },
    /// A rollback was refused.
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    /// A delete was refused.
    #[error(transparent)]
    Delete(#[from] DeleteError),
    /// A secret's name or value is invalid.
    #[error("{0}")]
    InvalidSecret(String),
    /// The function has the most secrets it may have.
    #[error("function {0} has {max} secrets, the most it may have: delete one first", max = vault::MAX_SECRETS)]
    TooManySecrets(String),
    /// The function has no secret of that name.
    #[error(
        "function {function} has no secret {secret:?}: `sluice secrets list {function}` or GET /v1/functions/{function}/secrets lists them"
    )]
    SecretNotFound {
        /// The function.
        function: String,
        /// The secret asked for.
        secret: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not fail did (a compile thread, a sealed secret that will not
    /// open).
    #[error("{0}")]
    Internal(String),
}

/// Deploys, changes and removes functions, keeping catalog, runtime and scheduler in step.
pub struct Functions {
    parts: Loader,
    scheduler: Scheduler,
    bounds: Bounds,
}

/// Gets stored functions' code and secrets into the runtime: what a start needs (before there
/// is a scheduler) and what every change reuses.
pub struct Loader {
    store: Arc<dyn Backend>,
    runtime: Arc<Runtime>,
    vault: Arc<Vault>,
}

impl Loader {
    /// A loader over the store, the runtime and the secrets key.
    pub fn new(store: Arc<dyn Backend>, runtime: Arc<Runtime>, vault: Arc<Vault>) -> Loader {
        Loader {
            store,
            runtime,
            vault,
        }
    }

    /// At start: makes every stored function runnable (from its cached artifact when this
    /// engine can use it) with its secrets. A secret that does not open stops the start.
    pub async fn load_all(&self) -> Result<(), FunctionsError> {
        for record in self.store.functions().await? {
            let secrets = self.open_secrets(&record.name).await?;
            if !secrets.is_empty() {
                self.runtime.set_secrets(&record.name, secrets);
            }
            let loaded = self.code(record).await?;
            self.runtime.install_loaded(loaded);
        }
        Ok(())
    }
}

impl Loader {
    async fn open_secrets(&self, name: &str) -> Result<BTreeMap<String, String>, FunctionsError> {
        let mut opened = BTreeMap::new();
        for s in self.store.secrets(name).await? {
            let value = self
                .vault
                .open_value(name, &s.name, &s.sealed)
                .map_err(|e| FunctionsError::Internal(e.to_string()))?;
            opened.insert(s.name, value);
        }
        Ok(opened)
    }

    /// Validates and compiles component bytes on a blocking thread, from the stored artifact of
    /// the same code when there is one.
    async fn compile(&self, wasm: Bytes) -> Result<Compiled, FunctionsError> {
        let cached = self
            .store
            .artifact(&self.runtime.artifact_key(&crate::runtime::digest(&wasm)))
            .await?;
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.prepare(&wasm, cached))
            .await
            .map_err(|e| FunctionsError::Internal(format!("the compile thread failed: {e}")))?
            .map_err(Into::into)
    }

    /// The code of a stored version: its artifact when this engine can use it, else compiled
    /// again from the stored component (and the new artifact stored).
    async fn code(&self, record: FunctionRecord) -> Result<LoadedFunction, FunctionsError> {
        let key = self.runtime.artifact_key(&record.digest);
        if let Some(artifact) = self.store.artifact(&key).await? {
            match self.runtime.load(record.clone(), &artifact) {
                Ok(loaded) => return Ok(loaded),
                Err(e) => tracing::warn!(function = %record.name, error = %e, "recompiling"),
            }
        }
        let wasm = self.store.component(&record.digest).await?.ok_or(
            FunctionsError::ComponentMissing {
                version: record.version,
            },
        )?;
        let compiled = self.compile(Bytes::from(wasm)).await?;
        self.store
            .save_artifact(key, compiled.artifact.clone())
            .await?;
        Ok(self.runtime.loaded(record, &compiled))
    }
}

/// How often a deploy of changes is worked out again when other changes keep landing first.
const MAX_DEPLOY_TRIES: u32 = 5;

/// What a deploy says about the function's configuration.
#[derive(Clone, Copy, Debug)]
pub enum Given<'a> {
    /// The whole configuration (a `sluice.toml`): what it leaves out takes its default, and
    /// subscriptions, pipeline, outbound hosts and config are exactly what it lists.
    Whole(&'a Manifest),
    /// Changes to the deployed configuration (query parameters, or no manifest at all): what
    /// it leaves out stays as deployed (defaults for a new function).
    Changes(&'a Manifest),
}

/// The manifest that gives exactly what `record` is configured with.
fn manifest_of(record: &FunctionRecord) -> Manifest {
    Manifest {
        subscribe: record.subscriptions.clone(),
        then: record.then.clone(),
        concurrency_key: record.concurrency_key.clone(),
        schedule: record.schedules.clone(),
        key_weights: record.key_weights.clone(),
        allowed_outbound_hosts: record.allowed_outbound_hosts.clone(),
        config: record.config.clone(),
        ..Manifest::from_settings(&record.settings)
    }
}

impl Functions {
    /// The service over the loaded parts and the scheduler; `bounds` are the limits every
    /// manifest must fit.
    pub fn new(parts: Loader, scheduler: Scheduler, bounds: Bounds) -> Functions {
        Functions {
            parts,
            scheduler,
            bounds,
        }
    }

    /// Deploys `wasm` as function `name`: a new function (version 1), a new version, or
    /// nothing new when code and configuration are what is deployed. `given` says whether the
    /// manifest is the function's whole configuration or changes to the current one. The
    /// record's `changes` say what differs from the version before. Answered once it is
    /// durable and runnable.
    pub async fn deploy(
        &self,
        name: &str,
        given: Given<'_>,
        wasm: Bytes,
    ) -> Result<FunctionRecord, FunctionsError> {
        crate::manifest::validate_name(name)?;
        let mut compiled = None;
        let mut tries = 0;
        loop {
            tries += 1;
            // The whole configuration, or the changes laid over what is deployed now (stored
            // only if that is still current when the deploy commits).
            let (manifest, base) = match given {
                Given::Whole(manifest) => (manifest.clone(), DeployBase::Anything),
                Given::Changes(changes) => match self.parts.store.function(name).await? {
                    Some(current) => (
                        changes.over(manifest_of(&current)),
                        DeployBase::Current(Some(current.version)),
                    ),
                    None => (changes.clone(), DeployBase::Current(None)),
                },
            };
            let settings = manifest.validate(name, &self.bounds)?;
            let subscriptions = manifest.subscriptions()?;
            let then = manifest.then(name)?;
            let schedules = manifest.schedules()?;
            let key_weights = manifest.key_weights()?;
            let allowed_outbound_hosts = manifest.allowed_outbound_hosts()?;
            let config = manifest.config()?;
            self.refuse_pipeline_cycle(name, then.as_deref()).await?;

            let compiled = match &compiled {
                Some(c) => c,
                None => compiled.insert(self.parts.compile(wasm.clone()).await?),
            };
            if settings.batch_max_size.is_some() && !compiled.takes_batches() {
                return Err(ManifestError::Batch(
                    "this component has no handle-batch export: build it with sluice-sdk's #[batch_handler] (or #[handler] of this SDK version), or deploy without batch".into(),
                )
                .into());
            }
            let record = FunctionRecord {
                name: name.to_string(),
                settings,
                subscriptions,
                then,
                concurrency_key: manifest.concurrency_key.clone(),
                schedules,
                key_weights,
                digest: compiled.digest.clone(),
                size: wasm.len() as u64,
                deployed_at: now_ms(),
                version: 0,
                change: String::new(),
                paused: false,
                allowed_outbound_hosts,
                config,
                changes: Vec::new(),
            };
            // Runnable before the commit, so a job accepted right after it always finds its
            // code.
            let previous = self.parts.runtime.function(name);
            self.parts.runtime.install(record.clone(), compiled);
            let key = self.parts.runtime.artifact_key(&compiled.digest);
            let stored = self
                .parts
                .store
                .deploy(record, wasm.clone(), key, compiled.artifact.clone(), base)
                .await;
            match stored {
                Ok(stored) => {
                    self.parts.runtime.install(stored.clone(), compiled);
                    self.scheduler.function_updated(name);
                    return Ok(stored);
                }
                Err(e) => {
                    match previous {
                        Some(p) => self.parts.runtime.reinstate(p),
                        None => self.parts.runtime.remove(name),
                    }
                    // Another change landed while this one was prepared: work it out again.
                    if matches!(e, StoreError::Changed { .. }) && tries < MAX_DEPLOY_TRIES {
                        continue;
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Gives a function the settings `manifest` names, keeping its code (nothing is compiled),
    /// as a new version.
    pub async fn configure(
        &self,
        name: &str,
        manifest: &Manifest,
    ) -> Result<FunctionRecord, FunctionsError> {
        let settings = manifest.validate(name, &self.bounds)?;
        let record = self.parts.store.configure(name, settings).await?;
        self.reconfigured(name, record)
    }

    /// Follows a change another host made to a function (a deploy, new settings, a pause, a
    /// delete, a secret): loads what the catalog holds now into the runtime and the scheduler.
    pub async fn follow(&self, name: &str) -> Result<(), FunctionsError> {
        let Some(record) = self.parts.store.function(name).await? else {
            if self.parts.runtime.function(name).is_some() {
                self.parts.runtime.remove(name);
                self.scheduler.function_removed(name);
            }
            return Ok(());
        };
        let secrets = self.parts.open_secrets(name).await?;
        self.parts.runtime.set_secrets(name, secrets);
        let same_code = self
            .parts
            .runtime
            .function(name)
            .is_some_and(|loaded| loaded.record.digest == record.digest);
        if same_code {
            self.parts.runtime.reconfigure(record);
        } else {
            let loaded = self.parts.code(record).await?;
            self.parts.runtime.install_loaded(loaded);
        }
        self.scheduler.function_updated(name);
        Ok(())
    }

    /// Pauses a function (jobs are accepted, none starts) or resumes it.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<FunctionRecord, FunctionsError> {
        let record = self.parts.store.set_paused(name, paused).await?;
        self.reconfigured(name, record)
    }

    /// Makes a committed change of settings (same code) current in the runtime and the
    /// scheduler; `None` (the function is not deployed) is an error.
    fn reconfigured(
        &self,
        name: &str,
        record: Option<FunctionRecord>,
    ) -> Result<FunctionRecord, FunctionsError> {
        let record = record.ok_or_else(|| FunctionsError::NotFound(name.to_string()))?;
        self.parts.runtime.reconfigure(record.clone());
        self.scheduler.function_updated(name);
        Ok(record)
    }

    /// Makes version `to` (by default the one before the current) current again, code and
    /// settings together, as a new version. Its code is loaded before anything is committed.
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u32>,
    ) -> Result<FunctionRecord, FunctionsError> {
        let current = self
            .parts
            .store
            .function(name)
            .await?
            .ok_or_else(|| FunctionsError::NotFound(name.to_string()))?;
        let to = match to {
            Some(v) => v,
            None if current.version > 1 => current.version - 1,
            None => return Err(RollbackError::NoEarlierVersion(name.to_string()).into()),
        };
        if to >= current.version {
            return Err(RollbackError::NotEarlier {
                name: name.to_string(),
                to,
                current: current.version,
            }
            .into());
        }
        let target = self
            .parts
            .store
            .versions(name)
            .await?
            .into_iter()
            .find(|v| v.version == to)
            .ok_or_else(|| RollbackError::UnknownVersion {
                name: name.to_string(),
                to,
            })?;
        self.refuse_pipeline_cycle(name, target.then.as_deref())
            .await?;
        let mut loaded = self.parts.code(target).await?;
        let record = self.parts.store.rollback(name, Some(to)).await?;
        loaded.record = record.clone();
        self.parts.runtime.install_loaded(loaded);
        self.scheduler.function_updated(name);
        Ok(record)
    }

    /// Deletes a function (refused while it has unfinished jobs unless `force`, which cancels
    /// them); its versions, secrets and key-value state go with it. Returns the cancelled jobs.
    pub async fn remove(&self, name: &str, force: bool) -> Result<Vec<JobId>, FunctionsError> {
        let cancelled = self.parts.store.delete_function(name, force).await?;
        self.parts.runtime.remove(name);
        self.scheduler.function_removed(name);
        Ok(cancelled)
    }

    /// Sets a function's secret (UTF-8, at most [`vault::MAX_VALUE`] bytes), sealed before it is
    /// stored; the function's next attempts read it.
    pub async fn set_secret(
        &self,
        name: &str,
        secret: &str,
        value: &[u8],
    ) -> Result<(), FunctionsError> {
        vault::validate_name(secret).map_err(FunctionsError::InvalidSecret)?;
        if value.len() > vault::MAX_VALUE {
            return Err(FunctionsError::InvalidSecret(format!(
                "a secret's value is at most {} bytes, not {}: keep large data in a blob or an outside store",
                vault::MAX_VALUE,
                value.len()
            )));
        }
        if std::str::from_utf8(value).is_err() {
            return Err(FunctionsError::InvalidSecret(
                "a secret's value is UTF-8 text (handlers read it as a string): encode binary values, e.g. in base64".into(),
            ));
        }
        let sealed = self.parts.vault.seal(name, secret, value);
        match self
            .parts
            .store
            .put_secret(name, secret, sealed, vault::MAX_SECRETS)
            .await?
        {
            PutSecret::Stored => {}
            PutSecret::NoFunction => return Err(FunctionsError::NotFound(name.to_string())),
            PutSecret::TooMany => return Err(FunctionsError::TooManySecrets(name.to_string())),
        }
        self.reload_secrets(name).await
    }

    /// Removes a function's secret.
    pub async fn delete_secret(&self, name: &str, secret: &str) -> Result<(), FunctionsError> {
        self.require(name).await?;
        if !self.parts.store.delete_secret(name, secret).await? {
            return Err(FunctionsError::SecretNotFound {
                function: name.to_string(),
                secret: secret.to_string(),
            });
        }
        self.reload_secrets(name).await
    }

    /// A function's secrets, sealed (names and when each was set are what may be shown).
    pub async fn secrets(&self, name: &str) -> Result<Vec<SealedSecret>, FunctionsError> {
        self.require(name).await?;
        Ok(self.parts.store.secrets(name).await?)
    }

    async fn require(&self, name: &str) -> Result<FunctionRecord, FunctionsError> {
        self.parts
            .store
            .function(name)
            .await?
            .ok_or_else(|| FunctionsError::NotFound(name.to_string()))
    }

    async fn reload_secrets(&self, name: &str) -> Result<(), FunctionsError> {
        let opened = self.parts.open_secrets(name).await?;
        self.parts.runtime.set_secrets(name, opened);
        Ok(())
    }

    /// Refuses `then = next` for function `name` when the deployed functions' `then`s lead from
    /// `next` back to `name`: such a pipeline would run forever (the hop limit is the backstop
    /// for cycles made by deploys racing each other).
    async fn refuse_pipeline_cycle(
        &self,
        name: &str,
        then: Option<&str>,
    ) -> Result<(), FunctionsError> {
        let mut path = vec![name.to_string()];
        let mut next = then.map(str::to_string);
        while let Some(function) = next {
            let seen = path.contains(&function);
            path.push(function.clone());
            if function == name {
                return Err(FunctionsError::PipelineCycle {
                    then: then.unwrap_or_default().to_string(),
                    path: path.join(" -> "),
                });
            }
            if seen {
                // A cycle that does not pass through `name` (made by racing deploys).
                break;
            }
            next = self
                .parts
                .store
                .function(&function)
                .await?
                .and_then(|f| f.then);
        }
        Ok(())
    }
}
