//! The sandbox: a fresh instance per attempt, no filesystem, environment or network, captured
//! output, and traps or timeouts that fail the attempt without hurting the host.

use serde_json::{Value, json};
use sluice_tests::{TestHost, components, start_host};

async fn probe(host: &TestHost, action: Value) -> Value {
    let job = host.wait(&host.submit_json("probe", &action).await).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    serde_json::from_str(job["output"].as_str().unwrap()).unwrap()
}

/// A static counter answers 1 on every job: no state survives from one event to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_gets_a_fresh_instance() {
    let host = start_host().await;
    host.deploy("counter", components::COUNTER, "max_concurrency=1")
        .await;
    for _ in 0..5 {
        let job = host
            .wait(&host.submit("counter", "", "text/plain").await)
            .await;
        assert_eq!(job["output"], r#"{"calls":1}"#, "{job}");
    }
    host.stop().await;
}

/// A file that exists on the host, an environment variable set in the host process and a
/// port the test listens on are all out of reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_filesystem_environment_or_network() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "").await;

    let file = host.data_dir.join("secret.txt");
    std::fs::write(&file, "host secret").unwrap();
    let r = probe(
        &host,
        json!({"action": "read_file", "path": file.to_str().unwrap()}),
    )
    .await;
    assert_eq!(r["ok"], false, "the guest read a host file: {r}");
    assert!(!r["detail"].as_str().unwrap().contains("host secret"));

    let (name, value) = std::env::vars()
        .find(|(_, v)| !v.is_empty())
        .expect("the test process has environment variables");
    let r = probe(&host, json!({"action": "env", "name": name})).await;
    assert_eq!(r["ok"], false, "the guest read {name}: {r}");
    assert!(!r["detail"].as_str().unwrap().contains(&value));

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let r = probe(&host, json!({"action": "connect", "addr": addr})).await;
    assert_eq!(r["ok"], false, "the guest connected to {addr}: {r}");
    assert!(
        listener.accept().is_err(),
        "a connection reached the listener"
    );
    host.stop().await;
}

/// A panic is a failed attempt that names the trap and the panic message; the log keeps
/// stderr; the host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_the_attempt_not_the_host() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    let job = host
        .wait(&host.submit_json("probe", &json!({"action": "panic"})).await)
        .await;
    assert_eq!(job["status"], "dead");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("trapped"), "{error}");
    assert!(error.contains("probe was asked to panic"), "{error}");
    assert!(
        job["log"].as_str().unwrap().contains("panicked at"),
        "{job}"
    );

    let r = probe(
        &host,
        json!({"action": "print", "text": "no newline at the end"}),
    )
    .await;
    assert_eq!(r["ok"], true);
    let job = host
        .wait(
            &host
                .submit_json("probe", &json!({"action": "print", "text": "line one"}))
                .await,
        )
        .await;
    let log = job["log"].as_str().unwrap();
    assert!(
        log.contains("line one") && log.contains("to stderr"),
        "{log}"
    );
    host.stop().await;
}

/// A handler that spins or sleeps past `timeout_ms` fails with "timed out after N ms".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_stop_spinning_and_sleeping_handlers() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "timeout_ms=300&max_attempts=1")
        .await;
    for action in ["spin", "sleep"] {
        let started = std::time::Instant::now();
        let job = host
            .wait(
                &host
                    .submit_json("probe", &json!({"action": action, "ms": 20_000}))
                    .await,
            )
            .await;
        assert_eq!(job["status"], "dead", "{job}");
        assert_eq!(job["attempt_history"][0]["error"], "timed out after 300 ms");
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "{action} was not stopped"
        );
    }
    let r = probe(&host, json!({"action": "sleep", "ms": 1})).await;
    assert_eq!(r["ok"], true, "the host still runs jobs after timeouts");
    host.stop().await;
}

/// Handler errors are recorded with their message: a retryable one is retried until attempts
/// run out (`dead`), a permanent one ends the job at once (`failed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_are_recorded() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=2&backoff_base_ms=10",
    )
    .await;
    for (retryable, status, attempts) in [(true, "dead", 2), (false, "failed", 1)] {
        let job = host
            .wait(
                &host
                    .submit_json("probe", &json!({"action": "fail", "retryable": retryable}))
                    .await,
            )
            .await;
        assert_eq!(job["status"], status, "{job}");
        assert_eq!(job["attempts"], attempts, "{job}");
        for attempt in job["attempt_history"].as_array().unwrap() {
            assert_eq!(attempt["error"], "probe failed on purpose", "{job}");
        }
    }
    host.stop().await;
}
