//! One attempt of a leased job: run it in its sandbox, make its start visible (with a store
//! lease, renewed while it runs) if it outlasts a moment, and report how it ended.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Inner, State, release_hold};
use crate::job::{AttemptReport, FailureKind, Outcome, QueuedJob, now_ms};
use crate::runtime::LoadedFunction;

/// How long an attempt runs before its start is committed (and `running` shows). Shorter
/// attempts skip that commit: their start is recorded with their end.
const START_VISIBLE_AFTER: Duration = Duration::from_millis(20);

/// How far past its `timeout_ms` the scheduler's own backstop lets an attempt run.
const LEASE_GRACE: Duration = Duration::from_secs(2);
/// How long the store's lease on a running attempt lasts without renewal; the scheduler renews
/// it every third of that while the attempt runs. A lease that runs out (this host died, hung,
/// or lost touch with the store) fails the attempt in the store and hands the job out again.
const STORE_LEASE: Duration = Duration::from_secs(30);

impl Inner {
    /// Runs the next attempt of each of `jobs` (one job, or a batch handed to `handle-batch`
    /// together) and reports each end to the store (nothing, if cancelled). Returns, per job,
    /// whether the worker still holds it (it lets go once the attempt is over, before its
    /// finish is committed).
    pub(super) async fn attempt(
        &self,
        code: &LoadedFunction,
        jobs: &[QueuedJob],
        cancel: &CancellationToken,
    ) -> Vec<bool> {
        let attempts: Vec<u32> = jobs.iter().map(|j| j.attempts + 1).collect();
        let started_at = now_ms();
        let timeout = Duration::from_millis(code.record.settings.timeout_ms);
        let batched = code.takes_batches() && code.record.settings.batch_max_size.is_some();
        // The runtime stops the attempt at its timeout; the lease is the backstop should
        // it not (a host call that never returns): the attempt is dropped, its slot freed,
        // and the job handed out again as a failed attempt. A batch that fails as a whole
        // runs its jobs again one by one: each gets its own timeout.
        let calls = if batched && jobs.len() > 1 { jobs.len() as u32 + 1 } else { 1 };
        let lease = timeout * calls + LEASE_GRACE;
        let lease_until = started_at + (START_VISIBLE_AFTER + STORE_LEASE).as_millis() as u64;
        let blobs = self.blobs.clone();
        let state = self.kv.clone();
        let running = async {
            if !batched {
                return vec![self.runtime.run(code, &jobs[0], attempts[0], blobs, state).await];
            }
            let all: Vec<&QueuedJob> = jobs.iter().collect();
            match self
                .runtime
                .run_batch(code, &all, &attempts, blobs.clone(), state.clone())
                .await
            {
                Ok(reports) => reports,
                Err(reports) if jobs.len() == 1 => reports,
                // One event may have broken the whole call (a trap, a timeout): each runs
                // alone, so only the one that breaks it fails (one tenant's event never costs
                // another's an attempt).
                Err(_) => {
                    let mut reports = Vec::with_capacity(jobs.len());
                    for (job, attempt) in all.iter().zip(&attempts) {
                        let alone = self
                            .runtime
                            .run_batch(code, &[*job], &[*attempt], blobs.clone(), state.clone())
                            .await;
                        reports.extend(alone.unwrap_or_else(|failed| failed));
                    }
                    reports
                }
            }
        };
        let run = tokio::time::timeout(lease, running);
        tokio::pin!(run);
        let expired = |at: u64| AttemptReport {
            outcome: Outcome::Failed {
                kind: FailureKind::Timeout,
                message: format!(
                    "lease expired after {} ms: the attempt was cancelled and the job handed out again",
                    lease.as_millis()
                ),
            },
            log: String::new(),
            started_at,
            finished_at: at,
            version: code.record.version,
            emitted: Vec::new(),
            then: None,
            outbound: Vec::new(),
            kv: None,
        };
        // Short attempts go from queued to terminal in one commit; `running` is recorded
        // (and visible) only for attempts still running after START_VISIBLE_AFTER.
        let reports = tokio::select! {
            reports = tokio::time::timeout(START_VISIBLE_AFTER, &mut run) => match reports {
                Ok(reports) => Some(reports),
                Err(_) => {
                    for (job, attempt) in jobs.iter().zip(&attempts) {
                        self.store.start(
                            job.id,
                            *attempt,
                            started_at,
                            lease_until,
                            code.record.version,
                        );
                    }
                    // Renewed while the attempt runs; the store fails it if this stops.
                    let renewing = async {
                        let mut every = tokio::time::interval(STORE_LEASE / 3);
                        every.tick().await;
                        loop {
                            every.tick().await;
                            let until = now_ms() + STORE_LEASE.as_millis() as u64;
                            for (job, attempt) in jobs.iter().zip(&attempts) {
                                self.store.renew(job.id, *attempt, until);
                            }
                        }
                    };
                    tokio::select! {
                        reports = &mut run => Some(reports),
                        _ = renewing => None,
                        _ = cancel.cancelled() => None,
                        _ = self.abort_all.cancelled() => None,
                    }
                }
            },
            _ = cancel.cancelled() => None,
            _ = self.abort_all.cancelled() => None,
        };
        let Some(reports) = reports else {
            return vec![true; jobs.len()];
        };
        let reports =
            reports.unwrap_or_else(|_| jobs.iter().map(|_| expired(now_ms())).collect());
        {
            let mut state = self.state.lock();
            judge(&mut state, &jobs[0].function, &reports);
        }
        for ((job, attempt), report) in jobs.iter().zip(&attempts).zip(reports) {
            // The attempt is over: from here a cancel may win (the finish is then fenced
            // out), but a job whose finish is committed is never shown as held.
            release_hold(&mut self.state.lock().running, job.id);
            self.trace_attempt(code, job, *attempt, &report);
            let report = self.store.settle_kv(job.id, *attempt, report).await;
            self.store
                .finish(job.id, *attempt, report, code.record.settings.retry);
        }
        vec![false; jobs.len()]
    }
}

