//! The store conformance suite: what any backend behind the store's traits
//! ([`sluice::store::Backend`]) must do, checked through the traits alone. The redb store runs
//! it in `tests/it/store_conformance.rs`; another backend runs the same checks with its own
//! [`Open`] (see [`conformance_suite!`](crate::conformance_suite)).
//!
//! The checks play the scheduler's part: they lease ready jobs, start and finish attempts, and
//! read back what is committed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice::job::{
    AttemptReport, DEFAULT_PRIORITY, Emission, FailureKind, JobId, JobStatus, KeyPage, KvChanges, Outcome,
    now_ms,
};
use sluice::manifest::{RetryPolicy, Settings, Subscription};
use sluice::output::Output;
use sluice::store::{
    Backend, CancelError, DeadLetterSelection, DeleteError, DeployBase, FunctionRecord,
    IdempotencyKey, JobQuery, KvVerdict, NewEvent, NewJob, StoreError, SubmitError, Submitted,
};

/// Opens (or reopens) a backend on a directory.
pub type Open = fn(&Path) -> sluice::store::Pending<'static, Arc<dyn Backend>>;

/// Generates one test per check of the suite for a backend's [`Open`].
#[macro_export]
macro_rules! conformance_suite {
    ($open:expr) => {
        $crate::conformance_suite!(@checks $open;
            submits_are_durable_across_a_reopen,
            an_unknown_function_is_refused_and_nothing_is_kept,
            idempotency_keys_answer_the_same_job_or_a_conflict,
            a_batch_is_accepted_whole_or_not_at_all,
            ready_jobs_are_leased_up_to_what_is_asked_and_finish,
            stale_attempts_are_fenced,
            an_expired_lease_hands_the_job_out_again,
            a_renewed_lease_keeps_its_attempt,
            failures_retry_then_dead_letter_redrive_and_purge,
            cancel_takes_waiting_jobs_only,
            a_publish_makes_one_delivery_per_matching_subscriber,
            a_success_keeps_what_it_emitted_and_a_failure_nothing,
            deliveries_past_a_full_queue_all_run,
            a_waiting_job_does_not_hold_a_slot,
            key_value_writes_bump_versions,
            jobs_are_listed_newest_first_in_pages,
            the_catalog_keeps_versions_pauses_and_deletes,
            secrets_and_settings_are_kept,
        );
    };
    // A backend that does only part of it yet runs the checks it passes.
    ($open:expr; only: $($check:ident),* $(,)?) => {
        $crate::conformance_suite!(@checks $open; $($check),*);
    };
    (@checks $open:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let dir = tempfile::tempdir().unwrap();
                $crate::conformance::$check($open, dir.path()).await;
            }
        )*
    };
}

/// A function record as a deploy would make it (the store does not look at the code).
pub fn record(name: &str, settings: Settings, subscriptions: Vec<Subscription>) -> FunctionRecord {
    FunctionRecord {
        name: name.into(),
        settings,
        digest: format!("{name}-digest"),
        size: 4,
        deployed_at: now_ms(),
        version: 0,
        change: String::new(),
        paused: false,
        subscriptions,
        then: None,
        concurrency_key: None,
        schedules: Vec::new(),
        key_weights: Default::default(),
        allowed_outbound_hosts: Vec::new(),
        config: Default::default(),
        changes: Vec::new(),
    }
}

async fn deploy(b: &dyn Backend, name: &str, settings: Settings) -> FunctionRecord {
    b.deploy(
        record(name, settings, Vec::new()),
        Bytes::from_static(b"wasm"),
        format!("{name}-artifact"),
        vec![1, 2, 3],
        DeployBase::Anything,
    )
    .await
    .unwrap()
}

/// A plain submit of `input` to `function`.
pub fn new_job(function: &str, input: &'static [u8]) -> NewJob {
    NewJob {
        function: function.into(),
        content_type: Some("text/plain".into()),
        input: Bytes::from_static(input),
        correlation_id: None,
        idempotency: None,
        priority: DEFAULT_PRIORITY,
        not_before: None,
        ordering_key: None,
        event: None,
        parent: None,
        pipeline: None,
        input_blob: None,
        callback: None,
        hops: 0,
        trace_parent: None,
        concurrency_key: None,
        debounce_key: None,
    }
}

fn report(outcome: Outcome) -> AttemptReport {
    AttemptReport {
        outcome,
        log: String::new(),
        started_at: now_ms(),
        finished_at: now_ms(),
        version: 1,
        emitted: Vec::new(),
        then: None,
        outbound: Vec::new(),
        kv: None,
    }
}

fn success(output: &[u8]) -> AttemptReport {
    report(Outcome::Succeeded {
        output: Output::bytes(output.to_vec()),
        content_type: Some("text/plain".into()),
    })
}

