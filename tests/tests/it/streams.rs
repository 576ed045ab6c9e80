//! Server-Sent Events: a job's status changes pushed until it is terminal, a function's
//! figures pushed as they change, over real HTTP from a real host.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{TestHost, components, start_host, start_host_with, test_config};

/// An open event stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(host: &TestHost, path: &str) -> Events {
        let response = host
            .http
            .get(host.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path}"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (name, data as JSON), skipping comments; `None` once the stream ends.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// A job's stream sends its status now and at each change, in life-cycle order, ending with
/// its terminal status: here two attempts that run ~280 ms each (past their timeout), seen
/// running one after the other, then dead. An unknown job is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_stream_follows_it_until_terminal() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "timeout_ms=300&max_attempts=2&backoff_base_ms=100&backoff_max_ms=100",
    )
    .await;
    let id = host
        .submit(
            "probe",
            json!({"action": "sleep", "ms": 5000}).to_string(),
            "application/json",
        )
        .await;
    let mut events = Events::open(&host, &format!("/v1/jobs/{id}/events")).await;
    let mut seen = Vec::new();
    while let Some((name, job)) = events.next().await {
        assert_eq!(name, "status");
        assert_eq!(job["id"], id.as_str());
        seen.push((
            job["status"].as_str().unwrap().to_string(),
            job["attempts"].as_u64().unwrap(),
        ));
    }
    assert_eq!(seen.last().unwrap(), &("dead".to_string(), 2), "{seen:?}");
    for attempt in [1, 2] {
        assert!(
            seen.contains(&("running".to_string(), attempt)),
            "attempt {attempt} is seen running: {seen:?}"
        );
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "a change sent twice: {seen:?}");
        assert!(pair[0].1 <= pair[1].1, "attempts went back: {seen:?}");
    }
    // A terminal job's stream sends it once and ends.
    let mut again = Events::open(&host, &format!("/v1/jobs/{id}/events")).await;
    assert_eq!(again.next().await.unwrap().1["status"], "dead");
    assert!(again.next().await.is_none());
    let (status, body) = host.get("/v1/jobs/01J00000000000000000000000/events").await;
    assert_eq!(status, 404, "{body}");
    host.stop().await;
}

/// A function's stream sends its figures now and as they change (a job that succeeds shows),
/// and an `end` event when the function is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_stream_pushes_its_figures() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    let mut events = Events::open(&host, "/v1/functions/echo/events").await;
    let (name, first) = events.next().await.unwrap();
    assert_eq!(name, "stats");
    assert_eq!(first["function"], "echo");
    assert_eq!(first["succeeded"], 0);
    for n in 0..3 {
        let id = host.submit("echo", format!("{n}"), "text/plain").await;
        host.wait(&id).await;
    }
    loop {
        let (name, stats) = events.next().await.unwrap();
        assert_eq!(name, "stats");
        if stats["succeeded"] == 3 {
            break;
        }
    }
    let (status, _) = host.delete("/v1/functions/echo").await;
    assert_eq!(status, 200);
    loop {
        match events.next().await {
            Some((name, body)) if name == "end" => {
                assert_eq!(body["deleted"], true);
                break;
            }
            Some(_) => continue,
            None => panic!("the stream ended without an end event"),
        }
    }
    assert!(events.next().await.is_none());
    host.stop().await;
}

/// Streams are bounded (`max_event_streams`): past the bound a stream is refused with 503 and
/// `Retry-After`; a closed stream frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_event_streams = 2;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    let first = Events::open(&host, "/v1/functions/echo/events").await;
    let _second = Events::open(&host, "/v1/functions/echo/events").await;
    let r = host
        .http
        .get(host.url("/v1/functions/echo/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    // Closing one frees its place (the host notices the closed connection at its next event
    // or keep-alive: a second at most here, as figures are read every second).
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = host
            .http
            .get(host.url("/v1/functions/echo/events"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    host.stop().await;
}
