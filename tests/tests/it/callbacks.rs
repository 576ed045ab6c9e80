//! Webhook callbacks (signed per Standard Webhooks, verified with the independent
//! `standardwebhooks` crate), their retries, the SSRF guard, and API tokens.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::manifest::RetryPolicy;
use sluice_tests::{Receiver, TestHost, assert_error, components, start_host_with, test_config};

/// A host that may call back to `receivers` (each `127.0.0.1:port`), retrying fast.
async fn host_calling(receivers: &[&Receiver]) -> (TestHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.allow_callback_hosts = receivers
        .iter()
        .map(|r| format!("127.0.0.1:{}", r.port))
        .collect();
    config.callback_retry = RetryPolicy {
        max_attempts: 5,
        backoff_base_ms: 20,
        backoff_max_ms: 50,
    };
    (start_host_with(config).await, dir)
}

async fn submit_with_callback(
    host: &TestHost,
    function: &str,
    body: &str,
    url: &str,
) -> (u16, Value) {
    let r = host
        .http
        .post(host.url(&format!("/v1/functions/{function}/jobs")))
        .header("content-type", "text/plain")
        .header("sluice-callback", url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until the job's callback leaves `pending` (or `waiting`); returns the job.
async fn callback_settled(host: &TestHost, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = host.job(id).await;
        if matches!(
            job["callback"]["state"].as_str(),
            Some("delivered" | "failed")
        ) {
            return job;
        }
        assert!(Instant::now() < deadline, "callback never settled: {job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn secret(host: &TestHost) -> String {
    host.get("/v1/secret").await.1["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

fn verify(secret: &str, r: &sluice_tests::Received) -> Result<(), String> {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .map_err(|e| format!("{e:?}"))
}

/// The receiver gets one signed POST with the job's outcome when it ends; an independent
/// Standard Webhooks implementation verifies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_signed_and_verifiable() {
    let receiver = Receiver::start().await;
    let (host, _dir) = host_calling(&[&receiver]).await;
    host.deploy("echo", components::ECHO, "").await;
    let (status, answer) =
        submit_with_callback(&host, "echo", "hello", &receiver.url("/hook")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap();
    let job = callback_settled(&host, id).await;
    assert_eq!(job["callback"]["state"], "delivered", "{job}");
    assert_eq!(job["callback"]["attempts"], 1);
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/hook");
    verify(&secret(&host).await, &got[0]).unwrap();
    assert!(
        verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &got[0]).is_err(),
        "another secret fails"
    );
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], id);
    assert_eq!(body["data"]["function"], "echo");
    assert_eq!(body["data"]["status"], "succeeded");
    assert_eq!(body["data"]["attempts"], 1);
    assert_eq!(body["data"]["output"], "hello");
    host.stop().await;
}

/// A receiver that fails twice, then answers: three attempts, one delivered callback, the same
/// `webhook-id` throughout (each attempt verifiable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried_with_one_webhook_id() {
    let receiver = Receiver::start().await;
    receiver
        .fail_first
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let (host, _dir) = host_calling(&[&receiver]).await;
    host.deploy("echo", components::ECHO, "").await;
    let (_, answer) = submit_with_callback(&host, "echo", "x", &receiver.url("/hook")).await;
    let id = answer["id"].as_str().unwrap();
    let job = callback_settled(&host, id).await;
    assert_eq!(job["callback"]["state"], "delivered", "{job}");
    assert_eq!(job["callback"]["attempts"], 3);
    let got = receiver.requests();
    assert_eq!(got.len(), 3);
    let key = secret(&host).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    for r in &got {
        verify(&key, r).unwrap();
    }

    // A receiver that never answers well: the callback fails for good after max_attempts.
    receiver
        .fail_first
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let (_, answer) = submit_with_callback(&host, "echo", "y", &receiver.url("/hook")).await;
    let job = callback_settled(&host, answer["id"].as_str().unwrap()).await;
    assert_eq!(job["callback"]["state"], "failed");
    assert_eq!(job["callback"]["attempts"], 5);
    assert!(
        job["callback"]["last_error"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{job}"
    );
    host.stop().await;
}

/// Internal targets are refused: literal addresses at submit, names and redirects at delivery
/// (nothing reaches them), unless the allow-list names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_refuses_internal_targets() {
    let allowed = Receiver::start().await;
    let other = Receiver::start().await;
    let (host, _dir) = host_calling(&[&allowed]).await;
    host.deploy("echo", components::ECHO, "").await;
    for url in [
        format!("http://127.0.0.2:{}/", allowed.port),
        format!("http://[::ffff:127.0.0.1]:{}/", allowed.port),
        // 127.0.0.1 written as one number (on the allowed port it would be the allowed target).
        "http://2130706433/".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        format!("http://127.0.0.1:{}/", other.port),
        "ftp://example.com/".to_string(),
    ] {
        let (status, body) = submit_with_callback(&host, "echo", "x", &url).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_error(&body, "invalid_callback");
    }
    // A name that resolves to loopback is refused when delivering.
    let (status, answer) = submit_with_callback(
        &host,
        "echo",
        "x",
        &format!("http://localhost:{}/", allowed.port),
    )
    .await;
    assert_eq!(status, 202);
    let job = callback_settled(&host, answer["id"].as_str().unwrap()).await;
    assert_eq!(job["callback"]["state"], "failed", "{job}");
    assert_eq!(
        job["callback"]["attempts"], 1,
        "a refused target is not retried"
    );
    let last_error = job["callback"]["last_error"].as_str().unwrap();
    assert!(last_error.contains("refused"), "{job}");
    // It says what kind of address, not which: errors must not map the host's network.
    assert!(last_error.contains("a loopback address"), "{last_error}");
    assert!(
        !last_error.contains("127.0.0.1") && !last_error.contains("::1"),
        "{last_error}"
    );
    assert!(
        allowed.requests().is_empty(),
        "the refused callback reached the receiver"
    );

    // A name that does not resolve may resolve later: that is retried, up to the limit.
    let (status, answer) =
        submit_with_callback(&host, "echo", "x", "http://no-such-host.invalid/hook").await;
    assert_eq!(status, 202);
    let job = callback_settled(&host, answer["id"].as_str().unwrap()).await;
    assert_eq!(job["callback"]["state"], "failed", "{job}");
    assert_eq!(job["callback"]["attempts"], 5, "retried: {job}");
    let last_error = job["callback"]["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("cannot resolve no-such-host.invalid"),
        "{last_error}"
    );

    // An allowed target that redirects to one that is not: the redirect is refused.
    *allowed.redirect_to.lock().unwrap() = Some(other.url("/stolen"));
    let (_, answer) = submit_with_callback(&host, "echo", "x", &allowed.url("/hook")).await;
    let job = callback_settled(&host, answer["id"].as_str().unwrap()).await;
    assert_eq!(job["callback"]["state"], "failed", "{job}");
    assert!(
        job["callback"]["last_error"]
            .as_str()
            .unwrap()
            .contains("redirected"),
        "{job}"
    );
    assert_eq!(allowed.requests().len(), 1);
    assert!(
        other.requests().is_empty(),
        "the redirect reached a target that is not allowed"
    );
    host.stop().await;
}

/// Rotation: the new secret signs, and the old one keeps signing alongside for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_alongside_the_old_one() {
    let receiver = Receiver::start().await;
    let (host, _dir) = host_calling(&[&receiver]).await;
    host.deploy("echo", components::ECHO, "").await;
    let old = secret(&host).await;
    assert!(old.starts_with("whsec_"));
    let (status, rotated) = host.post("/v1/secret/rotate", "").await;
    assert_eq!(status, 200);
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(rotated["previous"], old.as_str());
    // Deliveries of a published event's copies carry callbacks too.
    host.deploy_manifest(
        "listener",
        components::INSPECT,
        "name = \"listener\"\n[[subscribe]]\ntopic = \"t\"\n",
    )
    .await;
    let r = host
        .http
        .post(host.url("/v1/topics/t/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "e1")
        .header("ce-source", "/s")
        .header("ce-type", "x")
        .header("sluice-callback", receiver.url("/event"))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let answer: Value = r.json().await.unwrap();
    let job = callback_settled(&host, answer["deliveries"][0]["job_id"].as_str().unwrap()).await;
    assert_eq!(job["callback"]["state"], "delivered");
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    verify(&new, &got[0]).unwrap();
    verify(&old, &got[0]).unwrap();
    host.stop().await;
}

/// Tokens: 401 without or with an unknown token, 403 outside the token's scopes, and each scope
/// reaches what it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_enforce_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let (admin, submit, read) = (
        "admin-token-0123456789",
        "submit-token-0123456789",
        "read-token-0123456789",
    );
    config.tokens = sluice::api::auth::Tokens::parse([
        format!("admin={admin}").as_str(),
        format!("submit={submit}").as_str(),
        format!("read={read}").as_str(),
    ])
    .unwrap();
    let host = start_host_with(config).await;
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut r = host.http.request(method, host.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.body("\"x\"").send().await.unwrap().status().as_u16() }
    };
    use reqwest::Method;
    assert_eq!(
        call(Method::GET, "/healthz", None).await,
        200,
        "health is open"
    );
    assert_eq!(call(Method::GET, "/v1/functions", None).await, 401);
    assert_eq!(
        call(Method::GET, "/v1/functions", Some("not-a-token-at-all")).await,
        401
    );

    // The scheme is case-insensitive (RFC 9110).
    let lower = host
        .http
        .get(host.url("/v1/jobs"))
        .header("authorization", format!("bearer {read}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(lower, 200, "lower-case bearer scheme");
    // An unauthenticated upload is refused before its body ends: the host reads a small
    // bound of it, answers 401 and closes, instead of buffering up to --max-body-bytes.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = host
            .url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/functions/echo/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            60u64 << 20
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        // Far more than the bound, far less than the declared length; the rest never comes.
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..4 {
            if socket.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut answer))
            .await
            .expect("the host answered an unauthenticated upload only once it ended")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }

    // Deploy: admin only.
    let wasm = std::fs::read(components::ECHO).unwrap();
    for (token, expected) in [(read, 403), (submit, 403), (admin, 201)] {
        let status = host
            .http
            .put(host.url("/v1/functions/echo"))
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(wasm.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, expected, "deploy with {token}");
    }
    // Submit: submit or admin.
    assert_eq!(
        call(Method::POST, "/v1/functions/echo/jobs", Some(read)).await,
        403
    );
    assert_eq!(
        call(Method::POST, "/v1/functions/echo/jobs", Some(submit)).await,
        202
    );
    assert_eq!(
        call(Method::POST, "/v1/topics/t/events", Some(read)).await,
        403
    );
    // Reading jobs: any scope; reading functions and stats: read or admin.
    assert_eq!(call(Method::GET, "/v1/jobs", Some(submit)).await, 200);
    assert_eq!(call(Method::GET, "/v1/jobs", Some(read)).await, 200);
    assert_eq!(
        call(Method::GET, "/v1/functions/echo/stats", Some(submit)).await,
        403
    );
    assert_eq!(
        call(Method::GET, "/v1/functions/echo/stats", Some(read)).await,
        200
    );
    assert_eq!(call(Method::GET, "/metrics", Some(read)).await, 200);
    // Operating: admin only.
    assert_eq!(
        call(Method::POST, "/v1/functions/echo/pause", Some(submit)).await,
        403
    );
    assert_eq!(
        call(Method::POST, "/v1/functions/echo/pause", Some(admin)).await,
        200
    );
    assert_eq!(
        call(
            Method::POST,
            "/v1/functions/echo/dead-letters/purge",
            Some(read)
        )
        .await,
        403
    );
    assert_eq!(call(Method::GET, "/v1/secret", Some(read)).await, 403);
    assert_eq!(call(Method::GET, "/v1/secret", Some(submit)).await, 403);
    assert_eq!(call(Method::GET, "/v1/secret", Some(admin)).await, 200);
    assert_eq!(
        call(
            Method::DELETE,
            "/v1/functions/echo?force=true",
            Some(submit)
        )
        .await,
        403
    );
    let r = host
        .http
        .get(host.url("/v1/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_error(&body, "unauthorized");
    assert!(!body.to_string().contains(admin));
    host.stop().await;
}

/// Without tokens the host serves loopback only: a non-loopback listener is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let result = sluice::run(listener, async {}, test_config(dir.path())).await;
    let message = format!("{:#}", result.unwrap_err());
    assert!(
        message.contains("loopback") && message.contains("token"),
        "{message}"
    );
    let _ = json!(null);
}

