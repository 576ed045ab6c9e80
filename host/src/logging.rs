//! Log lines for failures that repeat with every request (a full disk, a damaged file): the
//! first says what happened, later ones at most once per period with how many were left out.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Admits one log line per period; counts the ones it turns away.
pub(crate) struct Sampled {
    period_ms: u64,
    /// When the last admitted line was (ms since the Unix epoch).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl Sampled {
    /// One line per second.
    pub(crate) const fn per_second() -> Sampled {
        Sampled {
            period_ms: 1000,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last.load(Relaxed);
        if now.saturating_sub(last) >= self.period_ms
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Sampled;

    #[test]
    fn one_line_per_period_and_a_count_of_the_rest() {
        let s = Sampled::per_second();
        assert_eq!(s.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(s.admit(), None);
        }
        // The period passed: the next line says five were left out.
        s.last.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(s.admit(), Some(5));
    }
}
