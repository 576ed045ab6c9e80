//! Fan-out on JetStream: events published (by clients or by handlers) and jobs handlers
//! enqueue. What a write causes is first made durable as one outbox entry, `o.<id>` in the
//! jobs bucket: written alone for a client's publish, and in one atomic batch with the
//! emitting job's success for what an attempt emitted (so a success has emitted everything,
//! and a success that did not land emitted nothing). Then each job is queued and stored, and
//! each event's record stored, every step idempotent (queue messages deduplicated by job id,
//! records created only if absent), and the entry is removed.
//!
//! A host that dies in between leaves its entry, and every host's outbox sweep finishes
//! entries older than [`SWEEP_AFTER`]. A job whose queue is full stays in the entry (it waits
//! durably, its id answers 404 until then) and the sweep queues it once there is room: topic
//! deliveries are never refused for a subscriber's `max_queued`, as on one host.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{NatsBackend, failed, failed_because};
use crate::job::{Emission, Job, JobId, JobStatus, now_ms};
use crate::store::tables::{EventRecord, decode_event, decode_job, encode_event, encode_job};
use crate::store::{NewEvent, NewJob, Published, StoreError, SubmitError};

/// How old an outbox entry is before any host's sweep finishes it (the host that wrote it
/// normally has, within milliseconds).
pub(super) const SWEEP_AFTER: Duration = Duration::from_secs(5);
/// Every how many sweep ticks the outbox is also listed (in case its watch stalled).
const RELIST_EVERY: u64 = 5;

/// What one write causes: new jobs (records as they are stored) and events' records.
#[derive(Default)]
pub(super) struct Fanout {
    /// New jobs: queued or delayed ones go in their function's queue; others (a target that
    /// is not deployed, a chain too long) are stored as they are, already ended.
    pub(super) jobs: Vec<(JobId, Job)>,
    /// Published events' records.
    pub(super) events: Vec<(JobId, EventRecord)>,
    /// A change to a pipeline's head (a stage added, the chain ended).
    pub(super) head: Option<super::pipelines::HeadChange>,
    /// Jobs whose record exists to put back in their queue (a redrive): (job, function,
    /// message id).
    pub(super) requeue: Vec<(u128, String, String)>,
    /// Large inputs (of new jobs, of events' deliveries) to store as blobs before the entry
    /// is written; not part of the entry, which carries their references.
    pub(super) blobs: Vec<(crate::job::BlobRef, bytes::Bytes)>,
}

/// The parts of an entry kept as JSON after its lists.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Trailer {
    head: Option<super::pipelines::HeadChange>,
    requeue: Vec<(u128, String, String)>,
}