/// A redriven job ends again and calls back again, as a new delivery with its own
/// `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_job_calls_back_again() {
    let receiver = Receiver::start().await;
    let (host, _dir) = host_calling(&[&receiver]).await;
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("content-type", "application/json")
        .header("sluice-callback", receiver.url("/hook"))
        .body(json!({"action": "fail", "retryable": false}).to_string())
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = callback_settled(&host, &id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["callback"]["state"], "delivered");
    let (status, _) = host
        .post_json(
            "/v1/functions/probe/dead-letters/redrive",
            &json!({"ids": [id]}),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.requests().len() < 2 {
        assert!(Instant::now() < deadline, "no second callback");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = receiver.requests();
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids, vec![format!("msg_{id}"), format!("msg_{id}_1")]);
    let key = secret(&host).await;
    for r in &got {
        verify(&key, r).unwrap();
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "job.failed");
    }
    host.stop().await;
}

/// An output too large to inline is linked with an absolute URL under the host's address, and
/// the link serves the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_output_is_linked_with_an_absolute_url() {
    let receiver = Receiver::start().await;
    let (host, _dir) = host_calling(&[&receiver]).await;
    host.deploy("echo", components::ECHO, "").await;
    let big = "x".repeat(100 << 10);
    let (status, answer) = submit_with_callback(&host, "echo", &big, &receiver.url("/hook")).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap();
    let job = callback_settled(&host, id).await;
    assert_eq!(job["callback"]["state"], "delivered", "{job}");
    let got = receiver.requests();
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert!(body["data"]["output"].is_null(), "not inlined: {body}");
    assert_eq!(body["data"]["output_size"], big.len());
    let url = body["data"]["output_url"].as_str().unwrap();
    assert_eq!(url, host.url(&format!("/v1/jobs/{id}/output")));
    let fetched = host.http.get(url).send().await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.text().await.unwrap(), big);
    host.stop().await;
}

