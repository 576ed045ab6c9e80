//! # sluice-sdk: write Sluice event handlers in Rust
//!
//! A handler is one function. The SDK turns it into a WASI 0.2 component that implements the
//! Sluice handler world; WIT and bindgen stay out of sight.
//!
//! ```ignore
//! use sluice_sdk::{handler, Event, Response, Error};
//!
//! #[handler]
//! fn handle(ev: Event) -> Result<Response, Error> {
//!     let order: sluice_sdk::serde_json::Value = ev.json()?;
//!     Response::json(&order)
//! }
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and deploy the `.wasm` file with
//! `sluice deploy`.
//!
//! ## Layout
//! - [`Event`]: what the handler receives (data plus CloudEvents attributes).
//! - [`Response`]: what a successful handler returns (bytes plus content type).
//! - [`Error`]: why a handler failed: [`Error::Retryable`] or [`Error::Permanent`].
//! - [`publish`], [`enqueue`]: emit events and jobs, committed with the handler's success.
//! - [`PayloadReader`], [`OutputWriter`]: large payloads and outputs, streamed in pieces.
//! - [`log`]: lines for the job's captured log that never trap, whatever the volume.
//! - [`http`]: outbound HTTP requests, to the origins the manifest allows.
//! - [`config`]: the manifest's `[config]` values and the function's secrets.
//! - [`kv`]: the function's key-value state, committed with the handler's success.
//! - [`handler`]: the attribute macro that exports your function.
//! - [`batch_handler`]: the same for a function that takes a batch of events at once
//!   (deploy it with `batch = { max_size = 100, max_wait_ms = 200 }`).
#![deny(missing_docs)]

// The generated bindings name this crate by its public path, also from inside it.
extern crate self as sluice_sdk;

mod emit;
mod event;
mod payload;
mod response;

pub mod config;
pub mod http;
pub mod kv;
pub mod log;

pub use emit::{Enqueue, enqueue, enqueue_json, publish, publish_json};
pub use event::Event;
pub use payload::{OutputWriter, PayloadReader};
pub use response::{Error, Response};
pub use sluice_sdk_macro::{batch_handler, handler};

/// Re-exported so handler crates can use serde without declaring it (`sluice_sdk::serde`).
pub use serde;
/// Re-exported so handler crates can use serde_json without declaring it.
pub use serde_json;

/// Implementation details used by the code `#[handler]` generates. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen::rt;

    /// Bindings generated from `wit/` (a link to the workspace's `wit/`: one source, packaged
    /// with the crate): the one place the guest side reads the WIT.
    pub mod bindings {
        wit_bindgen::generate!({
            path: "wit",
            // The superset world: every handler also answers batches (see the macros).
            world: "sluice:platform/batch-handler",
            pub_export_macro: true,
            export_macro_name: "__export_sluice_handler",
            default_bindings_module: "::sluice_sdk::__private::bindings",
            runtime_path: "::sluice_sdk::__private::rt",
            with: {
                "wasi:config/store@0.2.0-rc.1": generate,
                "wasi:keyvalue/store@0.2.0-draft": generate,
                "wasi:keyvalue/atomics@0.2.0-draft": generate,
                "wasi:keyvalue/batch@0.2.0-draft": generate,
            },
        });
    }

    pub use bindings::__export_sluice_handler as export;
    pub use bindings::Guest;
    pub use bindings::sluice::platform::types::{
        Event as RawEvent, HandlerError as RawError, Response as RawResponse,
    };

    use crate::{Error, Event, Response};

    /// Calls the user's handler with the SDK's types and maps the result back to the WIT types.
    pub fn run<R, E>(
        event: RawEvent,
        handler: impl FnOnce(Event) -> Result<R, E>,
    ) -> Result<RawResponse, RawError>
    where
        R: Into<Response>,
        E: Into<Error>,
    {
        let result = handler(Event::from_raw(event));
        // Rust's stdout is line-buffered: without this, a trailing `print!` would be lost.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        raw(result)
    }

    /// A single handler asked for a batch: each event in turn.
    pub fn run_each<R, E>(
        events: Vec<RawEvent>,
        handler: impl Fn(Event) -> Result<R, E>,
    ) -> Vec<Result<RawResponse, RawError>>
    where
        R: Into<Response>,
        E: Into<Error>,
    {
        events.into_iter().map(|e| run(e, &handler)).collect()
    }

    /// Calls the user's batch handler: one result per event, in order (a handler that returns
    /// another number fails the events it gave no result for, or that it gave too many).
    pub fn run_batch<R, E>(
        events: Vec<RawEvent>,
        handler: impl FnOnce(Vec<Event>) -> Vec<Result<R, E>>,
    ) -> Vec<Result<RawResponse, RawError>>
    where
        R: Into<Response>,
        E: Into<Error>,
    {
        let n = events.len();
        let results = handler(events.into_iter().map(Event::from_raw).collect());
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let given = results.len();
        let mut out: Vec<_> = results.into_iter().take(n).map(raw).collect();
        while out.len() < n {
            out.push(Err(RawError::Permanent(format!(
                "the batch handler returned {given} results for {n} events"
            ))));
        }
        out
    }

    fn raw<R: Into<Response>, E: Into<Error>>(result: Result<R, E>) -> Result<RawResponse, RawError> {
        match result {
            Ok(response) => Ok(response.into().into_raw()),
            Err(error) => Err(error.into().into_raw()),
        }
    }
}
