//! The benchmark's yardstick for per-event sandbox cost: a bare wasmtime pooling-allocator
//! instantiate + call of a component with nothing of Sluice around it, measured against the same
//! component run through Sluice's real per-attempt path ([`Runtime::run`]).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Event, Handler, HandlerPre, Payload, sluice};
use super::{Runtime, engine_config};
use crate::config::Config;
use crate::job::{JobId, Outcome, QueuedJob};
use crate::manifest::Settings;
use crate::store::FunctionRecord;

/// Mean cost of one event, in microseconds, each way.
#[derive(Debug, Clone, Copy)]
pub struct SandboxCost {
    /// Bare wasmtime: new store with an empty WASI context, instantiate, call, drop.
    pub bare_us: f64,
    /// Sluice's per-attempt path: limits, log capture, event record, timeout, instantiate, call,
    /// teardown, outcome.
    pub sluice_us: f64,
}

/// Store data of the bare baseline: only what WASI needs.
struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl sluice::platform::types::Host for Bare {}

/// The baseline's components use no key-value state: every call is refused.
mod no_kv {
    use super::Bare;
    use crate::runtime::bindings::wasi::keyvalue::{atomics, batch, store};
    use crate::runtime::kv::Bucket;
    use wasmtime::component::Resource;

    type R<T> = Result<T, store::Error>;

    impl store::Host for Bare {
        fn open(&mut self, _: String) -> R<Resource<Bucket>> {
            Err(store::Error::NoSuchStore)
        }
    }
    impl store::HostBucket for Bare {
        fn get(&mut self, _: Resource<Bucket>, _: String) -> R<Option<Vec<u8>>> {
            Err(store::Error::NoSuchStore)
        }
        fn set(&mut self, _: Resource<Bucket>, _: String, _: Vec<u8>) -> R<()> {
            Err(store::Error::NoSuchStore)
        }
        fn delete(&mut self, _: Resource<Bucket>, _: String) -> R<()> {
            Err(store::Error::NoSuchStore)
        }
        fn exists(&mut self, _: Resource<Bucket>, _: String) -> R<bool> {
            Err(store::Error::NoSuchStore)
        }
        fn list_keys(&mut self, _: Resource<Bucket>, _: Option<u64>) -> R<store::KeyResponse> {
            Err(store::Error::NoSuchStore)
        }
        fn drop(&mut self, _: Resource<Bucket>) -> wasmtime::Result<()> {
            Ok(())
        }
    }
    impl atomics::Host for Bare {
        fn increment(&mut self, _: Resource<Bucket>, _: String, _: u64) -> R<u64> {
            Err(store::Error::NoSuchStore)
        }
    }
    impl batch::Host for Bare {
        fn get_many(
            &mut self,
            _: Resource<Bucket>,
            _: Vec<String>,
        ) -> R<Vec<Option<(String, Vec<u8>)>>> {
            Err(store::Error::NoSuchStore)
        }
        fn set_many(&mut self, _: Resource<Bucket>, _: Vec<(String, Vec<u8>)>) -> R<()> {
            Err(store::Error::NoSuchStore)
        }
        fn delete_many(&mut self, _: Resource<Bucket>, _: Vec<String>) -> R<()> {
            Err(store::Error::NoSuchStore)
        }
    }
}

impl super::bindings::wasi::config::store::Host for Bare {
    fn get(&mut self, _: String) -> Result<Option<String>, super::bindings::ConfigError> {
        Ok(None)
    }
    fn get_all(&mut self) -> Result<Vec<(String, String)>, super::bindings::ConfigError> {
        Ok(Vec::new())
    }
}

impl sluice::platform::log::Host for Bare {
    fn write(&mut self, _: sluice::platform::log::Level, _: String) {}
}

impl sluice::platform::payload::Host for Bare {
    fn read_blob(&mut self, _: String, _: u64, _: u32) -> Result<Vec<u8>, String> {
        Err("the baseline has no blobs".into())
    }
    fn write_output(&mut self, _: Vec<u8>) -> Result<(), String> {
        Err("the baseline does not stream".into())
    }
}