fn failure(kind: FailureKind) -> AttemptReport {
    report(Outcome::Failed {
        kind,
        message: "failed on purpose".into(),
    })
}

/// Leases `n` jobs of `function` (waits up to 10 s for them).
async fn take(b: &dyn Backend, function: &str, n: usize) -> Vec<JobId> {
    let mut got = Vec::new();
    while got.len() < n {
        let jobs = tokio::time::timeout(Duration::from_secs(10), b.lease(function, n - got.len()))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} ready jobs leased", got.len()))
            .expect("leasing failed");
        assert!(
            jobs.len() <= n - got.len(),
            "a lease brought more than asked for"
        );
        for job in jobs {
            assert_eq!(job.function, function);
            got.push(job.id);
        }
    }
    got
}

/// True if a lease of `function` is answered within `wait` (the lease is dropped unanswered
/// otherwise, which must give back nothing it holds).
async fn leased_within(b: &dyn Backend, function: &str, wait: Duration) -> bool {
    tokio::time::timeout(wait, b.lease(function, 1))
        .await
        .is_ok()
}

/// Waits until the job has `status` (fire-and-forget writes commit shortly).
async fn until(b: &dyn Backend, id: JobId, status: JobStatus) -> sluice::job::Job {
    until_job(b, id, &format!("{status:?}"), |job| job.status == status).await
}

