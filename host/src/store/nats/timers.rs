//! Timers on JetStream: a job waiting out a delay or a retry's backoff does not hold one of its
//! function's `max_concurrency` slots (nor count against its `max_queued`). Its delivery is
//! acknowledged and a message schedule (ADR-51, server 2.12+) in the stream `<p>_timers`
//! fires when it is due: the schedule `<p>.t.s.<function>.<id>` (one per job: a later one
//! replaces it) publishes the job's id to `<p>.t.due.<function>`, which one host at a time
//! (the shared consumer `due`) puts back in the function's queue, deduplicated per firing. The
//! record decides what the delivery becomes, as for any other. (A function's queue refuses
//! schedules of its own: it discards new messages past `max_queued`, which schedules do not
//! allow.)
//!
//! Short waits (under [`SCHEDULE_FROM`]) stay negative acknowledgements with a delay: the
//! slot is held only briefly, and a round through the timers costs more.

use std::sync::Weak;
use std::time::Duration;

use async_nats::header::{NATS_SCHEDULE, NATS_SCHEDULE_TARGET};
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;

use super::{NatsBackend, failed};
use crate::job::{JobId, now_ms, rfc3339};
use crate::store::{StoreError, SubmitError};

/// Waits from this long on go through a schedule.
pub(super) const SCHEDULE_FROM: Duration = Duration::from_secs(1);

impl NatsBackend {
    /// The timers stream and its consumer (created at connect).
    pub(super) async fn timer_queue(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<PullConsumer, StoreError> {
        let stream = js
            .create_or_update_stream(jetstream::stream::Config {
                name: format!("{prefix}_timers"),
                subjects: vec![format!("{prefix}.t.>")],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                allow_message_schedules: true,
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
                "due",
                jetstream::consumer::pull::Config {
                    durable_name: Some("due".into()),
                    filter_subject: format!("{prefix}.t.due.>"),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_deliver: -1,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(failed)
    }

    /// Puts job `id` back in `function`'s queue at `at` (ms since the Unix epoch), durably.
    pub(super) async fn schedule(&self, id: JobId, function: &str, at: u64) -> Result<(), StoreError> {
        let p = &self.options.prefix;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(NATS_SCHEDULE, format!("@at {}", rfc3339(at)));
        headers.insert(NATS_SCHEDULE_TARGET, format!("{p}.t.due.{function}"));
        let subject = format!("{p}.t.s.{function}.{id}");
        super::patiently("scheduling a job", |_| false, || async {
            self.js
                .publish_with_headers(subject.clone(), headers.clone(), id.to_string().into())
                .await?
                .await
        })
        .await
        .map_err(failed)?;
        Ok(())
    }

    /// Puts the jobs whose time has come back in their queues (every host; each firing is
    /// handed to one).
    pub(super) async fn pull_timers(backend: Weak<NatsBackend>) {
        loop {
            let Some(me) = backend.upgrade() else {
                return;
            };
            let batch = me
                .timer_consumer
                .fetch()
                .max_messages(64)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::debug!(error = %e, "pulling timers failed; trying again");
                    drop(me);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                let Ok(message) = message else {
                    break;
                };
                me.fire(message).await;
            }
        }
    }

    /// One timer's firing: its job goes back in its queue (deduplicated by the firing's
    /// sequence), or the firing comes back in a second (the queue is full, or out of reach).
    async fn fire(&self, message: jetstream::Message) {
        let prefix = format!("{}.t.due.", self.options.prefix);
        let function = message.subject.strip_prefix(prefix.as_str()).map(String::from);
        let id = std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|s| s.parse::<JobId>().ok());
        let sequence = message.info().map_or(0, |i| i.stream_sequence);
        let (Some(function), Some(id)) = (function, id) else {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        match self
            .enqueue_as(id, &function, &format!("{id}.t{sequence}"))
            .await
        {
            Ok(()) => {
                let _ = message.double_ack().await;
            }
            // Its function was deleted while it waited: it ends, saying so.
            Err(_) if !self.view.read().contains_key(&function)
                && matches!(self.function_record(&function).await, Ok(None)) =>
            {
                if let Err(e) = self.cancel_deleted(id, &function).await {
                    tracing::debug!(%id, error = %e, "a waiting job of a deleted function was not cancelled yet");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                    return;
                }
                let _ = message.double_ack().await;
            }
            Err(e) => {
                tracing::debug!(%id, error = %e, "a due job could not be queued yet; trying again");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }

    /// Lets go of a held delivery until `delay` from now: a schedule and an acknowledgement,
    /// or (a short wait, or the schedule failed) a negative acknowledgement with the delay.
    pub(super) async fn release_until(&self, id: JobId, function: &str, delay: Duration) {
        if delay >= SCHEDULE_FROM {
            match self.schedule(id, function, now_ms() + delay.as_millis() as u64).await {
                Ok(()) => return self.release(id, None).await,
                Err(e) => {
                    tracing::debug!(%id, error = %e, "scheduling failed; the delivery waits instead")
                }
            }
        }
        self.release(id, Some(Some(delay))).await
    }

    /// A delivery not due for `delay`: scheduled and acknowledged, or (a short wait, or the
    /// schedule failed) negatively acknowledged with the delay.
    pub(super) async fn later(
        &self,
        message: jetstream::Message,
        id: JobId,
        function: &str,
        delay: Duration,
    ) {
        if delay >= SCHEDULE_FROM
            && self
                .schedule(id, function, now_ms() + delay.as_millis() as u64)
                .await
                .is_ok()
        {
            let _ = message.double_ack().await;
            return;
        }
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
    }

    /// Puts a new job in its function's queue: now, or (delayed a while) through a schedule.
    pub(super) async fn enqueue_new(&self, id: JobId, job: &crate::job::Job) -> Result<(), SubmitError> {
        match job.not_before {
            Some(at)
                if job.status == crate::job::JobStatus::Delayed
                    && at >= now_ms() + SCHEDULE_FROM.as_millis() as u64 =>
            {
                Ok(self.schedule(id, &job.function, at).await?)
            }
            _ => self.enqueue(id, &job.function).await,
        }
    }
}
