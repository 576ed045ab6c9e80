//! Handlers that emit: the transactional outbox (what an attempt emits is committed with its
//! success, exactly once), a choreography of real functions with no coordinator (and its
//! compensation path), and pipelines (`then`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, start_host};

/// Deploys a function with its manifest from `functions/`.
async fn deploy_example(host: &TestHost, name: &str, component: &str, manifest: &str) {
    host.deploy_manifest(name, component, &std::fs::read_to_string(manifest).unwrap())
        .await;
}

async fn deploy_shop(host: &TestHost) {
    deploy_example(
        host,
        "payment",
        components::PAYMENT,
        components::PAYMENT_MANIFEST,
    )
    .await;
    deploy_example(
        host,
        "inventory",
        components::INVENTORY,
        components::INVENTORY_MANIFEST,
    )
    .await;
    deploy_example(
        host,
        "shipping",
        components::SHIPPING,
        components::SHIPPING_MANIFEST,
    )
    .await;
    deploy_example(
        host,
        "compensation",
        components::COMPENSATION,
        components::COMPENSATION_MANIFEST,
    )
    .await;
}

/// Publishes an `order.placed` event under a correlation id.
async fn place_order(host: &TestHost, correlation: &str, order: Value) {
    let event = json!({
        "specversion": "1.0", "id": correlation, "source": "/storefront",
        "type": "order.placed", "datacontenttype": "application/json", "data": order,
    });
    let r = host
        .http
        .post(host.url("/v1/topics/shop/events"))
        .header("content-type", "application/cloudevents+json")
        .header("sluice-correlation-id", correlation)
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

/// Polls the correlation listing until an event of `final_type` shows and every job in it is
/// terminal; returns the listing.
async fn wait_for(host: &TestHost, correlation: &str, final_type: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listing) = host
            .get(&format!("/v1/jobs?correlation_id={correlation}"))
            .await;
        let done = listing["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == final_type)
            && listing["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(sluice_tests::is_terminal);
        if done {
            return listing;
        }
        assert!(Instant::now() < deadline, "no {final_type} yet: {listing}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event_types(listing: &Value) -> Vec<String> {
    let mut types: Vec<String> = listing["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    types
}

/// One published order flows through payment, inventory and shipping by events alone, to
/// `order.shipped`; a declined card takes the compensation path instead. Each step runs once,
/// and the correlation listing shows who caused what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn choreography_end_to_end_and_compensation() {
    let host = start_host().await;
    deploy_shop(&host).await;

    place_order(
        &host,
        "order-1",
        json!({"order_id": "o-1", "amount_cents": 1200, "card": "ok"}),
    )
    .await;
    let listing = wait_for(&host, "order-1", "order.shipped").await;
    assert_eq!(
        event_types(&listing),
        vec![
            "order.placed",
            "order.shipped",
            "payment.completed",
            "stock.reserved"
        ]
    );
    let jobs = listing["jobs"].as_array().unwrap();
    let mut functions: Vec<&str> = jobs
        .iter()
        .map(|j| j["function"].as_str().unwrap())
        .collect();
    functions.sort();
    assert_eq!(functions, vec!["inventory", "payment", "shipping"]);
    for job in jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["parent"]["kind"], "event");
    }
    // Every emitted event names the job that emitted it.
    let events = listing["events"].as_array().unwrap();
    let by_type = |t: &str| events.iter().find(|e| e["type"] == t).unwrap().clone();
    let job_of = |f: &str| jobs.iter().find(|j| j["function"] == f).unwrap().clone();
    assert_eq!(
        by_type("payment.completed")["parent"]["id"],
        job_of("payment")["id"]
    );
    assert_eq!(
        by_type("stock.reserved")["parent"]["id"],
        job_of("inventory")["id"]
    );
    assert_eq!(
        by_type("order.shipped")["parent"]["id"],
        job_of("shipping")["id"]
    );
    assert_eq!(by_type("order.shipped")["source"], "/v1/functions/shipping");
    let shipped = host
        .get(&format!(
            "/v1/events/{}",
            by_type("order.shipped")["event_id"].as_str().unwrap()
        ))
        .await
        .1;
    assert_eq!(
        shipped["deliveries"],
        json!([]),
        "nobody subscribes to order.shipped"
    );
    let output = host.job(job_of("shipping")["id"].as_str().unwrap()).await;
    let order: Value = serde_json::from_str(output["output"].as_str().unwrap()).unwrap();
    assert_eq!(order["tracking"], "TRACK-o-1");
    assert_eq!(order["payment_id"], "pay-o-1");

    // A declined card is a business outcome: payment succeeds, compensation runs.
    place_order(
        &host,
        "order-2",
        json!({"order_id": "o-2", "amount_cents": 1200, "card": "declined"}),
    )
    .await;
    let listing = wait_for(&host, "order-2", "order.cancelled").await;
    assert_eq!(
        event_types(&listing),
        vec!["order.cancelled", "order.placed", "payment.declined"]
    );
    let jobs = listing["jobs"].as_array().unwrap();
    let mut functions: Vec<&str> = jobs
        .iter()
        .map(|j| j["function"].as_str().unwrap())
        .collect();
    functions.sort();
    assert_eq!(functions, vec!["compensation", "payment"]);
    assert!(
        jobs.iter()
            .all(|j| j["status"] == "succeeded" && j["attempts"] == 1)
    );
    let compensation = jobs
        .iter()
        .find(|j| j["function"] == "compensation")
        .unwrap();
    let full = host.job(compensation["id"].as_str().unwrap()).await;
    assert!(
        full["log"]
            .as_str()
            .unwrap()
            .contains("notify customer: order o-2 cancelled"),
        "{full}"
    );
    host.stop().await;
}

/// A handler that emits and then fails emits nothing; retried until it succeeds, it emits
/// exactly once (an event with its delivery, and an enqueued job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_work_commits_only_with_success() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=5&backoff_base_ms=5&backoff_max_ms=5",
    )
    .await;
    host.deploy_manifest(
        "inspect",
        components::INSPECT,
        "name = \"inspect\"\n[[subscribe]]\ntopic = \"t\"\n",
    )
    .await;
    let submit = |correlation: &'static str, fail_until: u32| {
        let host = &host;
        async move {
            let r = host
                .http
                .post(host.url("/v1/functions/probe/jobs"))
                .header("sluice-correlation-id", correlation)
                .header("content-type", "application/json")
                .body(json!({"action": "emit", "topic": "t", "fail_until": fail_until}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            let v: Value = r.json().await.unwrap();
            v["id"].as_str().unwrap().to_string()
        }
    };
    let id = submit("third-time", 3).await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 3);
    let listing = wait_for(&host, "third-time", "probe.emitted").await;
    let events = listing["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        1,
        "two failed attempts emitted nothing: {listing}"
    );
    assert_eq!(events[0]["parent"]["id"], id.as_str());
    assert_eq!(
        events[0]["id"],
        format!("{id}-0"),
        "a stable CloudEvents id"
    );
    let jobs = listing["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.len(),
        3,
        "the probe, one delivery, one enqueued job: {listing}"
    );
    let children: Vec<&Value> = jobs.iter().filter(|j| j["function"] == "inspect").collect();
    assert_eq!(children.len(), 2);
    let enqueued = children
        .iter()
        .filter(|c| c["parent"] == json!({"kind": "job", "id": id}))
        .count();
    let delivered = children
        .iter()
        .filter(|c| c["parent"] == json!({"kind": "event", "id": events[0]["event_id"]}))
        .count();
    assert_eq!((enqueued, delivered), (1, 1), "{listing}");
    for child in children {
        let full = host.wait(child["id"].as_str().unwrap()).await;
        let saw: Value = serde_json::from_str(full["output"].as_str().unwrap()).unwrap();
        let data: Value = serde_json::from_str(saw["data"].as_str().unwrap()).unwrap();
        let attempt = data.get("attempt").or(data.get("from_attempt")).unwrap();
        assert_eq!(attempt, 3, "only the successful attempt's emits: {saw}");
        assert_eq!(saw["correlation_id"], "third-time");
    }

    // Never succeeding: nothing emitted at all.
    let id = submit("never", 99).await;
    assert_eq!(host.wait(&id).await["status"], "dead");
    let (_, listing) = host.get("/v1/jobs?correlation_id=never").await;
    assert_eq!(listing["events"], json!([]));
    assert_eq!(listing["jobs"].as_array().unwrap().len(), 1, "{listing}");
    host.stop().await;
}

