//! Jobs as clients see them on JetStream: submit (queue message, then record), reads, waits,
//! cancel, counts.

use std::time::Duration;

use futures_util::StreamExt;
use sha2::Digest;

use super::{NatsBackend, failed, failed_because, unsupported};
use crate::job::{Job, JobId, JobStatus, KvChanges, now_ms};
use crate::store::seam::{JobStore, Pending, Versioned};
use crate::store::tables::{decode_job, encode_job};
use crate::store::{
    CancelError, Correlated, Counts, DeadLetterSelection, EventRecord, FunctionTally, JobPage,
    JobQuery, KvVerdict, NewEvent, NewJob, Published, StoreError, StoreStats, SubmitError,
    Submitted,
};

/// JetStream's error code for a message beyond a stream's limit with new messages refused.
const MAXIMUM_MESSAGES_EXCEEDED: u64 = 10077;

impl NatsBackend {
    /// A job's record and its revision.
    pub(super) async fn record(&self, id: JobId) -> Result<Option<(Job, u64)>, StoreError> {
        let key = Self::job_key(id);
        let entry = super::patiently("reading a job", |_| false, || self.jobs.entry(key.clone()))
            .await
            .map_err(failed)?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return Ok(None);
        }
        let job = decode_job(&entry.value)
            .map_err(|e| failed_because(format!("job {id} does not decode: {e}")))?;
        Ok(Some((job, entry.revision)))
    }

    /// A job's record as this host last saw it (see `known`), else as stored.
    pub(super) async fn record_hint(&self, id: JobId) -> Result<Option<(Job, u64)>, StoreError> {
        if let Some(known) = self.known.lock().get(&id) {
            return Ok(Some(known.clone()));
        }
        self.record(id).await
    }

    /// Notes a job's record as this host just wrote or read it; forgotten once it ended.
    pub(super) fn noted(&self, id: JobId, job: &Job, revision: u64) {
        let mut known = self.known.lock();
        if job.status.is_terminal() {
            known.remove(&id);
            return;
        }
        // A bound, should jobs be dropped unseen (their entries are only hints).
        if known.len() >= 100_000 {
            known.clear();
        }
        known.insert(id, (job.clone(), revision));
    }

    /// Replaces a job's record if it is still at `revision`; false when another change came
    /// first (read it again).
    pub(super) async fn replace(
        &self,
        id: JobId,
        job: &Job,
        revision: u64,
    ) -> Result<bool, StoreError> {
        // A dead letter is in the index before its record says so (see `dead_letters`).
        if crate::store::machine::is_dead_letter(job.status) {
            self.index_dead_letter(&job.function, id).await?;
        }
        let key = Self::job_key(id);
        let bytes: bytes::Bytes = encode_job(job).into();
        let wrong_revision = |e: &async_nats::jetstream::kv::UpdateError| {
            e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
        };
        // A retry after a lost acknowledgement finds the revision moved on (by this very
        // write): the caller reads the job again and sees its change applied.
        match super::patiently("changing a job", wrong_revision, || {
            self.jobs.update(&key, bytes.clone(), revision)
        })
        .await
        {
            Ok(revision) => {
                self.noted(id, job, revision);
                Ok(true)
            }
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                self.known.lock().remove(&id);
                Ok(false)
            }
            Err(e) => Err(failed(e)),
        }
    }

    async fn submit_one(&self, new: NewJob) -> Result<Submitted, SubmitError> {
        let Some(record) = self.function_record(&new.function).await? else {
            return Err(SubmitError::FunctionNotFound(new.function));
        };
        // A large input is stored once, as a blob; the job carries its reference.
        let input_blob = match new.input_blob {
            Some(blob) => Some(blob),
            None if new.input.len() > super::dispatch::MAX_INLINE => {
                Some(crate::job::BlobRef::of(&new.input))
            }
            None => None,
        };
        if let Some(blob) = input_blob {
            self.keep_blob(blob, &new.input).await?;
        }
        supported(&new)?;
        let id = JobId(ulid::Ulid::new().0);
        if let Some(key) = &new.idempotency {
            let name = idempotency_name(&new.function, &key.key);
            let value = format!("{id}:{}", hex::encode(key.request_hash));
            let already = |e: &async_nats::jetstream::kv::CreateError| {
                e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists
            };
            let created = super::patiently("keeping an idempotency key", already, || {
                self.keys.create(&name, value.clone().into())
            })
            .await;
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                    let stored = super::patiently(
                        "reading an idempotency key",
                        |_| false,
                        || self.keys.get(&name),
                    )
                    .await
                    .map_err(failed)?;
                    let stored =
                        String::from_utf8_lossy(stored.as_deref().unwrap_or_default()).into_owned();
                    let (job, hash) = stored.split_once(':').unwrap_or_default();
                    if hash != hex::encode(key.request_hash) {
                        return Err(SubmitError::IdempotencyConflict(key.key.clone()));
                    }
                    let job: JobId = job.parse().map_err(|_| {
                        failed_because(format!("idempotency key {name} is damaged"))
                    })?;
                    // Our own key, kept by an attempt whose acknowledgement was lost: go on.
                    if job != id {
                        return Ok(Submitted::Existing(job));
                    }
                }
                Err(e) => return Err(failed(e).into()),
            }
        }
        let key_name = new
            .idempotency
            .as_ref()
            .map(|key| idempotency_name(&new.function, &key.key));
        let stored = self
            .store_new(id, new, input_blob, record.settings.max_queued)
            .await;
        if stored.is_err()
            && let Some(name) = key_name
        {
            // Not accepted: the key must not answer with a job that does not exist.
            let _ = self.keys.purge(&name).await;
        }
        stored
    }

    /// Queues and stores a new job (the queue message first: a job whose record exists is
    /// always in its queue; a delivery that finds no record yet is asked for again shortly).
    async fn store_new(
        &self,
        id: JobId,
        new: NewJob,
        input_blob: Option<crate::job::BlobRef>,
        max_queued: u64,
    ) -> Result<Submitted, SubmitError> {
        let now = now_ms();
        let delayed = match crate::store::machine::on_submit(new.not_before, now) {
            crate::store::machine::Accepted::Delayed(at) => Some(at),
            crate::store::machine::Accepted::Queued => None,
        };
        let function = new.function.clone();
        // A correlation id from elsewhere is indexed (before the record); the job's own id
        // needs no index.
        if let Some(correlation_id) = &new.correlation_id {
            self.index_correlated(correlation_id, 'j', id).await?;
        }
        let (job, _) = crate::store::intake::record_of(id, new, now, delayed, input_blob);
        // The queue message first: a job whose record exists is always in its queue. A
        // delivery that finds no record yet is asked for again shortly (see `lease`).
        self.enqueue_new(id, &job).await.map_err(|e| match e {
            SubmitError::QueueFull { function, .. } => SubmitError::QueueFull {
                function,
                max_queued,
            },
            e => e,
        })?;
        let key = Self::job_key(id);
        let bytes: bytes::Bytes = encode_job(&job).into();
        self.note_job(&function, id).await;
        super::patiently(
            "storing a job",
            |_| false,
            || self.jobs.put(&key, bytes.clone()),
        )
        .await
        .map_err(failed)?;
        self.moved(&function, None, Some(job.status)).await?;
        Ok(Submitted::New(id))
    }

    /// Puts job `id` in `function`'s queue (deduplicated by the id: a retry after a lost
    /// acknowledgement, or a second host carrying out the same outbox entry, queues it once).
    pub(super) async fn enqueue(&self, id: JobId, function: &str) -> Result<(), SubmitError> {
        self.enqueue_as(id, function, &id.to_string()).await
    }

    /// Puts job `id` in `function`'s queue, deduplicated by `message_id`.
    pub(super) async fn enqueue_as(
        &self,
        id: JobId,
        function: &str,
        message_id: &str,
    ) -> Result<(), SubmitError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        self.publish_to_queue(function, self.queue_subject(function), headers, id)
            .await
    }

    /// Publishes job `id` to a subject of `function`'s queue stream, durably: refused when
    /// the queue holds `max_queued` messages.
    pub(super) async fn publish_to_queue(
        &self,
        function: &str,
        subject: String,
        headers: async_nats::HeaderMap,
        id: JobId,
    ) -> Result<(), SubmitError> {
        let full = |e: &async_nats::jetstream::context::PublishError| {
            std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                .is_some_and(|e| e.error_code().0 == MAXIMUM_MESSAGES_EXCEEDED)
        };
        let published = super::patiently("queueing a job", full, || async {
            self.js
                .publish_with_headers(subject.clone(), headers.clone(), id.to_string().into())
                .await?
                .await
        })
        .await;
        match published {
            Ok(_) => Ok(()),
            Err(e) if full(&e) => Err(SubmitError::QueueFull {
                function: function.into(),
                max_queued: 0,
            }),
            Err(e) => Err(failed(e).into()),
        }
    }

    async fn wait_for(&self, id: JobId, timeout: Duration) -> Result<Option<Job>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Woken by the record's changes; should the watch fail (a server went away), the
        // record is read again every so often instead.
        let mut changes = self.jobs.watch(Self::job_key(id)).await.ok();
        loop {
            let Some((job, _)) = self.record(id).await? else {
                return Ok(None);
            };
            if job.visible_status().is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(Some(job));
            }
            let next = tokio::time::Instant::now() + Duration::from_millis(500);
            let wake = next.min(deadline);
            match &mut changes {
                Some(watch) => match tokio::time::timeout_at(wake, watch.next()).await {
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(Some(Err(_)) | None) => changes = None,
                },
                None => tokio::time::sleep_until(wake).await,
            }
        }
    }

    /// Cancels a queued or delayed job now (see `cancel_in_order`).
    pub(super) async fn cancel_now(&self, id: JobId) -> Result<Job, CancelError> {
        loop {
            let Some((mut job, revision)) = self.record(id).await? else {
                return Err(CancelError::NotFound(id));
            };
            if !crate::store::machine::may_cancel(job.status) {
                return Err(CancelError::NotCancellable {
                    id,
                    status: job.status,
                });
            }
            let from = job.status;
            job.status = JobStatus::Cancelled;
            job.finished_at = Some(now_ms());
            job.error = Some("cancelled by request".into());
            // Its queue message is acked when a host next draws it.
            if self.replace_ending(id, &mut job, revision).await? {
                self.moved(&job.function, Some(from), Some(job.status))
                    .await?;
                return Ok(job);
            }
        }
    }

    pub(super) async fn counts_of(&self, function: &str) -> Result<Counts, StoreError> {
        let mut counts = Counts::default();
        for status in JobStatus::ALL {
            let value = match self
                .counters
                .direct_get_last_for_subject(self.count_subject(function, status))
                .await
            {
                Ok(message) => counter_value(&message.payload),
                Err(e)
                    if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound =>
                {
                    0
                }
                Err(e) => return Err(failed(e)),
            };
            counts.0[crate::store::counts::slot(status)] = value.max(0) as u64;
        }
        Ok(counts)
    }
}

