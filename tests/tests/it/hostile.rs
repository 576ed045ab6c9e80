//! Hostile handlers: an endless loop, a memory bomb, deep recursion, a panic and a log flood
//! each end as a failed attempt with the right error, and the host keeps serving.

use serde_json::{Value, json};
use sluice_tests::{TestHost, components, start_host};

/// Deploys probe so that a failed attempt is final (no retries), with extra settings.
async fn deploy_probe_once(host: &TestHost, extra: &str) {
    host.deploy(
        "probe",
        components::PROBE,
        &format!("max_attempts=1&{extra}"),
    )
    .await;
}

/// Runs one probe action to its end; returns the job.
async fn run(host: &TestHost, action: Value) -> Value {
    host.wait(&host.submit_json("probe", &action).await).await
}

/// The host still runs a job after the hostile one.
async fn still_serving(host: &TestHost) {
    host.deploy("echo", components::ECHO, "").await;
    let job = host
        .wait(&host.submit("echo", "alive", "text/plain").await)
        .await;
    assert_eq!(job["output"], "alive", "{job}");
}

fn error(job: &Value) -> &str {
    job["attempt_history"][0]["error"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_times_out() {
    let host = start_host().await;
    deploy_probe_once(&host, "timeout_ms=300").await;
    let job = run(&host, json!({"action": "loop"})).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(error(&job), "timed out after 300 ms", "{job}");
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_names_the_limit() {
    let host = start_host().await;
    deploy_probe_once(&host, "memory_mb=16").await;
    let job = run(&host, json!({"action": "alloc", "mb": 1000})).await;
    assert_eq!(job["status"], "dead", "{job}");
    let e = error(&job);
    assert!(e.contains("memory limit of 16 MiB exceeded"), "{e}");
    // Within the limit, the same handler works.
    let job = run(&host, json!({"action": "alloc", "mb": 4})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_stack_cleanly() {
    let host = start_host().await;
    deploy_probe_once(&host, "").await;
    let job = run(&host, json!({"action": "recurse", "depth": 100_000_000u64})).await;
    assert_eq!(job["status"], "dead", "{job}");
    let e = error(&job);
    assert!(
        e.contains("stack overflow") || e.contains("out of bounds"),
        "{e}"
    );
    let job = run(&host, json!({"action": "recurse", "depth": 100})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_fails_with_its_message() {
    let host = start_host().await;
    deploy_probe_once(&host, "").await;
    let job = run(&host, json!({"action": "panic"})).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert!(error(&job).contains("probe was asked to panic"), "{job}");
    assert!(
        job["log"].as_str().unwrap().contains("panicked at"),
        "{job}"
    );
    still_serving(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_bounded() {
    let host = start_host().await;
    deploy_probe_once(&host, "").await;
    let job = run(&host, json!({"action": "flood", "mb": 8})).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let log = job["log"].as_str().unwrap();
    assert!(log.len() <= 70 * 1024, "log of {} bytes", log.len());
    assert!(log.contains("flood flood"), "{}", &log[..100]);
    assert!(log.contains("dropped"), "{}", &log[log.len() - 200..]);
    still_serving(&host).await;
}
