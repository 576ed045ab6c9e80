//! Large payloads and outputs, in chunks: [`PayloadReader`] reads an event's data a piece at a
//! time and [`OutputWriter`] streams an output out, so a handler can process far more data than
//! its memory limit holds. The host stores payloads and outputs above its claim-check threshold
//! (256 KiB by default) once, as blobs; small ones travel inline. Both types work either way.

use std::io::{self, Read, Write};

use crate::__private::bindings::sluice::platform::payload;
use crate::__private::bindings::sluice::platform::types::Payload;
use crate::Response;

/// Bytes asked of the host per read.
const READ_PIECE: u32 = 256 << 10;
/// Bytes buffered before a write goes to the host.
const WRITE_PIECE: usize = 256 << 10;

/// Reads an event's data (see [`crate::Event::reader`]): inline data from memory, a blob from
/// the host in pieces.
pub struct PayloadReader<'a> {
    payload: &'a Payload,
    offset: u64,
    /// The current piece of a blob and where in it the reader is.
    piece: Vec<u8>,
    at: usize,
}

impl<'a> PayloadReader<'a> {
    pub(crate) fn new(payload: &'a Payload) -> Self {
        PayloadReader {
            payload,
            offset: 0,
            piece: Vec::new(),
            at: 0,
        }
    }
}

impl Read for PayloadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.payload {
            Payload::Inline(data) => {
                let rest = &data[(self.offset as usize).min(data.len())..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                self.offset += n as u64;
                Ok(n)
            }
            Payload::Blob(blob) => {
                if self.at == self.piece.len() {
                    if self.offset >= blob.size {
                        return Ok(0);
                    }
                    self.piece = payload::read_blob(&blob.digest, self.offset, READ_PIECE)
                        .map_err(io::Error::other)?;
                    self.at = 0;
                    self.offset += self.piece.len() as u64;
                    if self.piece.is_empty() {
                        return Ok(0);
                    }
                }
                let n = (self.piece.len() - self.at).min(buf.len());
                buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
                self.at += n;
                Ok(n)
            }
        }
    }
}

/// Streams an output out of the handler in pieces, for outputs too large to hold at once:
///
/// ```ignore
/// let mut out = sluice_sdk::OutputWriter::new();
/// for row in rows { writeln!(out, "{row}")?; }
/// Ok(out.finish("text/csv")?)
/// ```
#[derive(Default)]
pub struct OutputWriter {
    buffer: Vec<u8>,
}

impl OutputWriter {
    /// An empty output.
    pub fn new() -> Self {
        OutputWriter {
            buffer: Vec::with_capacity(WRITE_PIECE),
        }
    }

    /// Sends what is buffered and returns the response that ends the handler with this output.
    pub fn finish(mut self, content_type: &str) -> io::Result<Response> {
        self.flush()?;
        Ok(Response::bytes(Vec::new(), content_type))
    }
}

impl Write for OutputWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= WRITE_PIECE {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            payload::write_output(&self.buffer).map_err(io::Error::other)?;
            self.buffer.clear();
        }
        Ok(())
    }
}
