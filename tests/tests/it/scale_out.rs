//! Several Sluice hosts on one NATS JetStream cluster: three real nats-server nodes on
//! loopback (every stream and bucket with 3 replicas), Sluice hosts in this process sharing
//! them through `--backend`, real HTTP, the real echo component.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::store::nats::NatsOptions;
use sluice_tests::nats::NatsCluster;
use sluice_tests::{TestHost, components, start_host_with, test_config};

/// A host on the cluster, with its own (local-only) data directory.
async fn host_on(cluster: &NatsCluster, dir: &tempfile::TempDir) -> TestHost {
    let mut config = test_config(dir.path());
    let mut nats = NatsOptions::new(&cluster.url());
    nats.replicas = 3;
    config.backend = Some(nats);
    start_host_with(config).await
}

/// Polls `GET path` on `host` until `ready` holds (10 s at most).
async fn until(host: &TestHost, path: &str, what: &str, ready: impl Fn(u16, &Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = host.get(path).await;
        if ready(status, &body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_submitted_on_one_host_run_and_are_polled_on_the_other() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;

    // A deploy on A reaches B.
    a.deploy("echo", components::ECHO, "max_concurrency=4")
        .await;
    until(
        &b,
        "/v1/functions/echo",
        "B learns of the deploy",
        |s, _| s == 200,
    )
    .await;

    // Submitted on either host, run by whichever leases it, read back on the other.
    let mut submitted = Vec::new();
    for n in 0..20 {
        let (on, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let input = format!("job {n}");
        let id = on.submit("echo", input.clone(), "text/plain").await;
        submitted.push((id, input, other));
    }
    for (id, input, other) in &submitted {
        let job = other.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output"], input.as_str(), "{job}");
        assert_eq!(job["attempts"], 1, "ran once: {job}");
    }

    // A redeploy with new settings on B reaches A: one version, two hosts.
    let f = b
        .deploy("echo", components::ECHO, "max_concurrency=2")
        .await;
    assert_eq!(f["version"], 2, "{f}");
    until(
        &a,
        "/v1/functions/echo",
        "A learns of the new settings",
        |_, f| f["max_concurrency"] == 2 && f["version"] == 2,
    )
    .await;
    let id = a.submit("echo", "after", "text/plain").await;
    assert_eq!(b.wait(&id).await["output"], "after");

    // A delete on A reaches B: it refuses new jobs for the function.
    let (status, body) = a.delete("/v1/functions/echo").await;
    assert!(status == 200 || status == 204, "{status} {body}");
    until(
        &b,
        "/v1/functions/echo",
        "B learns of the delete",
        |s, _| s == 404,
    )
    .await;
    let (status, _) = b.post("/v1/functions/echo/jobs", "late").await;
    assert_eq!(status, 404);

    a.stop().await;
    b.stop().await;
}