/// A 3-stage pipeline: one job id stands for the chain (`running` until the last stage ends),
/// its output is the last stage's, and it lists every stage. A failing stage fails the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stage_pipeline() {
    let host = start_host().await;
    host.deploy_manifest(
        "stage-three",
        components::INSPECT,
        "name = \"stage-three\"\n",
    )
    .await;
    host.deploy_manifest(
        "stage-two",
        components::INSPECT,
        "name = \"stage-two\"\nthen = \"stage-three\"\n",
    )
    .await;
    let f = host
        .deploy_manifest(
            "stage-one",
            components::ECHO,
            "name = \"stage-one\"\nthen = \"stage-two\"\n",
        )
        .await;
    assert_eq!(f["then"], "stage-two");

    // Hold the last stage to see the head stand for the running chain.
    host.post("/v1/functions/stage-three/pause", "").await;
    let id = host.submit("stage-one", "hello", "text/plain").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = host.job(&id).await;
        let stages = job["pipeline"]["stages"].as_array().map_or(0, |s| s.len());
        if stages == 3 && job["pipeline"]["stages"][1]["status"] == "succeeded" {
            assert_eq!(job["status"], "running", "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, _) = host.get_raw(&format!("/v1/jobs/{id}/output")).await;
    assert_eq!(status, 409, "no output before the chain ends");
    let (_, waited) = host.get(&format!("/v1/jobs/{id}?wait=0.2")).await;
    assert_eq!(waited["status"], "running");
    host.post("/v1/functions/stage-three/resume", "").await;

    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stages = job["pipeline"]["stages"].as_array().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["function"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["stage-one", "stage-two", "stage-three"]);
    assert!(stages.iter().all(|s| s["status"] == "succeeded"));
    // stage-three saw what stage-two answered, which saw what stage-one (echo) answered.
    let (_, _, body) = host.get_raw(&format!("/v1/jobs/{id}/output")).await;
    let three: Value = serde_json::from_slice(&body).unwrap();
    let two: Value = serde_json::from_str(three["data"].as_str().unwrap()).unwrap();
    assert_eq!(two["data"], "hello");
    assert_eq!(three["correlation_id"], two["correlation_id"]);
    let stage_two = host.job(stages[1]["job_id"].as_str().unwrap()).await;
    assert_eq!(stage_two["parent"]["id"], id.as_str());
    assert_eq!(stage_two["pipeline"]["head"], id.as_str());

    // A failing middle stage ends the chain with its status and error.
    host.deploy_manifest(
        "bad-two",
        components::PROBE,
        "name = \"bad-two\"\nmax_attempts = 1\n",
    )
    .await;
    host.deploy_manifest(
        "bad-one",
        components::ECHO,
        "name = \"bad-one\"\nthen = \"bad-two\"\n",
    )
    .await;
    let r = host
        .http
        .post(host.url("/v1/functions/bad-one/jobs"))
        .header("content-type", "application/json")
        .body(json!({"action": "fail", "retryable": false}).to_string())
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("bad-two"), "{job}");
    assert_eq!(job["pipeline"]["stages"].as_array().unwrap().len(), 2);
    host.stop().await;
}

