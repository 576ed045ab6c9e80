//! Traces: a request's W3C `traceparent` carries through its job's attempts, the HTTP
//! requests its handler makes and its webhook callback, and the host exports the spans over
//! OTLP/HTTP (JSON) to a receiver here: one trace, each span under its cause.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{Receiver, components, start_host_with, test_config};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The caller's span, the `traceparent`'s parent id.
const CALLER: &str = "00f067aa0ba902b7";

/// Every span the collector received so far, flattened.
fn spans(collector: &Receiver) -> Vec<Value> {
    collector
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/traces")
        .flat_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// The parent id a `traceparent` header names.
fn parent_in(header: &str) -> (String, String) {
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_runs_from_submit_through_attempts_requests_and_callbacks() {
    let collector = Receiver::start().await;
    let upstream = Receiver::start().await;
    *upstream.respond_with.lock().unwrap() = Some((200, b"pong".to_vec()));
    let hook = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    config.allow_outbound_hosts = vec!["127.0.0.1".into()];
    config.allow_callback_hosts = vec!["127.0.0.1".into()];
    config.otlp_endpoint = Some(collector.url(""));
    let host = start_host_with(config).await;
    let manifest = format!(
        "{}\nallowed_outbound_hosts = [{:?}]\n",
        std::fs::read_to_string(components::PROBE_MANIFEST).unwrap(),
        upstream.url("")
    );
    host.deploy_manifest("probe", components::PROBE, &manifest).await;

    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("sluice-callback", hook.url("/done"))
        .body(json!({"action": "http", "url": upstream.url("/x")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["correlation_id"], TRACE);

    // The service the handler called continues the trace, under the request's own span.
    let called = upstream.requests();
    let (trace, call_span) = parent_in(called[0].headers["traceparent"].to_str().unwrap());
    assert_eq!(trace, TRACE);

    // The callback carries it too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.requests().is_empty() {
        assert!(Instant::now() < deadline, "no callback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (trace, callback_span) = parent_in(hook.requests()[0].headers["traceparent"].to_str().unwrap());
    assert_eq!(trace, TRACE);

    // The collector gets the job, its attempt, the request and the callback: one trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let by_name = |spans: &[Value], kind: u64| -> Option<Value> {
        spans.iter().find(|s| s["kind"] == kind).cloned()
    };
    let (job_span, attempt, client, callback) = loop {
        let got = spans(&collector);
        let find = |id: &str| got.iter().find(|s| s["spanId"] == id).cloned();
        if let (Some(job_span), Some(attempt), Some(client), Some(callback)) = (
            by_name(&got, 4),
            by_name(&got, 5),
            find(&call_span),
            find(&callback_span),
        ) {
            break (job_span, attempt, client, callback);
        }
        assert!(Instant::now() < deadline, "spans so far: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for span in [&job_span, &attempt, &client, &callback] {
        assert_eq!(span["traceId"], TRACE, "{span}");
    }
    assert_eq!(job_span["name"], "job probe");
    assert_eq!(job_span["parentSpanId"], CALLER, "the job is under the caller's span");
    assert_eq!(attempt["parentSpanId"], job_span["spanId"], "the attempt is under its job");
    assert_eq!(attempt["name"], "probe");
    assert_eq!(client["parentSpanId"], attempt["spanId"], "the request is under its attempt");
    assert_eq!(client["kind"], 3);
    assert_eq!(callback["parentSpanId"], job_span["spanId"], "the callback is under its job");
    assert_eq!(callback["status"]["code"], 1, "{callback}");
    let attrs = attempt["attributes"].to_string();
    assert!(attrs.contains(&id), "{attrs}");

    // A published event is a span its deliveries' jobs hang under.
    host.deploy_manifest(
        "inspect",
        components::INSPECT,
        "name = \"inspect\"\n[[subscribe]]\ntopic = \"audit\"\n",
    )
    .await;
    let r = host
        .http
        .post(host.url("/v1/topics/audit/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "e-1")
        .header("ce-source", "/tests")
        .header("ce-type", "user.login")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    let delivery = answer["deliveries"][0]["job_id"].as_str().unwrap().to_string();
    host.wait(&delivery).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = spans(&collector);
        let event = got.iter().find(|s| s["name"] == "publish audit");
        let delivered = got.iter().find(|s| s["name"] == "job inspect");
        if let (Some(event), Some(delivered)) = (event, delivered) {
            assert_eq!(event["traceId"], TRACE);
            assert_eq!(event["parentSpanId"], CALLER, "the event is under the caller's span");
            assert_eq!(delivered["parentSpanId"], event["spanId"], "{delivered}");
            break;
        }
        assert!(Instant::now() < deadline, "spans so far: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An event a handler emits with its success is a span under that attempt; its delivery
    // and the job the handler enqueued hang under it and under the attempt.
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .body(json!({"action": "emit", "topic": "audit", "fail_until": 2}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let emitter = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(host.wait(&emitter).await["status"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = spans(&collector);
        let of_emitter = |s: &&Value| s["attributes"].to_string().contains(&emitter);
        let attempts: Vec<&Value> = got.iter().filter(|s| s["kind"] == 5).filter(of_emitter).collect();
        let second = attempts.iter().find(|s| s["attributes"].to_string().contains("\"intValue\":\"2\""));
        let emitted = second.and_then(|a| {
            got.iter()
                .find(|s| s["name"] == "publish audit" && s["parentSpanId"] == a["spanId"])
        });
        if let (Some(attempt), Some(emitted)) = (second, emitted) {
            assert_eq!(emitted["traceId"], TRACE);
            assert!(emitted["attributes"].to_string().contains(&format!("{emitter}-0")), "{emitted}");
            let under = |parent: &Value| {
                got.iter()
                    .filter(|s| s["name"] == "job inspect" && s["parentSpanId"] == *parent)
                    .count()
            };
            if under(&emitted["spanId"]) == 1 && under(&attempt["spanId"]) == 1 {
                // Only the successful attempt's emissions count: none hangs under the first.
                let first = attempts.iter().find(|s| s["spanId"] != attempt["spanId"]).unwrap();
                assert_eq!(under(&first["spanId"]), 0);
                assert!(!got.iter().any(|s| s["parentSpanId"] == first["spanId"] && s["kind"] == 4));
                break;
            }
        }
        assert!(Instant::now() < deadline, "spans so far: {got:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.stop().await;
}
