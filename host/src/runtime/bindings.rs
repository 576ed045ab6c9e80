//! The one `bindgen!` of the host, over the shared `wit/` folder, and the host side of its
//! imports. Nothing else in the host names generated types directly.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sluice:platform/handler",
    exports: { default: async },
    with: { "wasi:keyvalue/store.bucket": super::kv::Bucket },
});

/// The batch world: everything `handler` is, plus `handle-batch`, over the same imports (so
/// one linker and one set of host implementations serve both).
pub mod batch {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:platform/batch-handler",
        exports: { default: async },
        with: {
            "sluice:platform/types": super::sluice::platform::types,
            "sluice:platform/log": super::sluice::platform::log,
            "sluice:platform/emit": super::sluice::platform::emit,
            "sluice:platform/payload": super::sluice::platform::payload,
            "wasi:config/store": super::wasi::config::store,
            "wasi:keyvalue/store": super::wasi::keyvalue::store,
            "wasi:keyvalue/atomics": super::wasi::keyvalue::atomics,
            "wasi:keyvalue/batch": super::wasi::keyvalue::batch,
        },
    });
}

pub use sluice::platform::log::Level;
pub use sluice::platform::types::{BlobRef as RawBlobRef, Payload};
pub use wasi::config::store::Error as ConfigError;

use super::sandbox::Sandbox;
use crate::job::{DEFAULT_PRIORITY, Emission, MAX_PRIORITY};
use sluice::platform::emit::EnqueueOptions;

/// Longest event type a handler may publish.
const MAX_TYPE_LEN: usize = 256;

impl sluice::platform::types::Host for Sandbox {}

impl sluice::platform::log::Host for Sandbox {
    fn write(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.log.line(level, &message);
    }
}

impl sluice::platform::emit::Host for Sandbox {
    fn publish(
        &mut self,
        topic: String,
        event_type: String,
        data: Vec<u8>,
        content_type: Option<String>,
    ) -> Result<(), String> {
        crate::event::validate_topic(&topic)?;
        if event_type.is_empty() || event_type.len() > MAX_TYPE_LEN {
            return Err(format!(
                "an event type is 1 to {MAX_TYPE_LEN} bytes, e.g. \"order.placed\""
            ));
        }
        self.emitted.push(Emission::Publish {
            topic,
            event_type,
            data,
            content_type,
        })
    }

    fn enqueue(
        &mut self,
        function: String,
        data: Vec<u8>,
        content_type: Option<String>,
        options: EnqueueOptions,
    ) -> Result<(), String> {
        crate::manifest::validate_name(&function).map_err(|e| e.to_string())?;
        let priority = options.priority.unwrap_or(DEFAULT_PRIORITY);
        if priority > MAX_PRIORITY {
            return Err(format!("priority is 0 to {MAX_PRIORITY}, not {priority}"));
        }
        if options.delay_ms.is_some_and(|d| d > 365 * 24 * 3_600_000) {
            return Err("a delay is at most a year".into());
        }
        self.emitted.push(Emission::Enqueue {
            function,
            data,
            content_type,
            priority,
            delay_ms: options.delay_ms,
        })
    }
}

impl wasi::config::store::Host for Sandbox {
    fn get(&mut self, key: String) -> Result<Option<String>, ConfigError> {
        Ok(self.config.get(&key).cloned())
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, ConfigError> {
        Ok(self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Most bytes one `read-blob` call returns.
const MAX_READ: u32 = 4 << 20;

impl sluice::platform::payload::Host for Sandbox {
    fn read_blob(&mut self, digest: String, offset: u64, len: u32) -> Result<Vec<u8>, String> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&digest, &mut key)
            .map_err(|_| format!("{digest:?} is not a blob digest (64 hex digits)"))?;
        if !self.readable.contains(&key) {
            return Err(format!(
                "blob {digest} is not this job's input: a handler reads only the payload it was handed (event.data)"
            ));
        }
        self.blobs
            .read(&key, offset, len.min(MAX_READ) as usize)?
            .ok_or_else(|| format!("no blob {digest}"))
    }

    fn write_output(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.output.write(&chunk)
    }
}
