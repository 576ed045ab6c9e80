//! Cron triggers: a function's `[[schedule]]` entries, and the clock that fires them.
//!
//! ```toml
//! [[schedule]]
//! cron = "*/5 * * * *"        # five fields, or six with seconds first
//! timezone = "Europe/Paris"   # IANA name; UTC when left out
//! data = { report = "daily" } # the jobs' JSON input; {} when left out
//! catch_up = "one"            # fires missed while no host ran: "none", "one" (default), "all"
//! ```
//!
//! Each fire is a durable job of the function, submitted with the idempotency key
//! `schedule/{n}/{fire ms}` (n: the entry's place in the manifest): a fire submitted twice (a
//! restart between its submit and the record of it, two hosts on one cluster) is one job. Its
//! correlation id is `schedule/{function}/{n}/{fire time}`. The clock keeps when each entry
//! last fired as a host setting (`schedule/{function}/{n}`), so a restart knows what it
//! missed and applies the entry's `catch_up` policy; a new or changed entry starts from now.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::job::{DEFAULT_PRIORITY, now_ms, rfc3339};
use crate::store::{Backend, IdempotencyKey, NewJob, StoreError, SubmitError, Submitted};

/// Most `[[schedule]]` entries one function may have.
pub const MAX_SCHEDULES: usize = 16;
/// How late a fire may be and still count as on time (a slow tick), not missed.
const MISSED_AFTER_MS: u64 = 60_000;
/// Most fires one entry makes at once (a catch-up of `all` after a long outage).
const MAX_FIRES_AT_ONCE: usize = 1000;

/// One cron trigger of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The cron pattern: five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first.
    pub cron: String,
    /// The IANA time zone the pattern is read in (UTC when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The jobs' JSON input (`{}` when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// What to do with fires missed while no host ran.
    #[serde(default)]
    pub catch_up: CatchUp,
}

/// What a clock that was not running does with the fires it missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Skip them: the next fire is the next one due.
    None,
    /// Fire the latest one missed, once.
    #[default]
    One,
    /// Fire every one missed (at most 1000), oldest first.
    All,
}

impl Schedule {
    /// Checks the pattern and the time zone.
    pub fn validate(&self) -> Result<(), String> {
        self.pattern()?;
        self.zone()?;
        Ok(())
    }

    fn pattern(&self) -> Result<croner::Cron, String> {
        croner::Cron::from_str(&self.cron).map_err(|e| {
            format!(
                "cron {:?}: {e}; use five fields (minute hour day month weekday) or six with seconds first",
                self.cron
            )
        })
    }

    fn zone(&self) -> Result<chrono_tz::Tz, String> {
        match &self.timezone {
            None => Ok(chrono_tz::UTC),
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                format!("timezone {name:?} is not an IANA time zone name (e.g. Europe/Paris)")
            }),
        }
    }

    /// What names the entry's timing: a changed one starts again from now.
    fn identity(&self) -> String {
        format!("{} @ {}", self.cron, self.timezone.as_deref().unwrap_or("UTC"))
    }

    /// Fire times (ms since the Unix epoch) after `after` up to `upto`, at most `limit`.
    pub fn fires_between(&self, after: u64, upto: u64, limit: usize) -> Vec<u64> {
        let (Ok(cron), Ok(zone)) = (self.pattern(), self.zone()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Some(mut at) = at_ms(after).map(|t| t.with_timezone(&zone)) else {
            return out;
        };
        while out.len() < limit {
            let Ok(next) = cron.find_next_occurrence(&at, false) else {
                break;
            };
            let ms = next.timestamp_millis().max(0) as u64;
            if ms > upto {
                break;
            }
            out.push(ms);
            at = next;
        }
        out
    }

    /// The latest fire at or before `at`, if any.
    pub fn latest_until(&self, at: u64) -> Option<u64> {
        let (cron, zone) = (self.pattern().ok()?, self.zone().ok()?);
        let at = at_ms(at)?.with_timezone(&zone);
        let previous = cron.find_previous_occurrence(&at, true).ok()?;
        Some(previous.timestamp_millis().max(0) as u64)
    }

    /// The next fire after `after`, if any.
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let (cron, zone) = (self.pattern().ok()?, self.zone().ok()?);
        let at = at_ms(after)?.with_timezone(&zone);
        let next = cron.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp_millis().max(0) as u64)
    }

    /// The jobs' input.
    fn input(&self) -> Vec<u8> {
        serde_json::to_vec(self.data.as_ref().unwrap_or(&json!({}))).expect("JSON serialises")
    }
}

