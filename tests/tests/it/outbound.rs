//! Handlers' outbound HTTP (`wasi:http`): only to origins the manifest allows, internal
//! addresses only with the operator's `--allow-outbound-host`, bounded in count, size and time,
//! never following redirects, each request keyed for idempotency and recorded on its attempt.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{Receiver, TestHost, components, start_host_with, test_config};

/// A host that lets handlers reach loopback (the operator's flag), with `limits` applied.
async fn host_allowing_loopback(
    limits: impl FnOnce(&mut sluice::Config),
) -> (TestHost, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    config.allow_outbound_hosts = vec!["127.0.0.1".into(), "localhost".into()];
    limits(&mut config);
    (start_host_with(config).await, tmp)
}

/// Deploys `probe` allowed to reach `hosts`.
async fn deploy_probe(host: &TestHost, hosts: &[String]) {
    let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    let manifest = format!(
        "{}\nallowed_outbound_hosts = [{}]\n",
        std::fs::read_to_string(components::PROBE_MANIFEST).unwrap(),
        list.join(", ")
    );
    host.deploy_manifest("probe", components::PROBE, &manifest)
        .await;
}

/// Runs one probe action; returns the job and the probe's answer.
async fn probe(host: &TestHost, action: Value) -> (Value, Value) {
    let id = host.submit_json("probe", &action).await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let answer = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    (job, answer)
}

fn detail(answer: &Value) -> &str {
    answer["detail"].as_str().unwrap()
}

/// An allowed origin gets each request with `Idempotency-Key: {job}.{n}` (one the handler set
/// is kept), and the attempt's history records method, origin, path and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_origin_gets_keyed_requests_recorded_on_the_attempt() {
    let upstream = Receiver::start().await;
    *upstream.respond_with.lock().unwrap() = Some((200, b"pong".to_vec()));
    let (host, _tmp) = host_allowing_loopback(|_| {}).await;
    deploy_probe(&host, &[upstream.url("")]).await;

    let (job, answer) = probe(
        &host,
        json!({"action": "http", "method": "POST", "url": upstream.url("/hook?token=s3cret"),
               "body": "hi", "n": 2}),
    )
    .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(detail(&answer), "[200, 200] pong");
    let id = job["id"].as_str().unwrap();
    let got = upstream.requests();
    assert_eq!(got.len(), 2);
    for (n, r) in got.iter().enumerate() {
        assert_eq!(r.path, "/hook");
        assert_eq!(r.body, b"hi");
        assert_eq!(
            r.headers["idempotency-key"],
            format!("{id}.{}", n + 1).as_str()
        );
    }
    let calls = job["attempt_history"][0]["outbound"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{job}");
    assert_eq!(calls[0]["method"], "POST");
    assert_eq!(calls[0]["origin"], upstream.url(""));
    assert_eq!(calls[0]["path"], "/hook", "the query is never recorded");
    assert_eq!(calls[0]["status"], 200);
    // Nothing the host recorded holds the query (the input, shown as `input_preview`, is the
    // caller's own and holds it).
    let mut recorded = job.clone();
    recorded["input_preview"] = Value::Null;
    assert!(!recorded.to_string().contains("s3cret"));

    let (_, answer) = probe(
        &host,
        json!({"action": "http", "url": upstream.url("/own"),
               "headers": [["idempotency-key", "mine-1"]]}),
    )
    .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(upstream.requests()[2].headers["idempotency-key"], "mine-1");
    host.stop().await;
}

/// An origin the manifest does not list is refused inside the guest (`HTTP-request-denied`),
/// nothing is sent, and the job's log names the origin and the manifest key that allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_not_in_the_manifest_is_refused_and_logged() {
    let upstream = Receiver::start().await;
    let (host, _tmp) = host_allowing_loopback(|_| {}).await;
    // Deploys without any allowed host: a wasi:http component deploys all the same.
    host.deploy("probe", components::PROBE, "").await;
    let (job, answer) = probe(&host, json!({"action": "http", "url": upstream.url("/x")})).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(detail(&answer).contains("HttpRequestDenied"), "{answer}");
    assert!(detail(&answer).contains("denied: true"), "{answer}");
    let log = job["log"].as_str().unwrap();
    let origin = upstream.url("");
    assert!(
        log.contains(&format!(
            "{origin} is not in the function's allowed_outbound_hosts; allow it with allowed_outbound_hosts = [\"{origin}\"]"
        )),
        "{log}"
    );
    assert_eq!(
        job["attempt_history"][0]["outbound"][0]["status"],
        Value::Null
    );
    assert!(upstream.requests().is_empty());

    // Another port of the same host is another origin.
    deploy_probe(&host, &[format!("http://127.0.0.1:{}", upstream.port + 1)]).await;
    let (_, answer) = probe(&host, json!({"action": "http", "url": upstream.url("/x")})).await;
    assert!(detail(&answer).contains("HttpRequestDenied"), "{answer}");
    assert!(upstream.requests().is_empty());
    host.stop().await;
}

