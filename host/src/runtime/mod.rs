//! The runtime owns wasmtime: one engine with a pooling allocator and epoch interruption,
//! components compiled once at deploy (and cached as serialized artifacts so start-up never
//! compiles), and one fresh, limited sandbox per attempt.
//!
//! ## Layout
//! - `attempt`: running one attempt: a fresh sandbox, limits, the handler's call, its outcome.
//! - `bindings`: the single `bindgen!` over `wit/` and the host imports.
//! - `sandbox`: per-attempt store data and the bounded log capture.
//! - `baseline`: bare wasmtime versus Sluice's per-attempt path, for `sluice bench`.
//! - `kv`: handlers' key-value state (`wasi:keyvalue`), staged until the attempt's success.
//! - `outbound`: handlers' outbound HTTP (`wasi:http`), behind the manifest's allowed hosts
//!   and the SSRF guard.

mod attempt;
pub mod baseline;
mod bindings;
pub mod kv;
pub mod outbound;
mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::WasiCtxBuilder;

use crate::config::Config;
use crate::job::{AttemptReport, FailureKind, Outcome, QueuedJob, now_ms};
use crate::output::{OutputSink, SpoolDir};
use crate::store::FunctionRecord;
use bindings::{Event, Handler, HandlerError, HandlerPre, Payload, RawBlobRef};
use bindings::batch::{BatchHandler, BatchHandlerPre};
use sandbox::{LogSink, MemoryLimit, Sandbox};

/// How often the epoch advances: the granularity of timeouts and of yielding to other tasks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of each memory and table slot reset in place (dirty pages only) rather than decommitted.
const KEEP_RESIDENT: usize = 2 << 20;

/// Why a component was refused at deploy. Each message says what to do instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    /// The bytes are not WebAssembly at all.
    #[error(
        "the body is not WebAssembly (no \\0asm header): send the .wasm file your build produced"
    )]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the handler with `cargo build --target wasm32-wasip2` (a WASI 0.2 component)"
    )]
    CoreModule,
    /// Not a valid component.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component that does not implement the Sluice handler world.
    #[error(
        "the component does not implement the Sluice handler world (sluice:platform/handler): {0}; build it with sluice-sdk's #[handler]"
    )]
    WrongWorld(String),
    /// The component needs more sandbox resources than one component may have.
    #[error(
        "the component needs more than one sandbox may hold: {0}; use fewer core instances, memories or tables (the host operator sets the limits with --max-core-instances, --max-memories, --max-tables)"
    )]
    OverLimits(String),
    /// The compiled artifact could not be used (engine settings changed): recompile.
    #[error("cannot load the compiled artifact: {0}")]
    Artifact(String),
}

/// A component validated and compiled at deploy.
pub struct Compiled {
    /// Lowercase hex SHA-256 of the component bytes.
    pub digest: String,
    /// The serialized artifact, to store so later starts skip compiling.
    pub artifact: Vec<u8>,
    /// Ready to instantiate.
    pre: Linked,
}

/// A function ready to run: its record and its pre-linked component.
pub struct LoadedFunction {
    /// The function as stored (settings, digest, version).
    pub record: FunctionRecord,
    /// Linked once; each attempt only instantiates.
    pre: Linked,
    /// Its `allowed_outbound_hosts`, parsed once.
    allowed_hosts: Arc<[outbound::allowed::AllowedHost]>,
    /// What `wasi:config/store` answers: its `[config]` values and its secrets (a secret wins
    /// over a value of the same name).
    variables: Arc<BTreeMap<String, String>>,
}

/// The deployed functions and their secrets, changed together under one lock, so an attempt
/// never sees a function without the secrets set for it.
#[derive(Default)]
struct Functions {
    loaded: HashMap<String, Arc<LoadedFunction>>,
    /// Each function's secrets, opened.
    secrets: HashMap<String, BTreeMap<String, String>>,
}

