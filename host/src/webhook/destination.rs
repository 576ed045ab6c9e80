//! Fairness between receivers: each destination (a callback URL's origin) gets at most a few
//! deliveries in flight, and a circuit breaker. So one slow or failing receiver holds only its
//! own slots, never the sender's, and other tenants' callbacks go out meanwhile.
//!
//! The breaker opens after [`FAILURES_TO_OPEN`] transient failures in a row (timeouts,
//! connection errors, non-2xx answers): for the cool-down nothing is sent there, and the
//! deliveries waiting for it keep their attempts (waiting is not failing). Then one probe goes
//! out (half-open): its success closes the breaker, its failure opens it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Transient failures in a row that open a destination's breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// Destinations remembered before idle, healthy ones are forgotten.
const MAX_DESTINATIONS: usize = 10_000;

/// The destinations seen so far.
pub(crate) struct Destinations {
    per_destination: usize,
    cool_down: Duration,
    map: Mutex<HashMap<String, Arc<Destination>>>,
}

/// One receiver origin: its delivery slots and its breaker.
pub(crate) struct Destination {
    slots: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Breaker {
    /// Sending; `failures` transient failures in a row so far.
    Closed { failures: u32 },
    /// Not sending until then.
    Open { until: Instant },
    /// One probe is out; the others wait for its result.
    HalfOpen,
}

/// A delivery's right to send to its destination: one of its slots, and (when the breaker was
/// half-open) the probe's role. Report the outcome with [`Turn::finish`].
pub(crate) struct Turn {
    destination: Arc<Destination>,
    _slot: OwnedSemaphorePermit,
}

impl Destinations {
    /// At most `per_destination` deliveries in flight to each origin; a breaker that opens
    /// stays open for `cool_down`.
    pub(crate) fn new(per_destination: usize, cool_down: Duration) -> Self {
        Destinations {
            per_destination,
            cool_down,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, origin: &str) -> Arc<Destination> {
        let mut map = self.map.lock();
        if let Some(d) = map.get(origin) {
            return d.clone();
        }
        if map.len() >= MAX_DESTINATIONS {
            // Forget destinations nobody is using and that are healthy.
            map.retain(|_, d| {
                Arc::strong_count(d) > 1 || *d.breaker.lock() != Breaker::Closed { failures: 0 }
            });
        }
        let d = Arc::new(Destination {
            slots: Arc::new(Semaphore::new(self.per_destination)),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        });
        map.insert(origin.to_string(), d.clone());
        d
    }

    /// Waits for a slot at `origin` and for its breaker to let a delivery through.
    pub(crate) async fn turn(&self, origin: &str) -> Turn {
        let destination = self.get(origin);
        let slot = destination
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            let wait = {
                let mut breaker = destination.breaker.lock();
                match *breaker {
                    Breaker::Closed { .. } => None,
                    Breaker::Open { until } if Instant::now() >= until => {
                        *breaker = Breaker::HalfOpen;
                        None
                    }
                    Breaker::Open { until } => Some(until - Instant::now()),
                    Breaker::HalfOpen => Some(Duration::from_millis(50)),
                }
            };
            match wait {
                None => break,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
        Turn {
            destination,
            _slot: slot,
        }
    }

    /// Records how a delivery to its destination went: `Some(true)` delivered, `Some(false)` a
    /// transient failure, `None` neither (e.g. refused by the guard: no sign of the receiver's
    /// health).
    pub(crate) fn finish(&self, turn: Turn, outcome: Option<bool>) {
        let mut breaker = turn.destination.breaker.lock();
        *breaker = match (outcome, *breaker) {
            (Some(true), _) => Breaker::Closed { failures: 0 },
            (Some(false), Breaker::HalfOpen) => Breaker::Open {
                until: Instant::now() + self.cool_down,
            },
            (Some(false), Breaker::Closed { failures }) if failures + 1 >= FAILURES_TO_OPEN => {
                tracing::warn!(
                    cool_down = ?self.cool_down,
                    "callback receiver failed {FAILURES_TO_OPEN} times in a row: pausing deliveries to it"
                );
                Breaker::Open {
                    until: Instant::now() + self.cool_down,
                }
            }
            (Some(false), Breaker::Closed { failures }) => Breaker::Closed {
                failures: failures + 1,
            },
            // Another delivery already opened it; keep its deadline.
            (Some(false), open @ Breaker::Open { .. }) => open,
            // A probe that said nothing about the receiver lets the next one try.
            (None, Breaker::HalfOpen) => Breaker::Open {
                until: Instant::now(),
            },
            (None, state) => state,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_probes_and_closes() {
        let d = Arc::new(Destinations::new(2, Duration::from_secs(30)));
        for _ in 0..FAILURES_TO_OPEN {
            let turn = d.turn("http://r").await;
            d.finish(turn, Some(false));
        }
        // Another origin is not affected.
        let other = d.turn("http://other").await;
        d.finish(other, Some(true));
        // Open: the next turn waits out the cool-down, then probes.
        let start = tokio::time::Instant::now();
        let probe = d.turn("http://r").await;
        assert!(start.elapsed() >= Duration::from_secs(30));
        // While the probe is out, another delivery waits for its result.
        let waiting = tokio::spawn({
            let d = d.clone();
            async move {
                let t = d.turn("http://r").await;
                d.finish(t, Some(true));
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        // The probe fails: open again for a whole cool-down.
        d.finish(probe, Some(false));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!waiting.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Then the waiting delivery probes and succeeds: closed.
        waiting.await.unwrap();
        let start = tokio::time::Instant::now();
        let t = d.turn("http://r").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        d.finish(t, Some(false));
    }
}
