//! Ordering keys (one job at a time per key, in submission order) and a function's life after
//! deploy: versions, pause and resume, rollback.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{
    TestHost, assert_error, components, millis, start_host, start_host_with, test_config,
};

/// Submits `body` to `function` with an ordering key (and optional priority); returns the id.
async fn submit_keyed(
    host: &TestHost,
    function: &str,
    key: &str,
    body: &Value,
    priority: Option<u8>,
) -> String {
    let mut r = host
        .http
        .post(host.url(&format!("/v1/functions/{function}/jobs")))
        .header("content-type", "application/json")
        .header("sluice-ordering-key", key);
    if let Some(p) = priority {
        r = r.header("sluice-priority", p.to_string());
    }
    let r = r.body(body.to_string()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn step(key: &str, seq: u64, ms: u64) -> Value {
    json!({ "action": "step", "key": key, "seq": seq, "ms": ms })
}

/// What the probe's `step` logged: (key, seq, start ms, end ms), as the handler saw it.
fn logged_step(job: &Value) -> (String, u64, u64, u64) {
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["log"].as_str().unwrap().starts_with("step "), "{job}");
    let output: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    let detail = output["detail"].as_str().unwrap().to_string();
    let parts: Vec<&str> = detail.split(' ').collect();
    (
        parts[0].to_string(),
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        parts[3].parse().unwrap(),
    )
}

/// Many keys interleaved under concurrency 8: each key's jobs run one at a time in submission
/// order, while different keys run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_keys_run_in_order_and_keys_overlap() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=8")
        .await;
    let keys = ["a", "b", "c", "d", "e", "f"];
    let mut ids = Vec::new();
    for seq in 0..8 {
        for key in keys {
            ids.push(submit_keyed(&host, "probe", key, &step(key, seq, 15), None).await);
        }
    }
    let mut by_key: HashMap<String, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut spans = Vec::new();
    for id in &ids {
        let job = host.wait(id).await;
        assert_eq!(job["attempts"], 1);
        let (key, seq, start, end) = logged_step(&job);
        assert_eq!(job["ordering_key"], key.as_str());
        by_key.entry(key).or_default().push((seq, start, end));
        spans.push((start, end));
    }
    for (key, mut steps) in by_key {
        assert_eq!(steps.len(), 8);
        // In the order they ran (starts; the clock is the guest's wall clock).
        steps.sort_by_key(|&(_, start, _)| start);
        let order: Vec<u64> = steps.iter().map(|s| s.0).collect();
        assert_eq!(
            order,
            (0..8).collect::<Vec<_>>(),
            "key {key} ran out of order"
        );
        for pair in steps.windows(2) {
            assert!(
                pair[1].1 >= pair[0].2,
                "key {key}: step {} started before step {} ended",
                pair[1].0,
                pair[0].0
            );
        }
    }
    // Different keys ran at the same time.
    let overlapping = spans
        .iter()
        .enumerate()
        .any(|(i, a)| spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1));
    assert!(overlapping, "keys never ran side by side");
    host.stop().await;
}

/// Within a key, submission order wins over priority: only the key's head is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_a_key_submission_order_beats_priority() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=4")
        .await;
    // Paused: everything is queued before anything can start.
    let (status, _) = host.post("/v1/functions/probe/pause", "").await;
    assert_eq!(status, 200);
    let mut ids = vec![submit_keyed(&host, "probe", "k", &step("k", 0, 5), Some(0)).await];
    for seq in 1..4 {
        ids.push(submit_keyed(&host, "probe", "k", &step("k", seq, 5), Some(9)).await);
    }
    let (status, _) = host.post("/v1/functions/probe/resume", "").await;
    assert_eq!(status, 200);
    let mut starts = Vec::new();
    for id in &ids {
        let (_, seq, start, _) = logged_step(&host.wait(id).await);
        starts.push((start, seq));
    }
    let sorted = {
        let mut s = starts.clone();
        s.sort();
        s
    };
    assert_eq!(
        sorted.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "the priority-0 head must run before the priority-9 jobs behind it"
    );
    host.stop().await;
}

