//! Restarting on the same data file: functions stay deployed without recompiling, finished jobs
//! stay queryable, queued jobs run.

use serde_json::json;
use sluice_tests::{components, start_host, start_host_with, test_config};

/// Everything survives a restart, and start-up loads compiled artifacts instead of compiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_functions_and_jobs() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    host.deploy("counter", components::COUNTER, "").await;
    assert_eq!(
        host.metric("sluice_component_compilations_total").await,
        2.0
    );
    let done = host.submit("echo", "before restart", "text/plain").await;
    host.wait(&done).await;
    let data = host.data_dir.clone();
    let tmp = host.stop().await;

    let host = start_host_with(test_config(&data)).await;
    assert_eq!(
        host.metric("sluice_component_compilations_total").await,
        0.0,
        "start-up must not compile"
    );
    let (_, list) = host.get("/v1/functions").await;
    assert_eq!(list["functions"].as_array().unwrap().len(), 2);
    let job = host.job(&done).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["output"], "before restart");
    let job = host
        .wait(&host.submit("counter", "", "text/plain").await)
        .await;
    assert_eq!(job["output"], r#"{"calls":1}"#);
    // Redeploying known code with new settings reuses its compiled artifact.
    let f = host
        .deploy("echo", components::ECHO, "max_concurrency=3")
        .await;
    assert_eq!(f["version"], 2);
    assert_eq!(
        host.metric("sluice_component_compilations_total").await,
        0.0
    );
    host.stop().await;
    drop(tmp);
}

/// Jobs still queued at shutdown (and one whose attempt was cut off by a zero grace period)
/// run after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_run_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    config.grace_period = std::time::Duration::ZERO;
    let host = start_host_with(config).await;
    host.deploy("probe", components::PROBE, "max_concurrency=1")
        .await;
    let first = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 1500}))
        .await;
    let mut rest = Vec::new();
    for i in 0..3 {
        rest.push(
            host.submit_json("probe", &json!({"action": "sleep", "ms": i}))
                .await,
        );
    }
    // Wait until the first attempt is durably running, then stop without grace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while host.job(&first).await["status"] != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the first job never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for id in &rest {
        assert_eq!(host.job(id).await["status"], "queued");
    }
    host.stop().await;

    let host = start_host_with(test_config(tmp.path())).await;
    let job = host.wait(&first).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "the cut-off attempt counts, the rerun is attempt 2"
    );
    for id in &rest {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1);
    }
    host.stop().await;
}
