//! Running one attempt: a fresh sandbox with the function's limits, the event handed to the
//! handler, and whatever happens (a result, an error, a trap, a timeout, memory refused)
//! turned into the attempt's report.

use super::*;
use super::sandbox::Staged;

impl Runtime {
    /// A fresh sandbox for an attempt of `jobs` (one job, or a batch): the function's limits,
    /// a log, outbound hooks in the first job's trace, the jobs' input blobs readable. In a
    /// batch, emitting and key-value writes are refused.
    fn sandbox(
        &self,
        f: &LoadedFunction,
        jobs: &[&QueuedJob],
        attempt: u32,
        blobs: Arc<dyn BlobSource>,
        state: Arc<dyn kv::KvSource>,
    ) -> (wasmtime::Store<Sandbox>, LogSink) {
        const IN_A_BATCH: &str = "not available in a batch handler: each event's effects would be ambiguous (deploy without `batch` to emit or write state)";
        let job = jobs[0];
        let settings = f.record.settings;
        let log = LogSink::new(self.max_log_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(log.clone())
            .stderr(log.clone())
            .build();
        let timeout = Duration::from_millis(settings.timeout_ms);
        let outbound = outbound::OutboundHooks::new(
            self.egress.clone(),
            f.allowed_hosts.clone(),
            job.id,
            attempt,
            crate::trace::trace_id_of(&job.correlation_id),
            std::time::Instant::now() + timeout,
            log.clone(),
        );
        let batch = jobs.len() > 1;
        let mut store = wasmtime::Store::new(
            &self.engine,
            Sandbox {
                wasi,
                table: Default::default(),
                limits: MemoryLimit::new(settings.memory_mb),
                log: log.clone(),
                emitted: if batch {
                    Staged::refusing(IN_A_BATCH)
                } else {
                    Staged::default()
                },
                blobs,
                readable: jobs.iter().filter_map(|j| j.input_blob.map(|b| b.digest)).collect(),
                // A batch returns each output in its result: nothing may be streamed.
                output: OutputSink::new(
                    self.spool.clone(),
                    self.claim_check_bytes,
                    if batch { 0 } else { self.max_output_bytes },
                ),
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                config: f.variables.clone(),
                kv: if batch {
                    kv::KvAttempt::read_only(state, job.function.clone(), IN_A_BATCH)
                } else {
                    kv::KvAttempt::new(state, job.function.clone())
                },
                outbound,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        (store, log)
    }

    /// Runs one attempt of `job` in a fresh sandbox, within the function's time and memory limits.
    /// Never fails: every problem becomes a failed [`Outcome`].
    pub async fn run(
        &self,
        f: &LoadedFunction,
        job: &QueuedJob,
        attempt: u32,
        blobs: Arc<dyn BlobSource>,
        state: Arc<dyn kv::KvSource>,
    ) -> AttemptReport {
        let started_at = now_ms();
        let settings = f.record.settings;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let (mut store, log) = self.sandbox(f, &[job], attempt, blobs, state);
        let event = event_of(job, attempt);
        let call = async {
            let handler = f.pre.instantiate(&mut store).await?;
            handler
                .handle(&mut store, &event)
                .await
                .map_err(|e| (FailureKind::Trap, describe_trap(&e)))
        };
        let outcome = match tokio::time::timeout(timeout, call).await {
            Err(_) => timed_out(settings.timeout_ms),
            Ok(Err((kind, message))) => Outcome::Failed { kind, message },
            Ok(Ok(result)) => {
                // Streamed output first, then the response's data.
                let sink = std::mem::replace(
                    &mut store.data_mut().output,
                    OutputSink::new(self.spool.clone(), 0, 0),
                );
                outcome_of(result, sink)
            }
        };
        let refused = store.data().limits.refused;
        let emitted = std::mem::take(&mut store.data_mut().emitted.items);
        let outbound = store.data().outbound.calls();
        let kv = match outcome {
            Outcome::Succeeded { .. } => store.data_mut().kv.changes(),
            Outcome::Failed { .. } => None,
        };
        drop(store);
        let log = log.text();
        let outcome = explain(outcome, refused, &log, settings.memory_mb);
        // Only a success emits anything.
        let emitted = match outcome {
            Outcome::Succeeded { .. } => emitted,
            Outcome::Failed { .. } => Vec::new(),
        };
        AttemptReport {
            outcome,
            log,
            started_at,
            finished_at: now_ms(),
            version: f.record.version,
            emitted,
            then: f.record.then.clone(),
            outbound,
            kv,
        }
    }

    /// Runs one attempt of each of `jobs` (`attempts[i]` is job `i`'s attempt number) in one
    /// fresh sandbox, handed to the handler's `handle-batch` at once: one report per job, in
    /// order, each with its own result (`Ok`). A trap, a timeout or a wrong number of results
    /// fails the call as a whole (`Err`: the same failure for every job; the caller may run
    /// the jobs alone to find which one broke it). The batch's log and outbound calls go to
    /// each job.
    pub async fn run_batch(
        &self,
        f: &LoadedFunction,
        jobs: &[&QueuedJob],
        attempts: &[u32],
        blobs: Arc<dyn BlobSource>,
        state: Arc<dyn kv::KvSource>,
    ) -> Result<Vec<AttemptReport>, Vec<AttemptReport>> {
        let started_at = now_ms();
        let settings = f.record.settings;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let (mut store, log) = self.sandbox(f, jobs, attempts[0], blobs, state);
        let events: Vec<Event> = jobs
            .iter()
            .zip(attempts)
            .map(|(job, attempt)| event_of(job, *attempt))
            .collect();
        let call = async {
            let handler = f.pre.instantiate(&mut store).await?;
            handler
                .handle_batch(&mut store, &events)
                .await
                .map_err(|e| (FailureKind::Trap, describe_trap(&e)))
        };
        let results = match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(timed_out(settings.timeout_ms)),
            Ok(Err((kind, message))) => Err(Outcome::Failed { kind, message }),
            Ok(Ok(results)) if results.len() != jobs.len() => Err(Outcome::Failed {
                kind: FailureKind::Retryable,
                message: format!(
                    "handle-batch returned {} results for {} events: return one per event, in order",
                    results.len(),
                    jobs.len()
                ),
            }),
            Ok(Ok(results)) => Ok(results),
        };
        let refused = store.data().limits.refused;
        let outbound = store.data().outbound.calls();
        drop(store);
        let log = log.text();
        let finished_at = now_ms();
        let whole = results.is_err();
        let outcomes: Vec<Outcome> = match results {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    let sink = OutputSink::new(
                        self.spool.clone(),
                        self.claim_check_bytes,
                        self.max_output_bytes,
                    );
                    outcome_of(r, sink)
                })
                .collect(),
            Err(failed) => {
                let failed = explain(failed, refused, &log, settings.memory_mb);
                jobs.iter().map(|_| failed.clone()).collect()
            }
        };
        let reports = outcomes
            .into_iter()
            .map(|outcome| AttemptReport {
                outcome,
                log: log.clone(),
                started_at,
                finished_at,
                version: f.record.version,
                emitted: Vec::new(),
                then: f.record.then.clone(),
                outbound: outbound.clone(),
                kv: None,
            })
            .collect();
        if whole { Err(reports) } else { Ok(reports) }
    }
}

