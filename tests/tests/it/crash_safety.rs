//! Crash safety in one process: idempotency keys (repeat, conflict, restart, window), retention
//! sweeping, start-up requeue, and fencing of stale attempts.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, start_host, start_host_with, test_config};

async fn submit_keyed(
    host: &TestHost,
    function: &str,
    key: &str,
    body: &str,
    content_type: &str,
) -> (u16, Value) {
    let r = host
        .http
        .post(host.url(&format!("/v1/functions/{function}/jobs")))
        .header("idempotency-key", key)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The same key with the same request answers 200 with the original job and creates nothing;
/// with a different request, 409; keys are per function and survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_repeat_conflict_and_survive_restart() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    host.deploy("echo-two", components::ECHO, "").await;
    let (status, first) = submit_keyed(&host, "echo", "order-1", "hello", "text/plain").await;
    assert_eq!(status, 202, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let (status, again) = submit_keyed(&host, "echo", "order-1", "hello", "text/plain").await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again, first);
    }
    for (body, content_type) in [("other", "text/plain"), ("hello", "application/json")] {
        let (status, err) = submit_keyed(&host, "echo", "order-1", body, content_type).await;
        assert_eq!(status, 409, "{err}");
        assert_error(&err, "idempotency_conflict");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("order-1")
        );
    }
    // Another function has its own keys.
    let (status, other) = submit_keyed(&host, "echo-two", "order-1", "hello", "text/plain").await;
    assert_eq!(status, 202);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(host.wait(&id).await["output"], "hello");
    let (_, list) = host.get("/v1/jobs?function=echo").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(host.metric("sluice_jobs_accepted_total").await, 2.0);
    for bad in ["", &"k".repeat(256), "with space"] {
        let (status, err) = submit_keyed(&host, "echo", bad, "hello", "text/plain").await;
        assert_eq!(status, 400, "{bad:?}: {err}");
        assert_error(&err, "invalid_header");
    }

    let data = host.data_dir.clone();
    let _tmp = host.stop().await;
    let host = start_host_with(test_config(&data)).await;
    let (status, again) = submit_keyed(&host, "echo", "order-1", "hello", "text/plain").await;
    assert_eq!(status, 200, "after restart: {again}");
    assert_eq!(again, first);
    let (status, _) = submit_keyed(&host, "echo", "order-1", "changed", "text/plain").await;
    assert_eq!(status, 409);
}

/// Past the retention period finished jobs are swept (dead letters stay); past the window a
/// key is forgotten and makes a new job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweeps_finished_jobs_and_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.job_retention = Duration::from_millis(400);
    config.idempotency_window = Duration::from_millis(400);
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    let (_, first) = submit_keyed(&host, "echo", "k", "hello", "text/plain").await;
    let done = first["id"].as_str().unwrap().to_string();
    let dead = host
        .submit_json("probe", &json!({"action": "fail", "retryable": false}))
        .await;
    let started = Instant::now();
    assert_eq!(host.wait(&done).await["status"], "succeeded");
    assert_eq!(host.wait(&dead).await["status"], "failed");
    // Still there right after finishing.
    assert_eq!(host.get(&format!("/v1/jobs/{done}")).await.0, 200);
    loop {
        let (status, _) = host.get(&format!("/v1/jobs/{done}")).await;
        if status == 404 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the finished job was never swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(host.metric("sluice_retention_deleted_total").await >= 2.0);
    let (_, list) = host.get("/v1/jobs?function=echo").await;
    assert_eq!(list["jobs"], json!([]));
    // The dead letter is kept until redriven or purged.
    assert_eq!(host.job(&dead).await["status"], "failed");
    let (_, dlq) = host.get("/v1/functions/probe/dead-letters").await;
    assert_eq!(dlq["dead_letters"].as_array().unwrap().len(), 1);
    // The key's window is over: the same request makes a new job.
    let (status, again) = submit_keyed(&host, "echo", "k", "hello", "text/plain").await;
    assert_eq!(status, 202, "{again}");
    assert_ne!(again["id"], first["id"]);
}

/// A job whose attempt was running when the host stopped (past the grace period) is queued
/// again at the next start and runs to completion; the cut attempt stays in its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_are_requeued_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.grace_period = Duration::from_millis(50);
    let host = start_host_with(config.clone()).await;
    host.deploy("probe", components::PROBE, "").await;
    let id = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 1500}))
        .await;
    let job = host.wait_status(&id, "running").await;
    assert_eq!(job["attempts"], 1);
    assert!(job["lease_until"].is_string(), "{job}");
    host.stop().await;
    let host = start_host_with(config).await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "the interrupted attempt counts: {job}");
    assert_eq!(job["output"], r#"{"detail":"slept 1500 ms","ok":true}"#);
    assert!(job["lease_until"].is_null());
    // Every attempt stays on record, the interrupted one with why it ended.
    let history = job["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{job}");
    assert_eq!(history[0]["attempt"], 1);
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: the host stopped"),
        "{job}"
    );
    assert!(history[1]["error"].is_null(), "{job}");
}
