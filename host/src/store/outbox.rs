//! The transactional outbox: what a successful attempt emitted (events, jobs) and the next stage
//! of its pipeline are written in the same transaction that records its success, fenced by the
//! attempt number like the success itself. A failed, timed-out or superseded attempt emits
//! nothing; a committed success has emitted everything, whatever happens to the process next.

use super::txn::Tables;
use super::writer::{Effects, Writer};
use super::{NewEvent, NewJob, StoreError, SubmitError};
use crate::event::{CloudEvent, EventAttributes};
use crate::job::{Emission, Job, JobId, Parent, Pipeline, now_ms, rfc3339};
use crate::trace::{attempt_span, emit_span, span_number};

impl Writer {
    /// What a success would add to the queues: the jobs it enqueues (and the next pipeline
    /// stage, `(function, input bytes)`) per target function, and every job it causes,
    /// topic deliveries included, with their bytes.
    pub(crate) fn emitted_cost(
        &self,
        emitted: &[Emission],
        next_stage: Option<(&str, usize)>,
    ) -> EmittedCost {
        let mut cost = EmittedCost::default();
        let enqueue = |cost: &mut EmittedCost, function: &str, bytes: usize| {
            *cost.targets.entry(function.to_string()).or_default() += 1;
            cost.jobs += 1;
            cost.bytes += bytes as u64;
        };
        if let Some((function, bytes)) = next_stage {
            enqueue(&mut cost, function, bytes);
        }
        for e in emitted {
            match e {
                Emission::Publish {
                    topic,
                    event_type,
                    data,
                    ..
                } => {
                    // Deliveries count against the host's budget, not subscribers' max_queued.
                    let n = self.shared.deployed.subscribers(topic, event_type).len() as u64;
                    cost.jobs += n;
                    cost.bytes += data.len() as u64 * n;
                }
                Emission::Enqueue { function, data, .. } => {
                    enqueue(&mut cost, function, data.len())
                }
            }
        }
        cost
    }

    /// Refuses what a success emits if it would take a target function past its `max_queued`
    /// or the host past its budget of unfinished work. `own` is the emitting job's function:
    /// that job is finishing, so its place in its own queue is free for what it emits.
    pub(crate) fn admit_emitted(
        &self,
        own: &str,
        cost: &EmittedCost,
        fx: &Effects,
    ) -> Result<(), SubmitError> {
        if cost.jobs == 0 {
            return Ok(());
        }
        for (function, &n) in &cost.targets {
            let n = if function == own { n - 1 } else { n };
            // A function that is not deployed gets its jobs cancelled, not queued.
            if n > 0
                && let Some(max_queued) = self.shared.deployed.max_queued(function)
            {
                self.admit_queue(function, max_queued, n, fx)?;
            }
        }
        self.admit_budget(cost.jobs, cost.bytes, fx)
    }

    /// Commits what job `id` emitted with its success: each event published (with one delivery
    /// per subscriber) and each job enqueued, all carrying the job's correlation id and the job
    /// as their parent. An emitted event's CloudEvents `id` is `{job id}-{n}`: stable, so a
    /// consumer can tell copies apart from repeats.
    pub(crate) fn commit_emitted(
        &mut self,
        id: JobId,
        job: &Job,
        emitted: Vec<Emission>,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let (events, jobs) = emitted_requests(id, job, emitted, now_ms());
        for new in jobs {
            self.insert_child(new, t, fx)?;
        }
        if !events.is_empty() {
            // The budget was checked for all of it before the success was recorded.
            let _ = self.publish(events, t, fx)?;
        }
        Ok(())
    }