/// A failing head holds its key (later jobs wait, queued, while it retries) and releases it
/// when it dies; other keys are not held up. Cancelling a head releases its key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_head_holds_its_key_until_it_dies() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_concurrency=4&max_attempts=3&backoff_base_ms=1000&backoff_max_ms=1000",
    )
    .await;
    let head = submit_keyed(
        &host,
        "probe",
        "k",
        &json!({ "action": "fail", "retryable": true }),
        None,
    )
    .await;
    let next = submit_keyed(&host, "probe", "k", &step("k", 1, 1), None).await;
    let last = submit_keyed(&host, "probe", "k", &step("k", 2, 1), None).await;
    let other = submit_keyed(&host, "probe", "other", &step("other", 0, 1), None).await;

    // The other key runs at once, while the head is still retrying.
    let other_job = host.wait(&other).await;
    assert_eq!(other_job["status"], "succeeded");
    // Read the key's tail first, then the head: if the head is still alive after, the tail was
    // read while the head held the key (retries draw a random delay, possibly a short one).
    let tail = [host.job(&next).await, host.job(&last).await];
    let head_now = host.job(&head).await;
    if matches!(
        head_now["status"].as_str(),
        Some("delayed" | "running" | "queued")
    ) {
        for job in tail {
            assert_eq!(job["status"], "queued", "{job}");
            assert_eq!(job["attempts"], 0, "{job}");
        }
    }

    let head_done = host.wait(&head).await;
    assert_eq!(head_done["status"], "dead", "{head_done}");
    assert_eq!(head_done["attempts"], 3);
    let died = millis(&head_done["finished_at"]);
    let (_, _, start1, end1) = logged_step(&host.wait(&next).await);
    let (_, _, start2, _) = logged_step(&host.wait(&last).await);
    assert!(start1 >= died, "the key moved on before its head died");
    assert!(start2 >= end1);

    // A delayed head holds its key; cancelling it lets the next job run.
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("sluice-ordering-key", "late")
        .header("sluice-delay", "3600")
        .body(step("late", 0, 1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let delayed: Value = r.json().await.unwrap();
    let delayed = delayed["id"].as_str().unwrap().to_string();
    let behind = submit_keyed(&host, "probe", "late", &step("late", 1, 1), None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(host.job(&behind).await["status"], "queued");
    let (status, _) = host.delete(&format!("/v1/jobs/{delayed}")).await;
    assert_eq!(status, 200);
    assert_eq!(host.wait(&behind).await["status"], "succeeded");

    // A key longer than the limit is refused, with nothing accepted.
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("sluice-ordering-key", "x".repeat(300))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    host.stop().await;
}

/// A key's waiting jobs survive a restart and keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_survives_a_restart() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=4")
        .await;
    host.post("/v1/functions/probe/pause", "").await;
    let mut ids = Vec::new();
    for seq in 0..5 {
        ids.push(submit_keyed(&host, "probe", "k", &step("k", seq, 2), None).await);
    }
    let data = host.data_dir.clone();
    let tmp = host.stop().await;

    let host = start_host_with(test_config(&data)).await;
    let (_, f) = host.get("/v1/functions/probe").await;
    assert_eq!(f["paused"], true, "a pause survives a restart");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(host.job(&ids[0]).await["status"], "queued");
    host.post("/v1/functions/probe/resume", "").await;
    let mut starts = Vec::new();
    for id in &ids {
        let (_, seq, start, end) = logged_step(&host.wait(id).await);
        starts.push((start, end, seq));
    }
    starts.sort();
    assert_eq!(
        starts.iter().map(|s| s.2).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    for pair in starts.windows(2) {
        assert!(pair[1].0 >= pair[0].1);
    }
    host.stop().await;
    drop(tmp);
}

/// Every deploy and settings change is a version; each attempt records the version that ran it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_and_settings_changes_are_versions() {
    let host = start_host().await;
    let v1 = host.deploy("echo", components::ECHO, "").await;
    assert_eq!(v1["version"], 1);
    let (status, v2) = host.post("/v1/functions/echo/pause", "").await;
    assert_eq!(status, 200);
    assert_eq!(v2["version"], 1, "pausing is not a new version");
    host.post("/v1/functions/echo/resume", "").await;
    let r = host
        .http
        .patch(host.url("/v1/functions/echo"))
        .json(&json!({ "max_concurrency": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, versions) = host.get("/v1/functions/echo/versions").await;
    assert_eq!(versions["current"], 2);
    let list = versions["versions"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["change"], "deploy");
    assert_eq!(list[0]["settings"]["max_concurrency"], 8);
    assert_eq!(list[1]["change"], "configure");
    assert_eq!(list[1]["changes"], json!(["max_concurrency 8 -> 3"]));
    assert_eq!(list[1]["settings"]["max_concurrency"], 3);
    assert_eq!(list[1]["current"], true);
    assert_eq!(list[0]["digest"], list[1]["digest"]);

    let job = host
        .wait(&host.submit("echo", "hi", "text/plain").await)
        .await;
    assert_eq!(job["version"], 2);
    assert_eq!(job["attempt_history"][0]["version"], 2);

    let (status, body) = host.get("/v1/functions/nope/versions").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");
    host.stop().await;
}

/// A deploy with query parameters (or no manifest) changes what it names and keeps the rest:
/// settings, subscriptions, config. A deploy with a manifest is the whole configuration: what
/// it leaves out takes its default, and its answer lists what changed, a dropped subscription
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_keeps_what_it_does_not_name_unless_a_manifest_says_all() {
    let host = start_host().await;
    let manifest = r#"
timeout_ms = 2000
memory_mb = 32
[[subscribe]]
topic = "audit"
[config]
greeting = "hi"
"#;
    let v1 = host
        .deploy_manifest("echo", components::ECHO, manifest)
        .await;
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["changes"], json!([]));

    // Query parameters: only max_concurrency changes.
    let v2 = host
        .deploy("echo", components::ECHO, "max_concurrency=3")
        .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["max_concurrency"], 3);
    assert_eq!(v2["timeout_ms"], 2000, "{v2}");
    assert_eq!(v2["memory_mb"], 32, "{v2}");
    assert_eq!(v2["subscriptions"][0]["topic"], "audit", "{v2}");
    assert_eq!(v2["config"]["greeting"], "hi", "{v2}");
    assert_eq!(v2["changes"], json!(["max_concurrency 8 -> 3"]));

    // The same again: nothing new.
    let same = host.deploy("echo", components::ECHO, "").await;
    assert_eq!(same["version"], 2, "{same}");

    // A manifest is everything: the subscription and the config end, timeouts go to defaults,
    // and the answer says so.
    let v3 = host
        .deploy_manifest("echo", components::ECHO, "max_concurrency = 3\n")
        .await;
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["subscriptions"], json!([]));
    let changes: Vec<&str> = v3["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(changes.contains(&"unsubscribed from audit"), "{changes:?}");
    assert!(changes.contains(&"config greeting removed"), "{changes:?}");
    assert!(
        changes.iter().any(|c| c.starts_with("timeout_ms 2000 -> ")),
        "{changes:?}"
    );
    assert!(
        changes.iter().any(|c| c.starts_with("memory_mb 32 -> ")),
        "{changes:?}"
    );
    let (_, versions) = host.get("/v1/functions/echo/versions").await;
    assert_eq!(versions["versions"][2]["changes"], v3["changes"]);
    host.stop().await;
}

/// A paused function accepts jobs (durably queued) and starts none until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_function_accepts_and_starts_nothing() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    let (status, f) = host.post("/v1/functions/echo/pause", "").await;
    assert_eq!(status, 200);
    assert_eq!(f["paused"], true);
    let ids: Vec<String> = futures_ids(&host, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, stats) = host.get("/v1/functions/echo/stats").await;
    assert_eq!(stats["paused"], true);
    assert_eq!(stats["queued"], 5, "{stats}");
    assert_eq!(stats["succeeded"], 0);
    for id in &ids {
        let job = host.job(id).await;
        assert_eq!(job["status"], "queued");
        assert_eq!(job["attempts"], 0);
    }
    let (status, f) = host.post("/v1/functions/echo/resume", "").await;
    assert_eq!(status, 200);
    assert_eq!(f["paused"], false);
    for id in &ids {
        assert_eq!(host.wait(id).await["status"], "succeeded");
    }
    let (status, body) = host.post("/v1/functions/nope/pause", "").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");
    host.stop().await;
}