/// Refuses what this backend cannot honour yet (each function's queue is one first-in,
/// first-out stream): an ordering, concurrency or debounce key, a priority other than the
/// default.
pub(super) fn supported(job: &NewJob) -> Result<(), StoreError> {
    for (given, what) in [
        (job.ordering_key.is_some(), "an ordering key"),
        (job.concurrency_key.is_some(), "a concurrency key"),
        (job.debounce_key.is_some(), "a debounce key"),
    ] {
        if given {
            return Err(unsupported(what));
        }
    }
    supported_priority(job.priority)
}

/// Refuses a priority other than the default (each function's queue is one stream).
pub(super) fn supported_priority(priority: u8) -> Result<(), StoreError> {
    if priority != crate::job::DEFAULT_PRIORITY {
        return Err(unsupported(&format!(
            "a priority other than {} (this one is {priority}; each function's queue is first in, first out)",
            crate::job::DEFAULT_PRIORITY
        )));
    }
    Ok(())
}

/// Where a function's idempotency key is kept.
fn idempotency_name(function: &str, key: &str) -> String {
    format!(
        "{function}.{}",
        hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16])
    )
}

/// A JetStream counter's value (`{"val":"12"}`).
pub(super) fn counter_value(payload: &[u8]) -> i64 {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("val")?.as_str()?.parse().ok())
        .unwrap_or(0)
}