impl Functions {
    /// Makes `f` current with its secrets.
    fn insert(&mut self, f: &LoadedFunction) -> Arc<LoadedFunction> {
        let mut variables = f.record.config.clone();
        if let Some(secrets) = self.secrets.get(&f.record.name) {
            variables.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let f = Arc::new(LoadedFunction {
            record: f.record.clone(),
            pre: f.pre.clone(),
            allowed_hosts: f.allowed_hosts.clone(),
            variables: Arc::new(variables),
        });
        self.loaded.insert(f.record.name.clone(), f.clone());
        f
    }
}

impl LoadedFunction {
    fn new(record: FunctionRecord, pre: Linked) -> LoadedFunction {
        // Stored entries were validated at deploy; one that no longer parses allows nothing.
        let allowed_hosts = record
            .allowed_outbound_hosts
            .iter()
            .filter_map(|e| outbound::allowed::AllowedHost::parse(e).ok())
            .collect();
        LoadedFunction {
            variables: Arc::new(record.config.clone()),
            record,
            pre,
            allowed_hosts,
        }
    }
}

/// The wasmtime engine, the linker and the deployed functions.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Sandbox>,
    /// Hex of the engine's precompile compatibility hash: part of every artifact key.
    engine_hash: String,
    /// Deployed functions by name.
    functions: RwLock<Functions>,
    /// Bound on each attempt's captured log.
    max_log_bytes: usize,
    /// Compilations since start (start-up with cached artifacts should do none).
    compilations: std::sync::atomic::AtomicU64,
    /// Outputs larger than this are hashed here, for the store to keep as blobs, and spooled
    /// to disk while they are streamed out.
    claim_check_bytes: usize,
    /// Most bytes an attempt may stream out.
    max_output_bytes: usize,
    /// Where streamed outputs over `claim_check_bytes` wait for their commit.
    spool: Arc<SpoolDir>,
    /// Handlers' outbound HTTP: the operator's allow-list, bounds and connection pools.
    egress: Arc<outbound::Egress>,
}

/// Where a sandbox reads large payloads (claim checks) from.
pub trait BlobSource: Send + Sync {
    /// Up to `len` bytes of blob `digest` from `offset`; `None` when there is no such blob.
    fn read(&self, digest: &[u8; 32], offset: u64, len: usize) -> Result<Option<Vec<u8>>, String>;
}

/// The store as a sandbox reads it (blobs, key-value state).
pub struct StoreReads(pub Arc<dyn crate::store::Backend>);

impl BlobSource for StoreReads {
    fn read(&self, digest: &[u8; 32], offset: u64, len: usize) -> Result<Option<Vec<u8>>, String> {
        resolve(self.0.read_blob(digest, offset, len)).map_err(|e| e.to_string())
    }
}

