//! `rate_per_second` across hosts: one start per interval for the whole cluster, not per host.
//! Each function's next free start time (its "theoretical arrival time", as in the generic
//! cell rate algorithm) is a key of bucket `<p>-pace`; a worker that takes a job moves it one
//! interval on with a compare-and-set and waits until the time it took. Exact: two starts are
//! never closer than the interval, whichever hosts make them (a start reserved by a worker
//! that then does not start leaves a gap). It costs one write per start, so rates up to a few
//! hundred a second per function.

use std::time::Duration;

use async_nats::jetstream::kv;

use super::{NatsBackend, failed, failed_because};
use crate::store::StoreError;

/// The current time in µs since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How often a reservation tries again after losing a compare-and-set to another host.
const TRIES: usize = 50;

impl NatsBackend {
    /// Reserves `function`'s next start (µs since the epoch), one `interval` after the last.
    pub(super) async fn reserve(
        &self,
        function: &str,
        interval: Duration,
    ) -> Result<u64, StoreError> {
        let step = (interval.as_micros() as u64).max(1);
        for _ in 0..TRIES {
            let entry = self.pace.entry(function).await.map_err(failed)?;
            let (revision, next) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    e.revision,
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                ),
                Some(e) => (e.revision, 0),
                None => (0, 0),
            };
            let at = next.max(now_us());
            let value = bytes::Bytes::from((at + step).to_string());
            // Only a lost compare-and-set is tried again at once; other errors are the caller's.
            let lost = match revision {
                0 => match self.pace.create(function, value).await {
                    Ok(_) => false,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => true,
                    Err(e) => return Err(failed(e)),
                },
                r => match self.pace.update(function, value, r).await {
                    Ok(_) => false,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
                    Err(e) => return Err(failed(e)),
                },
            };
            if !lost {
                return Ok(at);
            }
        }
        Err(failed_because(format!(
            "function {function}'s start rate could not be reserved: {TRIES} tries lost to other hosts"
        )))
    }
}
