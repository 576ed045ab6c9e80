//! Concurrency keys in the scheduler: at most `key_concurrency` attempts of one key running at
//! once and at most `key_rate_per_second` started, whatever the store let into the window
//! (the store's per-key windows make keys take turns; this bounds each key exactly, also when
//! a key's jobs come from several shards or a lower limit was just deployed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::job::{QueuedJob, ReadyKey};

/// One function's window of ready jobs, in dispatch order, knowing how many have a key.
#[derive(Default)]
pub(super) struct Ready {
    jobs: BTreeMap<ReadyKey, QueuedJob>,
    /// Jobs in `jobs` with a concurrency key (none: the first job is always the next).
    keyed: usize,
}

impl Ready {
    /// Adds a leased job.
    pub(super) fn insert(&mut self, job: QueuedJob) {
        let keyed = job.concurrency_key.is_some();
        if self.jobs.insert(job.ready_key(), job).is_none() && keyed {
            self.keyed += 1;
        }
    }

    /// Takes the job at `place` out.
    pub(super) fn remove(&mut self, place: &ReadyKey) -> Option<QueuedJob> {
        let job = self.jobs.remove(place)?;
        if job.concurrency_key.is_some() {
            self.keyed -= 1;
        }
        Some(job)
    }

    /// The place of job `id`, if it is in the window.
    pub(super) fn place_of(&self, id: crate::job::JobId) -> Option<ReadyKey> {
        self.jobs.iter().find(|(_, j)| j.id == id).map(|(k, _)| *k)
    }

    /// The place of the first job of concurrency key `key` (`None`: without a key).
    pub(super) fn first_of_key(&self, key: Option<&str>) -> Option<ReadyKey> {
        if self.keyed == 0 {
            return key.is_none().then(|| self.jobs.first_key_value().map(|(k, _)| *k))?;
        }
        self.jobs
            .iter()
            .find(|(_, j)| j.concurrency_key.as_deref() == key)
            .map(|(k, _)| *k)
    }

    /// Drops every job.
    pub(super) fn clear(&mut self) {
        self.jobs.clear();
        self.keyed = 0;
    }

    /// Jobs in the window.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }
}

/// One function's keys: their limits and what each key runs now.
#[derive(Default)]
pub(super) struct Keys {
    /// `key_concurrency`, if set.
    limit: Option<usize>,
    /// Time between two starts of one key (`key_rate_per_second`), if limited.
    interval: Option<Duration>,
    /// Keys with attempts running or a start reserved ahead.
    active: HashMap<String, KeyState>,
    /// Attempts without a key running now (they take turns with the keys as one more key).
    unkeyed: usize,
    /// Weights of keys that have one (others weigh 1).
    weights: std::collections::BTreeMap<String, u32>,
    /// Starts so far: every so often, keys with nothing running and no start ahead are
    /// forgotten (a rate keeps a key's entry past its last attempt).
    starts: u64,
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
    pub(super) fn configure(
        &mut self,
        limit: Option<u32>,
        rate: Option<u32>,
        weights: std::collections::BTreeMap<String, u32>,
    ) {
        self.limit = limit.map(|n| n as usize);
        self.interval = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
        self.weights = weights;
    }

    /// A key's weight (1 unless the manifest gives it one).
    fn weight(&self, key: Option<&str>) -> usize {
        key.and_then(|k| self.weights.get(k))
            .map_or(1, |w| (*w).max(1) as usize)
    }

    /// The job to start next. Without keyed jobs in the window, the first. Else, among the
    /// jobs of the first priority whose key (if any) is under its limit (`key_concurrency`
    /// times its weight) and may start now, the one whose key runs the fewest attempts for its
    /// weight (the first such in dispatch order): keys take turns, a key of weight 3 three for
    /// one, and a key that just arrived goes first. Failing that, among those only their
    /// key's rate holds back, the one that may start soonest; `None` when every ready job's
    /// key is at its limit.
    pub(super) fn pick(&self, ready: &Ready, now: Instant) -> Option<Pick> {
        if ready.keyed == 0 {
            return ready.jobs.first_key_value().map(|(place, _)| (*place, None));
        }
        // (place, running, weight): compared as running / weight.
        let mut best: Option<(ReadyKey, usize, usize)> = None;
        let mut later: Option<(ReadyKey, Instant)> = None;
        for (place, job) in &ready.jobs {
            if best.is_some_and(|(b, _, _)| b.0 != place.0) {
                break;
            }
            let (running, next_start) = match &job.concurrency_key {
                None => (self.unkeyed, None),
                Some(key) => match self.active.get(key) {
                    Some(s) => (s.running, Some(s.next_start)),
                    None => (0, None),
                },
            };
            let weight = self.weight(job.concurrency_key.as_deref());
            if job.concurrency_key.is_some() && self.limit.is_some_and(|l| running >= l * weight) {
                continue;
            }
            if let Some(at) = next_start.filter(|at| *at > now) {
                if later.is_none_or(|(_, l)| at < l) {
                    later = Some((*place, at));
                }
                continue;
            }
            if best.is_none_or(|(_, r, w)| running * w < r * weight) {
                best = Some((*place, running, weight));
                if running == 0 {
                    break;
                }
            }
        }
        best.map(|(place, _, _)| (place, None))
            .or(later.map(|(place, at)| (place, Some(at))))
    }

