//! Publishing events: each event's record and one delivery job per matching subscriber, in the
//! writer's transaction (see [`super::Store::publish`]).

use super::tables::*;
use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{NewEvent, NewJob, Published, StoreError, SubmitError, storage};
use crate::job::{BlobRef, JobId, Parent, now_ms};

impl Writer {
    /// Accepts events: each event's record and one delivery job per matching subscriber, or
    /// (when the host's budget cannot take them all) nothing.
    pub(crate) fn publish(
        &mut self,
        events: Vec<NewEvent>,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<Result<Vec<Published>, SubmitError>, StoreError> {
        let subscribers: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                let a = &e.event.attributes;
                self.shared.deployed.subscribers(&a.topic, &a.event_type)
            })
            .collect();
        // Deliveries count against the host's budget, not each subscriber's `max_queued`.
        let bytes = events
            .iter()
            .zip(&subscribers)
            .map(|(e, s)| e.event.data.len() as u64 * s.len() as u64)
            .sum();
        let jobs = subscribers.iter().map(|s| s.len() as u64).sum();
        if let Err(e) = self.admit_budget(jobs, bytes, fx) {
            return Ok(Err(e));
        }
        let now = now_ms();
        let mut out = Vec::with_capacity(events.len());
        for (new, subscribers) in events.into_iter().zip(subscribers) {
            // A large event is stored once, however many subscribers get it.
            let blob = new.blob.or_else(|| {
                (new.event.data.len() > self.claim_check_bytes && !subscribers.is_empty())
                    .then(|| BlobRef::of(&new.event.data))
            });
            let event_id = self.ids.generate();
            let correlation_id = new
                .correlation_id
                .clone()
                .unwrap_or_else(|| event_id.to_string());
            if new.correlation_id.is_some() {
                t.correlated
                    .open()?
                    .insert((correlation_id.as_str(), event_id.0), KIND_EVENT)
                    .map_err(storage)?;
            }
            let mut deliveries = Vec::with_capacity(subscribers.len());
            for function in subscribers {
                let id = self.ids.generate();
                let delivery = delivery_of(&new, function.clone(), event_id, &correlation_id, blob);
                self.insert_job(id, delivery, now, t, fx)?;
                deliveries.push((function, id));
            }
            let record = event_record_of(new, correlation_id, now, &deliveries);
            t.events
                .open()?
                .insert(event_id.0, encode_event(&record).as_slice())
                .map_err(storage)?;
            // Kept as long as a finished job.
            t.finished.insert((now, event_id.0), ()).map_err(storage)?;
            fx.published += 1;
            out.push(Published {
                event_id,
                deliveries,
            });
        }
        Ok(Ok(out))
    }
}

/// The job that delivers event `new` (published as `event_id`) to subscriber `function`.
pub(crate) fn delivery_of(
    new: &NewEvent,
    function: String,
    event_id: JobId,
    correlation_id: &str,
    blob: Option<BlobRef>,
) -> NewJob {
    NewJob {
        function,
        content_type: new.event.content_type.clone(),
        input: new.event.data.clone(),
        correlation_id: Some(correlation_id.to_string()),
        idempotency: None,
        priority: new.priority,
        not_before: None,
        ordering_key: None,
        event: Some(Box::new(new.event.attributes.clone())),
        parent: Some(Parent::Event(event_id.0)),
        pipeline: None,
        input_blob: blob,
        callback: new.callback.clone(),
        hops: new.hops,
        trace_parent: new.trace_parent,
        concurrency_key: None,
        debounce_key: None,
    }
}

/// The record of event `new`, accepted at `now` with its delivery jobs.
pub(crate) fn event_record_of(
    new: NewEvent,
    correlation_id: String,
    now: u64,
    deliveries: &[(String, JobId)],
) -> EventRecord {
    EventRecord {
        attributes: new.event.attributes,
        content_type: new.event.content_type,
        size: new.event.data.len() as u64,
        correlation_id,
        parent: new.parent,
        published_at: now,
        deliveries: deliveries.iter().map(|(f, id)| (f.clone(), id.0)).collect(),
    }
}