/// `ms` cut to its whole second (fires fall on whole seconds; the next one after a time is the
/// next one after its second).
fn at_ms(ms: u64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt((ms - ms % 1000) as i64).single()
}

/// When one entry last fired, as the clock knows it.
#[derive(Clone, Debug)]
struct Fired {
    identity: String,
    last: u64,
}

/// Fires every deployed function's schedules. Cheap to share.
#[derive(Default)]
pub struct Clock {
    fired: Mutex<HashMap<(String, usize), Fired>>,
}

impl Clock {
    /// When entry `n` of `function` last fired (or was first seen), if this clock knows.
    pub fn last_fire(&self, function: &str, n: usize) -> Option<u64> {
        self.fired
            .lock()
            .get(&(function.to_string(), n))
            .map(|f| f.last)
    }

    /// Ticks every second until `stop`: fires what is due.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Backend>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.tick(&*store).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "schedules could not fire; trying again");
                    }
                }
            }
            // Just after the next whole second: fires fall on whole seconds.
            let wait = 1000 - now_ms() % 1000 + 5;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn tick(&self, store: &dyn Backend) -> Result<(), StoreError> {
        let now = now_ms();
        let mut alive = HashSet::new();
        for record in store.functions().await? {
            for (n, schedule) in record.schedules.iter().enumerate() {
                alive.insert((record.name.clone(), n));
                self.fire_due(store, &record.name, n, schedule, now).await?;
            }
        }
        self.fired.lock().retain(|k, _| alive.contains(k));
        Ok(())
    }

    /// Fires entry `n` of `function` for every time due by `now`. The first time this clock
    /// sees the entry, the times missed since it last fired follow its `catch_up` policy.
    async fn fire_due(
        &self,
        store: &dyn Backend,
        function: &str,
        n: usize,
        schedule: &Schedule,
        now: u64,
    ) -> Result<(), StoreError> {
        let identity = schedule.identity();
        let setting = format!("schedule/{function}/{n}");
        let known = self
            .fired
            .lock()
            .get(&(function.to_string(), n))
            .filter(|f| f.identity == identity)
            .map(|f| f.last);
        let (last, due) = match known {
            Some(last) => {
                let mut due = schedule.fires_between(last, now, MAX_FIRES_AT_ONCE);
                // Fires over a minute overdue (the store refused them for a while) were
                // missed, and follow the policy too; a tick a little late fires them all.
                let overdue = due.first().is_some_and(|first| now - first > MISSED_AFTER_MS);
                if due.len() > 1 && overdue && schedule.catch_up != CatchUp::All {
                    due = schedule.latest_until(now).into_iter().collect();
                }
                (last, due)
            }
            None => {
                let initial = json!({"identity": identity, "last": now});
                let stored = store
                    .setting_or_init(&setting, initial.to_string().into_bytes())
                    .await?;
                let stored: Value = serde_json::from_slice(&stored).unwrap_or(Value::Null);
                let last = match stored["last"].as_u64() {
                    Some(last) if stored["identity"] == identity.as_str() => last,
                    _ => now,
                };
                let missed = schedule.fires_between(last, now, MAX_FIRES_AT_ONCE);
                let due = match schedule.catch_up {
                    CatchUp::None => Vec::new(),
                    // The latest missed, even past the first thousand.
                    CatchUp::One if !missed.is_empty() => {
                        schedule.latest_until(now).into_iter().collect()
                    }
                    CatchUp::One => Vec::new(),
                    CatchUp::All => missed,
                };
                if !due.is_empty() {
                    tracing::info!(function, schedule = n, fires = due.len(), "firing what was missed while no host ran");
                }
                (last, due)
            }
        };
        // The latest time handled: fired, or skipped by the policy.
        let mut fired = last;
        let mut all_fired = true;
        for at in due {
            match fire(store, function, n, schedule, at).await {
                Ok(()) => fired = at,
                Err(e) => {
                    // This fire and the ones after it are tried again at the next tick.
                    tracing::warn!(function, schedule = n, at = %rfc3339(at), error = %e, "a scheduled job was not accepted");
                    fired = at.saturating_sub(1);
                    all_fired = false;
                    break;
                }
            }
        }
        if known.is_none() && all_fired {
            fired = fired.max(now);
        }
        if known != Some(fired) {
            store
                .set_setting(
                    &setting,
                    json!({"identity": identity, "last": fired})
                        .to_string()
                        .into_bytes(),
                )
                .await?;
        }
        self.fired
            .lock()
            .insert((function.to_string(), n), Fired { identity, last: fired });
        Ok(())
    }
}

