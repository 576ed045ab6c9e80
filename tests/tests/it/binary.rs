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

/// Runs `sluice ARGS` against `url`: (exit success, stdout, stderr).
fn cli_any(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sluice_binary())
        .args(args)
        .env("SLUICE_URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a new user reaches for: `deploy` finds the crate's `sluice.toml`, a code-only deploy
/// keeps the settings, `invoke` prints the bare id and takes the submit headers as flags,
/// `invoke --wait` exits non-zero for a job that did not succeed, `jobs` lists, `logs` shows
/// each attempt, `functions` shows paused, `versions` shows what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_user_commands() {
    let host = sluice_tests::start_host().await;
    let url = host.url.clone();
    // A crate laid out as cargo builds it: the manifest beside Cargo.toml, the component under
    // target/.
    let krate = tempfile::tempdir().unwrap();
    let release = krate.path().join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&release).unwrap();
    let wasm = release.join("probe.wasm");
    std::fs::copy(components::PROBE, &wasm).unwrap();
    std::fs::write(
        krate.path().join("sluice.toml"),
        "name = \"probe\"\nmax_attempts = 2\nbackoff_base_ms = 10\ntimeout_ms = 4000\n",
    )
    .unwrap();
    let wasm = wasm.to_str().unwrap().to_string();
    let outputs = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            let deploy = cli_any(&url, &["deploy", &wasm]);
            // The same code with a changed setting through the API, then code only: kept.
            let code_only = cli_any(&url, &["deploy", &wasm, "--no-manifest"]);
            let id = cli_any(
                &url,
                &["invoke", "probe", "--data", r#"{"action":"sleep","ms":1}"#],
            );
            let keyed: Vec<_> = (0..2)
                .map(|_| {
                    cli_any(
                        &url,
                        &[
                            "invoke",
                            "probe",
                            "--data",
                            r#"{"action":"sleep","ms":1}"#,
                            "--idempotency-key",
                            "k-1",
                            "--priority",
                            "9",
                            "--correlation-id",
                            "order-77",
                        ],
                    )
                })
                .collect();
            let failed = cli_any(
                &url,
                &[
                    "invoke",
                    "probe",
                    "--data",
                    r#"{"action":"fail","retryable":true}"#,
                    "--wait",
                ],
            );
            (deploy, code_only, id, keyed, failed)
        }
    })
    .await
    .unwrap();
    let (deploy, code_only, id, keyed, failed) = outputs;
    assert!(deploy.0, "{deploy:?}");
    assert!(
        deploy.2.contains("using the manifest") && deploy.2.contains("sluice.toml"),
        "{deploy:?}"
    );
    assert!(deploy.1.contains("timeout 4000 ms"), "{deploy:?}");
    assert!(code_only.0, "{code_only:?}");
    assert!(
        code_only.1.contains("version 1"),
        "the same code and settings: {code_only:?}"
    );
    assert!(
        code_only.1.contains("timeout 4000 ms"),
        "kept: {code_only:?}"
    );

    let id = id.1.trim().to_string();
    assert_eq!(id.len(), 26, "the bare id on stdout: {id:?}");
    assert_eq!(host.wait(&id).await["status"], "succeeded");
    let (a, b) = (keyed[0].1.trim(), keyed[1].1.trim());
    assert_eq!(a, b, "one idempotency key, one job");
    let job = host.wait(a).await;
    assert_eq!(job["priority"], 9, "{job}");
    assert_eq!(job["correlation_id"], "order-77", "{job}");

    assert!(
        !failed.0,
        "invoke --wait exits non-zero for a dead job: {failed:?}"
    );
    assert!(failed.1.contains("status    dead"), "{failed:?}");
    assert!(failed.2.contains("ended dead"), "{failed:?}");
    let dead = failed
        .1
        .lines()
        .find_map(|l| l.strip_prefix("job       "))
        .unwrap()
        .trim()
        .to_string();

    host.post("/v1/functions/probe/pause", "").await;
    let outputs = tokio::task::spawn_blocking({
        let url = url.clone();
        let dead = dead.clone();
        move || {
            (
                cli_any(&url, &["logs", &dead]),
                cli_any(&url, &["jobs", "--function", "probe", "--status", "dead"]),
                cli_any(&url, &["jobs", "--correlation-id", "order-77"]),
                cli_any(&url, &["functions"]),
                cli_any(&url, &["config", "probe", "max_concurrency=2"]),
                cli_any(&url, &["versions", "probe"]),
            )
        }
    })
    .await
    .unwrap();
    let (logs, dead_list, correlated, functions, _, versions) = outputs;
    assert!(logs.0, "{logs:?}");
    assert!(
        logs.1.contains("--- attempt 1") && logs.1.contains("attempt 1 fails on purpose"),
        "{logs:?}"
    );
    assert!(logs.1.contains("attempt 2 fails on purpose"), "{logs:?}");
    assert!(
        dead_list.1.contains(&dead) && !dead_list.1.contains(&id),
        "{dead_list:?}"
    );
    assert!(correlated.1.contains(a), "{correlated:?}");
    let probe_line = functions
        .1
        .lines()
        .find(|l| l.starts_with("probe"))
        .unwrap()
        .to_string();
    assert!(probe_line.ends_with("paused"), "{functions:?}");
    assert!(
        versions.1.contains("max_concurrency 8 -> 2"),
        "{versions:?}"
    );
    host.stop().await;
}
