//! What a handler emits is bounded like what a client submits: enqueued jobs count against
//! their target's `max_queued`, every job (even an empty one) costs against the host's budget,
//! and a chain of jobs causing jobs ends at the host's hop limit as a dead letter.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, start_host_with, test_config};

/// A function's stats.
async fn stats(host: &TestHost, function: &str) -> Value {
    let (status, stats) = host.get(&format!("/v1/functions/{function}/stats")).await;
    assert_eq!(status, 200, "{stats}");
    stats
}

fn error(job: &Value, attempt: usize) -> &str {
    job["attempt_history"][attempt]["error"]
        .as_str()
        .unwrap_or("")
}

/// A fan-out past its target's `max_queued` fails the attempt (retryably) and keeps none of
/// it; one that fits is committed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_counts_against_the_targets_max_queued() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host_with(test_config(dir.path())).await;
    host.deploy("echo", components::ECHO, "max_queued=5").await;
    // Paused, so nothing the fan-outs queue finishes and makes room.
    host.post("/v1/functions/echo/pause", "").await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=2&backoff_base_ms=10&backoff_max_ms=10",
    )
    .await;

    let id = host
        .submit_json(
            "probe",
            &json!({"action": "fanout", "function": "echo", "n": 1000}),
        )
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "dead", "{job}");
    for attempt in 0..2 {
        let e = error(&job, attempt);
        assert!(e.contains("(1000 jobs, 0 bytes) does not fit"), "{e}");
        assert!(e.contains("max_queued"), "{e}");
        assert!(e.contains("nothing it emitted was kept"), "{e}");
    }
    assert_eq!(stats(&host, "echo").await["queued"], 0);

    // Three fit; three more would make six.
    let id = host
        .submit_json(
            "probe",
            &json!({"action": "fanout", "function": "echo", "n": 3}),
        )
        .await;
    assert_eq!(host.wait(&id).await["status"], "succeeded");
    assert_eq!(stats(&host, "echo").await["queued"], 3);
    let id = host
        .submit_json(
            "probe",
            &json!({"action": "fanout", "function": "echo", "n": 3}),
        )
        .await;
    assert_eq!(host.wait(&id).await["status"], "dead");
    assert_eq!(stats(&host, "echo").await["queued"], 3);

    // Once the target drains, a fan-out up to the limit fits.
    host.post("/v1/functions/echo/resume", "").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&host, "echo").await["succeeded"] != 3 {
        assert!(Instant::now() < deadline, "echo did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.post("/v1/functions/echo/pause", "").await;
    let id = host
        .submit_json(
            "probe",
            &json!({"action": "fanout", "function": "echo", "n": 5}),
        )
        .await;
    assert_eq!(host.wait(&id).await["status"], "succeeded");
    assert_eq!(stats(&host, "echo").await["queued"], 5);
}

/// Every unfinished job costs its record against `--max-queued-bytes`: empty jobs fill it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_jobs_fill_the_host_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Ten job records of 128 bytes.
    config.max_queued_bytes = 10 * 128;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    host.post("/v1/functions/echo/pause", "").await;
    for _ in 0..10 {
        host.submit("echo", "", "text/plain").await;
    }
    let r = host
        .http
        .post(host.url("/v1/functions/echo/jobs"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_error(&body, "host_budget_exhausted");

    // A handler's empty fan-out is counted the same way.
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    host.post("/v1/functions/echo/resume", "").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&host, "echo").await["succeeded"] != 10 {
        assert!(Instant::now() < deadline, "echo did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.post("/v1/functions/echo/pause", "").await;
    let id = host
        .submit_json(
            "probe",
            &json!({"action": "fanout", "function": "echo", "n": 20}),
        )
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "dead", "{job}");
    let e = error(&job, 0);
    assert!(e.contains("(20 jobs, 0 bytes) does not fit"), "{e}");
    assert!(e.contains("budget"), "{e}");
    assert_eq!(stats(&host, "echo").await["queued"], 0);
}

/// A handler that enqueues itself forever stops at `max_hops`: the job past it is a dead
/// letter that never ran, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_chain_ends_at_the_hop_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_hops = 5;
    let host = start_host_with(config).await;
    host.deploy("probe", components::PROBE, "").await;
    let first = host
        .submit_json("probe", &json!({"action": "chain", "function": "probe"}))
        .await;
    assert_eq!(host.wait(&first).await["hops"], 0);

    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let (_, dlq) = host.get("/v1/functions/probe/dead-letters").await;
        if let Some(job) = dlq["dead_letters"].as_array().unwrap().first() {
            break job["id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the chain never hit the limit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let job = host.job(&dead).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["hops"], 6, "{job}");
    assert_eq!(job["attempts"], 0, "it never ran: {job}");
    let e = job["error"].as_str().unwrap();
    assert!(e.contains("--max-hops"), "{e}");
    assert!(e.contains("limit of 5"), "{e}");
    assert_eq!(job["parent"]["kind"], "job", "{job}");

    // Nothing else runs: hops 0..=5 succeeded, the sixth is the dead letter.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = stats(&host, "probe").await;
    assert_eq!(s["succeeded"], 6, "{s}");
    assert_eq!(s["dead"], 1, "{s}");
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["running"], 0, "{s}");
}