/// Waits until the job passes `test` (named `what` in the failure).
async fn until_job(
    b: &dyn Backend,
    id: JobId,
    what: &str,
    test: impl Fn(&sluice::job::Job) -> bool,
) -> sluice::job::Job {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let job = b.job(id).await.unwrap().expect("the job exists");
        if test(&job) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} is not {what}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `function` counts `n` jobs in `status` (at once in one store; a moment later
/// where the counts are kept apart from the jobs' records). A count that passes `n` never
/// comes back to it in these checks: waiting does not hide an overcount.
async fn until_count(b: &dyn Backend, function: &str, status: JobStatus, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = b.counts(function).await.unwrap().status(status);
        if got == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{function} counts {got} {status:?} jobs, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn submits_are_durable_across_a_reopen(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    let id = b.submit(new_job("f", b"kept")).await.unwrap().id();
    let job = b.job(id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    until_count(&*b, "f", JobStatus::Queued, 1).await;
    b.shutdown().await;
    drop(b);
    let b = open(dir).await;
    let job = b.job(id).await.unwrap().expect("accepted means durable");
    assert_eq!(
        (job.status, job.input.as_slice()),
        (JobStatus::Queued, &b"kept"[..])
    );
    assert_eq!(b.function("f").await.unwrap().unwrap().version, 1);
    b.shutdown().await;
}

pub async fn an_unknown_function_is_refused_and_nothing_is_kept(open: Open, dir: &Path) {
    let b = open(dir).await;
    match b.submit(new_job("nobody", b"x")).await {
        Err(SubmitError::FunctionNotFound(name)) => assert_eq!(name, "nobody"),
        other => panic!("{other:?}"),
    }
    let page = b
        .jobs(&JobQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.is_empty());
    b.shutdown().await;
}

pub async fn idempotency_keys_answer_the_same_job_or_a_conflict(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    let keyed = |hash: u8| NewJob {
        idempotency: Some(IdempotencyKey {
            key: "k".into(),
            request_hash: [hash; 32],
        }),
        ..new_job("f", b"x")
    };
    let first = b.submit(keyed(1)).await.unwrap();
    assert!(matches!(first, Submitted::New(_)));
    let again = b.submit(keyed(1)).await.unwrap();
    assert_eq!(again, Submitted::Existing(first.id()));
    assert!(matches!(
        b.submit(keyed(2)).await,
        Err(SubmitError::IdempotencyConflict(_))
    ));
    until_count(&*b, "f", JobStatus::Queued, 1).await;
    b.shutdown().await;
}

pub async fn a_batch_is_accepted_whole_or_not_at_all(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(
        &*b,
        "f",
        Settings {
            max_queued: 2,
            ..Settings::DEFAULT
        },
    )
    .await;
    let refused = b
        .submit_batch(vec![
            new_job("f", b"1"),
            new_job("f", b"2"),
            new_job("f", b"3"),
        ])
        .await;
    assert!(
        matches!(refused, Err(SubmitError::QueueFull { .. })),
        "{refused:?}"
    );
    assert_eq!(
        b.counts("f").await.unwrap().status(JobStatus::Queued),
        0,
        "none of it kept"
    );
    let ids = b
        .submit_batch(vec![new_job("f", b"1"), new_job("f", b"2")])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    until_count(&*b, "f", JobStatus::Queued, 2).await;
    b.shutdown().await;
}

pub async fn ready_jobs_are_leased_up_to_what_is_asked_and_finish(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(b.submit(new_job("f", b"in")).await.unwrap().id());
    }
    // Up to what is asked (order holds per shard of a backend, not across them).
    let first = take(&*b, "f", 2).await;
    assert!(first.iter().all(|id| ids.contains(id)) && first[0] != first[1]);
    // The third is leased once, then nothing is left to lease; a lease dropped unanswered
    // takes nothing with it: a job submitted after is leased by the next ask.
    let third = take(&*b, "f", 1).await;
    assert!(ids.contains(&third[0]) && !first.contains(&third[0]));
    assert!(
        !leased_within(&*b, "f", Duration::from_millis(200)).await,
        "a leased job was handed out again"
    );
    let fourth = b.submit(new_job("f", b"in")).await.unwrap().id();
    assert_eq!(take(&*b, "f", 1).await, [fourth]);
    // A lease answered but dropped before its answer was read gives the job back.
    let fifth = b.submit(new_job("f", b"in")).await.unwrap().id();
    let mut unread = b.lease("f", 1);
    std::future::poll_fn(|cx| {
        let _ = unread.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(unread);
    assert_eq!(take(&*b, "f", 1).await, [fifth]);
    // Leases of another function wait for its own jobs.
    assert!(!leased_within(&*b, "g", Duration::from_millis(100)).await);
    for &id in &first {
        b.start(id, 1, now_ms(), now_ms() + 60_000, 1);
        b.finish(id, 1, success(b"out"), Settings::DEFAULT.retry);
    }
    let done = b
        .wait_terminal(first[0], Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.output.as_deref(), Some(&b"out"[..]));
    assert_eq!(done.history.len(), 1);
    until(&*b, first[1], JobStatus::Succeeded).await;
    until_count(&*b, "f", JobStatus::Succeeded, 2).await;
    b.shutdown().await;
}

pub async fn stale_attempts_are_fenced(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    let retry = RetryPolicy {
        max_attempts: 3,
        backoff_base_ms: 60_000,
        backoff_max_ms: 60_000,
    };
    let id = b.submit(new_job("f", b"in")).await.unwrap().id();
    take(&*b, "f", 1).await;
    b.start(id, 1, now_ms(), now_ms() + 10_000, 1);
    b.finish(id, 1, failure(FailureKind::Timeout), retry);
    let job = until(&*b, id, JobStatus::Delayed).await;
    assert_eq!(job.attempts, 1);
    // The stale attempt 1 reports success late; an attempt 2 that never started reports too.
    b.finish(id, 1, success(b"stale"), retry);
    b.finish(id, 2, success(b"stale"), retry);
    b.start(id, 1, now_ms(), now_ms(), 1);
    // A later write to the job commits after those (a job's writes apply in order).
    let cancelled = b.cancel(id).await.unwrap();
    assert_eq!(
        (
            cancelled.status,
            cancelled.attempts,
            cancelled.history.len()
        ),
        (JobStatus::Cancelled, 1, 1),
        "the stale reports changed nothing"
    );
    assert!(cancelled.output.is_none());
    // A cancelled job ignores the attempt that was under way.
    b.finish(id, 1, success(b"late"), retry);
    assert!(
        b.cancel(id).await.is_err(),
        "an ordered read-back: already cancelled"
    );
    let job = b.job(id).await.unwrap().unwrap();
    assert_eq!((job.status, job.output), (JobStatus::Cancelled, None));

    // A finished job ignores a duplicate report of its own attempt.
    let id = b.submit(new_job("f", b"in")).await.unwrap().id();
    take(&*b, "f", 1).await;
    b.start(id, 1, now_ms(), now_ms() + 10_000, 1);
    b.finish(id, 1, success(b"first"), retry);
    b.finish(id, 1, failure(FailureKind::Trap), retry);
    assert!(b.cancel(id).await.is_err());
    let job = b.job(id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Succeeded, 1));
    assert_eq!(job.output.as_deref(), Some(&b"first"[..]));
    assert!(b.job(JobId(u128::MAX)).await.unwrap().is_none());
    b.shutdown().await;
}

pub async fn an_expired_lease_hands_the_job_out_again(open: Open, dir: &Path) {
    let b = open(dir).await;
    let settings = Settings {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 10,
            backoff_max_ms: 10,
        },
        ..Settings::DEFAULT
    };
    deploy(&*b, "f", settings).await;
    let id = b.submit(new_job("f", b"in")).await.unwrap().id();
    take(&*b, "f", 1).await;
    // Attempt 1 starts with a short lease, then its host goes quiet: no renewal, no finish.
    let started = now_ms();
    b.start(id, 1, started, started + 300, 1);
    until(&*b, id, JobStatus::Running).await;
    let job = until_job(&*b, id, "failed by its lease", |j| j.history.len() == 1).await;
    assert!(
        job.history[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("lease expired")),
        "{job:?}"
    );
    assert!(now_ms() >= started + 300, "not before the lease ran out");
    // Handed out again; the stale attempt's late report is fenced out, and does not end the
    // hold of the attempt now under way: the job is not handed out a third time.
    assert_eq!(take(&*b, "f", 1).await, [id]);
    b.finish(id, 1, success(b"stale"), settings.retry);
    assert!(
        !leased_within(&*b, "f", Duration::from_millis(300)).await,
        "a held job was handed out again"
    );
    b.start(id, 2, now_ms(), now_ms() + 60_000, 1);
    b.finish(id, 2, success(b"fresh"), settings.retry);
    let job = until(&*b, id, JobStatus::Succeeded).await;
    assert_eq!(job.output.as_deref(), Some(&b"fresh"[..]));
    assert_eq!((job.attempts, job.history.len()), (2, 2));
    b.shutdown().await;
}

pub async fn a_renewed_lease_keeps_its_attempt(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    let id = b.submit(new_job("f", b"in")).await.unwrap().id();
    take(&*b, "f", 1).await;
    let started = now_ms();
    b.start(id, 1, started, started + 300, 1);
    // Renewed every 100 ms for a second: three times the lease.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.renew(id, 1, now_ms() + 300);
    }
    let job = until(&*b, id, JobStatus::Running).await;
    assert!(
        job.history.is_empty(),
        "the attempt still holds its lease: {job:?}"
    );
    assert!(
        job.lease_until.unwrap() > started + 300,
        "the renewal is on record"
    );
    // A renewal from another attempt changes nothing.
    b.renew(id, 7, now_ms() + 600_000);
    b.finish(id, 1, success(b"done"), Settings::DEFAULT.retry);
    let job = until(&*b, id, JobStatus::Succeeded).await;
    assert_eq!((job.attempts, job.history.len()), (1, 1));
    b.shutdown().await;
}

pub async fn failures_retry_then_dead_letter_redrive_and_purge(open: Open, dir: &Path) {
    let b = open(dir).await;
    let settings = Settings {
        retry: RetryPolicy {
            max_attempts: 2,
            backoff_base_ms: 10,
            backoff_max_ms: 10,
        },
        ..Settings::DEFAULT
    };
    deploy(&*b, "f", settings).await;
    let id = b.submit(new_job("f", b"in")).await.unwrap().id();
    take(&*b, "f", 1).await;
    b.start(id, 1, now_ms(), now_ms() + 60_000, 1);
    b.finish(id, 1, failure(FailureKind::Retryable), settings.retry);
    // Delayed for its backoff (10 ms), then queued again.
    let job = until_job(&*b, id, "retried", |j| j.history.len() == 1).await;
    assert!(
        matches!(job.status, JobStatus::Delayed | JobStatus::Queued),
        "{job:?}"
    );
    assert!(job.history[0].retry_at.is_some());
    // Due after its backoff: handed out again.
    assert_eq!(take(&*b, "f", 1).await, [id]);
    b.start(id, 2, now_ms(), now_ms() + 60_000, 1);
    b.finish(id, 2, failure(FailureKind::Retryable), settings.retry);
    let job = until(&*b, id, JobStatus::Dead).await;
    assert_eq!((job.attempts, job.history.len()), (2, 2));
    let dead = b
        .jobs(&JobQuery {
            function: Some("f".into()),
            dead_letters: true,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        dead.jobs.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [id]
    );
    let redriven = b
        .redrive("f", DeadLetterSelection::Ids(vec![id]))
        .await
        .unwrap();
    assert_eq!(redriven, [id]);
    assert_eq!(b.job(id).await.unwrap().unwrap().status, JobStatus::Queued);
    assert_eq!(take(&*b, "f", 1).await, [id]);
    b.start(id, 1, now_ms(), now_ms() + 60_000, 1);
    b.finish(id, 1, failure(FailureKind::Permanent), settings.retry);
    until(&*b, id, JobStatus::Failed).await;
    let purged = b.purge("f", DeadLetterSelection::All).await.unwrap();
    assert_eq!(purged, [id]);
    assert!(b.job(id).await.unwrap().is_none());
    b.shutdown().await;
}

pub async fn a_success_keeps_what_it_emitted_and_a_failure_nothing(open: Open, dir: &Path) {
    let b = open(dir).await;
    let retry = RetryPolicy {
        max_attempts: 2,
        backoff_base_ms: 1,
        backoff_max_ms: 1,
    };
    let settings = Settings {
        retry,
        ..Settings::DEFAULT
    };
    deploy(&*b, "f", settings).await;
    deploy(&*b, "next", Settings::DEFAULT).await;
    b.deploy(
        record(
            "sink",
            Settings::DEFAULT,
            vec![Subscription {
                topic: "done".into(),
                types: Vec::new(),
            }],
        ),
        Bytes::from_static(b"wasm"),
        "sink-artifact".into(),
        vec![1],
        DeployBase::Anything,
    )
    .await
    .unwrap();
    let emits = || {
        vec![
            Emission::Enqueue {
                function: "next".into(),
                data: b"onward".to_vec(),
                content_type: Some("text/plain".into()),
                priority: DEFAULT_PRIORITY,
                delay_ms: None,
            },
            Emission::Publish {
                topic: "done".into(),
                event_type: "f.done".into(),
                data: b"{}".to_vec(),
                content_type: Some("application/json".into()),
            },
            Emission::Enqueue {
                function: "gone".into(),
                data: b"nobody".to_vec(),
                content_type: None,
                priority: DEFAULT_PRIORITY,
                delay_ms: None,
            },
        ]
    };
    let mut submitted = new_job("f", b"in");
    submitted.correlation_id = Some("order-7".into());
    let id = b.submit(submitted).await.unwrap().id();
    // Attempt 1 fails: what it emitted is dropped.
    take(&*b, "f", 1).await;
    b.start(id, 1, now_ms(), now_ms() + 10_000, 1);
    let mut failed = failure(FailureKind::Retryable);
    failed.emitted = emits();
    b.finish(id, 1, failed, retry);
    until_job(&*b, id, "failed once", |j| j.history.len() == 1).await;
    // Attempt 2 succeeds: what it emitted is kept, once.
    take(&*b, "f", 1).await;
    b.start(id, 2, now_ms(), now_ms() + 10_000, 1);
    let mut succeeded = success(b"ok");
    succeeded.emitted = emits();
    b.finish(id, 2, succeeded, retry);
    until(&*b, id, JobStatus::Succeeded).await;
    let onward = take(&*b, "next", 1).await[0];
    let job = b.job(onward).await.unwrap().unwrap();
    assert_eq!(job.input, b"onward");
    assert_eq!(job.correlation_id, "order-7", "emitted work keeps the correlation id");
    assert_eq!(job.parent, Some(sluice::job::Parent::Job(id.0)));
    assert_eq!(job.hops, 1);
    let delivery = take(&*b, "sink", 1).await[0];
    let job = b.job(delivery).await.unwrap().unwrap();
    let event = job.event.expect("a delivery carries its event");
    assert_eq!(event.id, format!("{id}-1"), "an emitted event's id is stable");
    assert_eq!(event.topic, "done");
    // Nothing more: the failed attempt emitted nothing.
    assert!(!leased_within(&*b, "next", Duration::from_millis(700)).await);
    assert!(!leased_within(&*b, "sink", Duration::from_millis(700)).await);
    b.shutdown().await;
}

/// A publish is accepted whole even when a subscriber's queue is full: its deliveries wait
/// (durably) and every one runs once there is room.
pub async fn deliveries_past_a_full_queue_all_run(open: Open, dir: &Path) {
    let b = open(dir).await;
    let settings = Settings {
        max_queued: 1,
        ..Settings::DEFAULT
    };
    b.deploy(
        record(
            "sink",
            settings,
            vec![Subscription {
                topic: "t".into(),
                types: Vec::new(),
            }],
        ),
        Bytes::from_static(b"wasm"),
        "sink-artifact".into(),
        vec![1],
        DeployBase::Anything,
    )
    .await
    .unwrap();
    let event = |n: usize| {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            "application/cloudevents+json".parse().unwrap(),
        );
        let body = serde_json::json!({
            "specversion": "1.0", "id": format!("e-{n}"), "source": "/s", "type": "t.n",
            "data": {"n": n}
        });
        let mut events = sluice::event::parse(&headers, Bytes::from(body.to_string())).unwrap();
        events[0].attributes.topic = "t".into();
        NewEvent {
            event: events.remove(0),
            correlation_id: None,
            priority: DEFAULT_PRIORITY,
            parent: None,
            blob: None,
            callback: None,
            hops: 0,
            trace_parent: None,
        }
    };
    let mut deliveries = Vec::new();
    for n in 0..3 {
        let published = b.publish(vec![event(n)]).await.unwrap();
        assert_eq!(published[0].deliveries.len(), 1);
        deliveries.push(published[0].deliveries[0].1);
    }
    // Drained one at a time: each delivery runs, however long it waited (a backend that
    // finishes waiting deliveries in a periodic sweep takes seconds each: ~12 s in all on
    // JetStream alone, the bound is that with room for a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut ran = Vec::new();
    while ran.len() < deliveries.len() {
        if std::time::Instant::now() >= deadline {
            let mut records = Vec::new();
            for id in &deliveries {
                records.push(b.job(*id).await.map(|j| j.map(|j| (j.status, j.attempts, j.error))));
            }
            panic!("only {ran:?} of {deliveries:?} ran; their records: {records:?}");
        }
        let Ok(leased) = tokio::time::timeout(Duration::from_secs(2), b.lease("sink", 1)).await
        else {
            continue;
        };
        for job in leased.expect("leasing failed") {
            b.start(job.id, 1, now_ms(), now_ms() + 10_000, 1);
            b.finish(job.id, 1, success(b"ok"), RetryPolicy::DEFAULT);
            until(&*b, job.id, JobStatus::Succeeded).await;
            ran.push(job.id);
        }
    }
    ran.sort();
    deliveries.sort();
    assert_eq!(ran, deliveries, "each delivery ran once");
    b.shutdown().await;
}

/// A job waiting for its time does not take one of its function's `max_concurrency` slots:
/// with one slot, a job submitted after it runs first, and it runs once due.
pub async fn a_waiting_job_does_not_hold_a_slot(open: Open, dir: &Path) {
    let b = open(dir).await;
    let settings = Settings {
        max_concurrency: 1,
        ..Settings::DEFAULT
    };
    deploy(&*b, "f", settings).await;
    let due = now_ms() + 3_000;
    let later = b
        .submit(NewJob {
            not_before: Some(due),
            ..new_job("f", b"later")
        })
        .await
        .unwrap()
        .id();
    let now = b.submit(new_job("f", b"now")).await.unwrap().id();
    assert_eq!(take(&*b, "f", 1).await, [now], "the waiting job is not handed out");
    assert!(now_ms() < due, "leased before the waiting job was due");
    assert_eq!(
        b.job(later).await.unwrap().unwrap().status,
        JobStatus::Delayed
    );
    b.start(now, 1, now_ms(), now_ms() + 10_000, 1);
    b.finish(now, 1, success(b"done"), RetryPolicy::DEFAULT);
    until(&*b, now, JobStatus::Succeeded).await;
    // Once due, it is handed out.
    assert_eq!(take(&*b, "f", 1).await, [later]);
    assert!(now_ms() >= due, "not before its time");
    b.shutdown().await;
}

pub async fn cancel_takes_waiting_jobs_only(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    let running = b.submit(new_job("f", b"1")).await.unwrap().id();
    let waiting = b.submit(new_job("f", b"2")).await.unwrap().id();
    take(&*b, "f", 1).await;
    b.start(running, 1, now_ms(), now_ms() + 60_000, 1);
    until(&*b, running, JobStatus::Running).await;
    match b.cancel(running).await {
        Err(CancelError::NotCancellable { status, .. }) => assert_eq!(status, JobStatus::Running),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        b.cancel(waiting).await.unwrap().status,
        JobStatus::Cancelled
    );
    assert!(matches!(
        b.cancel(JobId(12345)).await,
        Err(CancelError::NotFound(_))
    ));
    b.shutdown().await;
}

pub async fn a_publish_makes_one_delivery_per_matching_subscriber(open: Open, dir: &Path) {
    let b = open(dir).await;
    let subscribe = |types: &[&str]| {
        vec![Subscription {
            topic: "orders".into(),
            types: types.iter().map(|t| t.to_string()).collect(),
        }]
    };
    for (name, types) in [
        ("all", vec![]),
        ("placed", vec!["order.placed"]),
        ("paid", vec!["order.paid"]),
    ] {
        b.deploy(
            record(name, Settings::DEFAULT, subscribe(&types)),
            Bytes::from_static(b"wasm"),
            format!("{name}-artifact"),
            vec![1],
            DeployBase::Anything,
        )
        .await
        .unwrap();
    }
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        "application/cloudevents+json".parse().unwrap(),
    );
    let body = serde_json::json!({
        "specversion": "1.0", "id": "e-1", "source": "/shop", "type": "order.placed",
        "data": {"order": 7}
    });
    let mut events = sluice::event::parse(&headers, Bytes::from(body.to_string())).unwrap();
    for e in &mut events {
        e.attributes.topic = "orders".into();
    }
    let published = b
        .publish(
            events
                .into_iter()
                .map(|event| NewEvent {
                    event,
                    correlation_id: None,
                    priority: DEFAULT_PRIORITY,
                    parent: None,
                    blob: None,
                    callback: None,
                    hops: 0,
                    trace_parent: None,
                })
                .collect(),
        )
        .await
        .unwrap();
    let mut to: Vec<&str> = published[0]
        .deliveries
        .iter()
        .map(|(f, _)| f.as_str())
        .collect();
    to.sort();
    assert_eq!(to, ["all", "placed"]);
    let record = b
        .event(published[0].event_id)
        .await
        .unwrap()
        .expect("the event is kept");
    assert_eq!(record.deliveries.len(), 2);
    for (function, id) in &published[0].deliveries {
        let job = b.job(*id).await.unwrap().unwrap();
        assert_eq!(&job.function, function);
        assert_eq!(job.status, JobStatus::Queued);
    }
    b.shutdown().await;
}