/// The answer of a store read made from a sandbox's (synchronous) host call: at once when the
/// backend has it at hand (redb answers every read at once), else waited for on this thread.
fn resolve<T>(mut read: crate::store::Pending<'_, T>) -> T {
    use futures_util::FutureExt;
    match (&mut read).now_or_never() {
        Some(answer) => answer,
        None => tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(read)),
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator sized by `max_instances`, epoch interruption), the
    /// linker with WASI and the Sluice imports, and starts the epoch ticker.
    pub fn new(config: &Config) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(config))?;
        let spool_dir = config.data_dir.join("spool");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime {
            engine,
            linker,
            engine_hash,
            functions: RwLock::new(Functions::default()),
            max_log_bytes: config.max_log_bytes,
            compilations: Default::default(),
            claim_check_bytes: config.claim_check_bytes,
            max_output_bytes: config.max_output_bytes,
            spool: Arc::new(SpoolDir::open(&spool_dir).with_context(|| {
                format!("cannot prepare the spool directory {}", spool_dir.display())
            })?),
            egress: Arc::new(outbound::Egress::new(
                crate::guard::AllowList::parse(
                    &config.allow_outbound_hosts,
                    crate::guard::OUTBOUND,
                )
                .map_err(anyhow::Error::msg)?,
                config.outbound,
            )),
        })
    }

    /// Key of a component's compiled artifact for this engine.
    pub fn artifact_key(&self, digest: &str) -> String {
        format!("{digest}-{}", self.engine_hash)
    }

    /// Compilations since start.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Validates and compiles component bytes. CPU-heavy: call it from a blocking thread.
    pub fn compile(&self, wasm: &[u8]) -> Result<Compiled, ComponentError> {
        self.prepare(wasm, None)
    }

    /// Like [`Runtime::compile`], but uses `cached`, the stored artifact of the same digest for
    /// this engine (a redeploy of known code), instead of compiling again.
    pub fn prepare(
        &self,
        wasm: &[u8],
        cached: Option<Vec<u8>>,
    ) -> Result<Compiled, ComponentError> {
        match wasm.get(0..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(ComponentError::CoreModule),
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(ComponentError::NotWasm),
        }
        let digest = digest(wasm);
        if let Some(artifact) = cached {
            // SAFETY: as in `load`: our own artifact, keyed by digest and engine hash.
            if let Ok(component) = unsafe { Component::deserialize(&self.engine, &artifact) } {
                let pre = self.link(&component)?;
                return Ok(Compiled {
                    digest,
                    artifact,
                    pre,
                });
            }
        }
        let component = Component::new(&self.engine, wasm).map_err(|e| {
            let message = format!("{e:#}");
            // The pooling allocator checks the per-component limits as the component compiles.
            if message.contains("pooling allocator") {
                ComponentError::OverLimits(message)
            } else {
                ComponentError::Invalid(message)
            }
        })?;
        self.compilations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pre = self.link(&component)?;
        let artifact = component
            .serialize()
            .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
        Ok(Compiled {
            digest,
            artifact,
            pre,
        })
    }

    /// Loads a stored artifact produced by [`Runtime::compile`] with this engine's settings.
    pub fn load(
        &self,
        record: FunctionRecord,
        artifact: &[u8],
    ) -> Result<LoadedFunction, ComponentError> {
        // SAFETY: artifacts are only ever written by `compile` into our own store, keyed by this
        // engine's compatibility hash; user bytes never reach `deserialize`.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(|e| ComponentError::Artifact(format!("{e:#}")))?;
        let pre = self.link(&component)?;
        Ok(LoadedFunction::new(record, pre))
    }

    fn link(&self, component: &Component) -> Result<Linked, ComponentError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| ComponentError::WrongWorld(format!("{e:#}")))?;
        // A component of the batch world (it also answers single events) takes batches.
        if let Ok(batch) = BatchHandlerPre::new(pre.clone()) {
            return Ok(Linked::Batch(batch));
        }
        HandlerPre::new(pre)
            .map(Linked::Single)
            .map_err(|e| ComponentError::WrongWorld(format!("{e:#}")))
    }

    /// A compiled component as `record`'s code, not yet current.
    pub fn loaded(&self, record: FunctionRecord, compiled: &Compiled) -> LoadedFunction {
        LoadedFunction::new(record, compiled.pre.clone())
    }

    /// Makes a compiled component the current code of `record.name`.
    pub fn install(&self, record: FunctionRecord, compiled: &Compiled) -> Arc<LoadedFunction> {
        self.install_loaded(LoadedFunction::new(record, compiled.pre.clone()))
    }

    /// Makes a loaded function current.
    pub fn install_loaded(&self, f: LoadedFunction) -> Arc<LoadedFunction> {
        self.functions.write().insert(&f)
    }

    /// Makes `record` (new settings, same code) current for its function, without compiling;
    /// `None` when the function is not loaded.
    pub fn reconfigure(&self, record: FunctionRecord) -> Option<Arc<LoadedFunction>> {
        let current = self.function(&record.name)?;
        Some(self.install_loaded(LoadedFunction::new(record, current.pre.clone())))
    }

    /// Makes a function current again, e.g. the previous code after a failed deploy.
    pub fn reinstate(&self, f: Arc<LoadedFunction>) {
        self.functions.write().insert(&f);
    }

    /// Forgets a function and its secrets.
    pub fn remove(&self, name: &str) {
        let mut functions = self.functions.write();
        functions.loaded.remove(name);
        functions.secrets.remove(name);
    }

    /// Gives `function`'s next attempts these secrets (opened), all of them at once.
    pub fn set_secrets(&self, function: &str, secrets: BTreeMap<String, String>) {
        let mut functions = self.functions.write();
        functions.secrets.insert(function.to_string(), secrets);
        if let Some(current) = functions.loaded.get(function).cloned() {
            functions.insert(&current);
        }
    }

    /// The current code of a function.
    pub fn function(&self, name: &str) -> Option<Arc<LoadedFunction>> {
        self.functions.read().loaded.get(name).cloned()
    }
}