/// The event a job's attempt hands the handler.
fn event_of(job: &QueuedJob, attempt: u32) -> Event {
    match &job.event {
        // A topic delivery: the handler sees the event as published.
        Some(e) => Event {
            id: e.id.clone(),
            source: e.source.clone(),
            type_: e.event_type.clone(),
            subject: e.subject.clone(),
            time: e.time.clone(),
            content_type: job.content_type.clone(),
            dataschema: e.dataschema.clone(),
            extensions: e.extensions.clone(),
            attempt,
            correlation_id: job.correlation_id.clone(),
            data: payload(job),
        },
        None => Event {
            id: job.id.to_string(),
            source: format!("/v1/functions/{}/jobs", job.function),
            type_: "sluice.job".into(),
            subject: None,
            time: Some(crate::job::rfc3339(job.created_at)),
            content_type: job.content_type.clone(),
            dataschema: None,
            extensions: Vec::new(),
            attempt,
            correlation_id: job.correlation_id.clone(),
            data: payload(job),
        },
    }
}

fn timed_out(timeout_ms: u64) -> Outcome {
    Outcome::Failed {
        kind: FailureKind::Timeout,
        message: format!("timed out after {timeout_ms} ms"),
    }
}

/// The outcome of the handler's result; a single attempt's streamed output (`sink`) goes
/// before the response's data.
fn outcome_of(result: Result<bindings::Response, HandlerError>, sink: OutputSink) -> Outcome {
    match result {
        Ok(response) => {
            match sink.finish(response.data) {
                Ok(output) => Outcome::Succeeded {
                    output,
                    content_type: response.content_type,
                },
                Err(message) => Outcome::Failed {
                    kind: FailureKind::Retryable,
                    message,
                },
            }
        }
        Err(HandlerError::Retryable(message)) => Outcome::Failed {
            kind: FailureKind::Retryable,
            message,
        },
        Err(HandlerError::Permanent(message)) => Outcome::Failed {
            kind: FailureKind::Permanent,
            message,
        },
    }
}