pub async fn key_value_writes_bump_versions(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    assert_eq!(b.kv_get("f", "count").await.unwrap(), (0, None));
    let set = |value: &[u8]| {
        let mut changes = KvChanges {
            function: "f".into(),
            ..Default::default()
        };
        changes.writes.push(("count".into(), Some(value.to_vec())));
        changes
    };
    b.kv_write(set(b"1")).await.unwrap();
    let (v1, value) = b.kv_get("f", "count").await.unwrap();
    assert_eq!(value.as_deref(), Some(&b"1"[..]));
    b.kv_write(set(b"2")).await.unwrap();
    let (v2, value) = b.kv_get("f", "count").await.unwrap();
    assert!(
        v2 > v1,
        "every write bumps the key's version ({v1} -> {v2})"
    );
    assert_eq!(value.as_deref(), Some(&b"2"[..]));
    assert_eq!(b.kv_keys("f", None, 0, 10).await.unwrap(), ["count"]);
    // A listing is a read: writes made after a page of keys was listed commit only if the page
    // is unchanged (a key added meanwhile is a conflict, not a lost update).
    let after_listing = |keys: &[&str]| KvChanges {
        function: "f".into(),
        listed: vec![KeyPage {
            skip: 0,
            limit: 10,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }],
        writes: vec![("keys".into(), Some(keys.len().to_string().into_bytes()))],
        ..Default::default()
    };
    let mut other = KvChanges {
        function: "f".into(),
        ..Default::default()
    };
    other.writes.push(("added".into(), Some(b"x".to_vec())));
    b.kv_write(other).await.unwrap();
    assert!(
        matches!(
            b.kv_write(after_listing(&["count"])).await.unwrap(),
            KvVerdict::Conflict(_)
        ),
        "a stale listing conflicts"
    );
    assert_eq!(
        b.kv_get("f", "keys").await.unwrap(),
        (0, None),
        "nothing applied"
    );
    assert!(matches!(
        b.kv_write(after_listing(&["added", "count"]))
            .await
            .unwrap(),
        KvVerdict::Applied
    ));
    assert_eq!(
        b.kv_get("f", "keys").await.unwrap().1.as_deref(),
        Some(&b"2"[..])
    );
    b.shutdown().await;
}

