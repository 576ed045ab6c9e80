//! Load leveling: concurrency limits, rate limits, priorities, delays, backpressure (429),
//! batch submit, stats, and settings changed without a redeploy.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{
    TestHost, assert_error, components, millis, start_host, start_host_with, test_config,
};

fn sleep(ms: u64) -> Value {
    json!({ "action": "sleep", "ms": ms })
}

/// (start, end) of every attempt of the jobs, from their attempt history.
async fn spans(host: &TestHost, ids: &[String]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for id in ids {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        for a in job["attempt_history"].as_array().unwrap() {
            out.push((millis(&a["started_at"]), millis(&a["finished_at"])));
        }
    }
    out
}

/// Most attempts whose [start, end) intervals overlap at one instant.
fn max_overlap(spans: &[(u64, u64)]) -> usize {
    let mut events: Vec<(u64, i32)> = Vec::new();
    for &(s, e) in spans {
        events.push((s, 1));
        events.push((e, -1));
    }
    // Ends before starts at the same millisecond: back-to-back attempts do not overlap.
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

async fn post_with(
    host: &TestHost,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, Value, Option<String>) {
    let mut r = host
        .http
        .post(host.url(path))
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.body(body).send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), retry_after)
}

/// Twelve ~200 ms jobs with `max_concurrency = 3` overlap exactly three at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_exactly() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=3")
        .await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(host.submit_json("probe", &sleep(200)).await);
    }
    let spans = spans(&host, &ids).await;
    assert_eq!(max_overlap(&spans), 3, "{spans:?}");
}

/// `rate_per_second = 10`: eleven jobs start over at least a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_the_starts() {
    let host = start_host().await;
    host.deploy(
        "echo",
        components::ECHO,
        "rate_per_second=10&max_concurrency=8",
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.push(host.submit("echo", format!("{i}"), "text/plain").await);
    }
    let spans = spans(&host, &ids).await;
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.0).max().unwrap();
    // 10 intervals of 100 ms (a millisecond of rounding either way).
    assert!(last - first >= 998, "11 starts within {} ms", last - first);
}

/// With one worker, the waiting jobs run highest priority first, equal priorities in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_the_queue() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=1")
        .await;
    let blocker = host.submit_json("probe", &sleep(400)).await;
    host.wait_status(&blocker, "running").await;
    let mut ids = Vec::new();
    for (i, priority) in [1, 5, 9, 3, 9, 0, 5].into_iter().enumerate() {
        let (status, body, _) = post_with(
            &host,
            "/v1/functions/probe/jobs",
            &[("sluice-priority", &priority.to_string())],
            json!({"action": "sleep", "ms": 5 + i}).to_string(),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        ids.push((priority, i, body["id"].as_str().unwrap().to_string()));
    }
    let mut started = Vec::new();
    for (priority, i, id) in &ids {
        let job = host.wait(id).await;
        started.push((millis(&job["started_at"]), *priority, *i));
    }
    started.sort();
    let order: Vec<(u8, usize)> = started.iter().map(|&(_, p, i)| (p, i)).collect();
    assert_eq!(
        order,
        [(9, 2), (9, 4), (5, 1), (5, 6), (3, 3), (1, 0), (0, 5)]
    );
    let (status, body, _) = post_with(
        &host,
        "/v1/functions/probe/jobs",
        &[("sluice-priority", "10")],
        "{}".into(),
    )
    .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_header");
}

