//! The real `sluice` binary: flags from the environment, SIGTERM shuts down gracefully after
//! letting the running attempt finish.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::{components, free_port, get_json, sluice_binary, wait_healthy};

/// `SLUICE_LISTEN`/`SLUICE_DATA` configure `sluice serve`; `sluice deploy` and `sluice invoke`
/// use `SLUICE_URL`; SIGTERM lets the running job finish, then the process exits 0 and the
/// result is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_deploy_invoke_and_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = || {
        Command::new(sluice_binary())
            .arg("serve")
            .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SLUICE_DATA", tmp.path())
            .env("SLUICE_MAX_INSTANCES", "16")
            .env("SLUICE_GRACE_PERIOD", "20")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut child = serve();
    let http = reqwest::Client::new();
    wait_healthy(&http, &url).await;

    let out = Command::new(sluice_binary())
        .args([
            "deploy",
            components::PROBE,
            "--manifest",
            components::PROBE_MANIFEST,
        ])
        .env("SLUICE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployed probe version 1"));

    let out = Command::new(sluice_binary())
        .args([
            "invoke",
            "probe",
            "--data",
            r#"{"action":"sleep","ms":1}"#,
            "--wait",
            "--json",
        ])
        .env("SLUICE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["status"], "succeeded");

    let r = http
        .post(format!("{url}/v1/functions/probe/jobs"))
        .body(json!({"action": "sleep", "ms": 1500}).to_string())
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = get_json(&http, &format!("{url}/v1/jobs/{id}")).await;
        if job["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started: {job}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped_at = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = child.wait().unwrap();
    assert!(status.success(), "sluice serve exited with {status}");
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(500),
        "it did not wait for the running attempt"
    );

    let mut child = serve();
    wait_healthy(&http, &url).await;
    let job = get_json(&http, &format!("{url}/v1/jobs/{id}")).await;
    assert_eq!(
        job["status"], "succeeded",
        "the attempt finished during the grace period: {job}"
    );
    assert_eq!(job["attempts"], 1);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A client that sent its headers and part of a body, then stalled, does not hold a SIGTERM:
/// attempts stop starting at the signal, the open request gets the grace period like the
/// running attempt, then the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_not_held_by_a_stalled_client() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let serve = || {
        Command::new(sluice_binary())
            .arg("serve")
            .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SLUICE_DATA", tmp.path())
            .env("SLUICE_GRACE_PERIOD", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut child = serve();
    let http = reqwest::Client::new();
    wait_healthy(&http, &url).await;
    let r = http
        .put(format!(
            "{url}/v1/functions/probe?max_concurrency=1&timeout_ms=10000"
        ))
        .body(std::fs::read(components::PROBE).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut ids = Vec::new();
    for _ in 0..8 {
        let r = http
            .post(format!("{url}/v1/functions/probe/jobs"))
            .body(json!({"action": "sleep", "ms": 700}).to_string())
            .send()
            .await
            .unwrap();
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&http, &format!("{url}/v1/jobs/{}", ids[0])).await["status"] != "running" {
        assert!(Instant::now() < deadline, "the first job never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stalled
        .write_all(
            b"POST /v1/functions/probe/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"action\":",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    let signalled_at = std::time::SystemTime::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let exited = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        (status, Instant::now())
    });
    let (status, at) = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .expect("sluice serve did not exit within a minute of SIGTERM with a stalled client")
        .unwrap();
    assert!(status.success(), "sluice serve exited with {status}");
    let took = at - signalled;
    // The grace period (2 s) for the stalled request, then exit; a stalled client once held
    // the host past 30 s.
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
    drop(stalled);

    // No attempt started after the signal: each attempt on record started before it.
    let mut child = serve();
    wait_healthy(&http, &url).await;
    let signalled_ms = signalled_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut started_before = 0;
    for id in &ids {
        let job = get_json(&http, &format!("{url}/v1/jobs/{id}")).await;
        // Attempts of the restarted host start after it is healthy; this host's all started
        // before the signal.
        for attempt in job["attempt_history"].as_array().unwrap() {
            let started = sluice_tests::millis(&attempt["started_at"]);
            if started < signalled_ms {
                started_before += 1;
            }
        }
        assert!(
            !job["attempt_history"].as_array().unwrap().iter().any(|a| {
                let started = sluice_tests::millis(&a["started_at"]);
                started >= signalled_ms && started < signalled_ms + took.as_millis() as u64
            }),
            "an attempt started during the shutdown: {job}"
        );
    }
    assert!(started_before >= 1, "the running attempt is on record");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// `sluice bench` runs its scenarios end to end against a real host and prints one JSON line per
/// scenario (figures are checked by people reading BENCHMARKS.md, not by this test).
#[test]
fn bench_prints_a_json_line_per_scenario() {
    let functions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(sluice_binary())
        .args([
            "bench",
            "--scenarios",
            "throughput,sandbox,startup",
            "--jobs",
            "300",
            "--clients",
            "4",
            "--rounds",
            "1",
        ])
        .arg("--functions")
        .arg(&functions)
        .arg("--dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scenario = |name: &str| {
        lines
            .iter()
            .find(|l| l["scenario"] == name)
            .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
    };
    assert_eq!(scenario("throughput")["jobs"], 300);
    assert!(scenario("throughput")["jobs_per_s"].as_f64().unwrap() > 0.0);
    assert!(scenario("sandbox")["bare_wasmtime_us"].as_f64().unwrap() > 0.0);
    assert_eq!(
        scenario("startup")["compilations"],
        0.0,
        "a restart must not compile"
    );
    assert_eq!(scenario("startup")["functions"], 10.0);
}

/// Runs `sluice ARGS` against `url`; returns stdout, panicking on failure.
fn cli(url: &str, args: &[&str]) -> String {
    let out = Command::new(sluice_binary())
        .args(args)
        .env("SLUICE_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sluice stats`, `config`, `cancel` and `dlq` drive the API and print what it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operating_commands() {
    let host = sluice_tests::start_host().await;
    host.deploy("probe", components::PROBE, "max_attempts=1")
        .await;
    let url = host.url.clone();
    let failed = host
        .submit_json("probe", &json!({"action": "fail", "retryable": false}))
        .await;
    host.wait(&failed).await;

    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            cli(
                &url,
                &[
                    "config",
                    "probe",
                    "max_concurrency=1",
                    "rate_per_second=none",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.contains("version 2") && out.contains("max_concurrency 1"),
        "{out}"
    );

    let blocker = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 500}))
        .await;
    host.wait_status(&blocker, "running").await;
    let queued = host
        .submit_json("probe", &json!({"action": "sleep", "ms": 1}))
        .await;
    let (out, stats) = tokio::task::spawn_blocking({
        let (url, queued) = (url.clone(), queued.clone());
        move || {
            (
                cli(&url, &["cancel", &queued]),
                cli(&url, &["stats", "probe", "--json"]),
            )
        }
    })
    .await
    .unwrap();
    assert!(out.contains("cancelled"), "{out}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["failed"], 1, "{stats}");
    assert_eq!(stats["cancelled"], 1, "{stats}");

    let (list, redrive) = tokio::task::spawn_blocking({
        let (url, failed) = (url.clone(), failed.clone());
        move || {
            (
                cli(&url, &["dlq", "list", "probe"]),
                cli(&url, &["dlq", "redrive", "probe", "--id", &failed]),
            )
        }
    })
    .await
    .unwrap();
    assert!(list.contains(&failed) && list.contains("failed"), "{list}");
    assert!(redrive.contains("redriven 1"), "{redrive}");
    assert_eq!(host.wait(&failed).await["status"], "failed");
    let purge = tokio::task::spawn_blocking(move || cli(&url, &["dlq", "purge", "probe", "--all"]))
        .await
        .unwrap();
    assert!(purge.contains("purged 1"), "{purge}");
    assert_eq!(host.get(&format!("/v1/jobs/{failed}")).await.0, 404);

    // The lifecycle: pause, versions, rollback to the first settings, resume.
    let url = host.url.clone();
    let (paused, versions, rollback) = tokio::task::spawn_blocking(move || {
        (
            cli(&url, &["pause", "probe"]),
            cli(&url, &["versions", "probe"]),
            cli(&url, &["rollback", "probe", "--to", "1"]),
        )
    })
    .await
    .unwrap();
    assert!(paused.contains("paused"), "{paused}");
    assert!(
        versions.contains("configure") && versions.contains("*    2"),
        "{versions}"
    );
    assert!(rollback.contains("version 3 (rollback to 1)"), "{rollback}");
    let (_, f) = host.get("/v1/functions/probe").await;
    assert_eq!(f["paused"], true);
    assert_eq!(f["max_concurrency"], 8, "version 1's settings are back");
    let url = host.url.clone();
    let resumed = tokio::task::spawn_blocking(move || cli(&url, &["resume", "probe"]))
        .await
        .unwrap();
    assert!(resumed.contains("running again"), "{resumed}");
    assert_eq!(host.get("/v1/functions/probe").await.1["paused"], false);

    // Topics: the example manifest subscribes `inspect` to `audit`.
    host.deploy_manifest(
        "inspect",
        components::INSPECT,
        &std::fs::read_to_string(components::INSPECT_MANIFEST).unwrap(),
    )
    .await;
    let url = host.url.clone();
    let (published, topics) = tokio::task::spawn_blocking(move || {
        (
            cli(
                &url,
                &[
                    "publish",
                    "audit",
                    "--type",
                    "user.login",
                    r#"{"user":"ada"}"#,
                ],
            ),
            cli(&url, &["topics"]),
        )
    })
    .await
    .unwrap();
    assert!(published.contains("-> inspect"), "{published}");
    assert!(
        topics.contains("audit") && topics.contains("inspect"),
        "{topics}"
    );
    let job = published.split_whitespace().last().unwrap().to_string();
    let saw = host.wait(&job).await;
    assert!(
        saw["output"].as_str().unwrap().contains("user.login"),
        "{saw}"
    );
}