/// The SSRF guard judges the address connected to: a loopback target, by address or by a
/// name that resolves to it, is refused although the manifest allows it, unless the operator
/// allows it with `--allow-outbound-host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_need_the_operators_flag() {
    let upstream = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let host = start_host_with(test_config(tmp.path())).await;
    let by_name = format!("http://localhost:{}", upstream.port);
    deploy_probe(&host, &[upstream.url(""), by_name.clone()]).await;
    for url in [upstream.url("/x"), format!("{by_name}/x")] {
        let (job, answer) = probe(&host, json!({"action": "http", "url": url})).await;
        assert_eq!(answer["ok"], false, "{answer}");
        assert!(
            detail(&answer).contains("DestinationIpProhibited"),
            "{answer}"
        );
        let log = job["log"].as_str().unwrap();
        assert!(log.contains("resolves to a loopback address"), "{log}");
        assert!(log.contains("--allow-outbound-host"), "{log}");
    }
    assert!(upstream.requests().is_empty());
    host.stop().await;

    let (host, _tmp) = host_allowing_loopback(|_| {}).await;
    deploy_probe(&host, &[by_name.clone()]).await;
    let (_, answer) = probe(
        &host,
        json!({"action": "http", "url": format!("{by_name}/y")}),
    )
    .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(upstream.requests().len(), 1);
    host.stop().await;
}

/// Bounds: a slow upstream times out at the request's timeout (well before the attempt's), a
/// response over the host's cap fails to read, requests past the per-attempt count are
/// refused, and a redirect is handed to the handler, not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_caps_counts_and_redirects() {
    let upstream = Receiver::start().await;
    let (host, _tmp) = host_allowing_loopback(|c| {
        c.outbound.max_response_bytes = 1000;
        c.outbound.max_requests = 3;
    })
    .await;
    deploy_probe(&host, &[upstream.url("")]).await;

    upstream
        .delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let (job, answer) = probe(
        &host,
        json!({"action": "http", "url": upstream.url("/slow"), "timeout_ms": 300}),
    )
    .await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(detail(&answer).contains("Timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(2500), "{job}");
    let call = &job["attempt_history"][0]["outbound"][0];
    assert!(
        call["error"].as_str().unwrap().contains("timed out"),
        "{job}"
    );
    assert!(call["duration_ms"].as_u64().unwrap() >= 250, "{job}");
    upstream
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);

    *upstream.respond_with.lock().unwrap() = Some((200, vec![b'x'; 5000]));
    let (_, answer) = probe(
        &host,
        json!({"action": "http", "url": upstream.url("/big")}),
    )
    .await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        detail(&answer).contains("body size exceeds limit: 1000 bytes"),
        "{answer}"
    );

    *upstream.respond_with.lock().unwrap() = Some((200, b"ok".to_vec()));
    let (job, answer) = probe(
        &host,
        json!({"action": "http", "url": upstream.url("/many"), "n": 5}),
    )
    .await;
    assert!(
        detail(&answer).starts_with("[200, 200, 200] then"),
        "{answer}"
    );
    assert!(
        detail(&answer).contains("ConnectionLimitReached"),
        "{answer}"
    );
    assert!(
        job["log"]
            .as_str()
            .unwrap()
            .contains("--max-outbound-requests")
    );

    let before = upstream.requests().len();
    *upstream.redirect_to.lock().unwrap() = Some(upstream.url("/elsewhere"));
    let (_, answer) = probe(
        &host,
        json!({"action": "http", "url": upstream.url("/moved")}),
    )
    .await;
    assert_eq!(detail(&answer), "[307] ", "{answer}");
    assert_eq!(
        upstream.requests().len(),
        before + 1,
        "the redirect was followed"
    );
    host.stop().await;
}

/// A request still waiting for its answer when the attempt times out is on record too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_by_the_attempts_timeout_is_recorded() {
    let upstream = Receiver::start().await;
    upstream
        .delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    let (host, _tmp) = host_allowing_loopback(|_| {}).await;
    let manifest = format!(
        "timeout_ms = 400\nmax_attempts = 1\nallowed_outbound_hosts = [\"{}\"]\n",
        upstream.url("")
    );
    host.deploy_manifest("probe", components::PROBE, &manifest)
        .await;
    let id = host
        .submit_json(
            "probe",
            &json!({"action": "http", "url": upstream.url("/slow")}),
        )
        .await;
    let job = host.wait(&id).await;
    // The attempt's timeout cuts the request off, or the request's own timeout (capped by the
    // attempt's remaining time) fires a moment first and the handler answers with the error
    // before the attempt ends.
    let cut = job["status"] == "dead";
    let answered_first = job["status"] == "succeeded"
        && job["output"]
            .as_str()
            .is_some_and(|o| o.contains("ConnectionReadTimeout"));
    assert!(cut || answered_first, "{job}");
    let call = &job["attempt_history"][0]["outbound"][0];
    assert_eq!(call["path"], "/slow", "{job}");
    // Cut off by the attempt's end, or by its own timeout (never longer than the attempt's
    // remaining time) a moment before it: either way it is on record, without an answer.
    let error = call["error"].as_str().unwrap();
    assert!(
        error == "no answer before the attempt ended" || error.starts_with("timed out after"),
        "{job}"
    );
    assert!(call["status"].is_null(), "{job}");
    host.stop().await;
}

/// An upstream that answers `ok` over HTTP/1.1 keep-alive and counts the connections it
/// accepted.
async fn counting_upstream() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (port, accepted)
}

/// Requests to one origin from successive attempts (jobs) reuse one pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_reuse_connections_to_an_origin() {
    let (port, accepted) = counting_upstream().await;
    let (host, _tmp) = host_allowing_loopback(|_| {}).await;
    let origin = format!("http://127.0.0.1:{port}");
    deploy_probe(&host, std::slice::from_ref(&origin)).await;
    for i in 0..5 {
        let (_, answer) = probe(
            &host,
            json!({"action": "http", "url": format!("{origin}/ping/{i}")}),
        )
        .await;
        assert_eq!(detail(&answer), "[200] ok", "{answer}");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "five attempts, one connection"
    );
    host.stop().await;
}
