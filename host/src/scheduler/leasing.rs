//! Leasing: per function one task asks the store for ready jobs whenever the function's window
//! has room, and waits for them (the scheduler pulls; the store pushes nothing).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{HOLD, Inner, Scheduler, State};

/// A function leases more jobs once it has room for at least this many (or holds none): under
/// a backlog, one lease brings a batch instead of each finished job asking for one.
const LEASE_AT_LEAST: usize = HOLD / 4;

impl Inner {
    /// Leases `function`'s ready jobs whenever its window has room, until it is deleted or the
    /// host stops starting attempts.
    pub(super) async fn lease(self: Arc<Self>, scheduler: Scheduler, function: String) {
        let Some((room, stop)) = self
            .state
            .lock()
            .functions
            .get(&function)
            .map(|q| (q.room.clone(), q.leasing.clone()))
        else {
            return;
        };
        let mut failures = 0u32;
        loop {
            if stop.is_cancelled() {
                return;
            }
            // Wait for room for a batch (or an empty window).
            let want = loop {
                let freed = room.notified();
                let held = match self.state.lock().functions.get(&function) {
                    Some(q) if q.deployed => q.ready.len() + q.running,
                    _ => return,
                };
                let free = HOLD.saturating_sub(held);
                if free >= LEASE_AT_LEAST || (held == 0 && free > 0) {
                    break free;
                }
                tokio::select! {
                    _ = freed => {}
                    _ = stop.cancelled() => return,
                    _ = self.stop_starting.cancelled() => return,
                }
            };
            let leased = tokio::select! {
                leased = self.store.lease(&function, want) => leased,
                _ = stop.cancelled() => return,
                _ = self.stop_starting.cancelled() => return,
            };
            match leased {
                Ok(jobs) => {
                    failures = 0;
                    scheduler.enqueue(jobs);
                }
                Err(e) => {
                    // The store says what to do (a full disk, a backend out of reach): wait and ask again.
                    failures += 1;
                    let pause = Duration::from_millis(100 << failures.min(6));
                    if failures == 1 {
                        tracing::warn!(function = %function, error = %e, "cannot lease jobs; trying again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.cancelled() => return,
                        _ = self.stop_starting.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Starts the task leasing a newly deployed function's jobs (one per function).
pub(super) fn queue_leasing(state: &mut State, name: &str, scheduler: &Scheduler) {
    let Some(queue) = state.functions.get_mut(name) else {
        return;
    };
    queue.leasing = CancellationToken::new();
    let inner = scheduler.inner.clone();
    let task = inner.clone().lease(scheduler.clone(), name.to_string());
    inner.sandboxes.spawn(inner.leasing.track_future(task));
}