/// Submits the job of entry `n`'s fire at `at`.
async fn fire(
    store: &dyn Backend,
    function: &str,
    n: usize,
    schedule: &Schedule,
    at: u64,
) -> Result<(), SubmitError> {
    let input = schedule.input();
    let request_hash = sha2::Sha256::digest(&input).into();
    let submitted = store
        .submit(NewJob {
            function: function.to_string(),
            content_type: Some("application/json".into()),
            input: input.into(),
            correlation_id: Some(format!("schedule/{function}/{n}/{}", rfc3339(at))),
            idempotency: Some(IdempotencyKey {
                key: format!("schedule/{n}/{at}"),
                request_hash,
            }),
            priority: DEFAULT_PRIORITY,
            not_before: None,
            ordering_key: None,
            event: None,
            parent: None,
            pipeline: None,
            input_blob: None,
            callback: None,
            hops: 0,
            trace_parent: None,
            concurrency_key: None,
            debounce_key: None,
        })
        .await?;
    if let Submitted::New(id) = submitted {
        tracing::debug!(function, schedule = n, job = %id, "scheduled job fired");
    }
    Ok(())
}

/// Every deployed schedule, for `GET /v1/schedules`: the entry, its next fire and the last
/// one this host knows of.
pub fn listing(clock: &Clock, records: &[crate::store::FunctionRecord]) -> Vec<Value> {
    let now = now_ms();
    let mut out = Vec::new();
    for record in records {
        for (n, s) in record.schedules.iter().enumerate() {
            out.push(json!({
                "function": record.name,
                "index": n,
                "cron": s.cron,
                "timezone": s.timezone.as_deref().unwrap_or("UTC"),
                "catch_up": s.catch_up,
                "data": s.data.clone().unwrap_or(json!({})),
                "paused": record.paused,
                "next_fire_at": s.next_after(now).map(rfc3339),
                "last_fire_at": clock.last_fire(&record.name, n).map(rfc3339),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, timezone: Option<&str>) -> Schedule {
        Schedule {
            cron: cron.into(),
            timezone: timezone.map(str::to_string),
            data: None,
            catch_up: CatchUp::One,
        }
    }

    #[test]
    fn fires_follow_the_pattern_in_its_time_zone() {
        // 2026-12-07T00:00:00Z
        let midnight = 1_796_601_600_000u64;
        let every5 = schedule("*/5 * * * *", None);
        let fires = every5.fires_between(midnight, midnight + 20 * 60_000, 100);
        assert_eq!(fires.len(), 4, "{fires:?}");
        assert_eq!(fires[0], midnight + 5 * 60_000);
        assert_eq!(every5.next_after(midnight), Some(midnight + 5 * 60_000));
        assert_eq!(every5.latest_until(midnight + 7 * 60_000 + 500), Some(midnight + 5 * 60_000));
        assert_eq!(every5.latest_until(midnight + 5 * 60_000), Some(midnight + 5 * 60_000));
        // Fires fall on whole seconds whatever the time asked from.
        assert_eq!(every5.next_after(midnight + 1234), Some(midnight + 5 * 60_000));
        let seconds = schedule("*/2 * * * * *", None);
        assert_eq!(seconds.fires_between(midnight, midnight + 10_000, 100).len(), 5);
        // 09:00 in Paris is 08:00 UTC in December.
        let paris = schedule("0 9 * * *", Some("Europe/Paris"));
        assert_eq!(paris.next_after(midnight), Some(midnight + 8 * 3_600_000));
        assert!(schedule("61 * * * *", None).validate().is_err());
        assert!(schedule("* * * * *", Some("Mars/Olympus")).validate().is_err());
        assert!(paris.validate().is_ok());
    }
}