impl Fanout {
    /// True when it causes nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.events.is_empty()
            && self.head.is_none()
            && self.requeue.is_empty()
    }

    /// Its stored form: a version byte, then each list as a count and length-prefixed
    /// (id, record) pairs, then the head change and the jobs to queue again (JSON), if any.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        let put = |out: &mut Vec<u8>, items: Vec<(JobId, Vec<u8>)>| {
            out.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for (id, bytes) in items {
                out.extend_from_slice(&id.0.to_le_bytes());
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
        };
        put(
            &mut out,
            self.jobs.iter().map(|(id, j)| (*id, encode_job(j))).collect(),
        );
        put(
            &mut out,
            self.events
                .iter()
                .map(|(id, e)| (*id, encode_event(e)))
                .collect(),
        );
        if self.head.is_some() || !self.requeue.is_empty() {
            let trailer = Trailer {
                head: self.head.clone(),
                requeue: self.requeue.clone(),
            };
            out.extend_from_slice(&serde_json::to_vec(&trailer).expect("JSON values serialise"));
        }
        out
    }

    /// Reads a stored entry back.
    pub(super) fn decode(bytes: &[u8]) -> Result<Fanout, String> {
        let mut rest = bytes
            .strip_prefix(&[1u8])
            .ok_or("unknown outbox entry version")?;
        fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if rest.len() < n {
                return Err("outbox entry cut short".into());
            }
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            Ok(head)
        }
        fn list(rest: &mut &[u8]) -> Result<Vec<(JobId, Vec<u8>)>, String> {
            let n = u32::from_le_bytes(take(rest, 4)?.try_into().unwrap());
            let mut items = Vec::new();
            for _ in 0..n {
                let id = u128::from_le_bytes(take(rest, 16)?.try_into().unwrap());
                let len = u32::from_le_bytes(take(rest, 4)?.try_into().unwrap()) as usize;
                items.push((JobId(id), take(rest, len)?.to_vec()));
            }
            Ok(items)
        }
        let jobs = list(&mut rest)?
            .into_iter()
            .map(|(id, b)| Ok((id, decode_job(&b)?)))
            .collect::<Result<_, String>>()?;
        let events = list(&mut rest)?
            .into_iter()
            .map(|(id, b)| Ok((id, decode_event(&b)?)))
            .collect::<Result<_, String>>()?;
        let trailer: Trailer = match rest.is_empty() {
            true => Trailer::default(),
            false => serde_json::from_slice(rest).map_err(|e| e.to_string())?,
        };
        Ok(Fanout {
            jobs,
            events,
            head: trailer.head,
            requeue: trailer.requeue,
            blobs: Vec::new(),
        })
    }
}

impl NatsBackend {
    /// The outbox entry's key for what `id` (an event or an attempt's job) caused.
    pub(super) fn outbox_key(id: JobId) -> String {
        format!("o.{id}")
    }

    /// The key of an event's record.
    fn event_key(id: JobId) -> String {
        format!("e.{id}")
    }

    /// Adds a new job, as it is stored: refused to a function that is not deployed (it ends
    /// `cancelled`, saying so) or too far from its request (a dead letter that never ran).
    pub(super) fn plan_job(&self, new: NewJob, now: u64, fanout: &mut Fanout) -> JobId {
        let id = JobId(ulid::Ulid::new().0);
        let delayed = match crate::store::machine::on_submit(new.not_before, now) {
            crate::store::machine::Accepted::Delayed(at) => Some(at),
            crate::store::machine::Accepted::Queued => None,
        };
        // A large input is a claim check, stored before the entry that names it.
        let blob = match new.input_blob {
            Some(blob) => Some(blob),
            None if new.input.len() > super::dispatch::MAX_INLINE => {
                let blob = crate::job::BlobRef::of(&new.input);
                fanout.blobs.push((blob, new.input.clone()));
                Some(blob)
            }
            None => None,
        };
        let (mut job, _) = crate::store::intake::record_of(id, new, now, delayed, blob);
        if !self.view.read().contains_key(&job.function) {
            job.status = JobStatus::Cancelled;
            job.not_before = None;
            job.finished_at = Some(now);
            job.error = Some(format!(
                "cancelled: function {:?} is not deployed",
                job.function
            ));
        } else if job.hops > self.options.max_hops {
            crate::store::intake::dead_too_deep(&mut job, self.options.max_hops, now);
        }
        fanout.jobs.push((id, job));
        id
    }

