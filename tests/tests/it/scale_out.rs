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
    host_with(cluster, dir, |_| {}).await
}

/// A host on the cluster with more settings.
async fn host_with(
    cluster: &NatsCluster,
    dir: &tempfile::TempDir,
    tune: impl FnOnce(&mut sluice::Config),
) -> TestHost {
    let mut config = test_config(dir.path());
    let mut nats = NatsOptions::new(&cluster.url());
    nats.replicas = 3;
    config.backend = Some(nats);
    tune(&mut config);
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

    // A large input and output are claim checks: stored once in the object store, read back
    // on the other host.
    let large = "x".repeat(600 * 1024);
    let id = a.submit("echo", large.clone(), "text/plain").await;
    let job = b.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{}", job["error"]);
    assert_eq!(job["input_size"], large.len());
    assert_eq!(job["output_size"], large.len());
    let output = b
        .http
        .get(b.url(&format!("/v1/jobs/{id}/output")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(output == large, "the output read back on B is the input ({} bytes)", output.len());

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

/// The output probe gives for a sleep of `ms`: each job's is its own.
fn slept(ms: u64) -> String {
    serde_json::json!({"detail": format!("slept {ms} ms"), "ok": true}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_under_load_leaves_its_jobs_to_the_other() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    // Host A is a real process (it must die by SIGKILL); host B runs in this process.
    let dir_a = tempfile::tempdir().unwrap();
    let port = sluice_tests::free_port();
    let url_a = format!("http://127.0.0.1:{port}");
    let mut a = std::process::Command::new(sluice_tests::sluice_binary())
        .arg("serve")
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_DATA", dir_a.path())
        .env("SLUICE_BACKEND", cluster.url())
        .env("SLUICE_NATS_REPLICAS", "3")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot start sluice serve");
    let http = reqwest::Client::new();
    sluice_tests::wait_healthy(&http, &url_a).await;
    let dir_b = tempfile::tempdir().unwrap();
    let b = host_on(&cluster, &dir_b).await;
    b.deploy(
        "probe",
        components::PROBE,
        "max_concurrency=8&timeout_ms=10000",
    )
    .await;
    until(&b, "/v1/functions/probe", "deployed", |s, _| s == 200).await;
    let (status, _) = {
        let r = http
            .get(format!("{url_a}/v1/functions/probe"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 200, "A knows the function");

    // Jobs of 2 s and more, submitted on both; both hosts lease and run them.
    let mut accepted = Vec::new();
    for n in 0..24u64 {
        let ms = 2000 + n;
        let body = serde_json::json!({"action": "sleep", "ms": ms}).to_string();
        let id = if n % 2 == 0 {
            let r = http
                .post(format!("{url_a}/v1/functions/probe/jobs"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            b.submit("probe", body, "application/json").await
        };
        accepted.push((id, ms));
    }
    // A is mid-attempt on some of them when it dies: it runs one (the cluster shares eight
    // slots between both hosts), whose start is on record a moment later.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = http
            .get(format!("{url_a}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let running: f64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("sluice_attempts_running ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        if running >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "A never ran a job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().unwrap();
    a.wait().unwrap();

    // Every accepted job ends succeeded with its own output, on B, exactly once: attempts A
    // ran are failed by their lease and run again.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rerun = 0;
    for (id, ms) in &accepted {
        let job = loop {
            let (status, job) = b.get(&format!("/v1/jobs/{id}?wait=10")).await;
            assert_eq!(status, 200, "{job}");
            if sluice_tests::is_terminal(&job) {
                break job;
            }
            assert!(Instant::now() < deadline, "job {id} never finished: {job}");
        };
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output"], slept(*ms), "{job}");
        let history = job["attempt_history"].as_array().unwrap();
        let successes = history.iter().filter(|a| a["error"].is_null()).count();
        assert_eq!(successes, 1, "one success on record: {job}");
        if history.iter().any(|a| {
            a["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("lease expired"))
        }) {
            rerun += 1;
        }
    }
    assert!(rerun > 0, "A ran some of the jobs when it died");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_node_killed_under_load_loses_no_accepted_job() {
    let mut cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    a.deploy("echo", components::ECHO, "max_concurrency=8")
        .await;
    until(
        &b,
        "/v1/functions/echo",
        "B learns of the deploy",
        |s, _| s == 200,
    )
    .await;

    // Submits go on while one of the three servers dies; a submit may be refused (503) while
    // the cluster moves its leaders, but one that got its 202 is never lost.
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut first_refusal = None;
    for n in 0..150 {
        if n == 50 {
            cluster.kill(0);
        }
        let host = if n % 2 == 0 { &a } else { &b };
        let input = format!("job {n}");
        let r = host
            .http
            .post(host.url("/v1/functions/echo/jobs"))
            .header("content-type", "text/plain")
            .body(input.clone())
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            202 => {
                let body: Value = r.json().await.unwrap();
                accepted.push((body["id"].as_str().unwrap().to_string(), input));
            }
            503 => {
                refused += 1;
                first_refusal.get_or_insert(r.text().await.unwrap());
            }
            other => panic!("submit {n}: {other} {}", r.text().await.unwrap()),
        }
    }
    assert!(
        accepted.len() >= 100,
        "most submits were accepted ({refused} refused)"
    );
    for (id, input) in &accepted {
        let job = b.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output"], input.as_str(), "{job}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrency_holds_across_hosts() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    a.deploy("probe", components::PROBE, "max_concurrency=2")
        .await;
    until(
        &b,
        "/v1/functions/probe",
        "B learns of the deploy",
        |s, _| s == 200,
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..10 {
        let host = if n % 2 == 0 { &a } else { &b };
        let body = serde_json::json!({"action": "sleep", "ms": 400}).to_string();
        ids.push(host.submit("probe", body, "application/json").await);
    }
    let mut spans = Vec::new();
    for id in &ids {
        let job = b.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        spans.push((
            sluice_tests::millis(&job["started_at"]),
            sluice_tests::millis(&job["finished_at"]),
        ));
    }
    // Two hosts, each could run two: the cluster lets two run at once, not four.
    let most = spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, f)| s <= start && start < f)
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= 2, "{most} attempts ran at once: {spans:?}");
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    assert!(
        last - first >= 1_900,
        "ten 400 ms attempts two at a time take 2 s, not {} ms",
        last - first
    );
    a.stop().await;
    b.stop().await;
}

/// A function's stats on `host`, once `field` reaches `want` (counts are JetStream counters,
/// updated just after each change).
async fn until_count(host: &TestHost, function: &str, field: &str, want: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, stats) = host.get(&format!("/v1/functions/{function}/stats")).await;
        if stats[field] == want {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "{function} {field} is not {want}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events published on either host reach every subscriber once, and what handlers emit (the
/// shop's choreography: order.placed -> payment -> inventory -> shipping) flows through
/// both hosts: each step runs exactly once per order, and what one host accepted is read
/// back on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_and_what_handlers_emit_flow_across_hosts() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    for (name, component, manifest) in [
        ("payment", components::PAYMENT, components::PAYMENT_MANIFEST),
        (
            "inventory",
            components::INVENTORY,
            components::INVENTORY_MANIFEST,
        ),
        ("shipping", components::SHIPPING, components::SHIPPING_MANIFEST),
    ] {
        a.deploy_manifest(name, component, &std::fs::read_to_string(manifest).unwrap())
            .await;
        until(&b, &format!("/v1/functions/{name}"), "B learns of it", |s, _| {
            s == 200
        })
        .await;
    }

    const ORDERS: u64 = 12;
    let mut published = Vec::new();
    for n in 0..ORDERS {
        let (on, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let event = serde_json::json!({
            "specversion": "1.0", "id": format!("order-{n}"), "source": "/storefront",
            "type": "order.placed", "datacontenttype": "application/json",
            "data": {"order_id": format!("o-{n}"), "amount_cents": 1200, "card": "ok"},
        });
        let r = on
            .http
            .post(on.url("/v1/topics/shop/events"))
            .header("content-type", "application/cloudevents+json")
            .header("sluice-correlation-id", format!("order-{n}"))
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let answer: Value = r.json().await.unwrap();
        let deliveries = answer["deliveries"].as_array().unwrap().clone();
        assert_eq!(deliveries.len(), 1, "payment subscribes: {answer}");
        assert_eq!(deliveries[0]["function"], "payment");
        published.push((answer, other));
    }
    for (answer, other) in &published {
        // The event's record and its delivery, read on the host that did not accept it.
        let event_id = answer["event_id"].as_str().unwrap();
        let (status, record) = other.get(&format!("/v1/events/{event_id}")).await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["type"], "order.placed");
        let job = other
            .wait(answer["deliveries"][0]["job_id"].as_str().unwrap())
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["parent"]["kind"], "event", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
    }
    // Every step ran once per order, and nothing else ran. Counts from two hosts arrive in
    // any order (a job's `-1 queued` can land before another host's `+1`): the figures are
    // waited for until they settle, and must settle at these.
    for function in ["payment", "inventory", "shipping"] {
        until_count(&b, function, "succeeded", ORDERS).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, stats) = b.get(&format!("/v1/functions/{function}/stats")).await;
            let rest = ["queued", "running", "failed", "dead", "cancelled"];
            if rest.iter().all(|other| stats[*other] == 0) && stats["succeeded"] == ORDERS {
                break;
            }
            assert!(Instant::now() < deadline, "{function}: {stats}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, stats) = a.get("/v1/functions/shipping/stats").await;
    assert_eq!(stats["succeeded"], ORDERS, "no step ran twice: {stats}");

    // Who caused what, read on either host: each order's jobs and events under its
    // correlation id.
    for n in 0..ORDERS {
        let on = if n % 2 == 0 { &b } else { &a };
        let path = format!("/v1/jobs?correlation_id=order-{n}");
        // The last event is fanned out just after the step that emitted it ends.
        until(on, &path, "the whole chain is listed", |s, l| {
            s == 200 && l["events"].as_array().is_some_and(|e| e.len() == 4)
        })
        .await;
        let (status, listing) = on.get(&path).await;
        assert_eq!(status, 200, "{listing}");
        let mut functions: Vec<&str> = listing["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["function"].as_str().unwrap())
            .collect();
        functions.sort();
        assert_eq!(functions, ["inventory", "payment", "shipping"], "{listing}");
        let mut types: Vec<&str> = listing["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        types.sort();
        assert_eq!(
            types,
            [
                "order.placed",
                "order.shipped",
                "payment.completed",
                "stock.reserved"
            ],
            "{listing}"
        );
    }

    a.stop().await;
    b.stop().await;
}

/// Dead letters made on one host are listed (newest first, in pages), redriven and purged on
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_redriven_and_purged_on_any_host() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    // A buggy version of "orders": every job fails for good.
    a.deploy("orders", components::PROBE, "max_attempts=1")
        .await;
    let fail = serde_json::json!({"action": "fail", "retryable": false});
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(a.submit_json("orders", &fail).await);
    }
    for id in &ids {
        assert_eq!(b.wait(id).await["status"], "failed");
    }
    let listed = |page: &Value| -> Vec<String> {
        page["dead_letters"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, page) = b.get("/v1/functions/orders/dead-letters?limit=3").await;
    assert_eq!(status, 200, "{page}");
    let mut all = listed(&page);
    assert_eq!(all.len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = b
        .get(&format!("/v1/functions/orders/dead-letters?limit=3&cursor={cursor}"))
        .await;
    all.extend(listed(&page));
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first);

    // The fix, deployed on B; one dead letter redriven on B runs (on either host).
    b.deploy("orders", components::ECHO, "max_attempts=1").await;
    until(&a, "/v1/functions/orders", "A learns of the fix", |_, f| {
        f["version"] == 2
    })
    .await;
    let (status, body) = b
        .post_json(
            "/v1/functions/orders/dead-letters/redrive",
            &serde_json::json!({ "ids": [ids[0]] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"], serde_json::json!([ids[0]]));
    let job = a.wait(&ids[0]).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "attempts count from zero again: {job}");
    assert_eq!(job["attempt_history"].as_array().unwrap().len(), 2);

    // The rest purged on A: gone everywhere, and no longer listed.
    let (status, body) = a
        .post_json(
            "/v1/functions/orders/dead-letters/purge",
            &serde_json::json!({ "all": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut purged: Vec<String> = body["purged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    purged.sort();
    assert_eq!(purged, ids[1..].to_vec());
    let (status, _) = b.get(&format!("/v1/jobs/{}", ids[1])).await;
    assert_eq!(status, 404);
    let (_, page) = b.get("/v1/functions/orders/dead-letters").await;
    assert_eq!(listed(&page), Vec::<String>::new());

    // What this backend does not do yet is refused with a clear answer, not a retry hint.
    for (header, value, what) in [
        ("sluice-ordering-key", "k", "an ordering key"),
        ("sluice-priority", "9", "a priority other than 5"),
    ] {
        let r = b
            .http
            .post(b.url("/v1/functions/orders/jobs"))
            .header(header, value)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 501);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_supported_by_backend");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(what) && message.contains("not supported by the NATS backend yet"),
            "{body}"
        );
    }

    a.stop().await;
    b.stop().await;
}

/// Webhook callbacks are sent once across hosts: whichever host ran the job, one host sends
/// its callback (retried after failures, with one `webhook-id`), signed with the secret every
/// host shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_are_sent_once_across_hosts() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let receiver = sluice_tests::Receiver::start().await;
    receiver
        .fail_first
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tune = |config: &mut sluice::Config| {
        config.allow_callback_hosts = vec![format!("127.0.0.1:{}", receiver.port)];
        config.callback_retry = sluice::manifest::RetryPolicy {
            max_attempts: 10,
            backoff_base_ms: 20,
            backoff_max_ms: 50,
        };
    };
    let a = host_with(&cluster, &dir_a, tune).await;
    let b = host_with(&cluster, &dir_b, tune).await;
    a.deploy("echo", components::ECHO, "").await;
    until(&b, "/v1/functions/echo", "deployed", |s, _| s == 200).await;

    const JOBS: usize = 10;
    let mut ids = Vec::new();
    for n in 0..JOBS {
        let on = if n % 2 == 0 { &a } else { &b };
        let r = on
            .http
            .post(on.url("/v1/functions/echo/jobs"))
            .header("content-type", "text/plain")
            .header("sluice-callback", receiver.url("/hook"))
            .body(format!("job {n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let answer: Value = r.json().await.unwrap();
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (n, id) in ids.iter().enumerate() {
        let other = if n % 2 == 0 { &b } else { &a };
        loop {
            let job = other.job(id).await;
            if job["callback"]["state"] == "delivered" {
                break;
            }
            assert!(Instant::now() < deadline, "callback not delivered: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Settled: no host sends anything more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.requests();
    assert_eq!(
        got.len(),
        JOBS + 3,
        "one delivery per job, plus the three the receiver failed"
    );
    let secret = b.get("/v1/secret").await.1["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let mut delivered_for = Vec::new();
    for r in &got {
        standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .expect("signed with the shared secret");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["data"]["status"], "succeeded");
        delivered_for.push(body["data"]["id"].as_str().unwrap().to_string());
    }
    delivered_for.sort();
    delivered_for.dedup();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(delivered_for, expected, "every job called back");

    a.stop().await;
    b.stop().await;
}

/// `sluice up --cluster` (the real binary): three NATS servers and two hosts on one machine,
/// the examples deployed; a job submitted on the second host runs and is read on the first;
/// SIGTERM stops hosts and servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_up_cluster_starts_servers_and_two_hosts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let data = tempfile::tempdir().unwrap();
    // Two host ports in a row and 23 server ports from a base, free a moment ago, below the
    // ephemeral range (where any outgoing connection may take one meanwhile).
    let (port, base) = loop {
        let port = sluice_tests::nats::free_port();
        let base = sluice_tests::nats::free_port();
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if port < 65000
            && base < 65000
            && free(port + 1)
            && (0..3).all(|i| free(base + i) && free(base + 10 + i) && free(base + 20 + i))
            && (base..base + 23).all(|p| p != port && p != port + 1)
        {
            break (port, base);
        }
    };
    let mut up = std::process::Command::new(sluice_tests::sluice_binary())
        .args(["up", "--cluster", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--cluster-port", &base.to_string(), "--data"])
        .arg(data.path())
        .env("SLUICE_NATS_SERVER", sluice_tests::nats::server_binary())
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{}", port + 1),
    );
    let http = reqwest::Client::new();
    sluice_tests::wait_healthy(&http, &url_b).await;
    // `up` deploys once both hosts serve: wait until the second lists every example.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed: Option<Value> = match http.get(format!("{url_b}/v1/functions")).send().await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        if listed.is_some_and(|l| l["functions"].as_array().is_some_and(|f| f.len() >= 10)) {
            break;
        }
        assert!(Instant::now() < deadline, "up did not deploy the examples");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http
        .post(format!("{url_b}/v1/functions/echo/jobs"))
        .header("content-type", "text/plain")
        .body("across")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job: Value = http
        .get(format!("{url_a}/v1/jobs/{id}?wait=20"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output"], "across");

    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &up.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || up.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "sluice up exited with {status}");
    // Its servers went with it: their client ports are free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", base)).is_ok() {
        assert!(Instant::now() < deadline, "a NATS server outlived sluice up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pipeline's stages run on either host; its head, read on the other host, stands for the
/// chain: the last stage's output, every stage listed, a failing stage's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelines_run_across_hosts() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    a.deploy_manifest("stage-three", components::INSPECT, "name = \"stage-three\"\n")
        .await;
    a.deploy_manifest(
        "stage-two",
        components::INSPECT,
        "name = \"stage-two\"\nthen = \"stage-three\"\n",
    )
    .await;
    a.deploy_manifest(
        "stage-one",
        components::ECHO,
        "name = \"stage-one\"\nthen = \"stage-two\"\n",
    )
    .await;
    a.deploy_manifest("bad-two", components::PROBE, "name = \"bad-two\"\nmax_attempts = 1\n")
        .await;
    a.deploy_manifest("bad-one", components::ECHO, "name = \"bad-one\"\nthen = \"bad-two\"\n")
        .await;
    until(&b, "/v1/functions/bad-one", "B learns of the last deploy", |s, _| {
        s == 200
    })
    .await;

    let id = a.submit("stage-one", "hello", "text/plain").await;
    let job = b.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stages = job["pipeline"]["stages"].as_array().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["function"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stage-one", "stage-two", "stage-three"], "{job}");
    assert!(stages.iter().all(|s| s["status"] == "succeeded"), "{job}");
    let three: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
    let two: Value = serde_json::from_str(three["data"].as_str().unwrap()).unwrap();
    assert_eq!(two["data"], "hello", "each stage saw the one before");
    let stage_two = a.job(stages[1]["job_id"].as_str().unwrap()).await;
    assert_eq!(stage_two["pipeline"]["head"], id.as_str());

    // A stage cancelled while it waits ends the chain as cancelled.
    b.post("/v1/functions/stage-two/pause", "").await;
    until(&a, "/v1/functions/stage-two", "A learns of the pause", |_, f| {
        f["paused"] == true
    })
    .await;
    let id = a.submit("stage-one", "held", "text/plain").await;
    let mut waiting = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.is_none() {
        let job = b.job(&id).await;
        if job["pipeline"]["stages"].as_array().is_some_and(|s| s.len() == 2) {
            waiting = job["pipeline"]["stages"][1]["job_id"].as_str().map(String::from);
        }
        assert!(Instant::now() < deadline, "no second stage: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stage = waiting.unwrap();
    let (status, body) = b.delete(&format!("/v1/jobs/{stage}")).await;
    assert!(status == 200 || status == 204, "{status} {body}");
    let job = a.wait(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    b.post("/v1/functions/stage-two/resume", "").await;

    // A failing stage ends the chain with its status and error.
    let fail = serde_json::json!({"action": "fail", "retryable": false}).to_string();
    let id = b.submit("bad-one", fail, "application/json").await;
    let job = a.wait(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("bad-two"),
        "the head names the failing stage: {job}"
    );
    a.stop().await;
    b.stop().await;
}

/// Key-value state is one state across hosts: 120 visits submitted half to each host (a
/// plain read-modify-write of a counter, 8 attempts at a time on each) end at exactly 120 and
/// every visit saw a different count, so no update was lost between hosts and none applied
/// twice; what the API writes on one host is read and listed on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_value_state_is_one_state_across_hosts() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    a.deploy("visits", components::VISITS, "max_concurrency=16")
        .await;
    until(&b, "/v1/functions/visits", "B learns of the deploy", |s, _| {
        s == 200
    })
    .await;
    let mut submits = Vec::new();
    for i in 0..120 {
        let host = if i % 2 == 0 { &a } else { &b };
        let (http, url) = (host.http.clone(), host.url("/v1/functions/visits/jobs"));
        let visitor = if i % 3 == 0 { "ada" } else { "" };
        submits.push(tokio::spawn(async move {
            let r = http.post(url).body(visitor).send().await.unwrap();
            assert_eq!(r.status(), 202);
            let body: Value = r.json().await.unwrap();
            body["id"].as_str().unwrap().to_string()
        }));
    }
    let mut counts = std::collections::BTreeSet::new();
    let mut conflicts = 0;
    for (i, s) in submits.into_iter().enumerate() {
        let id = s.await.unwrap();
        let job = if i % 2 == 0 { b.wait(&id).await } else { a.wait(&id).await };
        assert_eq!(job["status"], "succeeded", "{job}");
        let output: Value = serde_json::from_str(job["output"].as_str().unwrap()).unwrap();
        counts.insert(output["visits"].as_u64().unwrap());
        conflicts += job["kv_conflicts"].as_u64().unwrap_or(0);
    }
    assert_eq!(counts, (1..=120).collect());
    for host in [&a, &b] {
        let (status, _, body) = host.get_raw("/v1/functions/visits/kv/visits").await;
        assert_eq!((status, body), (200, b"120".to_vec()));
        let (status, _, body) = host.get_raw("/v1/functions/visits/kv/visitor/ada").await;
        assert_eq!((status, body), (200, b"40".to_vec()));
    }
    eprintln!("{conflicts} attempts ran again after a conflict");
    // The operator API: written on A, read, listed and deleted on B.
    let (status, _) = a.put("/v1/functions/visits/kv/note/1", "x").await;
    assert_eq!(status, 200);
    a.put("/v1/functions/visits/kv/note/2", "y").await;
    let (_, list) = b.get("/v1/functions/visits/kv?prefix=note/").await;
    assert_eq!(list["keys"], serde_json::json!(["note/1", "note/2"]), "{list}");
    let (_, all) = b.get("/v1/functions/visits/kv").await;
    assert_eq!(
        all["keys"],
        serde_json::json!(["note/1", "note/2", "visitor/ada", "visits"]),
        "{all}"
    );
    let (status, _) = b.delete("/v1/functions/visits/kv/note/1").await;
    assert_eq!(status, 200);
    let (status, _, _) = a.get_raw("/v1/functions/visits/kv/note/1").await;
    assert_eq!(status, 404);
    let (_, list) = a.get("/v1/functions/visits/kv?prefix=note/").await;
    assert_eq!(list["keys"], serde_json::json!(["note/2"]), "{list}");
    // A value of 1 MiB (past what one message of the servers takes) is kept as a blob.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let (status, body) = a.put("/v1/functions/visits/kv/big", big.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, read) = b.get_raw("/v1/functions/visits/kv/big").await;
    assert_eq!(status, 200);
    assert!(read == big, "the 1 MiB value read on B is the one written on A");
    // A deleted function's state goes with it.
    let (status, _) = a.delete("/v1/functions/visits?force=true").await;
    assert_eq!(status, 200);
    a.deploy("visits", components::VISITS, "").await;
    let (_, list) = b.get("/v1/functions/visits/kv").await;
    assert_eq!(list["keys"], serde_json::json!([]), "{list}");
    a.stop().await;
    b.stop().await;
}

/// `rate_per_second` holds for the cluster, not per host: 16 jobs of a function limited to 4
/// starts a second, submitted half to each host, start about 250 ms apart whichever host
/// runs them (per-host pacing would start two at a time, in half the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_per_second_holds_across_hosts() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    a.deploy("echo", components::ECHO, "rate_per_second=4&max_concurrency=8")
        .await;
    until(&b, "/v1/functions/echo", "B learns of the deploy", |s, body| {
        s == 200 && body["rate_per_second"] == 4
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..16 {
        let host = if n % 2 == 0 { &a } else { &b };
        ids.push(host.submit("echo", format!("{n}"), "text/plain").await);
    }
    let mut starts = Vec::new();
    for id in &ids {
        let job = a.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        starts.push(sluice_tests::millis(&job["started_at"]));
    }
    starts.sort_unstable();
    // Starts are reserved 250 ms apart; a start made late (a busy machine) shortens the gap to
    // the next, so gaps are checked with slack. Paced per host, two hosts would start about
    // two at a time: gaps near zero and half the span.
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= 150,
            "two starts {} ms apart under 4 a second: {starts:?}",
            pair[1] - pair[0]
        );
    }
    for five in starts.windows(5) {
        assert!(
            five[4] - five[0] >= 900,
            "five starts within {} ms under 4 a second: {starts:?}",
            five[4] - five[0]
        );
    }
    assert!(
        starts[15] - starts[0] >= 3_600,
        "16 starts at 4 a second span 3.75 s, not {} ms",
        starts[15] - starts[0]
    );
    a.stop().await;
    b.stop().await;
}

/// An output streamed with `OutputWriter` (3 MiB, past any message a server takes) is stored
/// as a claim check by the host that ran it and read back whole on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_outputs_are_read_back_on_the_other_host() {
    use sha2::Digest;
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    a.deploy("probe", components::PROBE, "timeout_ms=60000")
        .await;
    until(&b, "/v1/functions/probe", "B learns of the deploy", |s, _| {
        s == 200
    })
    .await;
    let id = a
        .submit("probe", r#"{"action":"produce","mb":3}"#, "application/json")
        .await;
    let job = b.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output_size"], 3 << 20);
    let output = b
        .http
        .get(b.url(&format!("/v1/jobs/{id}/output")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let piece: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut expected = sha2::Sha256::new();
    for _ in 0..3 {
        expected.update(&piece);
    }
    assert_eq!(output.len(), 3 << 20);
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&output)),
        hex::encode(expected.finalize()),
        "the output read on B is what the handler streamed on A"
    );
    a.stop().await;
    b.stop().await;
}

/// An event over 512 KiB (past what one message of the outbox may carry with its deliveries)
/// is one claim check: published on A, each subscriber's delivery reads it whole, and the
/// deliveries and the event's record are read back on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_events_reach_every_subscriber_as_one_claim_check() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::three)
        .await
        .unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = host_on(&cluster, &dir_a).await;
    let b = host_on(&cluster, &dir_b).await;
    for name in ["copy-1", "copy-2"] {
        a.deploy_manifest(
            name,
            components::ECHO,
            &format!("name = \"{name}\"\n[[subscribe]]\ntopic = \"big\"\n"),
        )
        .await;
        until(&b, &format!("/v1/functions/{name}"), "B learns of it", |s, _| s == 200).await;
    }
    let data = "y".repeat(700 * 1024);
    let r = a
        .http
        .post(a.url("/v1/topics/big/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "large-1")
        .header("ce-source", "/tests")
        .header("ce-type", "blob.made")
        .header("content-type", "text/plain")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    let deliveries = answer["deliveries"].as_array().unwrap().clone();
    assert_eq!(deliveries.len(), 2, "{answer}");
    for delivery in &deliveries {
        let id = delivery["job_id"].as_str().unwrap();
        let job = b.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["input_size"], data.len());
        assert_eq!(job["output_size"], data.len());
        let output = b
            .http
            .get(b.url(&format!("/v1/jobs/{id}/output")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(output == data, "a delivery's output is the event's data ({} bytes)", output.len());
    }
    let (status, event) = b
        .get(&format!("/v1/events/{}", answer["event_id"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["size"], data.len(), "{event}");
    a.stop().await;
    b.stop().await;
}
