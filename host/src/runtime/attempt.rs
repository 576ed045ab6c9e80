//! Running one attempt: a fresh sandbox with the function's limits, the event handed to the
//! handler, and whatever happens (a result, an error, a trap, a timeout, memory refused)
//! turned into the attempt's report.

use super::*;

impl Runtime {
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
        let log = LogSink::new(self.max_log_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(log.clone())
            .stderr(log.clone())
            .build();
        let limits = MemoryLimit::new(settings.memory_mb);
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
        let mut store = wasmtime::Store::new(
            &self.engine,
            Sandbox {
                wasi,
                table: Default::default(),
                limits,
                log: log.clone(),
                emitted: Default::default(),
                blobs,
                readable: job.input_blob.map(|b| b.digest),
                output: OutputSink::new(
                    self.spool.clone(),
                    self.claim_check_bytes,
                    self.max_output_bytes,
                ),
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                config: f.variables.clone(),
                kv: kv::KvAttempt::new(state, job.function.clone()),
                outbound,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let event = match &job.event {
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
        };
        let call = async {
            let handler = match f.pre.instantiate_async(&mut store).await {
                Ok(h) => h,
                Err(e) => {
                    return Err((
                        FailureKind::Instantiate,
                        format!("cannot start the sandbox: {e:#}"),
                    ));
                }
            };
            handler
                .call_handle(&mut store, &event)
                .await
                .map_err(|e| (FailureKind::Trap, describe_trap(&e)))
        };
        let outcome = match tokio::time::timeout(timeout, call).await {
            Err(_) => Outcome::Failed {
                kind: FailureKind::Timeout,
                message: format!("timed out after {} ms", settings.timeout_ms),
            },
            Ok(Err((kind, message))) => Outcome::Failed { kind, message },
            Ok(Ok(Ok(response))) => {
                // Streamed output first, then the response's data.
                let sink = std::mem::replace(
                    &mut store.data_mut().output,
                    OutputSink::new(self.spool.clone(), 0, 0),
                );
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
            Ok(Ok(Err(HandlerError::Retryable(message)))) => Outcome::Failed {
                kind: FailureKind::Retryable,
                message,
            },
            Ok(Ok(Err(HandlerError::Permanent(message)))) => Outcome::Failed {
                kind: FailureKind::Permanent,
                message,
            },
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
        let outcome = match (outcome, refused) {
            // Whatever the guest did after its memory could not grow, that is why it failed.
            (Outcome::Failed { kind, .. }, Some(desired)) if kind != FailureKind::Timeout => {
                Outcome::Failed {
                    kind: FailureKind::Trap,
                    message: format!(
                        "memory limit of {} MiB exceeded: the handler tried to grow its memories and tables to {:.1} MiB in all (raise memory_mb in the manifest, or use less memory)",
                        settings.memory_mb,
                        desired as f64 / (1 << 20) as f64
                    ),
                }
            }
            (outcome, _) => outcome,
        };
        let outcome = match outcome {
            Outcome::Failed {
                kind: FailureKind::Trap,
                message,
            } => match panic_message(&log) {
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
        };
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
