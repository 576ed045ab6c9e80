//! One attempt's sandbox: the store data (WASI context with nothing granted, resource table,
//! memory limits) and the bounded log that captures stdout, stderr and log lines in order.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The data of one attempt's wasmtime store.
pub(crate) struct Sandbox {
    /// WASI state: no preopened directories, no environment, no network, no arguments.
    pub(crate) wasi: WasiCtx,
    /// Handles to WASI resources the guest holds.
    pub(crate) table: ResourceTable,
    /// Memory and table limits from the function's `memory_mb`.
    pub(crate) limits: MemoryLimit,
    /// Where stdout, stderr and log lines go.
    pub(crate) log: LogSink,
    /// Events and jobs the handler emitted, staged until the attempt's outcome is known.
    pub(crate) emitted: Staged,
    /// Where large payloads are read from.
    pub(crate) blobs: std::sync::Arc<dyn super::BlobSource>,
    /// The blobs this attempt may read: its own jobs' inputs that are blobs (one job's, or a
    /// batch's). Another function's payload is not readable by guessing or learning its digest.
    pub(crate) readable: Vec<[u8; 32]>,
    /// Output the handler streamed out (`write-output`): in memory while small, then spooled.
    pub(crate) output: crate::output::OutputSink,
    /// wasi-http state (field size limits).
    pub(crate) http: wasmtime_wasi_http::WasiHttpCtx,
    /// The attempt's view of its function's key-value state: reads and staged writes.
    pub(crate) kv: super::kv::KvAttempt,
    /// What `wasi:config/store` answers: `[config]` values and secrets.
    pub(crate) config: Arc<std::collections::BTreeMap<String, String>>,
    /// Judges and sends the handler's outbound HTTP requests, and records them.
    pub(crate) outbound: super::outbound::OutboundHooks,
}

/// Most emissions one attempt may stage.
pub(crate) const MAX_EMISSIONS: usize = 1000;
/// Most bytes of data one attempt may emit.
pub(crate) const MAX_EMITTED_BYTES: usize = 16 << 20;

/// What an attempt emitted so far. Kept in the sandbox only: it reaches the store with the
/// attempt's success, or never.
#[derive(Default)]
pub(crate) struct Staged {
    pub(crate) items: Vec<crate::job::Emission>,
    bytes: usize,
    /// Why nothing may be emitted here (a batch), if so.
    refused: Option<&'static str>,
}

impl Staged {
    /// Refuses every emission with `why`.
    pub(crate) fn refusing(why: &'static str) -> Staged {
        Staged {
            refused: Some(why),
            ..Staged::default()
        }
    }

    /// Stages one emission, or says which limit it would pass.
    pub(crate) fn push(&mut self, e: crate::job::Emission) -> Result<(), String> {
        if let Some(why) = self.refused {
            return Err(why.to_string());
        }
        if self.items.len() >= MAX_EMISSIONS {
            return Err(format!(
                "an attempt may emit at most {MAX_EMISSIONS} events and jobs"
            ));
        }
        if self.bytes + e.size() > MAX_EMITTED_BYTES {
            return Err(format!(
                "an attempt may emit at most {} MiB of data",
                MAX_EMITTED_BYTES >> 20
            ));
        }
        self.bytes += e.size();
        self.items.push(e);
        Ok(())
    }
}

impl wasmtime_wasi_http::WasiHttpView for Sandbox {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The function's `memory_mb`: one budget for the whole sandbox, shared by all its linear
/// memories and tables (a table element costs a pointer's worth of host memory), so a
/// component with many memories gets no more than one with a single memory. It remembers a
/// refused growth, so the failed attempt names the limit whatever the guest does next (a Rust
/// guest aborts on allocation failure: the host only sees `unreachable`).
pub(crate) struct MemoryLimit {
    /// Bytes all memories and tables together may reach.
    bytes: usize,
    /// Bytes they hold now (wasmtime asks before creating each one, too).
    used: usize,
    /// The last approved growth, taken back if wasmtime then fails to grow.
    last: usize,
    /// The sandbox's total a refused growth asked for, in bytes.
    pub(crate) refused: Option<usize>,
}

impl MemoryLimit {
    pub(crate) fn new(memory_mb: u32) -> Self {
        MemoryLimit {
            bytes: (memory_mb as usize) << 20,
            used: 0,
            last: 0,
            refused: None,
        }
    }

