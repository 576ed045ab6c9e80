//! Webhook callbacks, on the store's side: a callback becomes due in the same transaction that
//! makes its job terminal (so a crash cannot lose it), sits in the `callbacks` timer index
//! until delivered, and records each delivery attempt. The writer hands due callbacks to the
//! webhook sender (see [`crate::webhook`]) and takes its results back as operations.

use redb::ReadableTable;

use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{StoreError, storage};
use crate::job::{Callback, CallbackState, Job, JobId, bounded_error, now_ms};
use crate::manifest::RetryPolicy;

/// Due callbacks handed to the sender per commit at most.
const MAX_HAND_OUT: usize = 1000;

/// How a delivery attempt went, as the sender reports it.
#[derive(Debug, Clone)]
pub enum CallbackResult {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed; `retry` says whether another attempt may help (a refused target will not).
    Failed {
        /// Why, for a person.
        error: String,
        /// Try again later.
        retry: bool,
    },
}

impl Tables<'_> {
    /// A job is being deleted: a callback still pending leaves the timer index with it (else
    /// the sender would be handed a job that is gone, again and again).
    pub(crate) fn forget_callback(&mut self, id: JobId, job: &Job) -> Result<(), StoreError> {
        match &job.callback {
            Some(callback) => self.forget_callback_row(id, callback),
            None => Ok(()),
        }
    }

    /// Removes a pending callback's row from the timer index.
    pub(crate) fn forget_callback_row(
        &mut self,
        id: JobId,
        callback: &crate::job::Callback,
    ) -> Result<(), StoreError> {
        if callback.state == CallbackState::Pending
            && let Some(at) = callback.next_at
        {
            self.callbacks.open()?.remove((at, id.0)).map_err(storage)?;
        }
        Ok(())
    }
}

impl Writer {
    /// A job just became terminal (as the API shows it): its callback, if any, is due now.
    pub(crate) fn schedule_callback(
        &mut self,
        id: JobId,
        job: &mut Job,
        t: &mut Tables<'_>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        if !mark_due(job, now) {
            return Ok(());
        }
        t.callbacks
            .open()?
            .insert((now, id.0), ())
            .map_err(storage)?;
        self.next_callback = Some(self.next_callback.map_or(now, |d| d.min(now)));
        Ok(())
    }

    /// Collects due callbacks not already with the sender (handed over after the commit) and
    /// notes when the next one is due.
    pub(crate) fn due_callbacks(
        &mut self,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.next_callback = None;
        for row in t.callbacks.open()?.iter().map_err(storage)? {
            let (at, id) = row.map_err(storage)?.0.value();
            let id = JobId(id);
            if self.callbacks_sending.contains(&id) {
                continue;
            }
            if at > now || fx.callbacks_due.len() >= MAX_HAND_OUT {
                self.next_callback = Some(at.max(now));
                break;
            }
            fx.callbacks_due.push(id);
        }
        Ok(())
    }

    /// Records a delivery attempt: delivered, retried after a backoff, or given up.
    pub(crate) fn callback_done(
        &mut self,
        id: JobId,
        result: CallbackResult,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        fx.callbacks_finished.push(id);
        let Some(mut job) = t.job(id)? else {
            return Ok(());
        };
        let Some(callback) = &mut job.callback else {
            return Ok(());
        };
        if callback.state != CallbackState::Pending {
            return Ok(());
        }
        if let Some(at) = callback.next_at.take() {
            t.callbacks.open()?.remove((at, id.0)).map_err(storage)?;
        }
        let again = record_delivery(callback, result, now_ms(), &self.callback_retry, &mut self.rng);
        if let Some(at) = again {
            t.callbacks
                .open()?
                .insert((at, id.0), ())
                .map_err(storage)?;
            self.next_callback = Some(self.next_callback.map_or(at, |d| d.min(at)));
        }
        t.put_job(id, &job)
    }
}

/// Marks `job`'s callback due at `now` when its end (as the API shows it) calls for one; true
/// when it did (the caller hands it to a sender).
pub(crate) fn mark_due(job: &mut Job, now: u64) -> bool {
    let visible = job.visible_status();
    let Some(callback) = &mut job.callback else {
        return false;
    };
    if !super::machine::callback_due(visible, callback.state) {
        return false;
    }
    callback.state = CallbackState::Pending;
    callback.next_at = Some(now);
    true
}

/// Records one delivery attempt of a pending callback at `now`: delivered, given up, or due
/// again after the `policy`'s delay (returned, also kept as its `next_at`).
pub(crate) fn record_delivery(
    callback: &mut Callback,
    result: CallbackResult,
    now: u64,
    policy: &RetryPolicy,
    rng: &mut fastrand::Rng,
) -> Option<u64> {
    callback.attempts += 1;
    callback.next_at = None;
    let (delivered, retry) = match &result {
        CallbackResult::Delivered => (true, false),
        CallbackResult::Failed { retry, .. } => (false, *retry),
    };
    let next = super::machine::after_delivery(delivered, retry, callback.attempts, policy);
    match result {
        CallbackResult::Delivered => {
            callback.state = CallbackState::Delivered;
            callback.delivered_at = Some(now);
            callback.last_error = None;
            None
        }
        CallbackResult::Failed { error, .. } => {
            callback.last_error = Some(bounded_error(&error));
            if next == super::machine::AfterDelivery::RetryLater {
                let at = now + policy.delay_ms(callback.attempts - 1, rng);
                callback.next_at = Some(at);
                Some(at)
            } else {
                callback.state = CallbackState::Failed;
                None
            }
        }
    }
}

/// A redriven job's callback: its next end is a new delivery (a new round, its own
/// `webhook-id`), waiting again.
pub(crate) fn next_round(callback: &mut Callback) {
    *callback = Callback {
        round: callback.round + 1,
        ..Callback::new(std::mem::take(&mut callback.url))
    };
}