impl Inner {
    /// Records the spans of an attempt that ended: its job's (with the first attempt), its own,
    /// and its outbound requests' (see `crate::trace`).
    fn trace_attempt(
        &self,
        code: &LoadedFunction,
        job: &QueuedJob,
        attempt: u32,
        report: &AttemptReport,
    ) {
        use crate::trace::{Span, kind, span_id};
        use serde_json::json;
        if !self.tracer.is_on() {
            return;
        }
        let trace = crate::trace::trace_id_of(&job.correlation_id);
        let job_span = span_id("job", job.id, 0);
        if attempt == 1 {
            let parent = match (job.trace_parent, job.parent) {
                (Some(span), _) => Some(crate::trace::span_of_number(span)),
                (None, Some(crate::job::Parent::Job(p))) => {
                    Some(span_id("job", crate::job::JobId(p), 0))
                }
                (None, Some(crate::job::Parent::Event(e))) => {
                    Some(span_id("event", crate::job::JobId(e), 0))
                }
                (None, None) => None,
            };
            self.tracer.record(Span {
                trace,
                id: job_span,
                parent,
                name: format!("job {}", job.function),
                kind: kind::PRODUCER,
                start_ms: job.created_at,
                end_ms: job.created_at,
                attributes: vec![
                    ("sluice.job.id", json!(job.id.to_string())),
                    ("sluice.function", json!(job.function)),
                    ("sluice.correlation_id", json!(job.correlation_id)),
                ],
                error: None,
            });
        }
        let attempt_span = crate::trace::attempt_span(job.id, attempt);
        let error = match &report.outcome {
            Outcome::Failed { message, .. } => Some(message.clone()),
            Outcome::Succeeded { .. } => None,
        };
        self.tracer.record(Span {
            trace,
            id: attempt_span,
            parent: Some(job_span),
            name: job.function.clone(),
            kind: kind::CONSUMER,
            start_ms: report.started_at,
            end_ms: report.finished_at,
            attributes: vec![
                ("sluice.job.id", json!(job.id.to_string())),
                ("sluice.function", json!(job.function)),
                ("sluice.attempt", json!(attempt)),
                ("sluice.version", json!(code.record.version)),
            ],
            error,
        });
        // Events emitted with a success (their deliveries' spans hang under these).
        if matches!(report.outcome, Outcome::Succeeded { .. }) {
            let published = report.emitted.iter().enumerate().filter_map(|(n, e)| match e {
                crate::job::Emission::Publish {
                    topic, event_type, ..
                } => Some((n, topic, event_type)),
                crate::job::Emission::Enqueue { .. } => None,
            });
            for (n, topic, event_type) in published {
                self.tracer.record(Span {
                    trace,
                    id: crate::trace::emit_span(job.id, attempt, n as u32),
                    parent: Some(attempt_span),
                    name: format!("publish {topic}"),
                    kind: kind::PRODUCER,
                    start_ms: report.finished_at,
                    end_ms: report.finished_at,
                    attributes: vec![
                        ("sluice.topic", json!(topic)),
                        ("cloudevents.event_id", json!(format!("{}-{n}", job.id))),
                        ("cloudevents.event_type", json!(event_type)),
                    ],
                    error: None,
                });
            }
        }
        for (n, call) in report
            .outbound
            .iter()
            .filter(|c| c.attempt == attempt)
            .enumerate()
        {
            self.tracer.record(Span {
                trace,
                id: crate::trace::call_span(job.id, attempt, n as u32 + 1),
                parent: Some(attempt_span),
                name: call.method.clone(),
                kind: kind::CLIENT,
                start_ms: call.at,
                end_ms: call.at + u64::from(call.duration_ms),
                attributes: vec![
                    ("http.request.method", json!(call.method)),
                    ("url.full", json!(format!("{}{}", call.origin, call.path))),
                    ("http.response.status_code", json!(call.status)),
                ],
                error: call.error.clone(),
            });
        }
    }
}

/// Tells the function's circuit breaker how an attempt (or a batch's) ended: once per sandbox
/// call, however many jobs it held. A success closes the breaker; a failure counts, unless it
/// is permanent (the handler refusing its input says nothing about the function's health). A
/// batch counts as failed only when every job in it failed so.
fn judge(state: &mut State, function: &str, reports: &[AttemptReport]) {
    let succeeded = reports
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Succeeded { .. }));
    let failed = reports.iter().all(|r| {
        matches!(&r.outcome, Outcome::Failed { kind, .. } if *kind != FailureKind::Permanent)
    });
    let failed = match (succeeded, failed) {
        (true, _) => false,
        (false, true) => true,
        (false, false) => return,
    };
    let Some(queue) = state.functions.get_mut(function) else {
        return;
    };
    let now = tokio::time::Instant::now();
    let was_open = queue.breaker.is_open();
    // The outcome is recorded: no probe is left to drop.
    queue.probe = None;
    if was_open && !failed {
        queue.respawn = true;
    }
    if let Some(until) = queue.breaker.record(failed, now) {
        let seconds = until.saturating_duration_since(now).as_secs_f64();
        tracing::warn!(
            function = %function,
            seconds,
            "circuit breaker open: attempts failed in a row; nothing starts until a probe after the cool-down"
        );
    }
}
