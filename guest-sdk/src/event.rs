//! The event a handler receives.

use crate::__private::bindings::sluice::platform::types::{Event as RawEvent, Payload};
use crate::Error;

/// One event handed to a handler: a job's input or a topic delivery.
///
/// Attribute accessors follow CloudEvents 1.0 names. The data is read with [`Event::data`],
/// [`Event::text`] or [`Event::json`].
pub struct Event {
    /// The record the host passed in, kept whole so accessors borrow from it.
    raw: RawEvent,
    /// A large payload, read whole the first time [`Event::data`] asks for it.
    loaded: std::cell::OnceCell<Vec<u8>>,
}

impl Event {
    pub(crate) fn from_raw(raw: RawEvent) -> Self {
        Event {
            raw,
            loaded: std::cell::OnceCell::new(),
        }
    }

    /// Size of the data in bytes (without reading it).
    pub fn size(&self) -> u64 {
        match &self.raw.data {
            Payload::Inline(bytes) => bytes.len() as u64,
            Payload::Blob(blob) => blob.size,
        }
    }

    /// True when the data is large and stored by the host (read it with [`Event::reader`] to
    /// keep memory small).
    pub fn is_large(&self) -> bool {
        matches!(self.raw.data, Payload::Blob(_))
    }

    /// Reads the data in pieces (`std::io::Read`): a large payload streams from the host, so a
    /// handler can process more data than its memory limit holds.
    pub fn reader(&self) -> crate::PayloadReader<'_> {
        crate::PayloadReader::new(&self.raw.data)
    }

    /// Unique id of the event; for a job, the job id.
    pub fn id(&self) -> &str {
        &self.raw.id
    }

    /// Who produced the event.
    pub fn source(&self) -> &str {
        &self.raw.source
    }

    /// The kind of event, e.g. `order.placed`; `sluice.job` for a plain job.
    pub fn event_type(&self) -> &str {
        &self.raw.type_
    }

    /// What the event is about, within its source.
    pub fn subject(&self) -> Option<&str> {
        self.raw.subject.as_deref()
    }

    /// When the event happened (RFC 3339), if the producer said.
    pub fn time(&self) -> Option<&str> {
        self.raw.time.as_deref()
    }

    /// Media type of the data, as submitted.
    pub fn content_type(&self) -> Option<&str> {
        self.raw.content_type.as_deref()
    }

    /// Schema the data adheres to, if the producer said.
    pub fn dataschema(&self) -> Option<&str> {
        self.raw.dataschema.as_deref()
    }

    /// Other CloudEvents attributes, as name/value pairs.
    pub fn extensions(&self) -> &[(String, String)] {
        &self.raw.extensions
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.raw.attempt
    }

    /// Id shared by everything one request caused.
    pub fn correlation_id(&self) -> &str {
        &self.raw.correlation_id
    }

    /// The data bytes. A large payload is read whole into memory the first time (it must fit
    /// the function's `memory_mb`); use [`Event::reader`] to stream it instead.
    ///
    /// # Panics
    /// If the host cannot read a large payload (it was deleted): returning partial or empty
    /// data would be worse than failing the attempt.
    pub fn data(&self) -> &[u8] {
        match &self.raw.data {
            Payload::Inline(bytes) => bytes,
            Payload::Blob(_) => self.loaded.get_or_init(|| {
                let mut all = Vec::with_capacity(self.size() as usize);
                std::io::Read::read_to_end(&mut self.reader(), &mut all)
                    .unwrap_or_else(|e| panic!("cannot read the event's payload: {e}"));
                all
            }),
        }
    }

    /// The data as UTF-8 text; a permanent error if it is not UTF-8.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(self.data())
            .map_err(|e| Error::Permanent(format!("event data is not UTF-8: {e}")))
    }

    /// The data parsed as JSON into `T`; a permanent error (the input can never succeed) if it
    /// does not parse.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.data())
            .map_err(|e| Error::Permanent(format!("event data is not the expected JSON: {e}")))
    }
}
