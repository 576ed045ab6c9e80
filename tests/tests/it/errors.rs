//! Bad input gets a clear error in the one JSON shape, and changes nothing.

use serde_json::json;
use sluice_tests::{assert_error, components, start_host, start_host_with, test_config};

/// Not wasm, a core module, a broken component, and a component of another world: each is a
/// 400 saying which, and nothing is deployed or changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_what_is_not_a_sluice_component() {
    let host = start_host().await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not wasm", b"hello".to_vec(), "not WebAssembly"),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        (
            "broken component",
            b"\0asm\x0d\0\x01\0\xff\xff".to_vec(),
            "invalid component",
        ),
        (
            "empty component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            "does not implement the Sluice handler world",
        ),
    ];
    for (what, bytes, message) in cases {
        let (status, body) = host.deploy_raw("thing", bytes, "").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_error(&body, "invalid_component");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(message),
            "{what}: {body}"
        );
    }
    let (status, body) = host.get("/v1/functions/thing").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");

    // A bad redeploy leaves the current version serving.
    host.deploy("echo", components::ECHO, "").await;
    let (status, _) = host
        .deploy_raw("echo", b"\0asm\x01\0\0\0".to_vec(), "")
        .await;
    assert_eq!(status, 400);
    let (_, f) = host.get("/v1/functions/echo").await;
    assert_eq!(f["version"], 1);
    let job = host
        .wait(&host.submit("echo", "still here", "text/plain").await)
        .await;
    assert_eq!(job["output"], "still here");
    host.stop().await;
}

/// Bad names, unknown manifest keys and out-of-range settings are 400s naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_bad_names_and_settings() {
    let host = start_host().await;
    let wasm = std::fs::read(components::ECHO).unwrap();
    for (name, settings, code, needle) in [
        ("Echo", "", "invalid_name", "invalid function name"),
        ("1echo", "", "invalid_name", "invalid function name"),
        ("echo", "retries=3", "invalid_manifest", "retries"),
        (
            "echo",
            "max_concurrency=0",
            "invalid_manifest",
            "max_concurrency",
        ),
        ("echo", "memory_mb=100000", "invalid_manifest", "memory_mb"),
        ("echo", "timeout_ms=abc", "invalid_manifest", "timeout_ms"),
        ("echo", "name=other", "invalid_manifest", "other"),
    ] {
        let (status, body) = host.deploy_raw(name, wasm.clone(), settings).await;
        assert_eq!(status, 400, "{name}?{settings}: {body}");
        assert_error(&body, code);
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    let r = host
        .http
        .put(host.url("/v1/functions/echo"))
        .header("content-type", "text/plain")
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_error(&r.json().await.unwrap(), "unsupported_media_type");
    let (_, list) = host.get("/v1/functions").await;
    assert_eq!(list["functions"], json!([]));
    host.stop().await;
}

/// Unknown functions and jobs are 404s (malformed ids too); output before success is 409;
/// bad queries 400; wrong methods 405; unknown routes 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_and_methods() {
    let host = start_host().await;
    let (status, body) = host.post("/v1/functions/nope/jobs", "x").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");

    for path in [
        "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "/v1/jobs/not-an-id",
        "/v1/jobs/not-an-id/output",
    ] {
        let (status, body) = host.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_error(&body, "job_not_found");
    }

    host.deploy("probe", components::PROBE, "").await;
    let id = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 300}))
        .await;
    let (status, body) = host.get(&format!("/v1/jobs/{id}/output")).await;
    assert_eq!(status, 409);
    assert_error(&body, "output_not_ready");
    let failed = host
        .wait(&host.submit_json("probe", &json!({"action": "panic"})).await)
        .await;
    let (status, _) = host
        .get(&format!(
            "/v1/jobs/{}/output",
            failed["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 409, "a failed job has no output");

    for query in [
        "status=bogus",
        "limit=0",
        "limit=5000",
        "cursor=xyz",
        "colour=red",
    ] {
        let (status, body) = host.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_error(&body, "invalid_query");
    }
    let (status, body) = host.get(&format!("/v1/jobs/{id}?wait=soon")).await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_query");
    // A number too large for a duration is capped by the host's max wait, not a panic.
    let (status, body) = host.get(&format!("/v1/jobs/{id}?wait=1e300")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], id.as_str(), "{body}");

    let (status, body) = host.delete("/v1/jobs").await;
    assert_eq!(status, 405);
    assert_error(&body, "method_not_allowed");
    assert_eq!(host.get("/v1/functions/probe/jobs").await.0, 405);
    let (status, body) = host.get("/v2/everything").await;
    assert_eq!(status, 404);
    assert_error(&body, "not_found");

    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("sluice-correlation-id", "")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    host.wait(&id).await;
    host.stop().await;
}

/// A body over the configured limit is a 413 and creates no job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    config.max_body_bytes = 1024 * 1024;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    let (status, body) = host
        .post("/v1/functions/echo/jobs", vec![b'x'; 1024 * 1024 + 1])
        .await;
    assert_eq!(status, 413);
    assert_error(&body, "payload_too_large");
    let (_, jobs) = host.get("/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    let id = host
        .submit("echo", vec![b'y'; 1024 * 1024], "text/plain")
        .await;
    assert_eq!(host.wait(&id).await["output_size"], 1024 * 1024);
    host.stop().await;
}

/// Delete answers 409 while jobs are queued or running; with force it cancels them (visible as
/// `cancelled`), then the function is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_never_loses_a_job_silently() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=1")
        .await;
    let running = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 5000}))
        .await;
    let queued = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 1}))
        .await;

    let (status, body) = host.delete("/v1/functions/probe").await;
    assert_eq!(status, 409);
    assert_error(&body, "function_busy");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("force=true")
    );
    let (_, f) = host.get("/v1/functions/probe").await;
    assert_eq!(f["pending_jobs"], 2);

    let (status, body) = host.delete("/v1/functions/probe?force=true").await;
    assert_eq!(status, 200);
    assert_eq!(body["cancelled_jobs"].as_array().unwrap().len(), 2);
    for id in [&running, &queued] {
        let job = host.job(id).await;
        assert_eq!(job["status"], "cancelled", "{job}");
        assert!(job["error"].as_str().unwrap().contains("deleted"));
    }
    let (status, _) = host.get("/v1/functions/probe").await;
    assert_eq!(status, 404);
    let (status, body) = host.post("/v1/functions/probe/jobs", "{}").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");

    // An idle function deletes without force; a second delete finds nothing.
    host.deploy("echo", components::ECHO, "").await;
    host.wait(&host.submit("echo", "x", "text/plain").await)
        .await;
    assert_eq!(host.delete("/v1/functions/echo").await.0, 200);
    let (status, body) = host.delete("/v1/functions/echo").await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");
    host.stop().await;
}
