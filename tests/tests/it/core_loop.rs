//! The core loop end to end: deploy a real component, submit over HTTP, poll, read the output.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{components, millis, start_host};

/// A submit answers 202 with Location, Retry-After and the job id; the job then succeeds with
/// the echo of its input, shown inline and served raw with the handler's content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip() {
    let host = start_host().await;
    let f = host
        .deploy("echo", components::ECHO, "max_concurrency=4")
        .await;
    assert_eq!(f["name"], "echo");
    assert_eq!(f["version"], 1);
    assert_eq!(f["max_concurrency"], 4);

    let r = host
        .http
        .post(host.url("/v1/functions/echo/jobs"))
        .header("content-type", "text/plain")
        .body("hello, sluice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["status"], "queued");
    assert_eq!(location, format!("/v1/jobs/{id}"));

    let job = host.wait(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["function"], "echo");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["output"], "hello, sluice");
    assert_eq!(job["output_content_type"], "text/plain");
    assert_eq!(job["input_content_type"], "text/plain");
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["output_url"], format!("/v1/jobs/{id}/output"));
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(job[field].is_string(), "{field} missing: {job}");
    }
    assert!(millis(&job["created_at"]) <= millis(&job["started_at"]));
    assert!(millis(&job["started_at"]) <= millis(&job["finished_at"]));

    let (status, content_type, body) = host.get_raw(&format!("/v1/jobs/{id}/output")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain");
    assert_eq!(body, b"hello, sluice");
    host.stop().await;
}

/// Binary input comes back byte for byte; non-UTF-8 output is not inlined but is served raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_output_is_served_raw() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    let input: Vec<u8> = (0..=255u8).rev().collect();
    let id = host
        .submit("echo", input.clone(), "application/octet-stream")
        .await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        job["output"],
        Value::Null,
        "binary output must not be inlined"
    );
    assert_eq!(job["output_size"], 256);
    let (status, content_type, body) = host.get_raw(&format!("/v1/jobs/{id}/output")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/octet-stream");
    assert_eq!(body, input);
    host.stop().await;
}

/// Output is served with `nosniff`, and an active type (HTML) as an attachment, so a handler's
/// output never runs in a browser on the API's origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_output_types_download_instead_of_rendering() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    for (content_type, disposition) in [
        ("text/html", "attachment"),
        ("image/svg+xml", "attachment"),
        ("text/plain; charset=utf-8", "inline"),
        ("application/json", "inline"),
    ] {
        let id = host
            .submit("echo", "<script>1</script>", content_type)
            .await;
        assert_eq!(host.wait(&id).await["status"], "succeeded");
        let response = host
            .http
            .get(host.url(&format!("/v1/jobs/{id}/output")))
            .send()
            .await
            .unwrap();
        let headers = response.headers();
        assert_eq!(
            headers["x-content-type-options"], "nosniff",
            "{content_type}"
        );
        assert_eq!(
            headers["content-disposition"], disposition,
            "{content_type}"
        );
    }
    host.stop().await;
}

/// The JSON example computes an order total; bad input is a permanent failure with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_total_json() {
    let host = start_host().await;
    host.deploy("order-total", components::ORDER_TOTAL, "")
        .await;
    let order = json!({"id": "o-7", "items": [
        {"sku": "tea", "quantity": 2, "unit_cents": 450},
        {"sku": "cake", "quantity": 1, "unit_cents": 1200}
    ], "discount_percent": 10});
    let job = host
        .wait(&host.submit_json("order-total", &order).await)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let total: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    assert_eq!(
        total,
        json!({"id": "o-7", "items": 3, "subtotal_cents": 2100, "discount_cents": 210, "total_cents": 1890})
    );
    assert_eq!(job["output_content_type"], "application/json");
    assert!(
        job["log"]
            .as_str()
            .unwrap()
            .contains("[info] order o-7: 3 items"),
        "{job}"
    );

    let job = host
        .wait(
            &host
                .submit("order-total", "not json", "application/json")
                .await,
        )
        .await;
    assert_eq!(job["status"], "failed");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("not the expected JSON"),
        "{job}"
    );

    let job = host
        .wait(
            &host
                .submit_json("order-total", &json!({"id": "o-8", "items": []}))
                .await,
        )
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"], "order o-8 has no items");
    host.stop().await;
}

/// Deploying through multipart (what `sluice deploy` sends) applies the manifest; a redeploy
/// bumps the version; list and show agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_manifest_and_redeploy() {
    let host = start_host().await;
    let wasm = std::fs::read(components::ORDER_TOTAL).unwrap();
    let manifest = std::fs::read_to_string(components::ORDER_TOTAL_MANIFEST).unwrap();
    let deploy = |wasm: Vec<u8>, manifest: String| {
        let form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(wasm))
            .part("manifest", reqwest::multipart::Part::text(manifest));
        host.http
            .put(host.url("/v1/functions/order-total"))
            .multipart(form)
            .send()
    };
    let r = deploy(wasm.clone(), manifest.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let f: Value = r.json().await.unwrap();
    assert_eq!(
        (
            f["version"].as_u64(),
            f["timeout_ms"].as_u64(),
            f["memory_mb"].as_u64()
        ),
        (Some(1), Some(2000), Some(32))
    );

    let r = deploy(
        wasm,
        manifest.replace("max_concurrency = 8", "max_concurrency = 3"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let (_, f) = host.get("/v1/functions/order-total").await;
    assert_eq!(f["version"], 2);
    assert_eq!(f["max_concurrency"], 3);
    assert_eq!(f["pending_jobs"], 0);
    assert!(f["digest"].as_str().unwrap().starts_with("sha256:"));

    // The same code with the same settings again changes nothing.
    let again = host.deploy("echo", components::ECHO, "").await;
    assert_eq!(
        host.deploy("echo", components::ECHO, "").await["version"],
        again["version"]
    );
    let (_, list) = host.get("/v1/functions").await;
    let names: Vec<_> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "order-total"]);
    host.stop().await;
}

