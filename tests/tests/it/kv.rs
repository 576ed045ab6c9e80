//! Key-value state (`wasi:keyvalue`): writes commit with the attempt's success or not at all,
//! reads see committed state plus the attempt's own writes, concurrent read-modify-writes lose
//! nothing (a conflicting attempt runs again), and the operator API reads and writes the same
//! state. The test host has two shards, so jobs of both the key-value shard (one transaction)
//! and the other (state first, with a marker) are exercised.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, sluice_binary, start_host};

async fn kv_value(host: &TestHost, function: &str, key: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = host
        .get_raw(&format!("/v1/functions/{function}/kv/{key}"))
        .await;
    (status, body)
}

fn answer(job: &Value) -> Value {
    serde_json::from_str(job["output"].as_str().unwrap()).unwrap()
}

/// 200 visits submitted at once to `visits` (a plain get + set of a counter, 8 attempts at a
/// time) end at exactly 200, and every visit saw a different count: no update was lost and
/// none applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_modify_writes_lose_nothing() {
    let host = start_host().await;
    host.deploy("visits", components::VISITS, "max_concurrency=8")
        .await;
    let mut submits = Vec::new();
    for i in 0..200 {
        let (http, url) = (host.http.clone(), host.url("/v1/functions/visits/jobs"));
        let visitor = if i % 2 == 0 { "ada" } else { "" };
        submits.push(tokio::spawn(async move {
            let r = http.post(url).body(visitor).send().await.unwrap();
            assert_eq!(r.status(), 202);
            let body: Value = r.json().await.unwrap();
            body["id"].as_str().unwrap().to_string()
        }));
    }
    let mut counts = BTreeSet::new();
    let mut conflicts = 0;
    for s in submits {
        let id = s.await.unwrap();
        let job = host.wait(&id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        counts.insert(answer(&job)["visits"].as_u64().unwrap());
        conflicts += job["kv_conflicts"].as_u64().unwrap();
    }
    assert_eq!(counts, (1..=200).collect::<BTreeSet<u64>>());
    assert_eq!(
        kv_value(&host, "visits", "visits").await,
        (200, b"200".to_vec())
    );
    assert_eq!(
        kv_value(&host, "visits", "visitor/ada").await,
        (200, b"100".to_vec())
    );
    eprintln!("{conflicts} attempts ran again after a conflict");
    host.stop().await;
}

/// A failed attempt's writes are never kept (though it read them back itself); a successful
/// one's are, visible to the next attempt and to the API; the API's writes reach handlers;
/// each function sees only its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_only_with_success_and_only_for_their_function() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=2&backoff_base_ms=10&backoff_max_ms=10",
    )
    .await;
    host.deploy("visits", components::VISITS, "").await;

    let id = host
        .submit_json(
            "probe",
            &json!({"action": "kv_set", "key": "color", "value": "red", "fail": true}),
        )
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(kv_value(&host, "probe", "color").await.0, 404);

    let id = host
        .submit_json(
            "probe",
            &json!({"action": "kv_set", "key": "color", "value": "blue"}),
        )
        .await;
    let job = host.wait(&id).await;
    assert_eq!(answer(&job)["detail"], "set color = blue", "{job}");
    assert_eq!(
        kv_value(&host, "probe", "color").await,
        (200, b"blue".to_vec())
    );
    let read = |key: &'static str| {
        let host = &host;
        async move {
            let id = host
                .submit_json("probe", &json!({"action": "kv_get", "key": key}))
                .await;
            answer(&host.wait(&id).await)
        }
    };
    assert_eq!(read("color").await["detail"], "blue");

    // The API writes what handlers read, and lists keys by prefix.
    let (status, body) = host.put("/v1/functions/probe/kv/color", "green").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(read("color").await["detail"], "green");
    host.put("/v1/functions/probe/kv/a/1", "x").await;
    host.put("/v1/functions/probe/kv/a/2", "y").await;
    let (_, list) = host.get("/v1/functions/probe/kv?prefix=a/").await;
    assert_eq!(list["keys"], json!(["a/1", "a/2"]), "{list}");
    let (_, page) = host.get("/v1/functions/probe/kv?limit=2").await;
    assert_eq!(page["keys"], json!(["a/1", "a/2"]));
    assert_eq!(page["next_cursor"], "2");
    let (_, rest) = host.get("/v1/functions/probe/kv?cursor=2").await;
    assert_eq!(rest["keys"], json!(["color"]));

    // Another function's state is its own.
    assert_eq!(read("visits").await["ok"], false);
    host.wait(&host.submit("visits", "", "text/plain").await)
        .await;
    assert_eq!(kv_value(&host, "probe", "visits").await.0, 404);
    assert_eq!(read("visits").await["ok"], false);

    let (status, _) = host.delete("/v1/functions/probe/kv/color").await;
    assert_eq!(status, 200);
    assert_eq!(read("color").await["ok"], false);
    let (status, body) = host.delete("/v1/functions/probe/kv/color").await;
    assert_eq!(status, 404);
    assert_error(&body, "key_not_found");
    let (status, body) = host
        .put("/v1/functions/probe/kv/big", vec![b'x'; (1 << 20) + 1])
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_value");
    let (status, body) = host.get("/v1/functions/nobody/kv").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");

    // A deleted function's state goes with it.
    host.delete("/v1/functions/probe?force=true").await;
    host.deploy("probe", components::PROBE, "").await;
    assert_eq!(kv_value(&host, "probe", "a/1").await.0, 404);
    host.stop().await;
}

/// `sluice kv` sets, gets, lists and deletes keys of a running host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_and_writes_state() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "").await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(sluice_binary())
            .arg("kv")
            .args(args)
            .env("SLUICE_URL", &host.url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(cli(&["set", "probe", "greeting", "hello"]).0);
    assert!(cli(&["set", "probe", "other", "x"]).0);
    assert_eq!(cli(&["get", "probe", "greeting"]).1, "hello");
    assert_eq!(cli(&["list", "probe"]).1, "greeting\nother\n");
    assert_eq!(cli(&["list", "probe", "--prefix", "gr"]).1, "greeting\n");
    assert!(cli(&["del", "probe", "greeting"]).0);
    let (ok, _, err) = cli(&["get", "probe", "greeting"]);
    assert!(!ok);
    assert!(err.contains("has no key"), "{err}");
    host.stop().await;
}

/// A function's state is bounded (`--max-kv-bytes`): a success whose writes would pass the
/// bound keeps nothing and fails retryably, saying which flag sets it; the API answers 507.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_refuses_more() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = sluice_tests::test_config(tmp.path());
    config.max_kv_bytes = 1000;
    let host = sluice_tests::start_host_with(config).await;
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    let set = |key: &'static str| {
        let host = &host;
        async move {
            let id = host
                .submit_json(
                    "probe",
                    &json!({"action": "kv_set", "key": key, "value": "x".repeat(600)}),
                )
                .await;
            host.wait(&id).await
        }
    };
    assert_eq!(set("first").await["status"], "succeeded");
    let job = set("second").await;
    assert_eq!(job["status"], "dead", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("--max-kv-bytes"),
        "{job}"
    );
    assert_eq!(kv_value(&host, "probe", "second").await.0, 404);
    let (status, body) = host
        .put("/v1/functions/probe/kv/third", "y".repeat(600))
        .await;
    assert_eq!(status, 507, "{body}");
    assert_error(&body, "kv_full");
    // Replacing a value with a smaller one is always possible.
    let (status, _) = host.put("/v1/functions/probe/kv/first", "small").await;
    assert_eq!(status, 200);
    host.stop().await;
}