/// A component linked once: of the `handler` world, or of `batch-handler` (which also
/// answers single events).
#[derive(Clone)]
enum Linked {
    Single(HandlerPre<Sandbox>),
    Batch(BatchHandlerPre<Sandbox>),
}

/// One attempt's instance of a linked component.
enum Instance {
    Single(bindings::Handler),
    Batch(BatchHandler),
}

impl Linked {
    /// A fresh instance in `store`, or why it could not start.
    async fn instantiate(
        &self,
        store: &mut wasmtime::Store<Sandbox>,
    ) -> Result<Instance, (FailureKind, String)> {
        let instance = match self {
            Linked::Single(pre) => pre.instantiate_async(store).await.map(Instance::Single),
            Linked::Batch(pre) => pre.instantiate_async(store).await.map(Instance::Batch),
        };
        instance.map_err(|e| {
            (
                FailureKind::Instantiate,
                format!("cannot start the sandbox: {e:#}"),
            )
        })
    }
}

impl Instance {
    /// Calls `handle`.
    async fn handle(
        &self,
        store: &mut wasmtime::Store<Sandbox>,
        event: &Event,
    ) -> wasmtime::Result<Result<bindings::Response, HandlerError>> {
        match self {
            Instance::Single(h) => h.call_handle(store, event).await,
            Instance::Batch(h) => h.call_handle(store, event).await,
        }
    }

    /// Calls `handle-batch` (a component of the `handler` world is asked event by event).
    async fn handle_batch(
        &self,
        store: &mut wasmtime::Store<Sandbox>,
        events: &[Event],
    ) -> wasmtime::Result<Vec<Result<bindings::Response, HandlerError>>> {
        match self {
            Instance::Batch(h) => h.call_handle_batch(store, events).await,
            Instance::Single(h) => {
                let mut out = Vec::with_capacity(events.len());
                for event in events {
                    out.push(h.call_handle(&mut *store, event).await?);
                }
                Ok(out)
            }
        }
    }
}

impl LoadedFunction {
    /// True when its component exports `handle-batch` (the batch world).
    pub fn takes_batches(&self) -> bool {
        matches!(self.pre, Linked::Batch(_))
    }
}

impl Compiled {
    /// True when the component exports `handle-batch` (the batch world).
    pub fn takes_batches(&self) -> bool {
        matches!(self.pre, Linked::Batch(_))
    }
}

/// A component's digest: lowercase hex SHA-256 of its bytes.
pub fn digest(wasm: &[u8]) -> String {
    hex::encode(Sha256::digest(wasm))
}

/// The engine settings: a pooling allocator with room for `max_instances` sandboxes of the
/// largest component the per-component limits allow (so the scheduler's slots count what the
/// pool really holds: an attempt never finds the pool full), and epoch interruption for time
/// limits.
fn engine_config(config: &Config) -> wasmtime::Config {
    let n = config.max_instances;
    let per = config.component_limits;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .max_core_instances_per_component(per.core_instances)
        .max_memories_per_component(per.memories)
        .max_tables_per_component(per.tables)
        .total_core_instances(n * per.core_instances)
        .total_memories(n * per.memories)
        .total_tables(n * per.tables)
        .total_stacks(n)
        .max_memory_size((config.max_memory_mb as usize) << 20)
        // Reset a slot by rewriting only its dirty pages (PAGEMAP_SCAN, Linux 6.7+) instead of
        // madvise: no page-table changes, so no TLB shootdowns across cores per event.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT);
    let mut wasm = wasmtime::Config::new();
    wasm.epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasm
}
