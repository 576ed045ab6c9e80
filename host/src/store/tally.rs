//! Per-function tallies since the host started, for `/metrics`: jobs ended by outcome, how long
//! attempts ran, how long jobs waited in the queue before an attempt started. Noted by the
//! transitions in a batch's effects and added once its commit is durable, so they count only
//! what happened.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::job::JobStatus;

/// Upper bounds of the histogram buckets, in milliseconds (a last bucket takes the rest).
pub const BUCKETS_MS: [u64; 14] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// A histogram of durations in milliseconds, with Prometheus' cumulative buckets in mind.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`BUCKETS_MS`] (not cumulative), then those above the last.
    pub buckets: [u64; BUCKETS_MS.len() + 1],
    /// Sum of the observations, in milliseconds.
    pub sum_ms: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u64) {
        let slot = BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[slot] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// One function's tallies.
#[derive(Clone, Debug, Default)]
pub struct FunctionTally {
    /// Jobs that ended `succeeded`.
    pub succeeded: u64,
    /// Jobs that ended `failed` (a permanent error).
    pub failed: u64,
    /// Jobs that ended `dead` (attempts used up).
    pub dead: u64,
    /// Jobs that ended `cancelled`.
    pub cancelled: u64,
    /// How long each finished attempt ran.
    pub attempt_ms: Histogram,
    /// How long each finished attempt's job waited, from ready to started.
    pub queue_wait_ms: Histogram,
}

/// What a batch noted, added after its commit.
#[derive(Debug)]
pub(crate) enum Noted {
    Ended(String, JobStatus),
    Attempt {
        function: String,
        ran_ms: u64,
        waited_ms: u64,
    },
}

/// Every function's tallies.
#[derive(Debug, Default)]
pub struct Tallies(Mutex<HashMap<String, FunctionTally>>);

impl Tallies {
    /// Adds what a committed batch noted.
    pub(crate) fn add(&self, noted: Vec<Noted>) {
        if noted.is_empty() {
            return;
        }
        let mut all = self.0.lock();
        for n in noted {
            match n {
                Noted::Ended(function, status) => {
                    let t = all.entry(function).or_default();
                    match status {
                        JobStatus::Succeeded => t.succeeded += 1,
                        JobStatus::Failed => t.failed += 1,
                        JobStatus::Dead => t.dead += 1,
                        JobStatus::Cancelled | JobStatus::Superseded => t.cancelled += 1,
                        _ => {}
                    }
                }
                Noted::Attempt {
                    function,
                    ran_ms,
                    waited_ms,
                } => {
                    let t = all.entry(function).or_default();
                    t.attempt_ms.observe(ran_ms);
                    t.queue_wait_ms.observe(waited_ms);
                }
            }
        }
    }

    /// Every function's tallies, by name.
    pub fn snapshot(&self) -> Vec<(String, FunctionTally)> {
        let mut out: Vec<_> = self
            .0
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_bucket_and_outcomes_count() {
        let t = Tallies::default();
        t.add(vec![
            Noted::Attempt {
                function: "f".into(),
                ran_ms: 3,
                waited_ms: 0,
            },
            Noted::Attempt {
                function: "f".into(),
                ran_ms: 70_000,
                waited_ms: 1_000,
            },
            Noted::Ended("f".into(), JobStatus::Dead),
            Noted::Ended("f".into(), JobStatus::Succeeded),
        ]);
        let (name, f) = &t.snapshot()[0];
        assert_eq!(name, "f");
        assert_eq!((f.succeeded, f.dead, f.failed), (1, 1, 0));
        assert_eq!(f.attempt_ms.buckets[1], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(
            f.attempt_ms.buckets[BUCKETS_MS.len()],
            1,
            "above the last bound"
        );
        assert_eq!(f.attempt_ms.sum_ms, 70_003);
        assert_eq!(f.queue_wait_ms.buckets[0], 1);
        assert_eq!(
            f.queue_wait_ms.buckets[8], 1,
            "1 s is in the 1000 ms bucket"
        );
    }
}
