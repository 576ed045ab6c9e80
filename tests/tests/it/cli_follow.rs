//! The CLI on long work, through the real binary against a host: `sluice invoke --lines`
//! submits a file of inputs in batches (2,500 lines: three requests), and `sluice jobs --watch`
//! follows jobs as they appear and change, printing each change once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::{components, sluice_binary, start_host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_lines_submits_a_file_in_batches() {
    let host = start_host().await;
    host.deploy("echo", components::ECHO, "max_queued=10000").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.txt");
    let lines: Vec<String> = (0..2500).map(|n| format!("line {n}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n\n").unwrap();
    let url = host.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(sluice_binary())
            .args(["invoke", "echo", "--content-type", "text/plain", "--lines"])
            .arg(&file)
            .env("SLUICE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("accepted 2500 jobs of echo"), "{stderr}");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids.len(), 2500, "one id per non-empty line");
    // In order: each job's input is its line.
    for n in [0, 999, 1000, 2499] {
        let job = host.wait(&ids[n]).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output"], lines[n].as_str());
    }
    // JSON lines (the default content type) are sent as that JSON, not as strings of it; a
    // line that is not JSON is refused before anything is sent.
    let json_file = dir.path().join("inputs.jsonl");
    std::fs::write(&json_file, "{\"n\": 1}\n[2, 3]\n").unwrap();
    let out = Command::new(sluice_binary())
        .args(["invoke", "echo", "--lines"])
        .arg(&json_file)
        .env("SLUICE_URL", &host.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json_ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let first = host.wait(&json_ids[0]).await;
    assert_eq!(first["input_content_type"], "application/json");
    assert_eq!(first["output"], "{\"n\":1}");
    std::fs::write(&json_file, "{\"n\": 1}\nnot json\n").unwrap();
    let out = Command::new(sluice_binary())
        .args(["invoke", "echo", "--lines"])
        .arg(&json_file)
        .env("SLUICE_URL", &host.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file of nothing is refused, saying so.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n").unwrap();
    let out = Command::new(sluice_binary())
        .args(["invoke", "echo", "--lines"])
        .arg(&empty)
        .env("SLUICE_URL", &host.url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no lines"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_watch_prints_each_change_once() {
    let host = start_host().await;
    host.deploy("probe", components::PROBE, "").await;
    let mut watch = Command::new(sluice_binary())
        .args(["jobs", "--watch", "--function", "probe"])
        .env("SLUICE_URL", &host.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // A job that runs for 1.5 s: the watch sees it running, then succeeded.
    let id = host
        .submit("probe", r#"{"action":"sleep","ms":1500}"#, "application/json")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if line.starts_with(&id) {
            let status = line.split_whitespace().nth(2).unwrap().to_string();
            seen.push(status.clone());
            if status == "succeeded" {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen.last().map(String::as_str), Some("succeeded"), "{seen:?}");
    assert!(seen.contains(&"running".to_string()), "{seen:?}");
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen, "a change printed twice: {seen:?}");
    host.stop().await;
}
