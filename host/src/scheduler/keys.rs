//! Concurrency keys in the scheduler: at most `key_concurrency` attempts of one key running at
//! once and at most `key_rate_per_second` started, whatever the store let into the window
//! (the store's per-key windows make keys take turns; this bounds each key exactly, also when
//! a key's jobs come from several shards or a lower limit was just deployed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::job::{QueuedJob, ReadyKey};

/// One function's keys: their limits and what each key runs now.
#[derive(Default)]
pub(super) struct Keys {
    /// `key_concurrency`, if set.
    limit: Option<usize>,
    /// Time between two starts of one key (`key_rate_per_second`), if limited.
    interval: Option<Duration>,
    /// Keys with attempts running or a start reserved ahead.
    active: HashMap<String, KeyState>,
}

#[derive(Clone, Copy)]
struct KeyState {
    running: usize,
    /// When the key's next attempt may start under its rate.
    next_start: Instant,
}

/// The job a worker takes: where it is in the window, and when it may start, if later.
pub(super) type Pick = (ReadyKey, Option<Instant>);

impl Keys {
    /// Applies the function's settings.
    pub(super) fn configure(&mut self, limit: Option<u32>, rate: Option<u32>) {
        self.limit = limit.map(|n| n as usize);
        self.interval = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    }

    /// The job to start next: the first in dispatch order whose key (if any) is under its
    /// limit and may start now; else, among those only its rate holds back, the one that may
    /// start soonest; `None` when every ready job's key is at its limit.
    pub(super) fn pick(&self, ready: &BTreeMap<ReadyKey, QueuedJob>, now: Instant) -> Option<Pick> {
        let mut later: Option<Pick> = None;
        for (place, job) in ready {
            let Some(key) = &job.concurrency_key else {
                return Some((*place, None));
            };
            let state = self.active.get(key);
            if let (Some(limit), Some(s)) = (self.limit, state)
                && s.running >= limit
            {
                continue;
            }
            match state.map(|s| s.next_start).filter(|at| *at > now) {
                None => return Some((*place, None)),
                Some(at) if later.is_none_or(|(_, l)| l.is_some_and(|l| at < l)) => {
                    later = Some((*place, Some(at)));
                }
                Some(_) => {}
            }
        }
        later
    }

    /// An attempt of `key` was taken: it counts as running, and the key's next start moves on.
    pub(super) fn started(&mut self, key: &str, now: Instant) {
        let interval = self.interval;
        let state = self.active.entry(key.to_string()).or_insert(KeyState {
            running: 0,
            next_start: now,
        });
        state.running += 1;
        if let Some(interval) = interval {
            state.next_start = state.next_start.max(now) + interval;
        }
    }

    /// An attempt of `key` ended (or was never started).
    pub(super) fn ended(&mut self, key: &str, now: Instant) {
        if let Some(state) = self.active.get_mut(key) {
            state.running = state.running.saturating_sub(1);
            if state.running == 0 && state.next_start <= now {
                self.active.remove(key);
            }
        }
    }

    /// Attempts of `key` running now.
    #[cfg(test)]
    pub(super) fn running(&self, key: &str) -> usize {
        self.active.get(key).map_or(0, |s| s.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use bytes::Bytes;

    fn job(id: u128, key: Option<&str>) -> QueuedJob {
        QueuedJob {
            id: JobId(id),
            priority: 5,
            ready_at: id as u64,
            function: "f".into(),
            attempts: 0,
            content_type: None,
            input: Bytes::new(),
            created_at: 0,
            correlation_id: String::new(),
            event: None,
            input_blob: None,
            parent: None,
            trace_parent: None,
            concurrency_key: key.map(str::to_string),
        }
    }

    #[test]
    fn keys_at_their_limit_are_passed_over_and_rates_pace_starts() {
        let now = Instant::now();
        let mut keys = Keys::default();
        keys.configure(Some(1), None);
        let mut ready = BTreeMap::new();
        for (id, key) in [(1, Some("a")), (2, Some("a")), (3, Some("b")), (4, None)] {
            let j = job(id, key);
            ready.insert(j.ready_key(), j);
        }
        let (first, at) = keys.pick(&ready, now).unwrap();
        assert_eq!((ready[&first].id, at), (JobId(1), None));
        ready.remove(&first);
        keys.started("a", now);
        // a is at its limit: b's job goes next, then the unkeyed one; a's waits.
        let (next, _) = keys.pick(&ready, now).unwrap();
        assert_eq!(ready[&next].id, JobId(3));
        ready.remove(&next);
        keys.started("b", now);
        let (next, _) = keys.pick(&ready, now).unwrap();
        assert_eq!(ready[&next].id, JobId(4));
        ready.remove(&next);
        assert!(keys.pick(&ready, now).is_none(), "only a's second job is left");
        keys.ended("a", now);
        assert_eq!(keys.running("a"), 0);
        assert_eq!(ready[&keys.pick(&ready, now).unwrap().0].id, JobId(2));

        // Two starts a second: the second start of a key waits half a second.
        let mut paced = Keys::default();
        paced.configure(None, Some(2));
        paced.started("a", now);
        let mut ready = BTreeMap::new();
        let j = job(5, Some("a"));
        ready.insert(j.ready_key(), j);
        let (_, at) = paced.pick(&ready, now).unwrap();
        assert_eq!(at, Some(now + Duration::from_millis(500)));
        // Another key is not held back by a's pace.
        let j = job(6, Some("b"));
        ready.insert(j.ready_key(), j);
        let (place, at) = paced.pick(&ready, now).unwrap();
        assert_eq!((ready[&place].id, at), (JobId(6), None));
    }
}