async fn futures_ids(host: &TestHost, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(host.submit("echo", format!("job {i}"), "text/plain").await);
    }
    ids
}

/// Rollback while jobs are queued: the earlier code and settings become current again (as a
/// new version, without compiling), and the queued jobs run on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_while_jobs_are_queued() {
    let host = start_host().await;
    let v1 = host.deploy("f", components::ECHO, "timeout_ms=5000").await;
    let v2 = host
        .deploy("f", components::COUNTER, "timeout_ms=7000")
        .await;
    assert_eq!(v2["version"], 2);
    assert_ne!(v1["digest"], v2["digest"]);
    let compiled = host.metric("sluice_component_compilations_total").await;

    // Nothing earlier than version 1.
    let (status, body) = host
        .post_json("/v1/functions/f/rollback", &json!({ "version": 2 }))
        .await;
    assert_eq!(status, 409);
    assert_error(&body, "no_earlier_version");

    host.post("/v1/functions/f/pause", "").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(host.submit("f", format!("queued {i}"), "text/plain").await);
    }
    let (status, f) = host.post("/v1/functions/f/rollback", "").await;
    assert_eq!(status, 200, "{f}");
    assert_eq!(f["version"], 3);
    assert_eq!(f["change"], "rollback to 1");
    assert_eq!(f["digest"], v1["digest"]);
    assert_eq!(f["timeout_ms"], 5000);
    assert_eq!(f["paused"], true, "a rollback keeps the function paused");
    assert_eq!(
        host.metric("sluice_component_compilations_total").await,
        compiled,
        "a rollback must not compile"
    );
    host.post("/v1/functions/f/resume", "").await;
    for (i, id) in ids.iter().enumerate() {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded");
        assert_eq!(
            job["output"],
            format!("queued {i}"),
            "echo (version 1's code) ran"
        );
        assert_eq!(job["attempt_history"][0]["version"], 3);
    }
    // And forward again to the counter's code, by number.
    let (status, f) = host
        .post_json("/v1/functions/f/rollback", &json!({ "version": 2 }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(f["version"], 4);
    assert_eq!(f["digest"], v2["digest"]);
    let job = host.wait(&host.submit("f", "x", "text/plain").await).await;
    assert_eq!(job["output"], r#"{"calls":1}"#);

    let (status, body) = host
        .post_json("/v1/functions/f/rollback", &json!({ "version": 99 }))
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = host.post("/v1/functions/f/rollback?to=0", "").await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "version_not_found");
    let (_, versions) = host.get("/v1/functions/f/versions").await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 4);
    host.stop().await;
}