/// A delayed job is `delayed` at once and does not start before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_wait_for_their_time() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    let (status, body, _) = post_with(
        &host,
        "/v1/functions/echo/jobs",
        &[("sluice-delay", "1.2")],
        "\"later\"".into(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "delayed");
    let id = body["id"].as_str().unwrap();
    let job = host.job(id).await;
    assert_eq!(job["status"], "delayed");
    let not_before = millis(&job["not_before"]);
    let job = host.wait(id).await;
    assert_eq!(job["status"], "succeeded");
    assert!(millis(&job["started_at"]) >= not_before, "{job}");
    // The delay counts from when the request arrived, a moment before the job's creation.
    assert!(
        not_before + 100 >= millis(&job["created_at"]) + 1200,
        "{job}"
    );

    let at =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_millis(800))
            .to_string();
    let (status, body, _) = post_with(
        &host,
        "/v1/functions/echo/jobs",
        &[("sluice-not-before", &at)],
        "1".into(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let job = host.wait(body["id"].as_str().unwrap()).await;
    assert!(millis(&job["started_at"]) >= millis(&json!(at)), "{job}");
    for (header, value) in [
        ("sluice-delay", "-1"),
        ("sluice-delay", "soon"),
        ("sluice-not-before", "tomorrow"),
    ] {
        let (status, body, _) = post_with(
            &host,
            "/v1/functions/echo/jobs",
            &[(header, value)],
            "1".into(),
        )
        .await;
        assert_eq!(status, 400, "{header}: {value}");
        assert_error(&body, "invalid_header");
    }
}

/// A full queue answers 429 with Retry-After, loses nothing it accepted, and accepts again once
/// it drained; the host-wide byte budget does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_answers_429_until_drained() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_queued_bytes = 64 * 1024;
    let host = start_host_with(config).await;
    host.deploy("probe", components::PROBE, "max_queued=5&max_concurrency=1")
        .await;
    // Paused, so none of the five can finish (and make room) before the checks below.
    host.post("/v1/functions/probe/pause", "").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(host.submit_json("probe", &sleep(100)).await);
    }
    let (status, body, retry_after) =
        post_with(&host, "/v1/functions/probe/jobs", &[], sleep(1).to_string()).await;
    assert_eq!(status, 429, "{body}");
    assert_error(&body, "queue_full");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // A batch that does not fit is refused whole.
    let (status, _, _) = post_with(
        &host,
        "/v1/functions/probe/jobs:batch",
        &[],
        json!([sleep(1)]).to_string(),
    )
    .await;
    assert_eq!(status, 429);
    host.post("/v1/functions/probe/resume", "").await;
    for id in &ids {
        assert_eq!(host.wait(id).await["status"], "succeeded");
    }
    let (status, body, _) =
        post_with(&host, "/v1/functions/probe/jobs", &[], sleep(1).to_string()).await;
    assert_eq!(status, 202, "after draining: {body}");

    // The host budget counts unfinished input bytes of every function.
    host.deploy("echo", components::ECHO, "max_concurrency=1")
        .await;
    let big = format!("\"{}\"", "x".repeat(40 * 1024));
    // Paused: the first stays unfinished, so the second cannot fit.
    host.post("/v1/functions/echo/pause", "").await;
    let (status, body, _) = post_with(&host, "/v1/functions/echo/jobs", &[], big.clone()).await;
    assert_eq!(status, 202, "{body}");
    let (status, body, retry_after) =
        post_with(&host, "/v1/functions/echo/jobs", &[], big.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_error(&body, "host_budget_exhausted");
    assert!(retry_after.is_some());
    let (status, body, _) = post_with(
        &host,
        "/v1/functions/echo/jobs",
        &[],
        format!("\"{}\"", "x".repeat(70 * 1024)),
    )
    .await;
    assert_eq!(status, 429, "larger than the whole budget: {body}");
    assert_error(&body, "host_budget_exhausted");
}