/// A failure explained: memory refused is why a trap happened; a guest panic's message is
/// added to its trap.
fn explain(outcome: Outcome, refused: Option<usize>, log: &str, memory_mb: u32) -> Outcome {
    let outcome = match (outcome, refused) {
        // Whatever the guest did after its memory could not grow, that is why it failed.
        (Outcome::Failed { kind, .. }, Some(desired)) if kind != FailureKind::Timeout => {
            Outcome::Failed {
                kind: FailureKind::Trap,
                message: format!(
                    "memory limit of {memory_mb} MiB exceeded: the handler tried to grow its memories and tables to {:.1} MiB in all (raise memory_mb in the manifest, or use less memory)",
                    desired as f64 / (1 << 20) as f64
                ),
            }
        }
        (outcome, _) => outcome,
    };
    match outcome {
        Outcome::Failed {
            kind: FailureKind::Trap,
            message,
        } => match panic_message(log) {
            Some(panic) => Outcome::Failed {
                kind: FailureKind::Trap,
                message: format!("{message}: {panic}"),
            },
            None => Outcome::Failed {
                kind: FailureKind::Trap,
                message,
            },
        },
        other => other,
    }
}

/// The event's data as the handler gets it: inline, or a reference to read in chunks.
fn payload(job: &QueuedJob) -> Payload {
    match job.input_blob {
        Some(blob) => Payload::Blob(RawBlobRef {
            digest: blob.hex(),
            size: blob.size,
        }),
        None => Payload::Inline(job.input.to_vec()),
    }
}

/// A one-line description of why a call trapped: the trap kind when wasmtime names one.
fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "handler trapped: stack overflow (call stack exhausted; too deep a recursion?)".into()
        }
        Some(trap) => format!("handler trapped: {trap}"),
        None => format!(
            "handler failed: {}",
            e.chain().last().map(|c| c.to_string()).unwrap_or_default()
        ),
    }
}

/// The guest's panic message, if its stderr holds one (Rust prints it before aborting).
fn panic_message(log: &str) -> Option<String> {
    let start = log.find("panicked at ")?;
    let rest = &log[start..];
    let mut lines = rest.lines();
    let at = lines.next()?;
    let message = lines.next().unwrap_or("").trim();
    Some(
        format!("{} {}", at.trim_end_matches(':'), message)
            .trim()
            .to_string(),
    )
}
