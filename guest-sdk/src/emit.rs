//! Emitting work from a handler: events for a topic's subscribers and jobs for functions.
//!
//! Nothing leaves the sandbox when you call these: the host stages what you emit and commits it
//! in the same transaction that records your handler's success. If the handler then fails (or
//! times out, or its attempt was superseded), nothing it emitted ever happens; if it succeeds,
//! everything it emitted happens exactly once. So emit freely, then decide.
//!
//! ```ignore
//! #[handler]
//! fn handle(ev: Event) -> Result<Response, Error> {
//!     let order: Order = ev.json()?;
//!     if order.card_declined {
//!         // A business outcome, not a failure: publish it and succeed.
//!         sluice_sdk::publish_json("shop", "payment.declined", &order)?;
//!     } else {
//!         sluice_sdk::publish_json("shop", "payment.completed", &order)?;
//!     }
//!     Ok(Response::empty())
//! }
//! ```

use std::time::Duration;

use crate::__private::bindings::sluice::platform::emit;
use crate::Error;

/// Publishes an event of `event_type` to `topic`: every subscribed function gets its own copy,
/// once this handler succeeds. The event's `id` is the job's id and a sequence number, its
/// `source` `/v1/functions/{this function}`; it carries this job's correlation id.
pub fn publish(
    topic: &str,
    event_type: &str,
    data: impl Into<Vec<u8>>,
    content_type: Option<&str>,
) -> Result<(), Error> {
    emit::publish(topic, event_type, &data.into(), content_type).map_err(refused)
}

/// Publishes `value` as JSON (see [`publish`]).
pub fn publish_json<T: serde::Serialize + ?Sized>(
    topic: &str,
    event_type: &str,
    value: &T,
) -> Result<(), Error> {
    publish(topic, event_type, to_json(value)?, Some("application/json"))
}

/// Enqueues a job of `function` with `data` as its input, once this handler succeeds.
pub fn enqueue(
    function: &str,
    data: impl Into<Vec<u8>>,
    content_type: Option<&str>,
) -> Result<(), Error> {
    Enqueue::new(function).send(data, content_type)
}

/// Enqueues a job of `function` with `value` as its JSON input (see [`enqueue`]).
pub fn enqueue_json<T: serde::Serialize + ?Sized>(function: &str, value: &T) -> Result<(), Error> {
    Enqueue::new(function).send_json(value)
}

/// An enqueue with options: `Enqueue::new("mailer").priority(9).delay(d).send_json(&mail)?`.
#[derive(Debug, Clone)]
pub struct Enqueue {
    function: String,
    priority: Option<u8>,
    delay: Option<Duration>,
}

impl Enqueue {
    /// A job of `function`, priority 5, no delay.
    pub fn new(function: &str) -> Self {
        Enqueue {
            function: function.to_string(),
            priority: None,
            delay: None,
        }
    }

    /// 0-9, higher first.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// How long after this handler's success the job may run.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Enqueues the job with `data` as its input.
    pub fn send(self, data: impl Into<Vec<u8>>, content_type: Option<&str>) -> Result<(), Error> {
        let options = emit::EnqueueOptions {
            priority: self.priority,
            delay_ms: self
                .delay
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
        };
        emit::enqueue(&self.function, &data.into(), content_type, options).map_err(refused)
    }

    /// Enqueues the job with `value` as its JSON input.
    pub fn send_json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        let data = to_json(value)?;
        self.send(data, Some("application/json"))
    }
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::permanent(format!("cannot encode JSON: {e}")))
}

/// The host refused an emit (invalid name or type, or over the attempt's limits): no retry
/// would change that.
fn refused(message: String) -> Error {
    Error::permanent(format!("emit refused: {message}"))
}