    /// Whether another attempt of `key` may start now (under its limit and its rate).
    pub(super) fn may_start(&self, key: Option<&str>, now: Instant) -> bool {
        let Some(key) = key else { return true };
        let Some(state) = self.active.get(key) else {
            return true;
        };
        let limit = self.limit.map(|l| l * self.weight(Some(key)));
        limit.is_none_or(|l| state.running < l) && state.next_start <= now
    }

    /// An attempt of `key` (or one without a key) was taken: it counts as running, and the
    /// key's next start moves on.
    pub(super) fn started(&mut self, key: Option<&str>, now: Instant) {
        let Some(key) = key else {
            self.unkeyed += 1;
            return;
        };
        self.starts += 1;
        if self.starts.is_multiple_of(1024) {
            self.active
                .retain(|_, s| s.running > 0 || s.next_start > now);
        }
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

    /// An attempt of `key` (or one without a key) ended, or was never started.
    pub(super) fn ended(&mut self, key: Option<&str>, now: Instant) {
        let Some(key) = key else {
            self.unkeyed = self.unkeyed.saturating_sub(1);
            return;
        };
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

    fn window(jobs: &[(u128, Option<&str>)]) -> Ready {
        let mut ready = Ready::default();
        for &(id, key) in jobs {
            ready.insert(job(id, key));
        }
        ready
    }

    fn id_at(ready: &Ready, place: ReadyKey) -> JobId {
        ready.jobs[&place].id
    }

    #[test]
    fn keys_at_their_limit_are_passed_over_and_rates_pace_starts() {
        let now = Instant::now();
        let mut keys = Keys::default();
        keys.configure(Some(1), None, Default::default());
        let mut ready = window(&[(1, Some("a")), (2, Some("a")), (3, Some("b")), (4, None)]);
        let (first, at) = keys.pick(&ready, now).unwrap();
        assert_eq!((id_at(&ready, first), at), (JobId(1), None));
        ready.remove(&first);
        keys.started(Some("a"), now);
        // a is at its limit: b's job goes next, then the unkeyed one; a's waits.
        let (next, _) = keys.pick(&ready, now).unwrap();
        assert_eq!(id_at(&ready, next), JobId(3));
        ready.remove(&next);
        keys.started(Some("b"), now);
        let (next, _) = keys.pick(&ready, now).unwrap();
        assert_eq!(id_at(&ready, next), JobId(4));
        ready.remove(&next);
        keys.started(None, now);
        assert!(keys.pick(&ready, now).is_none(), "only a's second job is left");
        keys.ended(Some("a"), now);
        assert_eq!(keys.running("a"), 0);
        assert_eq!(id_at(&ready, keys.pick(&ready, now).unwrap().0), JobId(2));

        // Two starts a second: the second start of a key waits half a second.
        let mut paced = Keys::default();
        paced.configure(None, Some(2), Default::default());
        paced.started(Some("a"), now);
        let mut ready = window(&[(5, Some("a"))]);
        let (_, at) = paced.pick(&ready, now).unwrap();
        assert_eq!(at, Some(now + Duration::from_millis(500)));
        // Another key is not held back by a's pace.
        ready.insert(job(6, Some("b")));
        let (place, at) = paced.pick(&ready, now).unwrap();
        assert_eq!((id_at(&ready, place), at), (JobId(6), None));
    }

    /// Without a key limit, the key running the fewest attempts goes first: a newcomer is not
    /// queued behind a busy key's ready jobs.
    #[test]
    fn the_least_busy_key_goes_first() {
        let now = Instant::now();
        let mut keys = Keys::default();
        for _ in 0..3 {
            keys.started(Some("noisy"), now);
        }
        let ready = window(&[(1, Some("noisy")), (2, Some("noisy")), (3, Some("quiet"))]);
        assert_eq!(id_at(&ready, keys.pick(&ready, now).unwrap().0), JobId(3));
        // A key of weight 4 running 3 goes before a key of weight 1 running 1.
        let mut weighted = Keys::default();
        weighted.configure(Some(1), None, [("heavy".to_string(), 4)].into());
        for _ in 0..3 {
            weighted.started(Some("heavy"), now);
        }
        weighted.started(Some("light"), now);
        let ready = window(&[(4, Some("light")), (5, Some("heavy"))]);
        assert_eq!(id_at(&ready, weighted.pick(&ready, now).unwrap().0), JobId(5));
        weighted.started(Some("heavy"), now);
        assert!(weighted.pick(&ready, now).is_none(), "heavy at 4 x 1, light at 1");
        // With no keyed job in the window, the first job goes (the fast path).
        let plain = window(&[(7, None), (8, None)]);
        assert_eq!(id_at(&plain, keys.pick(&plain, now).unwrap().0), JobId(7));
    }
}
