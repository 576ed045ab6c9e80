//! Pub/sub: CloudEvents published to topics (structured, batch and binary mode, encoded by the
//! independent `cloudevents-sdk` client), one durable delivery job per matching subscriber,
//! per-subscriber isolation, and the correlation listing.

use std::time::Duration;

use cloudevents::binding::http::{Builder, Serializer};
use cloudevents::message::BinaryDeserializer;
use cloudevents::{Event, EventBuilder, EventBuilderV10};
use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, start_host, start_host_with, test_config};

/// An event built with the CloudEvents SDK.
fn event(id: &str, event_type: &str, data: Value) -> Event {
    EventBuilderV10::new()
        .id(id)
        .source("https://shop.example/orders")
        .ty(event_type)
        .subject("order-42")
        .time("2026-11-25T08:00:00Z")
        .extension("tenant", "acme")
        .data("application/json", data)
        .build()
        .unwrap()
}

fn manifest(name: &str, subscribe: &str) -> String {
    format!(
        "name = \"{name}\"\nmax_attempts = 2\nbackoff_base_ms = 10\nbackoff_max_ms = 10\n{subscribe}"
    )
}

/// Publishes in structured mode; returns status and body.
async fn publish(
    host: &TestHost,
    topic: &str,
    e: &Event,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut r = host
        .http
        .post(host.url(&format!("/v1/topics/{topic}/events")))
        .header("content-type", "application/cloudevents+json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.body(serde_json::to_vec(e).unwrap()).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The functions of a publish answer's deliveries, and their jobs.
fn deliveries(answer: &Value) -> Vec<(String, String)> {
    answer["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["function"].as_str().unwrap().to_string(),
                d["job_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// What `inspect` saw, from its job's output.
fn seen(job: &Value) -> Value {
    assert_eq!(job["status"], "succeeded", "{job}");
    serde_json::from_str(job["output"].as_str().unwrap()).unwrap()
}

async fn deploy_subscribers(host: &TestHost) {
    for (name, types) in [
        ("placed", r#"["order.placed"]"#),
        ("orders", r#"["order.*"]"#),
        ("payments", r#"["payment.*"]"#),
    ] {
        host.deploy_manifest(
            name,
            components::INSPECT,
            &manifest(
                name,
                &format!("[[subscribe]]\ntopic = \"orders\"\ntypes = {types}\n"),
            ),
        )
        .await;
    }
}

/// Three subscribers with different type filters: only the matching ones get a delivery, each
/// sees the event's attributes, and the trace id of the request correlates everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_matching_subscribers_run() {
    let host = start_host().await;
    deploy_subscribers(&host).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let (status, answer) = publish(
        &host,
        "orders",
        &event("evt-1", "order.placed", json!({"order": 42})),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let got = deliveries(&answer);
    let functions: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(functions, vec!["orders", "placed"]);
    for (_, job) in &got {
        let job = host.wait(job).await;
        assert_eq!(job["attempts"], 1);
        assert_eq!(job["parent"]["kind"], "event");
        assert_eq!(job["parent"]["id"], answer["event_id"]);
        let saw = seen(&job);
        assert_eq!(saw["id"], "evt-1");
        assert_eq!(saw["source"], "https://shop.example/orders");
        assert_eq!(saw["type"], "order.placed");
        assert_eq!(saw["subject"], "order-42");
        assert_eq!(saw["extensions"]["tenant"], "acme");
        assert_eq!(saw["datacontenttype"], "application/json");
        assert_eq!(saw["correlation_id"], trace);
        assert_eq!(
            serde_json::from_str::<Value>(saw["data"].as_str().unwrap()).unwrap(),
            json!({"order": 42})
        );
    }

    // Other types reach other subscribers; an unmatched event is still accepted.
    let (_, shipped) = publish(
        &host,
        "orders",
        &event("evt-2", "order.shipped", json!({})),
        &[],
    )
    .await;
    assert_eq!(
        deliveries(&shipped)
            .iter()
            .map(|d| d.0.as_str())
            .collect::<Vec<_>>(),
        vec!["orders"]
    );
    let (_, paid) = publish(
        &host,
        "orders",
        &event("evt-3", "payment.done", json!({})),
        &[],
    )
    .await;
    assert_eq!(
        deliveries(&paid)
            .iter()
            .map(|d| d.0.as_str())
            .collect::<Vec<_>>(),
        vec!["payments"]
    );
    let (status, nobody) = publish(&host, "nobody", &event("evt-4", "x", json!({})), &[]).await;
    assert_eq!(status, 202);
    assert_eq!(nobody["deliveries"], json!([]));

    // Everything the traced request caused, with its parent links.
    let (status, listing) = host.get(&format!("/v1/jobs?correlation_id={trace}")).await;
    assert_eq!(status, 200);
    let events = listing["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{listing}");
    assert_eq!(events[0]["event_id"], answer["event_id"]);
    assert_eq!(events[0]["type"], "order.placed");
    assert_eq!(events[0]["parent"], Value::Null, "a request published it");
    let jobs = listing["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{listing}");
    for job in jobs {
        assert_eq!(job["parent"]["id"], answer["event_id"]);
    }
    // The event itself.
    let (status, shown) = host
        .get(&format!(
            "/v1/events/{}",
            answer["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(shown["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(shown["extensions"]["tenant"], "acme");
    host.stop().await;
}

/// A failing subscriber dead-letters its own copy; the others succeed once, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_dead_letters_alone() {
    let host = start_host().await;
    let sub = "[[subscribe]]\ntopic = \"work\"\n";
    host.deploy_manifest("flaky", components::PROBE, &manifest("flaky", sub))
        .await;
    host.deploy_manifest("steady", components::INSPECT, &manifest("steady", sub))
        .await;
    let (status, answer) = publish(
        &host,
        "work",
        &event(
            "w-1",
            "work.item",
            json!({"action": "fail", "retryable": true}),
        ),
        &[],
    )
    .await;
    assert_eq!(status, 202);
    let got = deliveries(&answer);
    assert_eq!(got.len(), 2);
    for (function, id) in &got {
        let job = host.wait(id).await;
        match function.as_str() {
            "flaky" => {
                assert_eq!(job["status"], "dead", "{job}");
                assert_eq!(job["attempts"], 2);
            }
            _ => {
                assert_eq!(job["status"], "succeeded", "{job}");
                assert_eq!(job["attempts"], 1);
            }
        }
    }
    let (_, dlq) = host.get("/v1/functions/flaky/dead-letters").await;
    assert_eq!(dlq["dead_letters"].as_array().unwrap().len(), 1);
    let (_, dlq) = host.get("/v1/functions/steady/dead-letters").await;
    assert_eq!(dlq["dead_letters"], json!([]));
    let (_, stats) = host.get("/v1/functions/steady/stats").await;
    assert_eq!(stats["succeeded"], 1, "exactly one copy each: {stats}");
    host.stop().await;
}

/// Collects what the SDK's HTTP binding writes for binary mode.
#[derive(Default)]
struct BinaryRequest {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The SDK's binary-mode encoding: `ce-*` headers and the data as the body.
struct Collect(std::rc::Rc<std::cell::RefCell<BinaryRequest>>);

impl Builder<()> for Collect {
    fn header(&mut self, key: &str, value: http::HeaderValue) {
        self.0
            .borrow_mut()
            .headers
            .push((key.to_string(), value.to_str().unwrap().to_string()));
    }
    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<()> {
        self.0.borrow_mut().body = bytes;
        Ok(())
    }
    fn finish(&mut self) -> cloudevents::message::Result<()> {
        Ok(())
    }
}

fn binary(e: Event) -> BinaryRequest {
    let out = std::rc::Rc::new(std::cell::RefCell::new(BinaryRequest::default()));
    BinaryDeserializer::deserialize_binary(e, Serializer::new(Collect(out.clone()))).unwrap();
    std::rc::Rc::try_unwrap(out).ok().unwrap().into_inner()
}

/// Batch mode (one commit, answers in order) and binary mode, both encoded by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_binary_modes() {
    let host = start_host().await;
    deploy_subscribers(&host).await;

    let batch: Vec<Event> = (0..3)
        .map(|i| event(&format!("b-{i}"), "order.placed", json!({ "n": i })))
        .collect();
    let r = host
        .http
        .post(host.url("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(&batch).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let answer: Value = r.json().await.unwrap();
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    for (i, e) in events.iter().enumerate() {
        let got = deliveries(e);
        assert_eq!(got.len(), 2);
        let saw = seen(&host.wait(&got[0].1).await);
        assert_eq!(saw["id"], format!("b-{i}"));
        assert_eq!(
            serde_json::from_str::<Value>(saw["data"].as_str().unwrap()).unwrap(),
            json!({ "n": i })
        );
    }

    let encoded = binary(
        EventBuilderV10::new()
            .id("bin-1")
            .source("/sensors/7")
            .ty("payment.received")
            .extension("region", "eu")
            .data("text/plain", "12.50 EUR")
            .build()
            .unwrap(),
    );
    assert!(
        encoded.headers.iter().any(|(k, _)| k == "ce-id"),
        "the SDK wrote binary mode"
    );
    let mut r = host.http.post(host.url("/v1/topics/orders/events"));
    for (k, v) in &encoded.headers {
        r = r.header(k, v);
    }
    let r = r.body(encoded.body.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let answer: Value = r.json().await.unwrap();
    let got = deliveries(&answer);
    assert_eq!(
        got.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(),
        vec!["payments"]
    );
    let saw = seen(&host.wait(&got[0].1).await);
    assert_eq!(saw["id"], "bin-1");
    assert_eq!(saw["source"], "/sensors/7");
    assert_eq!(saw["type"], "payment.received");
    assert_eq!(saw["extensions"]["region"], "eu");
    assert_eq!(saw["datacontenttype"], "text/plain");
    assert_eq!(saw["data"], "12.50 EUR");
    host.stop().await;
}

/// Invalid events get 400 naming the problem; nothing is enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_refused() {
    let host = start_host().await;
    deploy_subscribers(&host).await;
    let valid = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "order.placed"});
    for missing in ["specversion", "id", "source", "type"] {
        let mut e = valid.clone();
        e.as_object_mut().unwrap().remove(missing);
        let r = host
            .http
            .post(host.url("/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents+json")
            .body(e.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_error(&body, "invalid_event");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{missing:?}")),
            "{body}"
        );
    }
    // Binary mode without ce-type; a wrong specversion; a bad batch item; a bad topic.
    let r = host
        .http
        .post(host.url("/v1/topics/orders/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/s")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"type\""),
        "{body}"
    );
    let mut old = valid.clone();
    old["specversion"] = json!("0.3");
    let r = host
        .http
        .post(host.url("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .body(old.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = host
        .http
        .post(host.url("/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([valid, {"id": "2"}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("event 1:"),
        "{body}"
    );
    let (status, body) = host.post("/v1/topics/bad%20topic/events", "{}").await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_topic");
    for f in ["placed", "orders", "payments"] {
        let (_, stats) = host.get(&format!("/v1/functions/{f}/stats")).await;
        assert_eq!(
            stats["queued"], 0,
            "a refused publish enqueued something: {stats}"
        );
        assert_eq!(stats["succeeded"], 0);
    }
    host.stop().await;
}

/// Deliveries count against the host's bytes budget but not the subscriber's `max_queued`;
/// over the budget, the whole publish is refused and nothing is enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_use_the_host_budget_not_max_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_queued_bytes = 1000;
    let host = start_host_with(config).await;
    let m =
        |name: &str| format!("name = \"{name}\"\nmax_queued = 1\n[[subscribe]]\ntopic = \"t\"\n");
    host.deploy_manifest("one", components::INSPECT, &m("one"))
        .await;
    host.deploy_manifest("two", components::INSPECT, &m("two"))
        .await;
    host.post("/v1/functions/one/pause", "").await;
    host.post("/v1/functions/two/pause", "").await;
    for i in 0..3 {
        let (status, answer) =
            publish(&host, "t", &event(&format!("e{i}"), "x", json!(i)), &[]).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(deliveries(&answer).len(), 2);
    }
    let (_, stats) = host.get("/v1/functions/one/stats").await;
    assert_eq!(
        stats["queued"], 3,
        "past max_queued through deliveries: {stats}"
    );
    let r = host
        .http
        .post(host.url("/v1/functions/one/jobs"))
        .body("direct")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        429,
        "a direct submit still obeys max_queued"
    );

    // 2 x 600 bytes is over the 1000-byte budget: nothing of it is enqueued.
    let big = "x".repeat(600);
    let (status, body) = publish(&host, "t", &event("big", "x", json!(big)), &[]).await;
    assert_eq!(status, 429, "{body}");
    assert_error(&body, "host_budget_exhausted");
    let (_, stats) = host.get("/v1/functions/two/stats").await;
    assert_eq!(stats["queued"], 3, "{stats}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    host.stop().await;
}

/// Topics list their subscriptions and each subscriber's backlog; a correlation id given on a
/// submit and a publish lists both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_correlation_listing() {
    let host = start_host().await;
    deploy_subscribers(&host).await;
    host.deploy("echo", components::ECHO, "").await;
    let (_, topics) = host.get("/v1/topics").await;
    let list = topics["topics"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["topic"], "orders");
    assert_eq!(list[0]["subscriptions"].as_array().unwrap().len(), 3);
    host.post("/v1/functions/placed/pause", "").await;
    publish(
        &host,
        "orders",
        &event("c-1", "order.placed", json!({})),
        &[("sluice-correlation-id", "checkout-9")],
    )
    .await;
    let r = host
        .http
        .post(host.url("/v1/functions/echo/jobs"))
        .header("sluice-correlation-id", "checkout-9")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let (status, topic) = host.get("/v1/topics/orders").await;
    assert_eq!(status, 200);
    let placed = topic["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["function"] == "placed")
        .unwrap()
        .clone();
    assert_eq!(placed["paused"], true);
    assert_eq!(placed["backlog"]["queued"], 1, "{topic}");
    let (status, body) = host.get("/v1/topics/unknown").await;
    assert_eq!(status, 404);
    assert_error(&body, "topic_not_found");

    let (_, listing) = host.get("/v1/jobs?correlation_id=checkout-9").await;
    assert_eq!(listing["events"].as_array().unwrap().len(), 1);
    let jobs = listing["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        3,
        "two deliveries and the direct job: {listing}"
    );
    assert_eq!(jobs.iter().filter(|j| j["parent"].is_null()).count(), 1);
    assert!(
        jobs.iter()
            .any(|j| j["function"] == "echo" && j["parent"].is_null())
    );
    host.stop().await;
}
