//! A shard writer whose data file failed (a full disk, an I/O error, a damaged page): it
//! answers every waiting operation with the error, keeps the operations no caller waits on
//! (starts, outcomes, callback results) to apply once the file works, and reopens the file
//! after a pause that grows while reopening or the next commit keeps failing.

use std::time::{Duration, Instant};

use super::StoreError;
use super::ops::{Effects, Op, reject};
use super::writer::Writer;

impl Writer {
    /// True when the file is usable: it never failed, or it was reopened just now. A failed
    /// file is reopened once its pause is over (the pause doubles while reopening fails).
    pub(super) fn heal(&mut self) -> bool {
        let Some(broken) = &mut self.broken else {
            return true;
        };
        if Instant::now() < broken.next_try {
            return false;
        }
        match self.db.reopen() {
            Ok(()) => {
                tracing::warn!("the data file is open again after a storage error");
                self.reopened_after = Some(broken.backoff);
                self.broken = None;
                // Renewals could not be recorded while the file failed: every running attempt
                // gets a full lease from now (its renewals, kept, are applied first).
                self.lease_floor = crate::job::now_ms() + LEASE_AFTER_OUTAGE.as_millis() as u64;
                self.leases.postpone_all(self.lease_floor);
                true
            }
            Err(e) => {
                broken.backoff = (broken.backoff * 2).min(REOPEN_MAX);
                broken.next_try = Instant::now() + broken.backoff;
                // At most one line per try, and the tries slow down to one per REOPEN_MAX.
                tracing::warn!(error = %e, retry_in = ?broken.backoff, "the data file still fails");
                broken.error = e;
                false
            }
        }
    }

    /// Answers a batch without touching the failed file: every waiting operation gets the
    /// error; starts, outcomes and callback results wait for the file to work again.
    pub(super) fn refuse(&mut self, batch: &mut Vec<Op>) -> bool {
        let error = match &self.broken {
            Some(b) => b.error.clone(),
            None => StoreError::Closed,
        };
        let mut fx = Effects::default();
        for op in batch.drain(..) {
            reject(op, &mut fx);
        }
        self.held.append(&mut fx.held);
        for reply in fx.replies {
            reply.fail(&error);
        }
        fx.shutdown
    }

    /// After a batch that failed for a reason other than storage (a damaged record, a file
    /// that does not decode): applying its outcomes again would fail again, so their jobs are
    /// no longer held by anyone and are handed out again (read back from the ready table): the
    /// attempt runs again (at-least-once).
    pub(super) fn lost(&mut self, fx: &mut Effects) {
        for op in fx.held.drain(..) {
            if let Op::Finish { id, .. } = op {
                fx.released.push(id);
            }
        }
        for id in &fx.released {
            self.claimed.remove(id);
        }
        if !fx.released.is_empty() {
            self.shared
                .asks
                .overflowing(self.shard, self.shared.deployed.names());
            self.refill_cursor.clear();
        }
    }
}

/// How long a writer whose file failed waits before reopening it, at first and at most.
/// How long every running attempt's lease lasts, at least, once the file works again (the
/// scheduler's lease: it renews every third of that).
const LEASE_AFTER_OUTAGE: Duration = Duration::from_secs(30);
pub(super) const REOPEN_FIRST: Duration = Duration::from_millis(100);
pub(super) const REOPEN_MAX: Duration = Duration::from_secs(5);

/// A writer whose data file failed (a full disk, an I/O error): it answers every operation with
/// the error until reopening the file works.
pub(crate) struct Broken {
    pub(super) error: StoreError,
    pub(super) backoff: Duration,
    pub(super) next_try: Instant,
}
