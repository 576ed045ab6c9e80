//! Batch consumption: a function deployed with `batch = { max_size, max_wait_ms }` gets up to
//! `max_size` events per call of its `handle-batch`, and each event's job still ends on its
//! own: its own output, failure, retries and dead letter.

use serde_json::{Value, json};
use sluice_tests::{components, start_host};

/// 60 ledger entries submitted together reach the handler in batches of at most 50; a bad
/// entry fails alone (permanently), a retryable one is retried alone until it is dead, and the
/// rest of their batches succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_handler_takes_events_together_and_each_job_ends_on_its_own() {
    let host = start_host().await;
    let manifest = format!(
        "{}max_attempts = 2\nbackoff_base_ms = 10\nbackoff_max_ms = 10\n",
        std::fs::read_to_string(components::LEDGER_MANIFEST).unwrap()
    );
    let f = host.deploy_manifest("ledger", components::LEDGER, &manifest).await;
    assert_eq!(f["batch"], json!({"max_size": 50, "max_wait_ms": 200}), "{f}");
    let items: Vec<Value> = (0..60)
        .map(|i| match i {
            7 => json!({"account": "a"}),
            13 => json!({"account": "a", "amount": 1, "retry": true}),
            _ => json!({"account": "a", "amount": i}),
        })
        .collect();
    let r = host
        .http
        .post(host.url("/v1/functions/ledger/jobs:batch"))
        .header("content-type", "application/json")
        .body(Value::Array(items).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ids: Vec<String> = r.json::<Value>().await.unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let mut sizes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let job = host.wait(id).await;
        match i {
            7 => {
                assert_eq!(job["status"], "failed", "{job}");
                assert!(job["error"].as_str().unwrap().contains("amount"), "{job}");
            }
            13 => {
                assert_eq!(job["status"], "dead", "{job}");
                assert_eq!(job["attempts"], 2);
            }
            _ => {
                assert_eq!(job["status"], "succeeded", "{job}");
                let out: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
                assert_eq!(out["amount"], json!(i as f64), "{out}");
                sizes.push(out["batch_size"].as_u64().unwrap());
                assert!(job["log"].as_str().unwrap().contains("batch of"), "{job}");
            }
        }
    }
    let largest = *sizes.iter().max().unwrap();
    assert!(largest > 1 && largest <= 50, "batch sizes {sizes:?}");
    assert!(sizes.iter().filter(|s| **s >= 10).count() >= 10, "few real batches: {sizes:?}");

    // One event that brings the whole call down (a panic) fails alone: the host runs the
    // batch's events one by one, and the others succeed.
    let items: Vec<Value> = (0..20)
        .map(|i| match i {
            5 => json!({"amount": 1, "panic": true}),
            _ => json!({"amount": i}),
        })
        .collect();
    let r = host
        .http
        .post(host.url("/v1/functions/ledger/jobs:batch"))
        .header("content-type", "application/json")
        .body(Value::Array(items).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ids: Vec<String> = r.json::<Value>().await.unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let job = host.wait(id).await;
        if i == 5 {
            assert_eq!(job["status"], "dead", "{job}");
            assert!(job["error"].as_str().unwrap().contains("panic"), "{job}");
        } else {
            assert_eq!(job["status"], "succeeded", "{job}");
            assert_eq!(job["attempts"], 1, "another's panic cost this job nothing: {job}");
        }
    }

    // A handler written with #[handler] answers a batch event by event, in one sandbox.
    host.deploy_manifest(
        "echo",
        components::ECHO,
        "name = \"echo\"\nbatch = { max_size = 10, max_wait_ms = 50 }\n",
    )
    .await;
    let mut echoed = Vec::new();
    for i in 0..12 {
        echoed.push(host.submit("echo", format!("hello {i}"), "text/plain").await);
    }
    for (i, id) in echoed.iter().enumerate() {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output"], format!("hello {i}"));
    }

    // Bad batch settings are refused at deploy.
    let (status, body) = host
        .deploy_manifest_raw("ledger", components::LEDGER, "batch = { max_size = 0 }\n")
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = host
        .deploy_manifest_raw("ledger", components::LEDGER, "batch = { size = 3 }\n")
        .await;
    assert_eq!(status, 400, "{body}");
}