/// A host whose callbacks may reach `receivers`, retrying fast, pausing a failing receiver for
/// `cool_down`.
async fn host_with_breaker(
    receivers: &[&Receiver],
    cool_down: Duration,
) -> (TestHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.allow_callback_hosts = receivers
        .iter()
        .map(|r| format!("127.0.0.1:{}", r.port))
        .collect();
    config.callback_retry = RetryPolicy {
        max_attempts: 10,
        backoff_base_ms: 10,
        backoff_max_ms: 20,
    };
    config.callback_cool_down = cool_down;
    (start_host_with(config).await, dir)
}

/// A slow receiver holds only its own delivery slots: another receiver's callback goes out
/// while dozens to the slow one wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_delay_others() {
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    slow.delay_ms
        .store(4000, std::sync::atomic::Ordering::SeqCst);
    let (host, _dir) = host_with_breaker(&[&slow, &fast], Duration::from_secs(30)).await;
    host.deploy("echo", components::ECHO, "").await;
    // More than the sender's 64 slots, all to the slow receiver.
    for i in 0..72 {
        let (status, _) =
            submit_with_callback(&host, "echo", &format!("s{i}"), &slow.url("/slow")).await;
        assert_eq!(status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.requests().len() < 8 {
        assert!(Instant::now() < deadline, "the slow receiver got nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, answer) = submit_with_callback(&host, "echo", "f", &fast.url("/fast")).await;
    assert_eq!(status, 202);
    let job = callback_settled(&host, answer["id"].as_str().unwrap()).await;
    assert_eq!(job["callback"]["state"], "delivered", "{job}");
    // Delivered while the slow receiver still had only its own 8 slots' worth in flight.
    let in_slow = slow.requests().len();
    assert!(
        in_slow < 16,
        "the fast callback waited for {in_slow} slow deliveries"
    );
    assert_eq!(fast.requests().len(), 1);
}

/// A receiver failing again and again trips its breaker: nothing more is sent to it for the
/// cool-down and the waiting callbacks keep their attempts; once it recovers, a probe gets
/// through and the rest follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_trips_its_breaker() {
    let failing = Receiver::start().await;
    failing
        .fail_first
        .store(1_000_000, std::sync::atomic::Ordering::SeqCst);
    let (host, _dir) = host_with_breaker(&[&failing], Duration::from_millis(1500)).await;
    host.deploy("echo", components::ECHO, "").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, answer) =
            submit_with_callback(&host, "echo", &format!("j{i}"), &failing.url("/hook")).await;
        assert_eq!(status, 202);
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while failing.requests().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "{} requests",
            failing.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Open: without the breaker, 30 attempts (3 callbacks x 10) would be spent by now.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = failing.requests().len();
    assert!(
        sent <= 7,
        "{sent} requests reached a receiver whose breaker is open"
    );
    for id in &ids {
        let job = host.job(id).await;
        assert_eq!(job["callback"]["state"], "pending", "{job}");
    }
    // It recovers: after the cool-down the probe succeeds and every callback is delivered.
    failing
        .fail_first
        .store(0, std::sync::atomic::Ordering::SeqCst);
    for id in &ids {
        let job = callback_settled(&host, id).await;
        assert_eq!(job["callback"]["state"], "delivered", "{job}");
        assert!(job["callback"]["attempts"].as_u64().unwrap() < 10, "{job}");
    }
}