/// Every job of `query` page after page (following `next_cursor`), in the order listed.
async fn every_page(b: &dyn Backend, mut query: JobQuery) -> Vec<JobId> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = b.jobs(&query).await.unwrap();
        assert!(page.jobs.len() <= query.limit, "a page passed its limit");
        out.extend(page.jobs.iter().map(|(id, _)| *id));
        match page.next_cursor {
            Some(cursor) => query.before = Some(cursor),
            None => return out,
        }
    }
    panic!("listing {query:?} never ended");
}

pub async fn jobs_are_listed_newest_first_in_pages(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    deploy(&*b, "g", Settings::DEFAULT).await;
    let mut of_f = Vec::new();
    let mut of_g = Vec::new();
    for i in 0..10 {
        if i % 3 == 2 {
            of_g.push(b.submit(new_job("g", b"in")).await.unwrap().id());
        } else {
            of_f.push(b.submit(new_job("f", b"in")).await.unwrap().id());
        }
    }
    let done = take(&*b, "f", 1).await[0];
    b.start(done, 1, now_ms(), now_ms() + 60_000, 1);
    b.finish(done, 1, success(b"out"), Settings::DEFAULT.retry);
    until(&*b, done, JobStatus::Succeeded).await;
    let newest_first = |ids: &[JobId]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids
    };
    let query = |function: Option<&str>, status: Option<JobStatus>, limit: usize| JobQuery {
        function: function.map(String::from),
        status,
        limit,
        ..Default::default()
    };
    // A function's jobs, newest first, each once, in pages of 3.
    assert_eq!(
        every_page(&*b, query(Some("f"), None, 3)).await,
        newest_first(&of_f)
    );
    // By status: the one that succeeded; the rest, still queued.
    assert_eq!(
        every_page(&*b, query(Some("f"), Some(JobStatus::Succeeded), 3)).await,
        [done]
    );
    let queued: Vec<JobId> = of_f.iter().copied().filter(|id| *id != done).collect();
    assert_eq!(
        every_page(&*b, query(Some("f"), Some(JobStatus::Queued), 2)).await,
        newest_first(&queued)
    );
    // Every function's.
    let all: Vec<JobId> = of_f.iter().chain(&of_g).copied().collect();
    assert_eq!(
        every_page(&*b, query(None, None, 4)).await,
        newest_first(&all)
    );
    assert!(every_page(&*b, query(Some("nobody"), None, 4)).await.is_empty());
    b.shutdown().await;
}