    /// Approves growing one memory or table by `delta` bytes if the sandbox's total stays
    /// within the budget.
    fn grow(&mut self, delta: usize) -> bool {
        let total = self.used.saturating_add(delta);
        if total > self.bytes {
            self.refused = Some(self.refused.unwrap_or(0).max(total));
            self.last = 0;
            false
        } else {
            self.used = total;
            self.last = delta;
            true
        }
    }

    /// Takes back the last approved growth, which did not happen.
    fn undo(&mut self) {
        self.used -= self.last;
        self.last = 0;
    }
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let element = size_of::<usize>();
        Ok(self.grow(desired.saturating_sub(current).saturating_mul(element)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryLimit;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_budget_is_shared_by_every_memory_and_table() {
        let mut l = MemoryLimit::new(16);
        // Two memories of 8 MiB fit; a third memory of any size does not.
        assert!(l.memory_growing(0, 8 << 20, None).unwrap());
        assert!(l.memory_growing(0, 8 << 20, None).unwrap());
        assert!(!l.memory_growing(0, 64 << 10, None).unwrap());
        assert_eq!(l.refused, Some((16 << 20) + (64 << 10)));
        // A growth wasmtime could not do is given back.
        let mut l = MemoryLimit::new(16);
        assert!(l.memory_growing(0, 10 << 20, None).unwrap());
        assert!(l.memory_growing(10 << 20, 16 << 20, None).unwrap());
        l.memory_grow_failed(wasmtime::Error::msg("no")).unwrap();
        assert!(
            l.table_growing(0, 1 << 19, None).unwrap(),
            "4 MiB of table fits in the 6 left"
        );
        assert!(!l.table_growing(1 << 19, 1 << 20, None).unwrap());
    }
}

/// A bounded, shared log buffer. Past its bound it keeps counting but stores nothing, and it never
/// reports an error to the guest: a chatty handler cannot trap itself by logging.
#[derive(Clone)]
pub(crate) struct LogSink {
    inner: Arc<Mutex<LogBuffer>>,
}

struct LogBuffer {
    bytes: Vec<u8>,
    cap: usize,
    dropped: usize,
}

impl LogSink {
    pub(crate) fn new(cap: usize) -> Self {
        LogSink {
            inner: Arc::new(Mutex::new(LogBuffer {
                bytes: Vec::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    fn append(&self, data: &[u8]) {
        let mut b = self.inner.lock();
        let room = b.cap.saturating_sub(b.bytes.len());
        let take = room.min(data.len());
        b.bytes.extend_from_slice(&data[..take]);
        b.dropped += data.len() - take;
    }

    /// Appends one structured log line.
    pub(crate) fn line(&self, level: &str, message: &str) {
        let mut line = String::with_capacity(level.len() + message.len() + 4);
        line.push('[');
        line.push_str(level);
        line.push_str("] ");
        line.push_str(message);
        line.push('\n');
        self.append(line.as_bytes());
    }

    /// The captured text, with a note when output was dropped.
    pub(crate) fn text(&self) -> String {
        let b = self.inner.lock();
        let mut text = String::from_utf8_lossy(&b.bytes).into_owned();
        if b.dropped > 0 {
            text.push_str(&format!(
                "\n[sluice] {} more bytes of output dropped: a job's log keeps at most {} bytes\n",
                b.dropped, b.cap
            ));
        }
        text
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
