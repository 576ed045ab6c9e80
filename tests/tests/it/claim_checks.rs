//! Claim checks: large payloads and outputs stored once as chunked blobs, streamed through
//! handlers whose memory is far smaller, streamed out of the API, and deleted with their jobs.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_tests::{components, start_host, start_host_with, test_config};

/// `len` bytes that are not all alike (so a wrong chunk shows in the checksum).
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 50 MB event fanned out to three subscribers is stored once; each subscriber streams it
/// through a 16 MiB sandbox and gets the right checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_event_is_stored_once_and_streamed_to_every_subscriber() {
    let host = start_host().await;
    for name in ["sum-a", "sum-b", "sum-c"] {
        host.deploy_manifest(
            name,
            components::CHECKSUM,
            &format!("name = \"{name}\"\nmemory_mb = 16\ntimeout_ms = 60000\n[[subscribe]]\ntopic = \"uploads\"\n"),
        )
        .await;
    }
    let data = payload(50_000_000);
    let expected = sha256(&data);
    let r = host
        .http
        .post(host.url("/v1/topics/uploads/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "upload-1")
        .header("ce-source", "/uploads")
        .header("ce-type", "file.uploaded")
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let answer: Value = r.json().await.unwrap();
    let deliveries = answer["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3);
    assert_eq!(host.metric("sluice_blobs").await, 1.0, "stored once");
    assert_eq!(host.metric("sluice_blob_bytes").await, 50_000_000.0);
    for d in deliveries {
        let job = host.wait(d["job_id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["input_size"], 50_000_000);
        let out: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
        assert_eq!(out["sha256"], expected.as_str());
        assert_eq!(out["bytes"], 50_000_000);
        assert_eq!(out["large"], true);
    }
    // A small payload stays inline and reads the same way.
    let small = host.submit("sum-a", "tiny", "text/plain").await;
    let job = host.wait(&small).await;
    let out: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    assert_eq!(out["sha256"], sha256(b"tiny"));
    assert_eq!(out["large"], false);
    assert_eq!(host.metric("sluice_blobs").await, 1.0);
    host.stop().await;
}

/// A handler streams a 40 MiB output out of a 16 MiB sandbox; the API streams it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_output_streams_out() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "memory_mb=16&timeout_ms=60000")
        .await;
    let id = host
        .submit_json("probe", &json!({"action": "produce", "mb": 40}))
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output_size"], 40 << 20);
    assert_eq!(job["output"], Value::Null, "too large to inline");
    let r = host
        .http
        .get(host.url(&format!("/v1/jobs/{id}/output")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 40 << 20);
    let piece: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    assert!(body.chunks(1 << 20).all(|c| c == piece.as_slice()));
    assert_eq!(host.metric("sluice_blobs").await, 1.0);
    host.stop().await;
}

/// A blob goes when the last job that refers to it is deleted by the retention sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_deleted_with_their_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.job_retention = Duration::from_millis(500);
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    // Echo answers with its input: the output is the same blob (two references, one copy).
    let data = payload(600_000);
    let id = host
        .submit("echo", data.clone(), "application/octet-stream")
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(host.metric("sluice_blobs").await, 1.0);
    let (_, _, out) = host.get_raw(&format!("/v1/jobs/{id}/output")).await;
    assert_eq!(out, data);
    let deadline = Instant::now() + Duration::from_secs(20);
    while host.metric("sluice_blobs").await > 0.0 {
        assert!(Instant::now() < deadline, "the blob outlived its job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(host.metric("sluice_blob_bytes").await, 0.0);
    assert_eq!(host.get(&format!("/v1/jobs/{id}")).await.0, 404);
    host.stop().await;
}

/// Above the maximum body, 413 at once, for jobs and events alike; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_above_the_limit_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_body_bytes = 1 << 20;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    for path in ["/v1/functions/echo/jobs", "/v1/topics/t/events"] {
        let r = host
            .http
            .post(host.url(path))
            .header("ce-specversion", "1.0")
            .header("ce-id", "1")
            .header("ce-source", "/s")
            .header("ce-type", "t")
            // Just over the limit: the host answers before reading it all, and a much larger
            // body could still be on its way when the connection closes.
            .body(vec![0u8; (1 << 20) + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 413, "{path}");
    }
    assert_eq!(host.metric("sluice_blobs").await, 0.0);
    assert_eq!(host.metric("sluice_jobs_accepted_total").await, 0.0);
    host.stop().await;
}

/// A handler reads only its own job's blob: another function's large payload is not readable by
/// its digest (which anyone who knows the content can compute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_cannot_read_another_jobs_blob() {
    let host = start_host().await;
    host.deploy("sum", components::CHECKSUM, "").await;
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    let secret = payload(1_000_000);
    let digest = sha256(&secret);
    let id = host.submit("sum", secret, "application/octet-stream").await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(host.metric("sluice_blobs").await, 1.0, "stored as a blob");

    let id = host
        .submit_json("probe", &json!({"action": "read_blob", "digest": digest}))
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let out: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    assert_eq!(out["ok"], false, "read another job's blob: {out}");
    let detail = out["detail"].as_str().unwrap();
    assert!(detail.contains("not this job's input"), "{detail}");
    host.stop().await;
}
