//! A function's circuit breaker: after `breaker_failures` failed attempts in a row, the
//! function starts nothing for `breaker_cooldown_ms` (its jobs wait, queued and durable); then
//! one attempt probes (half-open): its success closes the breaker, its failure opens it again
//! for another cool-down. Per host: each host judges the failures it sees.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Attempts start; `failures` in a row so far.
    Closed { failures: u32 },
    /// Nothing starts until `until`.
    Open { until: Instant },
    /// One probe runs (`probing`) or may start.
    HalfOpen { probing: bool },
}

/// One function's breaker (inactive without `breaker_failures`).
#[derive(Debug)]
pub(super) struct Breaker {
    /// Failed attempts in a row that open it; `None`: never opens.
    threshold: Option<u32>,
    cooldown: Duration,
    state: State,
    /// Times it opened.
    opened: u64,
    /// When it last opened (ms since the Unix epoch), for people.
    opened_at: Option<u64>,
}

/// What the breaker says to a worker about to take a job.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Start it.
    Pass,
    /// Start it as the probe.
    Probe,
    /// Start nothing until this time (or until the probe's outcome, when `None`).
    Closed(Option<Instant>),
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            threshold: None,
            cooldown: Duration::from_secs(30),
            state: State::Closed { failures: 0 },
            opened: 0,
            opened_at: None,
        }
    }
}

impl Breaker {
    /// Applies the function's settings (a breaker switched off closes).
    pub(super) fn configure(&mut self, failures: Option<u32>, cooldown_ms: Option<u64>) {
        self.threshold = failures;
        self.cooldown = Duration::from_millis(cooldown_ms.unwrap_or(30_000));
        if failures.is_none() {
            self.state = State::Closed { failures: 0 };
        }
    }

    /// Whether a job may start now.
    pub(super) fn gate(&mut self, now: Instant) -> Gate {
        match self.state {
            State::Closed { .. } => Gate::Pass,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probing: true };
                Gate::Probe
            }
            State::Open { until } => Gate::Closed(Some(until)),
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Gate::Probe
            }
            State::HalfOpen { probing: true } => Gate::Closed(None),
        }
    }

    /// A probe was taken but never ran (its job was cancelled or the host stops): another
    /// may probe.
    pub(super) fn probe_dropped(&mut self) {
        if self.state == (State::HalfOpen { probing: true }) {
            self.state = State::HalfOpen { probing: false };
        }
    }

    /// An attempt ended: `failed` or not. Returns when the breaker opened, if it just did.
    pub(super) fn record(&mut self, failed: bool, now: Instant) -> Option<Instant> {
        let threshold = self.threshold?;
        match (self.state, failed) {
            (_, false) => {
                self.state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, true) if failures + 1 < threshold => {
                self.state = State::Closed {
                    failures: failures + 1,
                };
                None
            }
            // The threshold reached, or the probe failed.
            (State::Closed { .. } | State::HalfOpen { .. }, true) => Some(self.open(now)),
            // An attempt that started before it opened: it stays open.
            (State::Open { .. }, true) => None,
        }
    }

    fn open(&mut self, now: Instant) -> Instant {
        let until = now + self.cooldown;
        self.state = State::Open { until };
        self.opened += 1;
        self.opened_at = Some(crate::job::now_ms());
        until
    }

    /// True while it holds starts back (open or half-open).
    pub(super) fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }

    /// Times it opened since the host started.
    pub(super) fn opened(&self) -> u64 {
        self.opened
    }

    /// Its state as stats show it.
    pub(super) fn to_json(&self, now: Instant) -> Value {
        let (state, failures, retry_in) = match self.state {
            State::Closed { failures } => ("closed", failures, None),
            State::Open { until } => (
                "open",
                self.threshold.unwrap_or(0),
                Some(until.saturating_duration_since(now).as_millis() as u64),
            ),
            State::HalfOpen { .. } => ("half_open", self.threshold.unwrap_or(0), None),
        };
        json!({
            "state": if self.threshold.is_some() { state } else { "off" },
            "consecutive_failures": failures,
            "probe_in_ms": retry_in,
            "opened_total": self.opened,
            "last_opened_at": self.opened_at.map(crate::job::rfc3339),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_probes_once_and_closes_on_success() {
        let now = Instant::now();
        let mut b = Breaker::default();
        b.configure(Some(3), Some(1000));
        for _ in 0..2 {
            assert_eq!(b.gate(now), Gate::Pass);
            assert_eq!(b.record(true, now), None);
        }
        // A success in between starts the count again.
        assert_eq!(b.record(false, now), None);
        b.record(true, now);
        b.record(true, now);
        let until = b.record(true, now).expect("the third failure in a row opens it");
        assert_eq!(until, now + Duration::from_secs(1));
        assert!(b.is_open());
        assert_eq!(b.gate(now), Gate::Closed(Some(until)));
        // After the cool-down: one probe, the rest wait for its outcome.
        assert_eq!(b.gate(until), Gate::Probe);
        assert_eq!(b.gate(until), Gate::Closed(None));
        // The probe fails: open again for another cool-down.
        let again = b.record(true, until).unwrap();
        assert_eq!(again, until + Duration::from_secs(1));
        assert_eq!(b.opened(), 2);
        assert_eq!(b.gate(again), Gate::Probe);
        b.probe_dropped();
        assert_eq!(b.gate(again), Gate::Probe, "a dropped probe lets another probe");
        assert_eq!(b.record(false, again), None);
        assert!(!b.is_open());
        assert_eq!(b.gate(again), Gate::Pass);
        assert_eq!(b.to_json(again)["state"], "closed");

        let mut off = Breaker::default();
        for _ in 0..100 {
            assert_eq!(off.record(true, now), None);
        }
        assert_eq!(off.gate(now), Gate::Pass);
        assert_eq!(off.to_json(now)["state"], "off");
    }
}
