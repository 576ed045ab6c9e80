//! Recent figures: each function's outcomes sampled every few seconds over the last minutes,
//! so a dashboard shows throughput and error rate on first load (the counters alone only say
//! how many jobs ever ended). Kept in memory by the host that serves the API: a host that just
//! started has a short history.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::job::{JobStatus, now_ms};
use crate::store::Backend;

/// How often figures are sampled.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// How far back they are kept.
const KEPT: Duration = Duration::from_secs(10 * 60);

/// One sample: when, and how many jobs had succeeded and failed (`failed` + `dead`) by then
/// (a count that can fall, as after a purge, reads as nothing ended in that interval).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    at: u64,
    succeeded: u64,
    failed: u64,
}

/// The samples of every function.
#[derive(Default)]
pub(crate) struct Recent {
    samples: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl Recent {
    /// Samples every function's counts now, and forgets what is too old or deleted.
    async fn sample(&self, store: &dyn Backend) {
        let Ok(functions) = store.functions().await else {
            return;
        };
        let now = now_ms();
        let names: Vec<String> = functions.iter().map(|f| f.name.clone()).collect();
        let mut fresh = Vec::with_capacity(functions.len());
        // Outcomes this host's store has seen since start only grow (the status counts fall
        // when retention deletes finished jobs, or a dead letter is redriven or purged): they
        // are used where the store keeps them; the counts otherwise.
        let tallies: HashMap<String, crate::store::FunctionTally> =
            store.tallies().into_iter().collect();
        for f in functions {
            if let Some(t) = tallies.get(&f.name) {
                fresh.push((
                    f.name,
                    Sample {
                        at: now,
                        succeeded: t.succeeded,
                        failed: t.failed + t.dead,
                    },
                ));
                continue;
            }
            if let Ok(counts) = store.counts(&f.name).await {
                fresh.push((
                    f.name,
                    Sample {
                        at: now,
                        succeeded: counts.status(JobStatus::Succeeded),
                        failed: counts.status(JobStatus::Failed) + counts.status(JobStatus::Dead),
                    },
                ));
            }
        }
        let mut samples = self.samples.lock();
        // Deleted functions are forgotten; one whose counts failed this round keeps its past.
        samples.retain(|name, _| names.contains(name));
        for (name, sample) in fresh {
            let kept = samples.entry(name).or_default();
            kept.push_back(sample);
            while kept
                .front()
                .is_some_and(|s| now.saturating_sub(s.at) > KEPT.as_millis() as u64)
            {
                kept.pop_front();
            }
        }
    }

    /// Samples until `stopping` is cancelled.
    pub(crate) fn start(
        self: &Arc<Self>,
        store: Arc<dyn Backend>,
        stopping: tokio_util::sync::CancellationToken,
    ) {
        let recent = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = recent.upgrade() else { return };
                me.sample(&*store).await;
                drop(me);
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = stopping.cancelled() => return,
                }
            }
        });
    }

    /// `function`'s recent figures: rates over the samples kept, and a count per minute.
    pub(crate) fn of(&self, function: &str) -> Value {
        let samples = self.samples.lock();
        let kept: Vec<Sample> = samples
            .get(function)
            .map(|k| k.iter().copied().collect())
            .unwrap_or_default();
        drop(samples);
        summary(&kept)
    }
}

/// The figures a run of samples gives.
fn summary(kept: &[Sample]) -> Value {
    let (Some(first), Some(last)) = (kept.first(), kept.last()) else {
        return json!({"seconds": 0, "succeeded_per_minute": null, "failed_per_minute": null, "error_rate": null, "per_minute": []});
    };
    let seconds = last.at.saturating_sub(first.at) as f64 / 1000.0;
    let succeeded = last.succeeded.saturating_sub(first.succeeded);
    let failed = last.failed.saturating_sub(first.failed);
    let per_minute_rate = |n: u64| (seconds > 0.0).then(|| (n as f64 * 60.0 / seconds * 10.0).round() / 10.0);
    let ended = succeeded + failed;
    // Minute by minute, oldest first: what ended in each (from the samples at its edges).
    let mut per_minute = Vec::new();
    let mut start = *first;
    for sample in kept.iter().skip(1) {
        if sample.at.saturating_sub(start.at) >= 60_000 || sample == last {
            per_minute.push(json!({
                "at": crate::job::rfc3339(sample.at),
                "succeeded": sample.succeeded.saturating_sub(start.succeeded),
                "failed": sample.failed.saturating_sub(start.failed),
            }));
            start = *sample;
        }
    }
    json!({
        "seconds": seconds.round() as u64,
        "succeeded_per_minute": per_minute_rate(succeeded),
        "failed_per_minute": per_minute_rate(failed),
        "error_rate": (ended > 0).then(|| (failed as f64 / ended as f64 * 1000.0).round() / 1000.0),
        "per_minute": per_minute,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64, succeeded: u64, failed: u64) -> Sample {
        Sample {
            at: s * 1000,
            succeeded,
            failed,
        }
    }

    #[test]
    fn rates_and_minutes_come_from_the_samples_edges() {
        assert_eq!(summary(&[])["error_rate"], Value::Null);
        let kept = [at(0, 10, 0), at(30, 40, 0), at(60, 70, 10), at(90, 100, 10)];
        let s = summary(&kept);
        assert_eq!(s["seconds"], 90);
        assert_eq!(s["succeeded_per_minute"], 60.0);
        assert_eq!(s["failed_per_minute"], 6.7);
        assert_eq!(s["error_rate"], 0.1);
        let minutes = s["per_minute"].as_array().unwrap();
        assert_eq!(minutes.len(), 2);
        assert_eq!(minutes[0]["succeeded"], 60);
        assert_eq!(minutes[0]["failed"], 10);
        assert_eq!(minutes[1]["succeeded"], 30);
    }
}
