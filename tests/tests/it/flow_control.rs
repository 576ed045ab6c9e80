//! Flow control by key: concurrency keys bound each key's attempts, keys take turns (a flood
//! of one key does not hold another key's job back), keys come from a header or from the
//! function's rule, and `key_rate_per_second` spaces one key's starts.

use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, millis, start_host};

fn sleep(ms: u64) -> Value {
    json!({ "action": "sleep", "ms": ms })
}

/// Submits JSON with a concurrency key; returns the job id.
async fn submit_keyed(host: &TestHost, function: &str, key: &str, input: &Value) -> String {
    let r = host
        .http
        .post(host.url(&format!("/v1/functions/{function}/jobs")))
        .header("content-type", "application/json")
        .header("sluice-concurrency-key", key)
        .body(input.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// (start, end) of each job's attempt, in the order given; each job must succeed.
async fn spans(host: &TestHost, ids: &[String]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for id in ids {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let a = &job["attempt_history"][0];
        out.push((millis(&a["started_at"]), millis(&a["finished_at"])));
    }
    out
}

/// Most of the intervals that overlap at one instant.
fn max_overlap(spans: &[(u64, u64)]) -> usize {
    let mut events: Vec<(u64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    events.sort_unstable();
    let (mut now, mut max) = (0, 0);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// `key_concurrency = 1` with `max_concurrency = 3`: each key runs one attempt at a time while
/// keys run side by side; a job waiting in its key's queue can be cancelled, and the key goes
/// on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_runs_at_most_key_concurrency_at_once() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=3&key_concurrency=1")
        .await;
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..6 {
        a.push(submit_keyed(&host, "probe", "tenant-a", &sleep(120)).await);
        b.push(submit_keyed(&host, "probe", "tenant-b", &sleep(120)).await);
    }
    // The last job of a waits in its key's queue: queued, no attempt; cancelled, it is gone.
    let waiting = submit_keyed(&host, "probe", "tenant-a", &sleep(120)).await;
    let job = host.job(&waiting).await;
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["concurrency_key"], "tenant-a");
    let (status, body) = host.delete(&format!("/v1/jobs/{waiting}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(host.job(&waiting).await["status"], "cancelled");

    let sa = spans(&host, &a).await;
    let sb = spans(&host, &b).await;
    assert_eq!(max_overlap(&sa), 1, "tenant-a ran more than one at once: {sa:?}");
    assert_eq!(max_overlap(&sb), 1, "tenant-b ran more than one at once: {sb:?}");
    let all: Vec<(u64, u64)> = sa.iter().chain(&sb).copied().collect();
    assert_eq!(max_overlap(&all), 2, "the two keys run side by side: {all:?}");
    // Within a key, jobs start in the order they became due.
    for key in [&sa, &sb] {
        assert!(key.windows(2).all(|w| w[0].1 <= w[1].0), "{key:?}");
    }

    // A malformed key is refused before anything is stored.
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("sluice-concurrency-key", "k".repeat(300))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_error(&r.json().await.unwrap(), "invalid_header");
}

/// A job with both an ordering key and a concurrency key takes its concurrency place only
/// once it is its ordering key's head: a delayed head does not leave the jobs behind it
/// holding every place (they would wait for each other forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_and_concurrency_keys_together_never_deadlock() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_concurrency=4&key_concurrency=1")
        .await;
    let mut ids = Vec::new();
    for (n, delay) in [(0, Some("1")), (1, None), (2, None)] {
        let mut r = host
            .http
            .post(host.url("/v1/functions/probe/jobs"))
            .header("content-type", "application/json")
            .header("sluice-ordering-key", "o")
            .header("sluice-concurrency-key", "t");
        if let Some(delay) = delay {
            r = r.header("sluice-delay", delay);
        }
        let r = r.body(sleep(1).to_string()).send().await.unwrap();
        assert_eq!(r.status(), 202, "job {n}");
        ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string());
    }
    let s = spans(&host, &ids).await;
    assert!(s.windows(2).all(|w| w[0].1 <= w[1].0), "in order, one at a time: {s:?}");
}

/// One key floods the queue (60 jobs of 100 ms, two workers); another key's job, submitted
/// after the flood, starts after at most a few of the flood's jobs, not after all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_key_does_not_hold_back_another() {
    let host = start_host().await;
    // key_concurrency is unset: a key may use the whole function, yet keys take turns.
    host.deploy("probe", components::PROBE, "max_concurrency=2").await;
    let flood: Vec<Value> = (0..60).map(|_| sleep(100)).collect();
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs:batch"))
        .header("content-type", "application/json")
        .header("sluice-concurrency-key", "noisy")
        .body(Value::Array(flood).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let noisy: Vec<String> = r.json::<Value>().await.unwrap()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    // Let the flood get going.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let submitted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let quiet = submit_keyed(&host, "probe", "quiet", &sleep(10)).await;
    let quiet_start = spans(&host, &[quiet]).await[0].0;
    let noisy_spans = spans(&host, &noisy).await;
    let overtook = noisy_spans
        .iter()
        .filter(|(start, _)| *start >= submitted && *start < quiet_start)
        .count();
    assert!(
        overtook <= 4,
        "{overtook} of the flood's jobs started between the quiet key's submit and its start"
    );
    let after = noisy_spans.iter().filter(|(start, _)| *start > quiet_start).count();
    assert!(after >= 20, "the flood was nearly over ({after} left): the test proves nothing");
}

/// A function's rule keys jobs from their JSON input (also jobs the host makes, such as topic
/// deliveries) or from a header; `Sluice-Concurrency-Key` wins over the rule; and
/// `key_rate_per_second` spaces one key's starts while other keys start at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_find_keys_and_a_key_rate_spaces_starts() {
    let host = start_host().await;
    host.deploy_manifest(
        "probe",
        components::PROBE,
        "name = \"probe\"\nmax_concurrency = 4\nkey_rate_per_second = 4\nconcurrency_key = { json = \"/tenant\" }\n[[subscribe]]\ntopic = \"work\"\n",
    )
    .await;
    let (_, f) = host.get("/v1/functions/probe").await;
    assert_eq!(f["concurrency_key"], json!({"json": "/tenant"}), "{f}");
    assert_eq!(f["key_rate_per_second"], 4);

    let mut a = Vec::new();
    for _ in 0..5 {
        a.push(host.submit_json("probe", &json!({"action": "sleep", "ms": 1, "tenant": "a"})).await);
    }
    let b = host.submit_json("probe", &json!({"action": "sleep", "ms": 1, "tenant": "b"})).await;
    let unkeyed = host.submit_json("probe", &sleep(1)).await;
    let named = submit_keyed(&host, "probe", "z", &json!({"action": "sleep", "ms": 1, "tenant": "a"})).await;
    let sa = spans(&host, &a).await;
    let first = sa.iter().map(|s| s.0).min().unwrap();
    let last = sa.iter().map(|s| s.0).max().unwrap();
    // Four intervals of 250 ms (a millisecond of rounding either way).
    assert!(last - first >= 998, "5 starts of key a within {} ms", last - first);
    let b_start = spans(&host, std::slice::from_ref(&b)).await[0].0;
    assert!(b_start < last, "key b waited for key a's pace");
    assert_eq!(host.job(&a[0]).await["concurrency_key"], "a");
    assert_eq!(host.job(&b).await["concurrency_key"], "b");
    assert_eq!(host.job(&unkeyed).await["concurrency_key"], Value::Null);
    assert_eq!(host.job(&named).await["concurrency_key"], "z");

    // A topic delivery is keyed by the same rule.
    let r = host
        .http
        .post(host.url("/v1/topics/work/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "w-1")
        .header("ce-source", "/tests")
        .header("ce-type", "work.item")
        .header("content-type", "application/json")
        .body(json!({"action": "sleep", "ms": 1, "tenant": "c"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let answer: Value = r.json().await.unwrap();
    let delivery = answer["deliveries"][0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(host.wait(&delivery).await["concurrency_key"], "c");

    // A header rule reads the submit's header.
    host.deploy_manifest(
        "probe",
        components::PROBE,
        "name = \"probe\"\nconcurrency_key = { header = \"x-tenant\" }\n",
    )
    .await;
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("x-tenant", "acme")
        .body(sleep(1).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(host.wait(&id).await["concurrency_key"], "acme");

    // A bad rule is refused at deploy with what to do.
    let (status, body) = host
        .deploy_manifest_raw("probe", components::PROBE, "concurrency_key = { json = \"tenant\" }\n")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("start it with /"), "{body}");
}

/// Submits with a debounce key; returns the job id.
async fn submit_debounced(host: &TestHost, key: &str) -> String {
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("sluice-debounce-key", key)
        .body(sleep(1).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// A newer submit with the same debounce key replaces the waiting job (which ends
/// `superseded`, naming its successor); the last one runs `debounce_ms` after its submit; a
/// steady stream still runs once per `debounce_max_ms`; misuse is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounced_submits_replace_the_waiting_job() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "debounce_ms=300&debounce_max_ms=1000")
        .await;
    let a = submit_debounced(&host, "doc-1").await;
    let b = submit_debounced(&host, "doc-1").await;
    let other = submit_debounced(&host, "doc-2").await;
    let c = submit_debounced(&host, "doc-1").await;
    let job_a = host.wait(&a).await;
    assert_eq!(job_a["status"], "superseded", "{job_a}");
    assert_eq!(job_a["superseded_by"], b.as_str());
    assert_eq!(job_a["attempts"], 0);
    assert_eq!(host.wait(&b).await["superseded_by"], c.as_str());
    let last = host.wait(&c).await;
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(last["debounce_key"], "doc-1");
    let waited = millis(&last["started_at"]) - millis(&last["created_at"]);
    assert!(waited >= 299, "ran {waited} ms after its submit");
    assert_eq!(host.wait(&other).await["status"], "succeeded", "another key is its own");

    // A stream every 100 ms for 1.5 s: the 1 s bound runs one mid-stream, the last runs after.
    let mut stream = Vec::new();
    for _ in 0..15 {
        stream.push(submit_debounced(&host, "stream").await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut ran = 0;
    for id in &stream {
        let job = host.wait(id).await;
        match job["status"].as_str() {
            Some("succeeded") => ran += 1,
            Some("superseded") => {}
            _ => panic!("{job}"),
        }
    }
    assert!(ran >= 2 && ran < 15, "{ran} of the stream ran");
    let (_, stats) = host.get("/v1/functions/probe/stats").await;
    assert_eq!(stats["superseded"], 2 + 15 - ran, "{stats}");

    // Misuse: with a delay, in a batch, on a function that does not debounce.
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs"))
        .header("sluice-debounce-key", "x")
        .header("sluice-delay", "5")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_error(&r.json().await.unwrap(), "invalid_header");
    let r = host
        .http
        .post(host.url("/v1/functions/probe/jobs:batch"))
        .header("sluice-debounce-key", "x")
        .body("[{}]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    host.deploy("echo", components::ECHO, "").await;
    let r = host
        .http
        .post(host.url("/v1/functions/echo/jobs"))
        .header("sluice-debounce-key", "x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("debounce_ms"), "{body}");
}

/// The function's breaker as its stats show it.
async fn breaker(host: &TestHost) -> Value {
    let (status, stats) = host.get("/v1/functions/probe/stats").await;
    assert_eq!(status, 200, "{stats}");
    stats["circuit_breaker"].clone()
}

/// After `breaker_failures` failed attempts in a row the function starts nothing for the
/// cool-down (its jobs wait, queued); then one probe: a failed probe opens it again, a
/// successful one closes it. Permanent failures (bad input) do not count. Stats and metrics
/// show the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_opens_probes_and_closes() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_concurrency=1&max_attempts=1&breaker_failures=3&breaker_cooldown_ms=800",
    )
    .await;
    let fail = |retryable: bool| json!({"action": "fail", "retryable": retryable});
    for _ in 0..4 {
        let id = host.submit_json("probe", &fail(false)).await;
        assert_eq!(host.wait(&id).await["status"], "failed");
    }
    assert_eq!(breaker(&host).await["state"], "closed", "permanent failures do not count");
    for n in 1..=3 {
        let id = host.submit_json("probe", &fail(true)).await;
        assert_eq!(host.wait(&id).await["status"], "dead");
        let b = breaker(&host).await;
        let expected = if n < 3 { "closed" } else { "open" };
        assert_eq!(b["state"], expected, "after {n} failures: {b}");
    }
    let metrics = String::from_utf8(host.get_raw("/metrics").await.2).unwrap();
    assert!(metrics.contains("sluice_circuit_open{function=\"probe\"} 1"), "{metrics}");

    // The probe fails: open again.
    let probe = host.submit_json("probe", &fail(true)).await;
    let job = host.wait(&probe).await;
    assert_eq!(job["status"], "dead");
    let b = breaker(&host).await;
    assert_eq!(b["state"], "open", "{b}");
    assert_eq!(b["opened_total"], 2);

    // A good job waits out the cool-down, then probes and closes the breaker.
    let good = host.submit_json("probe", &sleep(1)).await;
    assert_eq!(host.job(&good).await["status"], "queued");
    let job = host.wait(&good).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let waited = millis(&job["started_at"]) - millis(&job["created_at"]);
    assert!(waited >= 400, "the probe started {waited} ms after its submit");
    assert_eq!(breaker(&host).await["state"], "closed");
    let metrics = String::from_utf8(host.get_raw("/metrics").await.2).unwrap();
    assert!(metrics.contains("sluice_circuit_open{function=\"probe\"} 0"), "{metrics}");
    assert!(metrics.contains("sluice_circuit_opened_total{function=\"probe\"} 2"), "{metrics}");
}

/// `key_weights`: a key of weight 3 runs three attempts at once where a weight-1 key runs
/// one (`key_concurrency = 1`), side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_keys_run_in_proportion() {
    let host = start_host().await;
    host.deploy_manifest(
        "probe",
        components::PROBE,
        "name = \"probe\"\nmax_concurrency = 8\nkey_concurrency = 1\nkey_weights = { premium = 3 }\n",
    )
    .await;
    let (_, f) = host.get("/v1/functions/probe").await;
    assert_eq!(f["key_weights"], json!({"premium": 3}), "{f}");
    let mut premium = Vec::new();
    let mut basic = Vec::new();
    for _ in 0..9 {
        premium.push(submit_keyed(&host, "probe", "premium", &sleep(150)).await);
    }
    for _ in 0..3 {
        basic.push(submit_keyed(&host, "probe", "basic", &sleep(150)).await);
    }
    let sp = spans(&host, &premium).await;
    let sb = spans(&host, &basic).await;
    assert_eq!(max_overlap(&sp), 3, "premium: {sp:?}");
    assert_eq!(max_overlap(&sb), 1, "basic: {sb:?}");
    let all: Vec<(u64, u64)> = sp.iter().chain(&sb).copied().collect();
    assert_eq!(max_overlap(&all), 4, "{all:?}");

    let (status, body) = host
        .deploy_manifest_raw("probe", components::PROBE, "key_weights = { premium = 0 }\n")
        .await;
    assert_eq!(status, 400, "{body}");
}
