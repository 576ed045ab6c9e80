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
    /// Output the handler streamed out (`write-output`), in host memory.
    pub(crate) streamed: Vec<u8>,
    /// Most bytes it may stream out.
    pub(crate) max_output: usize,
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
}

impl Staged {
    /// Stages one emission, or says which limit it would pass.
    pub(crate) fn push(&mut self, e: crate::job::Emission) -> Result<(), String> {
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

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The function's `memory_mb`, enforced on every linear memory and table of the sandbox. It
/// remembers a refused growth, so the failed attempt names the limit whatever the guest does
/// next (a Rust guest aborts on allocation failure: the host only sees `unreachable`).
pub(crate) struct MemoryLimit {
    /// Bytes one memory (or table) may reach.
    bytes: usize,
    /// The size a refused growth asked for, in bytes.
    pub(crate) refused: Option<usize>,
}

impl MemoryLimit {
    pub(crate) fn new(memory_mb: u32) -> Self {
        MemoryLimit {
            bytes: (memory_mb as usize) << 20,
            refused: None,
        }
    }

    fn check(&mut self, desired_bytes: usize) -> bool {
        if desired_bytes > self.bytes {
            self.refused = Some(self.refused.unwrap_or(0).max(desired_bytes));
            false
        } else {
            true
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.check(desired))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Each table element takes a pointer's worth of host memory.
        Ok(self.check(desired.saturating_mul(size_of::<usize>())))
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
