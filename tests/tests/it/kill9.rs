//! `kill -9` under load: the real binary is killed while submits are in flight and 100+ attempts
//! run, three times at different points, then restarted on the same data directory. Every job
//! that got a `202` must end `succeeded` with its own output; none is lost or listed twice.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{components, free_port, get_json, sluice_binary, wait_healthy};

const CLIENTS: usize = 8;

fn serve(data: &std::path::Path, port: u16) -> Child {
    serve_with(data, port, &[])
}

fn serve_with(data: &std::path::Path, port: u16, env: &[(&str, String)]) -> Child {
    Command::new(sluice_binary())
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_DATA", data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start sluice serve")
}

/// A data directory, a free port, the host's URL on it, and a client with a timeout.
fn setup() -> (tempfile::TempDir, u16, String, reqwest::Client) {
    let port = free_port();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (
        tempfile::tempdir().unwrap(),
        port,
        format!("http://127.0.0.1:{port}"),
        http,
    )
}

/// Long-polls job `id` until it succeeds and returns it (panics if it ends otherwise or is not
/// done by `deadline`).
async fn wait_succeeded(http: &reqwest::Client, url: &str, id: &str, deadline: Instant) -> Value {
    loop {
        let job = get_json(http, &format!("{url}/v1/jobs/{id}?wait=5")).await;
        match job["status"].as_str() {
            Some("succeeded") => return job,
            Some("queued" | "running" | "delayed") => {}
            _ => panic!("job {id} did not succeed: {job}"),
        }
        assert!(Instant::now() < deadline, "job {id} never finished: {job}");
    }
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let Ok(r) = http.get(format!("{url}/metrics")).send().await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The output probe gives for a sleep of `ms`: each job's is its own.
fn expected_output(ms: u64) -> String {
    json!({"detail": format!("slept {ms} ms"), "ok": true}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_accepted_job() {
    let (tmp, port, url, http) = setup();
    // Job id -> the sleep it asked for, for every submit that got its 202.
    let accepted: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut serial = 0u64;

    // Kill points: as soon as 100 attempts run, a little later, later still.
    for (round, extra_delay_ms) in [0u64, 150, 400].into_iter().enumerate() {
        let mut host = serve(tmp.path(), port);
        wait_healthy(&http, &url).await;
        if round == 0 {
            let wasm = std::fs::read(components::PROBE).unwrap();
            let r = http
                .put(format!(
                    "{url}/v1/functions/probe?max_concurrency=200&timeout_ms=20000"
                ))
                .header("content-type", "application/wasm")
                .body(wasm)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "deploy: {}", r.status());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (http, url, accepted, stop) =
                (http.clone(), url.clone(), accepted.clone(), stop.clone());
            let base = serial + c as u64 * 10_000;
            clients.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 600 {
                    let ms = 100 + (base + n) % 200;
                    n += 1;
                    let sent = http
                        .post(format!("{url}/v1/functions/probe/jobs"))
                        .header("content-type", "application/json")
                        .body(json!({"action": "sleep", "ms": ms}).to_string())
                        .send()
                        .await;
                    // After the kill, submits fail: whatever got no 202 was never promised.
                    let Ok(r) = sent else { break };
                    if r.status() != 202 {
                        break;
                    }
                    let Ok(body) = r.json::<Value>().await else {
                        break;
                    };
                    let id = body["id"].as_str().unwrap().to_string();
                    accepted.lock().unwrap().insert(id, ms);
                }
            }));
        }
        serial += CLIENTS as u64 * 10_000;
        // Wait until at least 100 attempts run (submits are still in flight), then kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&http, &url, "sluice_attempts_running").await < 100.0 {
            assert!(
                Instant::now() < deadline,
                "never reached 100 running attempts"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(extra_delay_ms)).await;
        let running = metric(&http, &url, "sluice_attempts_running").await;
        host.kill().expect("kill -9");
        host.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        eprintln!(
            "round {round}: killed with about {running} attempts running; {} jobs accepted so far",
            accepted.lock().unwrap().len()
        );
    }

    // Restart for good; every accepted job must finish with its own output.
    let mut host = serve(tmp.path(), port);
    wait_healthy(&http, &url).await;
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 300,
        "only {} jobs accepted",
        accepted.len()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, ms) in &accepted {
        let job = wait_succeeded(&http, &url, id, deadline).await;
        assert_eq!(job["output"], expected_output(*ms), "{job}");
    }
    // The listing shows every job exactly once (including any accepted whose answer was lost).
    let mut listed: HashMap<String, usize> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = get_json(
            &http,
            &format!(
                "{url}/v1/jobs?function=probe&limit=1000{}",
                cursor
                    .as_ref()
                    .map_or(String::new(), |c| format!("&cursor={c}"))
            ),
        )
        .await;
        for job in page["jobs"].as_array().unwrap() {
            *listed
                .entry(job["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(listed.values().all(|&n| n == 1), "a job is listed twice");
    for id in accepted.keys() {
        assert!(listed.contains_key(id), "accepted job {id} is not listed");
    }
    host.kill().unwrap();
    host.wait().unwrap();
}

/// `kill -9` while handlers emit: every emitter job that succeeded (before or after the
/// restart) has exactly one emitted event, its delivery and its enqueued job; none is lost
/// between the success and the delivery, none is doubled by a retry after the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_handlers_emit_loses_and_doubles_nothing() {
    let (tmp, port, url, http) = setup();
    let mut host = serve(tmp.path(), port);
    wait_healthy(&http, &url).await;
    let deploy = |name: &str, component: &str, manifest: String| {
        let form = reqwest::multipart::Form::new()
            .part(
                "component",
                reqwest::multipart::Part::bytes(std::fs::read(component).unwrap()),
            )
            .part("manifest", reqwest::multipart::Part::text(manifest));
        http.put(format!("{url}/v1/functions/{name}"))
            .multipart(form)
            .send()
    };
    let r = deploy(
        "probe",
        components::PROBE,
        "name = \"probe\"\nmax_concurrency = 64\n".into(),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    let r = deploy(
        "inspect",
        components::INSPECT,
        "name = \"inspect\"\nmax_concurrency = 64\n[[subscribe]]\ntopic = \"t\"\n".into(),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());

    // Each emitter job has its own correlation id, so its listing shows what it caused.
    let accepted: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, url, accepted, stop) =
            (http.clone(), url.clone(), accepted.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for n in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let correlation = format!("emit-{c}-{n}");
                let sent = http
                    .post(format!("{url}/v1/functions/probe/jobs"))
                    .header("content-type", "application/json")
                    .header("sluice-correlation-id", &correlation)
                    .body(json!({"action": "emit", "topic": "t", "fail_until": 0}).to_string())
                    .send()
                    .await;
                let Ok(r) = sent else { break };
                if r.status() != 202 {
                    break;
                }
                let Ok(body) = r.json::<Value>().await else {
                    break;
                };
                let id = body["id"].as_str().unwrap().to_string();
                accepted.lock().unwrap().push((id, correlation));
            }
        }));
    }
    // Kill once emitters have been finishing for a while, mid-stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&http, &url, "sluice_events_published_total").await < 300.0 {
        assert!(Instant::now() < deadline, "emitters never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill().expect("kill -9");
    host.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let mut host = serve(tmp.path(), port);
    wait_healthy(&http, &url).await;
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 300, "only {} accepted", accepted.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, correlation) in &accepted {
        let job = get_json(&http, &format!("{url}/v1/jobs/{id}?wait=30")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        loop {
            let listing = get_json(
                &http,
                &format!("{url}/v1/jobs?correlation_id={correlation}"),
            )
            .await;
            let events = listing["events"].as_array().unwrap();
            let jobs = listing["jobs"].as_array().unwrap();
            assert_eq!(events.len(), 1, "{listing}");
            assert_eq!(jobs.len(), 3, "emitter, delivery, enqueued job: {listing}");
            if jobs.iter().all(|j| j["status"] == "succeeded") {
                break;
            }
            assert!(
                jobs.iter().all(|j| matches!(
                    j["status"].as_str(),
                    Some("queued" | "running" | "succeeded")
                )),
                "{listing}"
            );
            assert!(Instant::now() < deadline, "{listing}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    host.kill().unwrap();
    host.wait().unwrap();
}

/// `kill -9` with callbacks pending (the receiver was failing): after the restart every one is
/// delivered; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_pending_callbacks_delivers_them_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let receiver = sluice_tests::Receiver::start().await;
    receiver
        .fail_first
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let env = [
        (
            "SLUICE_ALLOW_CALLBACK_HOSTS",
            format!("127.0.0.1:{}", receiver.port),
        ),
        ("SLUICE_CALLBACK_BACKOFF_BASE_MS", "200".to_string()),
        ("SLUICE_CALLBACK_BACKOFF_MAX_MS", "500".to_string()),
        ("SLUICE_CALLBACK_MAX_ATTEMPTS", "100".to_string()),
        // No breaker pause, so each callback fails at least once before the kill.
        ("SLUICE_CALLBACK_COOL_DOWN", "0".to_string()),
    ];
    let mut host = serve_with(tmp.path(), port, &env);
    wait_healthy(&http, &url).await;
    let r = http
        .put(format!("{url}/v1/functions/echo"))
        .header("content-type", "application/wasm")
        .body(std::fs::read(components::ECHO).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = http
            .post(format!("{url}/v1/functions/echo/jobs"))
            .header("sluice-callback", receiver.url(&format!("/hook/{i}")))
            .body(format!("job {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Every job is done and its callback has failed at least once: pending.
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job = get_json(&http, &format!("{url}/v1/jobs/{id}")).await;
            if job["callback"]["attempts"].as_u64().unwrap_or(0) >= 1 {
                assert_eq!(job["callback"]["state"], "pending", "{job}");
                break;
            }
            assert!(Instant::now() < deadline, "{job}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    host.kill().expect("kill -9");
    host.wait().unwrap();
    receiver
        .fail_first
        .store(0, std::sync::atomic::Ordering::SeqCst);

    let mut host = serve_with(tmp.path(), port, &env);
    wait_healthy(&http, &url).await;
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = get_json(&http, &format!("{url}/v1/jobs/{id}")).await;
            if job["callback"]["state"] == "delivered" {
                break;
            }
            assert!(Instant::now() < deadline, "never delivered: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The receiver got a successful request for every job.
    let got = receiver.requests();
    for i in 0..20 {
        let path = format!("/hook/{i}");
        assert!(got.iter().any(|r| r.path == path), "nothing for {path}");
    }
    host.kill().unwrap();
    host.wait().unwrap();
}

/// `kill -9` while 50 attempts that each add one to one of ten counters in the function's
/// key-value state are mid-flight, on two shards (so some jobs commit their state in another
/// shard than their success): after the restart every accepted job has succeeded and the
/// counters add up to their number exactly. An attempt cut off by the kill changed nothing; one whose state was
/// committed but whose success was not is not applied twice when it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_attempt_keeps_key_value_state_exact() {
    let (tmp, port, url, http) = setup();
    let shards = [("SLUICE_STORE_SHARDS", "2".to_string())];
    let mut host = serve_with(tmp.path(), port, &shards);
    wait_healthy(&http, &url).await;
    let wasm = std::fs::read(components::PROBE).unwrap();
    let r = http
        .put(format!("{url}/v1/functions/probe?max_concurrency=50"))
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "deploy: {}", r.status());
    let mut accepted = Vec::new();
    for i in 0..150 {
        let r = http
            .post(format!("{url}/v1/functions/probe/jobs"))
            .header("content-type", "application/json")
            .body(json!({"action": "kv_add", "key": format!("n{}", i % 10), "ms": 300}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        accepted.push(body["id"].as_str().unwrap().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&http, &url, "sluice_attempts_running").await < 40.0 {
        assert!(
            Instant::now() < deadline,
            "never reached 40 running attempts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.kill().expect("kill -9");
    host.wait().unwrap();

    let mut host = serve_with(tmp.path(), port, &shards);
    wait_healthy(&http, &url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in &accepted {
        wait_succeeded(&http, &url, id, deadline).await;
    }
    let mut total = 0;
    for k in 0..10 {
        let value = http
            .get(format!("{url}/v1/functions/probe/kv/n{k}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(value, "15", "counter n{k}");
        total += value.parse::<usize>().unwrap();
    }
    assert_eq!(total, accepted.len());
    host.kill().unwrap();
    host.wait().unwrap();
}