/// A batch is accepted in order in one commit, in both item forms; bad batches change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submit() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    let items = json!([
        {"n": 1},
        {"data": "plain text", "content_type": "text/plain"},
        {"data": {"n": 3}, "priority": 9},
        {"data": 4, "delay": 0.3},
        "five",
    ]);
    let (status, body, _) = post_with(
        &host,
        "/v1/functions/echo/jobs:batch",
        &[],
        items.to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 5);
    assert_eq!(jobs[3]["status"], "delayed");
    let expected = [r#"{"n":1}"#, "plain text", r#"{"n":3}"#, "4", r#""five""#];
    for (job, output) in jobs.iter().zip(expected) {
        let done = host.wait(job["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded");
        assert_eq!(done["output"], output, "{done}");
    }
    let job = host.job(jobs[1]["id"].as_str().unwrap()).await;
    assert_eq!(job["input_content_type"], "text/plain");
    let before = host.metric("sluice_jobs_accepted_total").await;
    let too_many = Value::Array(vec![json!(1); 1001]);
    for bad in [
        json!([]),
        json!({"not": "a list"}),
        too_many,
        json!([1, {"data": 2, "priority": 12}]),
    ] {
        let (status, body, _) =
            post_with(&host, "/v1/functions/echo/jobs:batch", &[], bad.to_string()).await;
        assert_eq!(status, 400, "{body}");
        assert_error(&body, "invalid_body");
    }
    assert_eq!(host.metric("sluice_jobs_accepted_total").await, before);
    let (status, _, _) = post_with(&host, "/v1/functions/nope/jobs:batch", &[], "[1]".into()).await;
    assert_eq!(status, 404);
}

/// Stats count every status from counters, after a mixed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_after_a_mixed_run() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_concurrency=1&max_attempts=2&backoff_base_ms=60000&backoff_max_ms=60000",
    )
    .await;
    let ok = host.submit_json("probe", &sleep(1)).await;
    let failed = host
        .submit_json("probe", &json!({"action": "fail", "retryable": false}))
        .await;
    // Delayed for an hour (a retry's delay is random, possibly short: not for this count).
    let (status, body, _) = post_with(
        &host,
        "/v1/functions/probe/jobs",
        &[("sluice-delay", "3600")],
        sleep(1).to_string(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let delayed = body["id"].as_str().unwrap().to_string();
    host.wait(&ok).await;
    host.wait(&failed).await;
    host.wait_status(&delayed, "delayed").await;
    let running = host.submit_json("probe", &sleep(800)).await;
    host.wait_status(&running, "running").await;
    let queued = host.submit_json("probe", &sleep(1)).await;
    let cancelled = host.submit_json("probe", &sleep(1)).await;
    assert_eq!(host.delete(&format!("/v1/jobs/{cancelled}")).await.0, 200);
    let (status, stats) = host.get("/v1/functions/probe/stats").await;
    assert_eq!(status, 200, "{stats}");
    for (key, n) in [
        ("succeeded", 1),
        ("failed", 1),
        ("delayed", 1),
        ("running", 1),
        ("queued", 1),
        ("cancelled", 1),
        ("dead", 0),
    ] {
        assert_eq!(stats[key], n, "{key}: {stats}");
    }
    assert!(stats["oldest_queued_age_ms"].as_u64().is_some(), "{stats}");
    // Two shards: each job's result commits on its own shard, so wait for both.
    host.wait(&running).await;
    host.wait(&queued).await;
    // The scheduler's running count and the store's counters are read separately: give them a
    // moment to agree (a wrong counter never does, and fails below).
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let (_, stats) = host.get("/v1/functions/probe/stats").await;
        let settled = stats["queued"] == 0 && stats["running"] == 0;
        if settled || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["succeeded"], 3, "{stats}");
    assert_eq!(stats["queued"], 0, "{stats}");
    assert_eq!(stats["running"], 0, "{stats}");
    assert!(stats["oldest_queued_age_ms"].is_null(), "{stats}");
    assert_eq!(host.get("/v1/functions/nope/stats").await.0, 404);
}

/// PATCH changes settings at once, keeps the code (no compilation), and makes a new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_settings_without_redeploy() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=1")
        .await;
    let compilations = host.metric("sluice_component_compilations_total").await;
    let r = host
        .http
        .patch(host.url("/v1/functions/probe"))
        .json(&json!({"max_concurrency": 4, "timeout_ms": 150, "max_attempts": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["version"], 2);
    assert_eq!(f["max_concurrency"], 4);
    assert_eq!(
        host.metric("sluice_component_compilations_total").await,
        compilations
    );
    // The new timeout applies to the next attempt.
    let job = host
        .wait(
            &host
                .submit_json("probe", &json!({"action": "sleep", "ms": 2000, "x": 1}))
                .await,
        )
        .await;
    assert!(
        job["attempt_history"][0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 150 ms"),
        "{job}"
    );
    // Four run at once now.
    let r = host
        .http
        .patch(host.url("/v1/functions/probe?timeout_ms=30000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(host.submit_json("probe", &sleep(200)).await);
    }
    let spans = spans(&host, &ids).await;
    assert_eq!(max_overlap(&spans), 4, "{spans:?}");
    for bad in [
        json!({"max_concurrency": 0}),
        json!({"name": "other"}),
        json!({"retries": 3}),
        json!("x"),
    ] {
        let r = host
            .http
            .patch(host.url("/v1/functions/probe"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let started = Instant::now();
    let r = host
        .http
        .patch(host.url("/v1/functions/nope"))
        .json(&json!({"max_concurrency": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(started.elapsed() < Duration::from_secs(10));
}
