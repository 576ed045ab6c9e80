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
}

impl Event {
    pub(crate) fn from_raw(raw: RawEvent) -> Self {
        Event { raw }
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

    /// The data bytes.
    ///
    /// # Panics
    /// If the host stored the payload as a blob (a large payload): this SDK version cannot
    /// stream blobs yet, and silently returning empty data would be worse than failing the attempt.
    pub fn data(&self) -> &[u8] {
        match &self.raw.data {
            Payload::Inline(bytes) => bytes,
            Payload::Blob(blob) => panic!(
                "the event's payload ({} bytes) is stored as a blob, which this sluice-sdk \
                 version cannot read; upgrade sluice-sdk",
                blob.size
            ),
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