/// `?wait=N` returns as soon as the job is terminal, not after N seconds; without `wait` the
/// job is shown as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_when_terminal() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "").await;
    let started = Instant::now();
    let id = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 400}))
        .await;
    let (_, now) = host.get(&format!("/v1/jobs/{id}")).await;
    assert!(
        matches!(now["status"].as_str(), Some("queued" | "running")),
        "{now}"
    );
    let (status, job) = host.get(&format!("/v1/jobs/{id}?wait=20")).await;
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        waited >= Duration::from_millis(400),
        "returned before the job could finish: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "long-poll did not return at completion: {waited:?}"
    );
    host.stop().await;
}

/// Listing is newest first, paginates with a cursor, and filters by function and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_paginates_and_filters() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    host.deploy("order-total", components::ORDER_TOTAL, "")
        .await;
    let mut echo_ids = Vec::new();
    for i in 0..5 {
        let id = host.submit("echo", format!("{i}"), "text/plain").await;
        host.wait(&id).await;
        echo_ids.push(id);
    }
    let bad = host.submit("order-total", "nope", "application/json").await;
    host.wait(&bad).await;

    let (_, page) = host.get("/v1/jobs?function=echo&limit=3").await;
    let ids: Vec<_> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            echo_ids[4].clone(),
            echo_ids[3].clone(),
            echo_ids[2].clone()
        ]
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = host
        .get(&format!("/v1/jobs?function=echo&limit=3&cursor={cursor}"))
        .await;
    let ids: Vec<_> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [echo_ids[1].clone(), echo_ids[0].clone()]);

    let (_, all) = host.get("/v1/jobs").await;
    assert_eq!(
        all["jobs"][0]["id"],
        bad.as_str(),
        "newest first across functions"
    );
    assert_eq!(all["jobs"].as_array().unwrap().len(), 6);
    let (_, failed) = host.get("/v1/jobs?status=failed").await;
    let failed = failed["jobs"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], bad.as_str());
    host.stop().await;
}

/// Jobs of a function run in parallel up to `max_concurrency` and never beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_per_function() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=2")
        .await;
    let max_overlap = run_sleepers(&host, 6, 300).await;
    assert_eq!(
        max_overlap, 2,
        "at most, and up to, max_concurrency=2 attempts at once"
    );

    host.deploy("probe", components::PROBE, "max_concurrency=6")
        .await;
    // Long enough that starts spread by a busy machine (a browser test alongside) still
    // overlap.
    let max_overlap = run_sleepers(&host, 6, 1500).await;
    assert!(
        max_overlap >= 3,
        "raising max_concurrency must run more at once, saw {max_overlap}"
    );
    host.stop().await;
}

/// Submits `n` jobs sleeping `ms` each; returns the most attempts seen running at once, from the
/// jobs' own started/finished timestamps.
async fn run_sleepers(host: &sluice_tests::TestHost, n: usize, ms: u64) -> usize {
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            host.submit_json("probe", &json!({"action": "sleep", "ms": ms}))
                .await,
        );
    }
    let mut edges = Vec::new();
    for id in &ids {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        edges.push((millis(&job["started_at"]), 1i32));
        edges.push((millis(&job["finished_at"]), -1i32));
    }
    assert!(started.elapsed() >= Duration::from_millis(ms * n as u64 / 6));
    edges.sort(); // at equal times, ends (-1) sort before starts (+1)
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Listings show each job's summary: sizes, never the input, output or log themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_summaries_with_sizes() {
    let host = sluice_tests::start_host().await;
    host.deploy("echo", sluice_tests::components::ECHO, "")
        .await;
    let body = "y".repeat(100_000);
    let id = host.submit("echo", body.clone(), "text/plain").await;
    assert_eq!(host.wait(&id).await["status"], "succeeded");
    let (status, page) = host.get("/v1/jobs?function=echo").await;
    assert_eq!(status, 200, "{page}");
    let listed = &page["jobs"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["input_size"], 100_000);
    assert_eq!(listed["output_size"], 100_000);
    assert!(
        listed.get("output").is_none() && listed.get("log").is_none(),
        "{listed}"
    );
    let correlation = listed["correlation_id"].as_str().unwrap().to_string();
    let (_, found) = host
        .get(&format!("/v1/jobs?correlation_id={correlation}"))
        .await;
    assert_eq!(found["jobs"][0]["input_size"], 100_000, "{found}");
    assert!(found["jobs"][0].get("output").is_none(), "{found}");
}
