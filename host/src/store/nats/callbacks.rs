//! Webhook callbacks on JetStream, sent once across hosts: a callback due is a message in the
//! work-queue stream `<p>_callbacks`, published (deduplicated by job and round) just before
//! the record that makes its job terminal, and handed by one shared durable consumer to one
//! host's sender at a time. The record decides: a message whose job's callback is not pending
//! (its change lost a race) is dropped. A delivery attempt's result is a compare-and-set on the
//! record (the same rules as the embedded store, `store::callbacks`), then an ack (delivered or
//! given up) or a negative ack with the retry's delay. A host that dies while sending leaves
//! the message unacknowledged: another host sends it after the ack wait (at-least-once, as the
//! receiver's `webhook-id` lets it see).

use std::sync::Weak;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{NatsBackend, failed};
use crate::job::{CallbackState, Job, JobId, now_ms};
use crate::store::{CallbackResult, StoreError};

/// How long a host may take over one delivery attempt before another host is handed it.
const SEND_WAIT: Duration = Duration::from_secs(120);

/// Callbacks a host holds (handed to its sender, result not yet recorded) at most.
const MAX_HELD: usize = 256;

impl NatsBackend {
    /// The stream and consumer callbacks go through (created at connect).
    pub(super) async fn callback_queue(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<PullConsumer, StoreError> {
        let stream = js
            .create_or_update_stream(jetstream::stream::Config {
                name: format!("{prefix}_callbacks"),
                subjects: vec![format!("{prefix}.cb")],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(failed)?;
        let stream = js
            .get_stream(&stream.config.name)
            .await
            .map_err(failed)?;
        stream
            .get_or_create_consumer(
                "send",
                jetstream::consumer::pull::Config {
                    durable_name: Some("send".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: SEND_WAIT,
                    max_deliver: -1,
                    // Callbacks waiting out a retry's delay are pending too: no bound.
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(failed)
    }

    /// Before the record that ends `job` (as the API shows it): marks its callback due, if it
    /// has one, and queues it for the senders.
    pub(super) async fn schedule_callback(&self, id: JobId, job: &mut Job) -> Result<(), StoreError> {
        if !crate::store::callbacks::mark_due(job, now_ms()) {
            return Ok(());
        }
        let round = job.callback.as_ref().map_or(0, |c| c.round);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("cb.{id}.{round}"));
        let subject = format!("{}.cb", self.options.prefix);
        super::patiently("queueing a callback", |_| false, || async {
            self.js
                .publish_with_headers(
                    subject.clone(),
                    headers.clone(),
                    format!("{id} {round}").into(),
                )
                .await?
                .await
        })
        .await
        .map_err(failed)?;
        Ok(())
    }

    /// Hands due callbacks to this host's sender (`feed`), a bounded number at a time.
    pub(super) async fn pull_callbacks(
        backend: Weak<NatsBackend>,
        feed: mpsc::UnboundedSender<Vec<JobId>>,
    ) {
        loop {
            let Some(me) = backend.upgrade() else {
                return;
            };
            let room = MAX_HELD.saturating_sub(me.callbacks_held.lock().len());
            if room == 0 {
                drop(me);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let batch = me
                .callback_consumer
                .fetch()
                .max_messages(room)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(error = %e, "pulling callbacks failed; trying again");
                    drop(me);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut due = Vec::new();
            while let Some(message) = batch.next().await {
                let Ok(message) = message else {
                    break;
                };
                if let Some(id) = me.admit_callback(message).await {
                    due.push(id);
                }
            }
            if !due.is_empty() && feed.send(due).is_err() {
                return;
            }
        }
    }

    /// A callback message becomes a delivery this host makes, is dropped (its job is gone, or
    /// its callback of that round is delivered or given up), or comes back shortly (the record
    /// that makes it due is not written yet, or its change lost and the job has not ended).
    async fn admit_callback(&self, message: jetstream::Message) -> Option<JobId> {
        let parsed = std::str::from_utf8(&message.payload).ok().and_then(|s| {
            let (id, round) = s.split_once(' ')?;
            Some((id.parse::<JobId>().ok()?, round.parse::<u32>().ok()?))
        });
        let Some((id, round)) = parsed else {
            let _ = message.ack_with(AckKind::Term).await;
            return None;
        };
        let callback = match self.record(id).await {
            Ok(record) => record.and_then(|(job, _)| job.callback),
            Err(e) => {
                tracing::debug!(%id, error = %e, "a callback could not be looked at; it comes back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return None;
            }
        };
        match callback {
            Some(c) if c.round == round && c.state == CallbackState::Pending => {
                let (_, acker) = message.split();
                self.callbacks_held.lock().insert(id, acker);
                Some(id)
            }
            Some(c) if c.round == round && c.state == CallbackState::Waiting => {
                let delivered = message.info().map_or(1, |i| i.delivered.max(1));
                let wait = Duration::from_millis(50 << delivered.min(8) as u32);
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
                None
            }
            _ => {
                let _ = message.double_ack().await;
                None
            }
        }
    }

    /// Records a delivery attempt's result, then acknowledges its message (or hands it out
    /// again after the retry's delay).
    pub(super) async fn callback_result(
        &self,
        id: JobId,
        result: CallbackResult,
        rng: &mut fastrand::Rng,
    ) -> Result<(), StoreError> {
        // The handle first: an error below must not leave it held (the message comes back
        // after the ack wait, to any host).
        let acker = self.callbacks_held.lock().remove(&id);
        let recorded = self.record_callback(id, result, rng).await;
        let Some(acker) = acker else {
            return recorded.map(|_| ());
        };
        let again = match recorded {
            Ok(again) => again,
            Err(e) => {
                let _ = acker
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return Err(e);
            }
        };
        let acked = match again {
            Some(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                acker.ack_with(AckKind::Nak(Some(wait))).await
            }
            None => acker.double_ack().await,
        };
        if let Err(e) = acked {
            tracing::debug!(%id, error = %e, "acknowledging a callback failed; it is looked at again");
        }
        Ok(())
    }

    /// Records a delivery attempt on the job's callback; returns when to try again.
    async fn record_callback(
        &self,
        id: JobId,
        result: CallbackResult,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<u64>, StoreError> {
        let again = loop {
            let Some((mut job, revision)) = self.record(id).await? else {
                break None;
            };
            let Some(callback) = job.callback.as_mut() else {
                break None;
            };
            if callback.state != CallbackState::Pending {
                break None;
            }
            let again = crate::store::callbacks::record_delivery(
                callback,
                result.clone(),
                now_ms(),
                &self.options.callback_retry,
                rng,
            );
            if self.replace(id, &job, revision).await? {
                break again;
            }
        };
        Ok(again)
    }
}