    /// Adds events with one delivery job per subscriber (as this host knows the catalog: a
    /// subscription reaches every host within the catalog watch's delay).
    pub(super) fn plan_events(
        &self,
        events: Vec<NewEvent>,
        now: u64,
        fanout: &mut Fanout,
    ) -> Result<Vec<Published>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for new in &events {
            super::jobs::supported_priority(new.priority)?;
        }
        for new in events {
            let a = &new.event.attributes;
            let subscribers = self.subscribers(&a.topic, &a.event_type);
            // A large event is one blob all its deliveries name (a claim check).
            let blob = new.blob.or_else(|| {
                (new.event.data.len() > super::dispatch::MAX_INLINE && !subscribers.is_empty())
                    .then(|| crate::job::BlobRef::of(&new.event.data))
            });
            if let Some(blob) = blob {
                fanout.blobs.push((blob, new.event.data.clone()));
            }
            let event_id = JobId(ulid::Ulid::new().0);
            let correlation_id = new
                .correlation_id
                .clone()
                .unwrap_or_else(|| event_id.to_string());
            let mut deliveries = Vec::with_capacity(subscribers.len());
            for function in subscribers {
                let delivery = crate::store::publish::delivery_of(
                    &new,
                    function.clone(),
                    event_id,
                    &correlation_id,
                    blob,
                );
                deliveries.push((function, self.plan_job(delivery, now, fanout)));
            }
            let record =
                crate::store::publish::event_record_of(new, correlation_id, now, &deliveries);
            fanout.events.push((event_id, record));
            out.push(Published {
                event_id,
                deliveries,
            });
        }
        Ok(out)
    }

    /// What job `id` emitted with its success, planned.
    pub(super) fn plan_emitted(
        &self,
        id: JobId,
        job: &Job,
        emitted: Vec<Emission>,
    ) -> Result<Fanout, StoreError> {
        let now = now_ms();
        let (events, jobs) = crate::store::outbox::emitted_requests(id, job, emitted, now);
        let mut fanout = Fanout::default();
        for new in &jobs {
            super::jobs::supported(&new)?;
        }
        for new in jobs {
            self.plan_job(new, now, &mut fanout);
        }
        self.plan_events(events, now, &mut fanout)?;
        Ok(fanout)
    }

    /// Refuses an entry the cluster would not take in one message.
    pub(super) fn check_size(&self, entry: &[u8]) -> Result<(), StoreError> {
        let limit = self.client.server_info().max_payload;
        if entry.len() + 1024 > limit {
            return Err(StoreError::Unsupported(format!(
                "what this causes ({} bytes: every new job's input and every event's record) is more than the cluster takes in one message ({limit} bytes, the server's max_payload); publish or emit less at once",
                entry.len()
            )));
        }
        Ok(())
    }

    /// Accepts client events: durable once their outbox entry is, fanned out at once.
    pub(super) async fn publish_events(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Published>, SubmitError> {
        let mut fanout = Fanout::default();
        let published = self.plan_events(events, now_ms(), &mut fanout)?;
        if fanout.is_empty() {
            return Ok(published);
        }
        let key = Self::outbox_key(published[0].event_id);
        let entry: bytes::Bytes = fanout.encode().into();
        self.check_size(&entry)?;
        for (blob, bytes) in &fanout.blobs {
            self.keep_blob(*blob, bytes).await?;
        }
        super::patiently("keeping an outbox entry", |_| false, || {
            self.jobs.put(&key, entry.clone())
        })
        .await
        .map_err(failed)?;
        self.fan_out(&key, &fanout, false).await;
        Ok(published)
    }

    /// Carries out an outbox entry: queues and stores its jobs, stores its events' records,
    /// and removes the entry once all of it landed. `careful`: parts may have landed already
    /// (an entry left by a host that died): a job whose record exists is skipped (its queue
    /// message went first). Failures leave the entry for the sweep.
    pub(super) async fn fan_out(&self, key: &str, fanout: &Fanout, careful: bool) {
        let mut done = true;
        for (id, job) in &fanout.jobs {
            match self.fan_out_job(*id, job, careful).await {
                Ok(true) => {}
                Ok(false) => done = false,
                Err(e) => {
                    tracing::debug!(%id, error = %e, "a fanned-out job did not land yet; the outbox sweep tries again");
                    done = false;
                }
            }
        }
        for (id, record) in &fanout.events {
            if record.correlation_id != id.to_string()
                && let Err(e) = self
                    .index_correlated(&record.correlation_id, 'e', *id)
                    .await
            {
                tracing::debug!(%id, error = %e, "an event's correlation index did not land yet; the outbox sweep tries again");
                done = false;
                continue;
            }
            let created = self
                .jobs
                .create(Self::event_key(*id), encode_event(record).into())
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::debug!(%id, error = %e, "an event's record did not land yet; the outbox sweep tries again");
                    done = false;
                }
            }
        }
        for (id, function, message_id) in &fanout.requeue {
            if let Err(e) = self.enqueue_as(JobId(*id), function, message_id).await {
                tracing::debug!(id, error = %e, "a job was not queued again yet; the outbox sweep tries again");
                done = false;
            }
        }
        if let Some(head) = &fanout.head
            && let Err(e) = self.change_head(head).await
        {
            tracing::debug!(key, error = %e, "a pipeline's head did not change yet; the outbox sweep tries again");
            done = false;
        }
        // Removed from the stream without a trace (a purge marker would be replayed by every
        // host's outbox watch, forever).
        let subject = format!("$KV.{}-jobs.{key}", self.options.prefix);
        if done && let Err(e) = self.jobs_stream.purge().filter(subject).await {
            tracing::debug!(key, error = %e, "an outbox entry was not removed; the sweep finds it done");
        }
    }

    /// Queues and stores one job of an entry; false: its queue is full (it waits in the
    /// entry).
    async fn fan_out_job(&self, id: JobId, job: &Job, careful: bool) -> Result<bool, StoreError> {
        if careful && self.record(id).await?.is_some() {
            return Ok(true);
        }
        if crate::store::machine::is_dead_letter(job.status) {
            self.index_dead_letter(&job.function, id).await?;
        }
        // Caused by a request or job: it carries their correlation id.
        if job.correlation_id != id.to_string() {
            self.index_correlated(&job.correlation_id, 'j', id).await?;
        }
        let mut job = job.clone();
        self.schedule_callback(id, &mut job).await?;
        let job = &job;
        let mut gone;
        let job = if job.status.is_terminal() {
            job
        } else {
            match self.enqueue_new(id, job).await {
                Ok(()) => job,
                Err(SubmitError::QueueFull { .. }) => return Ok(false),
                // Its function was deleted since: it ends `cancelled`, saying so.
                Err(_)
                    if !self.view.read().contains_key(&job.function)
                        && self.function_record(&job.function).await?.is_none() =>
                {
                    gone = job.clone();
                    gone.status = JobStatus::Cancelled;
                    gone.not_before = None;
                    gone.finished_at = Some(now_ms());
                    gone.error = Some(format!(
                        "cancelled: function {:?} is not deployed",
                        job.function
                    ));
                    self.schedule_callback(id, &mut gone).await?;
                    &gone
                }
                Err(SubmitError::Store(e)) => return Err(e),
                Err(e) => return Err(failed_because(e.to_string())),
            }
        };
        self.note_job(&job.function, id).await;
        let created = self
            .jobs
            .create(Self::job_key(id), encode_job(job).into())
            .await;
        match created {
            Ok(_) => {
                self.moved(&job.function, None, Some(job.status)).await?;
                Ok(true)
            }
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                Ok(true)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// An event's record.
    pub(super) async fn event_record(&self, id: JobId) -> Result<Option<EventRecord>, StoreError> {
        let key = Self::event_key(id);
        let entry = super::patiently("reading an event", |_| false, || self.jobs.get(&key))
            .await
            .map_err(failed)?;
        entry
            .map(|bytes| {
                decode_event(&bytes)
                    .map_err(|e| failed_because(format!("event {id} does not decode: {e}")))
            })
            .transpose()
    }

    /// Records job `id`'s new state over `revision` together with an outbox entry, in one
    /// atomic batch on the jobs bucket's stream: both land or neither. False when another
    /// change came first.
    pub(super) async fn replace_with_outbox(
        &self,
        id: JobId,
        job: &Job,
        revision: u64,
        key: &str,
        entry: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        let bucket = format!("$KV.{}-jobs", self.options.prefix);
        let record: bytes::Bytes = encode_job(job).into();
        let outcome = super::patiently("changing a job with what it emitted", |_| false, || {
            super::batch::publish_atomic(
                &self.js,
                vec![
                    super::batch::Part {
                        subject: format!("{bucket}.{}", Self::job_key(id)),
                        expected_subject_sequence: Some(revision),
                        check_subject: None,
                        headers: Vec::new(),
                        payload: record.clone(),
                    },
                    super::batch::Part {
                        subject: format!("{bucket}.{key}"),
                        expected_subject_sequence: None,
                        check_subject: None,
                        headers: Vec::new(),
                        payload: entry.clone(),
                    },
                ],
            )
        })
        .await;
        match outcome {
            Ok(super::batch::Committed::Yes) => Ok(true),
            Ok(super::batch::Committed::WrongSequence) => Ok(false),
            Err(e) => Err(failed_because(e)),
        }
    }

    /// Every `period`: finishes outbox entries older than [`SWEEP_AFTER`] (left by a host
    /// that died, or holding jobs whose queue was full). Every host sweeps; each step is
    /// idempotent.
    pub(super) async fn sweep_outbox(backend: Weak<NatsBackend>, period: Duration) {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(period);
        let mut ticks: u64 = 0;
        loop {
            let watch = {
                let Some(backend) = backend.upgrade() else {
                    return;
                };
                backend.jobs.watch_with_history("o.>").await
            };
            let mut watch = match watch {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::debug!(error = %e, "watching the outbox failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => {
                            if entry.operation == async_nats::jetstream::kv::Operation::Put {
                                seen.entry(entry.key).or_insert_with(Instant::now);
                            } else {
                                seen.remove(&entry.key);
                            }
                        }
                        // The watch ended (a server went away): watch again.
                        _ => break,
                    },
                    _ = tick.tick() => {
                        let Some(backend) = backend.upgrade() else {
                            return;
                        };
                        // The watch is a convenience: a consumer that stalled (a busy server
                        // can drop an ordered consumer without the client noticing) would
                        // strand entries. Every few ticks the stream's subjects are listed too.
                        ticks += 1;
                        if ticks % RELIST_EVERY == 0 {
                            for key in backend.outbox_keys().await {
                                seen.entry(key).or_insert_with(Instant::now);
                            }
                        }
                        let due: Vec<String> = seen
                            .iter_mut()
                            .filter(|(_, at)| at.elapsed() >= SWEEP_AFTER)
                            .map(|(key, at)| {
                                *at = Instant::now();
                                key.clone()
                            })
                            .collect();
                        for key in due {
                            if !backend.finish_entry(&key).await {
                                seen.remove(&key);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The outbox entries now, by listing the jobs stream's subjects (no consumer).
    async fn outbox_keys(&self) -> Vec<String> {
        let prefix = format!("$KV.{}-jobs.", self.options.prefix);
        let mut subjects = match self
            .jobs_stream
            .info_with_subjects(format!("{prefix}o.>"))
            .await
        {
            Ok(subjects) => subjects,
            Err(e) => {
                tracing::debug!(error = %e, "listing the outbox failed; the watch goes on");
                return Vec::new();
            }
        };
        let mut keys = Vec::new();
        while let Some(Ok((subject, _))) = subjects.next().await {
            if let Some(key) = subject.strip_prefix(&prefix) {
                keys.push(key.to_string());
            }
        }
        keys
    }

    /// Finishes one outbox entry found by the sweep; false when it is gone.
    async fn finish_entry(&self, key: &str) -> bool {
        let entry = match self.jobs.get(key).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(key, error = %e, "reading an outbox entry failed; trying again later");
                return true;
            }
        };
        match Fanout::decode(&entry) {
            Ok(fanout) => self.fan_out(key, &fanout, true).await,
            Err(e) => {
                tracing::error!(key, error = %e, "an outbox entry does not decode; it is kept for inspection")
            }
        }
        true
    }
}