impl JobStore for NatsBackend {
    fn submit(&self, job: NewJob) -> Pending<'_, Result<Submitted, SubmitError>> {
        Box::pin(self.submit_one(job))
    }
    fn submit_batch(&self, jobs: Vec<NewJob>) -> Pending<'_, Result<Vec<JobId>, SubmitError>> {
        Box::pin(async move {
            // All or nothing needs room for all: checked first (a concurrent submit may still
            // take the room; then the batch is cut short with the error and what it accepted
            // stays, a limit this backend does not close yet).
            let mut wanted: std::collections::HashMap<&str, u64> = Default::default();
            for job in &jobs {
                supported(job)?;
                *wanted.entry(job.function.as_str()).or_default() += 1;
            }
            for (function, n) in wanted {
                let Some(record) = self.function_record(function).await? else {
                    return Err(SubmitError::FunctionNotFound(function.into()));
                };
                let unfinished = self.counts_of(function).await?.unfinished();
                if unfinished + n > record.settings.max_queued {
                    return Err(SubmitError::QueueFull {
                        function: function.into(),
                        max_queued: record.settings.max_queued,
                    });
                }
            }
            let mut ids = Vec::with_capacity(jobs.len());
            for job in jobs {
                ids.push(self.submit_one(job).await?.id());
            }
            Ok(ids)
        })
    }
    fn publish(&self, events: Vec<NewEvent>) -> Pending<'_, Result<Vec<Published>, SubmitError>> {
        Box::pin(self.publish_events(events))
    }
    fn cancel(&self, id: JobId) -> Pending<'_, Result<Job, CancelError>> {
        Box::pin(self.cancel_in_order(id))
    }
    fn redrive<'a>(
        &'a self,
        function: &'a str,
        which: DeadLetterSelection,
    ) -> Pending<'a, Result<Vec<JobId>, StoreError>> {
        Box::pin(self.redrive_dead(function, which))
    }
    fn purge<'a>(
        &'a self,
        function: &'a str,
        which: DeadLetterSelection,
    ) -> Pending<'a, Result<Vec<JobId>, StoreError>> {
        Box::pin(self.purge_dead(function, which))
    }
    fn job<'a>(&'a self, id: JobId) -> Pending<'a, Result<Option<Job>, StoreError>> {
        Box::pin(async move { Ok(self.record(id).await?.map(|(job, _)| job)) })
    }
    fn wait_terminal(
        &self,
        id: JobId,
        timeout: Duration,
    ) -> Pending<'_, Result<Option<Job>, StoreError>> {
        Box::pin(self.wait_for(id, timeout))
    }
    fn jobs<'a>(&'a self, query: &'a JobQuery) -> Pending<'a, Result<JobPage, StoreError>> {
        Box::pin(async move {
            if super::dead_letters::wants_dead_letters(query) {
                return self.dead_letter_page(query).await;
            }
            self.job_page(query).await
        })
    }
    fn correlated<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> Pending<'a, Result<Correlated, StoreError>> {
        Box::pin(self.correlated_with(correlation_id))
    }
    fn event<'a>(&'a self, id: JobId) -> Pending<'a, Result<Option<EventRecord>, StoreError>> {
        Box::pin(self.event_record(id))
    }
    fn counts<'a>(&'a self, function: &'a str) -> Pending<'a, Result<Counts, StoreError>> {
        Box::pin(self.counts_of(function))
    }
    fn pending_count<'a>(&'a self, function: &'a str) -> Pending<'a, Result<u64, StoreError>> {
        Box::pin(async move { Ok(self.counts_of(function).await?.unfinished()) })
    }
    fn oldest_ready<'a>(
        &'a self,
        _function: &'a str,
    ) -> Pending<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn read_blob<'a>(
        &'a self,
        digest: &'a [u8; 32],
        offset: u64,
        len: usize,
    ) -> Pending<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.blob_part(digest, offset, len))
    }
    fn blob_totals(&self) -> (u64, u64) {
        (0, 0)
    }
    fn queued_bytes(&self) -> u64 {
        0
    }
    fn kv_get<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> Pending<'a, Result<Versioned, StoreError>> {
        Box::pin(self.state_get(function, key))
    }
    fn kv_keys<'a>(
        &'a self,
        function: &'a str,
        prefix: Option<&'a str>,
        skip: usize,
        limit: usize,
    ) -> Pending<'a, Result<Vec<String>, StoreError>> {
        Box::pin(self.state_keys(function, prefix, skip, limit))
    }
    fn kv_write(&self, changes: KvChanges) -> Pending<'_, Result<KvVerdict, StoreError>> {
        Box::pin(async move {
            self.state_write(&changes, None, self.options.max_kv_bytes)
                .await
        })
    }
    fn stats(&self) -> &StoreStats {
        &self.stats
    }
    fn tallies(&self) -> Vec<(String, FunctionTally)> {
        Vec::new()
    }
}