    /// Stores a job a handler (or a pipeline) caused. Its function may have been deleted since:
    /// then the job ends `cancelled` at once, saying so, rather than vanishing.
    fn insert_child(
        &mut self,
        new: NewJob,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<JobId, StoreError> {
        let deployed = self.shared.deployed.contains(&new.function);
        let function = new.function.clone();
        let id = self.ids.generate();
        self.insert_job(id, new, now_ms(), t, fx)?;
        if !deployed && let Some(mut job) = t.job(id)? {
            self.cancel_job(
                id,
                &mut job,
                &format!("cancelled: function {function:?} is not deployed"),
                t,
                fx,
            )?;
        }
        Ok(id)
    }

    /// Moves a pipeline on after job `id` (of `job`, terminal now) ended: on success with a
    /// next function, its output becomes that function's job (a new stage); otherwise, if the
    /// job is part of a pipeline, the chain ends with its status, and its head takes that
    /// status and the last output.
    pub(crate) fn advance_pipeline(
        &mut self,
        id: JobId,
        job: &mut Job,
        then: Option<String>,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let head = match &job.pipeline {
            Some(Pipeline::Stage { head }) => Some(JobId(*head)),
            Some(Pipeline::Head { .. }) => Some(id),
            None => None,
        };
        let step = super::machine::pipeline_step(head.is_some(), job.status, then);
        if let super::machine::PipelineStep::NextStage(next) = step {
            let head = head.unwrap_or(id);
            let stage = self.insert_child(
                next_stage(id, job, next, head),
                t,
                fx,
            )?;
            if head == id {
                // A stage that ended as it was created (its function is gone, or it is too
                // far from its request) ended the chain with it.
                let ended = t.job(stage)?.filter(|s| s.status.is_terminal());
                if let Some(s) = &ended {
                    job.error = Some(format!(
                        "stage {stage} ({}) ended {}: {}",
                        s.function,
                        s.status.as_str(),
                        s.error.as_deref().unwrap_or("")
                    ));
                }
                job.pipeline = Some(Pipeline::Head {
                    stages: vec![id.0, stage.0],
                    ended: ended.map(|s| s.status),
                });
            } else if let Some(mut h) = t.job(head)? {
                if let Some(Pipeline::Head { stages, .. }) = &mut h.pipeline {
                    stages.push(stage.0);
                }
                t.put_job(head, &h)?;
            }
            // A stage that ended as it was created already ended the chain (see cancel_job).
            return Ok(());
        }
        let Some(head) = head else {
            return Ok(());
        };
        if head == id {
            if let Some(Pipeline::Head { ended, .. }) = &mut job.pipeline {
                *ended = Some(job.status);
            }
            return Ok(());
        }
        let Some(mut h) = t.job(head)? else {
            return Ok(());
        };
        if let Some(Pipeline::Head { ended, .. }) = &mut h.pipeline {
            *ended = Some(job.status);
        }
        // The head takes the last output (a reference to a blob output is shared).
        if let Some(blob) = job.output_blob {
            t.blobs.open()?.add_ref(blob, &[][..], &mut fx.blobs)?;
        }
        if let Some(old) = h.output_blob.take() {
            t.blobs.open()?.release(old, &mut fx.blobs)?;
        }
        h.output_blob = job.output_blob;
        h.output = job.output.clone();
        h.output_content_type = job.output_content_type.clone();
        h.error = job.error.as_ref().map(|e| {
            format!(
                "stage {} ({}) ended {}: {e}",
                id,
                job.function,
                job.status.as_str()
            )
        });
        h.finished_at = job.finished_at;
        self.schedule_callback(head, &mut h, t)?;
        t.put_job(head, &h)?;
        fx.terminal.push(head);
        Ok(())
    }
}

/// The job of pipeline stage `function` after job `id` (`job`, succeeded) of the chain headed
/// by `head`: its output goes on as the input (a large one as the same blob, not a copy).
pub(crate) fn next_stage(id: JobId, job: &Job, function: String, head: JobId) -> NewJob {
    NewJob {
        function,
        content_type: job.output_content_type.clone(),
        input: job.output.clone().unwrap_or_default().into(),
        correlation_id: Some(job.correlation_id.clone()),
        idempotency: None,
        priority: job.priority,
        not_before: None,
        ordering_key: None,
        event: None,
        parent: Some(Parent::Job(id.0)),
        pipeline: Some(Pipeline::Stage { head: head.0 }),
        input_blob: job.output_blob,
        callback: None,
        hops: job.hops + 1,
        trace_parent: Some(span_number(&attempt_span(id, job.attempts))),
        // The next function's rule, if it has one, finds the stage's key.
        concurrency_key: None,
        debounce_key: None,
    }
}

/// What job `id` (`job`) emitted with its success, as requests: events to publish and jobs to
/// enqueue, all carrying the job's correlation id and the job as their parent, one hop further
/// from the request, their spans under the attempt's (`job.attempts`, the one that succeeded). An emitted event's CloudEvents `id` is `{job id}-{n}`: stable, so a
/// consumer can tell copies apart from repeats.
pub(crate) fn emitted_requests(
    id: JobId,
    job: &Job,
    emitted: Vec<Emission>,
    now: u64,
) -> (Vec<NewEvent>, Vec<NewJob>) {
    let mut events = Vec::new();
    let mut jobs = Vec::new();
    for (n, e) in emitted.into_iter().enumerate() {
        match e {
            Emission::Publish {
                topic,
                event_type,
                data,
                content_type,
            } => events.push(NewEvent {
                event: CloudEvent {
                    attributes: EventAttributes {
                        topic,
                        id: format!("{id}-{n}"),
                        source: format!("/v1/functions/{}", job.function),
                        event_type,
                        subject: None,
                        time: Some(rfc3339(now)),
                        dataschema: None,
                        extensions: Vec::new(),
                    },
                    content_type,
                    data: data.into(),
                },
                correlation_id: Some(job.correlation_id.clone()),
                priority: job.priority,
                parent: Some(Parent::Job(id.0)),
                blob: None,
                callback: None,
                hops: job.hops + 1,
                trace_parent: Some(span_number(&emit_span(id, job.attempts, n as u32))),
            }),
            Emission::Enqueue {
                function,
                data,
                content_type,
                priority,
                delay_ms,
            } => jobs.push(NewJob {
                function,
                content_type,
                input: data.into(),
                correlation_id: Some(job.correlation_id.clone()),
                idempotency: None,
                priority,
                not_before: delay_ms.map(|d| now + d),
                ordering_key: None,
                event: None,
                parent: Some(Parent::Job(id.0)),
                pipeline: None,
                input_blob: None,
                callback: None,
                hops: job.hops + 1,
                trace_parent: Some(span_number(&attempt_span(id, job.attempts))),
                concurrency_key: None,
                debounce_key: None,
            }),
        }
    }
    (events, jobs)
}

/// What a success's emissions would queue (see [`Writer::emitted_cost`]).
#[derive(Default, Debug)]
pub(crate) struct EmittedCost {
    /// Jobs per target function that count against its `max_queued`.
    pub(crate) targets: std::collections::BTreeMap<String, u64>,
    /// Every job caused, topic deliveries included.
    pub(crate) jobs: u64,
    /// Their input bytes.
    pub(crate) bytes: u64,
}