impl sluice::platform::emit::Host for Bare {
    fn publish(
        &mut self,
        _: String,
        _: String,
        _: Vec<u8>,
        _: Option<String>,
    ) -> Result<(), String> {
        Err("the baseline does not emit".into())
    }
    fn enqueue(
        &mut self,
        _: String,
        _: Vec<u8>,
        _: Option<String>,
        _: sluice::platform::emit::EnqueueOptions,
    ) -> Result<(), String> {
        Err("the baseline does not emit".into())
    }
}

/// The baseline's events are small: no blob is ever read.
struct NoBlobs;

impl super::BlobSource for NoBlobs {
    fn read(&self, _: &[u8; 32], _: u64, _: usize) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

impl super::kv::KvSource for NoBlobs {
    fn get(&self, _: &str, _: &str) -> Result<(u64, Option<Vec<u8>>), String> {
        Ok((0, None))
    }
    fn keys(&self, _: &str, _: usize, _: usize) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
}

/// Runs `iterations` events of `payload` through both paths, interleaved in rounds so drift
/// hits both alike; reports the best round of each.
pub async fn measure(
    config: &Config,
    wasm: &[u8],
    payload: &[u8],
    iterations: usize,
) -> anyhow::Result<SandboxCost> {
    let runtime = Runtime::new(config)?;
    let compiled = runtime.compile(wasm)?;
    let record = FunctionRecord {
        name: "baseline".into(),
        settings: Settings {
            max_concurrency: 1,
            timeout_ms: 60_000,
            memory_mb: 64,
            ..Settings::DEFAULT
        },
        subscriptions: Vec::new(),
        then: None,
        concurrency_key: None,
        schedules: Vec::new(),
        key_weights: Default::default(),
        digest: compiled.digest.clone(),
        size: wasm.len() as u64,
        deployed_at: 0,
        version: 1,
        change: "deploy".into(),
        changes: Vec::new(),
        paused: false,
        allowed_outbound_hosts: Vec::new(),
        config: Default::default(),
    };
    let function = runtime.install(record, &compiled);
    let job = QueuedJob {
        priority: crate::job::DEFAULT_PRIORITY,
        ready_at: 0,
        id: JobId(1),
        function: "baseline".into(),
        attempts: 0,
        content_type: Some("application/json".into()),
        input: Bytes::copy_from_slice(payload),
        created_at: 0,
        correlation_id: "bench".into(),
        event: None,
        input_blob: None,
        parent: None,
        trace_parent: None,
        concurrency_key: None,
    };

    let engine = Engine::new(&engine_config(config))?;
    let mut linker: Linker<Bare> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    let component = wasmtime::component::Component::new(&engine, wasm)?;
    let pre = HandlerPre::new(linker.instantiate_pre(&component)?)?;
    let event = Event {
        id: "1".into(),
        source: "bench".into(),
        type_: "sluice.job".into(),
        subject: None,
        time: None,
        content_type: Some("application/json".into()),
        dataschema: None,
        extensions: Vec::new(),
        attempt: 1,
        correlation_id: "bench".into(),
        data: Payload::Inline(payload.to_vec()),
    };

    let rounds = 5;
    let per_round = (iterations / rounds).max(1);
    let (mut bare_best, mut sluice_best) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..per_round {
            let mut store = Store::new(
                &engine,
                Bare {
                    wasi: WasiCtx::builder().build(),
                    table: ResourceTable::new(),
                },
            );
            store.set_epoch_deadline(u64::MAX / 2);
            let handler = pre.instantiate_async(&mut store).await?;
            let out = handler.call_handle(&mut store, &event).await?;
            anyhow::ensure!(out.is_ok(), "the baseline call failed");
        }
        bare_best = bare_best.min(start.elapsed().as_secs_f64() * 1e6 / per_round as f64);

        let start = Instant::now();
        for _ in 0..per_round {
            let report = runtime
                .run(&function, &job, 1, Arc::new(NoBlobs), Arc::new(NoBlobs))
                .await;
            anyhow::ensure!(
                matches!(report.outcome, Outcome::Succeeded { .. }),
                "a Sluice attempt failed: {:?}",
                report.outcome
            );
        }
        sluice_best = sluice_best.min(start.elapsed().as_secs_f64() * 1e6 / per_round as f64);
    }
    Ok(SandboxCost {
        bare_us: bare_best,
        sluice_us: sluice_best,
    })
}