pub async fn the_catalog_keeps_versions_pauses_and_deletes(open: Open, dir: &Path) {
    let b = open(dir).await;
    let v1 = deploy(&*b, "f", Settings::DEFAULT).await;
    assert_eq!(v1.version, 1);
    let same = deploy(&*b, "f", Settings::DEFAULT).await;
    assert_eq!(same.version, 1, "the same deploy makes no version");
    let v2 = b
        .configure(
            "f",
            Settings {
                max_concurrency: 2,
                ..Settings::DEFAULT
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.changes, ["max_concurrency 8 -> 2"]);
    let v3 = b.rollback("f", Some(1)).await.unwrap();
    assert_eq!((v3.version, v3.settings.max_concurrency), (3, 8));
    assert_eq!(b.versions("f").await.unwrap().len(), 3);
    // A deploy of changes worked out from version 2 is refused now that 3 is current, and
    // stores nothing; one from version 3 is stored.
    let changed = record(
        "f",
        Settings {
            timeout_ms: 500,
            ..Settings::DEFAULT
        },
        Vec::new(),
    );
    let stale = b
        .deploy(
            changed.clone(),
            Bytes::from_static(b"wasm"),
            "f-artifact".into(),
            vec![1, 2, 3],
            DeployBase::Current(Some(2)),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::Changed {
                current: Some(3),
                ..
            })
        ),
        "{stale:?}"
    );
    assert_eq!(b.function("f").await.unwrap().unwrap().version, 3);
    let v4 = b
        .deploy(
            changed,
            Bytes::from_static(b"wasm"),
            "f-artifact".into(),
            vec![1, 2, 3],
            DeployBase::Current(Some(3)),
        )
        .await
        .unwrap();
    assert_eq!((v4.version, v4.settings.timeout_ms), (4, 500));
    assert!(matches!(
        b.deploy(
            record("g", Settings::DEFAULT, Vec::new()),
            Bytes::from_static(b"wasm"),
            "g-artifact".into(),
            vec![1],
            DeployBase::Current(Some(1)),
        )
        .await,
        Err(StoreError::Changed { current: None, .. })
    ));
    let paused = b.set_paused("f", true).await.unwrap().unwrap();
    assert!(
        paused.paused && paused.version == 4,
        "pausing is no version"
    );
    assert_eq!(b.artifact("f-artifact").await.unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(
        b.component("f-digest").await.unwrap().as_deref(),
        Some(&b"wasm"[..])
    );

    let id = b.submit(new_job("f", b"x")).await.unwrap().id();
    assert!(matches!(
        b.delete_function("f", false).await,
        Err(DeleteError::Busy { .. })
    ));
    assert_eq!(b.delete_function("f", true).await.unwrap(), [id]);
    assert_eq!(
        b.job(id).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert!(b.function("f").await.unwrap().is_none());
    assert!(matches!(
        b.submit(new_job("f", b"x")).await,
        Err(SubmitError::FunctionNotFound(_))
    ));
    b.shutdown().await;
}

pub async fn secrets_and_settings_are_kept(open: Open, dir: &Path) {
    let b = open(dir).await;
    deploy(&*b, "f", Settings::DEFAULT).await;
    b.put_secret("f", "token", b"sealed".to_vec(), 64)
        .await
        .unwrap();
    let first = b.setting_or_init("signing", b"one".to_vec()).await.unwrap();
    assert_eq!(first, b"one");
    let again = b.setting_or_init("signing", b"two".to_vec()).await.unwrap();
    assert_eq!(again, b"one", "the first value stays");
    b.shutdown().await;
    drop(b);
    let b = open(dir).await;
    let secrets = b.secrets("f").await.unwrap();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].name, "token");
    assert!(b.delete_secret("f", "token").await.unwrap());
    assert!(!b.delete_secret("f", "token").await.unwrap());
    b.set_setting("signing", b"three".to_vec()).await.unwrap();
    assert_eq!(
        b.setting_or_init("signing", b"four".to_vec())
            .await
            .unwrap(),
        b"three"
    );
    b.shutdown().await;
}