/// A pipeline that leads back to where it began is refused at deploy; a stage whose function is
/// deleted under it ends the chain, and the head says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_cycles_are_refused_and_a_deleted_stage_ends_the_head() {
    let host = start_host().await;
    host.deploy_manifest("pa", components::ECHO, "name = \"pa\"\nthen = \"pb\"\n")
        .await;
    host.deploy_manifest("pc", components::ECHO, "name = \"pc\"\nthen = \"pa\"\n")
        .await;
    // pb -> pc -> pa -> pb would never end.
    let (status, body) = host
        .deploy_manifest_raw("pb", components::ECHO, "name = \"pb\"\nthen = \"pc\"\n")
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_manifest");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("pb -> pc -> pa -> pb"), "{message}");
    assert_eq!(host.get("/v1/functions/pb").await.0, 404);

    // pb without `then` ends the pipeline; held paused, its stage waits queued.
    host.deploy_manifest("pb", components::ECHO, "name = \"pb\"\n")
        .await;
    host.post("/v1/functions/pb/pause", "").await;
    let id = host.submit("pa", "hello", "text/plain").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = host.job(&id).await;
        if job["pipeline"]["stages"].as_array().map_or(0, |s| s.len()) == 2 {
            assert_eq!(job["status"], "running", "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = host.delete("/v1/functions/pb?force=true").await;
    assert_eq!(status, 200, "{body}");
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("(pb) ended cancelled"), "{error}");

    // With pb gone, pa's next stage is cancelled as it is created: the head ends at once.
    let id = host.submit("pa", "again", "text/plain").await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("not deployed"), "{error}");
}
