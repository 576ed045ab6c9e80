//! Missing, emptied, foreign and damaged data files: the host refuses to start (naming the
//! file and what to do) instead of starting empty and answering 404 for jobs it accepted, reads
//! of a damaged file answer `503` naming it (never a dropped connection), and `sluice check`
//! finds the damage. Restoring the files brings everything back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice::config::Config;
use sluice_tests::{components, sluice_binary, start_host_with, test_config};

/// Starts a host on `config` and expects it to refuse; returns its error.
async fn refusal(config: Config) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = sluice::run(listener, std::future::pending(), config);
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Err(e)) => format!("{e:#}"),
        Ok(Ok(())) => panic!("the host started and stopped"),
        Err(_) => panic!("the host started instead of refusing"),
    }
}

/// Copies every file of `from` into `to` (a backup, or its restore).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A data directory (two shards) with `echo` deployed and `n` finished jobs; returns their ids.
async fn populated(data: &Path, n: usize, size: usize) -> Vec<String> {
    let host = start_host_with(test_config(data)).await;
    host.deploy("echo", components::ECHO, "").await;
    let mut ids = Vec::new();
    for i in 0..n {
        let body = format!("{i:0size$}");
        let (status, job) = host.post("/v1/functions/echo/jobs", body).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        assert_eq!(host.wait(id).await["status"], "succeeded");
    }
    host.stop().await;
    ids
}

fn file(data: &Path, name: &str) -> PathBuf {
    data.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_emptied_or_foreign_files_are_refused_and_a_restore_brings_all_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ids = populated(&data, 40, 10).await;
    let backup = tmp.path().join("backup");
    copy_dir(&data, &backup);
    let config = test_config(&data);

    // A job file emptied.
    std::fs::File::create(file(&data, "jobs-0.redb")).unwrap();
    let why = refusal(config.clone()).await;
    assert!(why.contains("jobs-0.redb is empty (0 bytes)"), "{why}");
    assert!(why.contains("restore it from a backup"), "{why}");
    copy_dir(&backup, &data);

    // A job file deleted.
    std::fs::remove_file(file(&data, "jobs-1.redb")).unwrap();
    let why = refusal(config.clone()).await;
    assert!(why.contains("jobs-1.redb is missing"), "{why}");
    assert!(why.contains("records 2 job shard file(s)"), "{why}");
    copy_dir(&backup, &data);

    // The catalog deleted (its jobs would be stranded with no function to run them).
    std::fs::remove_file(file(&data, "catalog.redb")).unwrap();
    let why = refusal(config.clone()).await;
    assert!(why.contains("catalog.redb is missing"), "{why}");
    assert!(why.contains("jobs-0.redb, jobs-1.redb"), "{why}");
    copy_dir(&backup, &data);

    // A job file from another data directory copied in.
    let other = tmp.path().join("other");
    populated(&other, 1, 1).await;
    std::fs::copy(file(&other, "jobs-0.redb"), file(&data, "jobs-0.redb")).unwrap();
    let why = refusal(config.clone()).await;
    assert!(
        why.contains("jobs-0.redb belongs to another data directory"),
        "{why}"
    );
    // Two files swapped.
    copy_dir(&backup, &data);
    std::fs::rename(file(&data, "jobs-0.redb"), tmp.path().join("swap")).unwrap();
    std::fs::rename(file(&data, "jobs-1.redb"), file(&data, "jobs-0.redb")).unwrap();
    std::fs::rename(tmp.path().join("swap"), file(&data, "jobs-1.redb")).unwrap();
    let why = refusal(config.clone()).await;
    assert!(why.contains("in place of shard 0"), "{why}");

    // Restored: every job is there.
    copy_dir(&backup, &data);
    let host = start_host_with(config).await;
    for id in &ids {
        let (status, job) = host.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["status"], "succeeded");
    }
    host.stop().await;
}

/// Runs `sluice check` on a directory: (exit success, stdout + stderr).
fn sluice_check(data: &Path) -> (bool, String) {
    let out = Command::new(sluice_binary())
        .args(["check", "--data"])
        .arg(data)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_is_named_in_every_refusal_and_found_by_check() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ids = populated(&data, 1500, 2000).await;
    let backup = tmp.path().join("backup");
    copy_dir(&data, &backup);
    let (ok, report) = sluice_check(&data);
    assert!(ok, "{report}");
    assert!(report.contains("jobs-0.redb: pages intact"), "{report}");

    // 64 KiB of zeroes in the middle of a job file.
    let path = file(&data, "jobs-0.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + (64 << 10)].fill(0);
    std::fs::write(&path, &bytes).unwrap();

    let (ok, report) = sluice_check(&data);
    assert!(!ok, "{report}");
    assert!(report.contains("DAMAGED"), "{report}");
    assert!(report.contains("jobs-0.redb"), "{report}");
    assert!(
        report.contains("ok       ") && report.contains("jobs-1.redb"),
        "{report}"
    );

    // The host refuses to start naming the file, or starts and answers every read of the
    // damaged part with 503 naming it: never a dropped connection or a wrong answer.
    let config = test_config(&data);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut task = tokio::spawn(sluice::run(
        listener,
        async move {
            let _ = stopped.await;
        },
        config,
    ));
    let http = reqwest::Client::new();
    let healthy = async {
        loop {
            if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        result = &mut task => {
            let why = format!("{:#}", result.unwrap().expect_err("the host stopped by itself"));
            assert!(why.contains("jobs-0.redb"), "{why}");
            println!("refused to start: {why}");
        }
        _ = healthy => {
            let (mut fine, mut damaged) = (0, 0);
            for id in &ids {
                let r = http
                    .get(format!("http://{addr}/v1/jobs/{id}"))
                    .send()
                    .await
                    .expect("the host answers every read");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                match status {
                    200 => {
                        assert_eq!(body["status"], "succeeded", "{body}");
                        fine += 1;
                    }
                    503 => {
                        assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
                        let message = body["error"]["message"].as_str().unwrap();
                        assert!(message.contains("jobs-0.redb is damaged"), "{message}");
                        assert!(message.contains("sluice check"), "{message}");
                        damaged += 1;
                    }
                    other => panic!("{other}: {body}"),
                }
            }
            println!("started: {fine} jobs read, {damaged} answered 503");
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    // Restored from the backup: sound again, every job there.
    copy_dir(&backup, &data);
    let (ok, report) = sluice_check(&data);
    assert!(ok, "{report}");
    let host = start_host_with(test_config(&data)).await;
    for id in ids.iter().step_by(50) {
        assert_eq!(host.job(id).await["status"], "succeeded");
    }
    host.stop().await;
}

/// One job's record damaged (its bytes changed, the file's structure intact): the host serves,
/// that job's reads answer 503 naming the file and `sluice check`, the others read fine, and
/// `sluice check` finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_answers_503_naming_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ids = populated(&data, 20, 2000).await;
    // Job 7's input (and echoed output) is 2000 bytes: "000…07". Its length prefix (postcard
    // varint 2000 = d0 0f) comes right before the first copy; make it run past the record.
    let needle = format!("{:02000}", 7).into_bytes();
    let mut hits = Vec::new();
    for name in ["jobs-0.redb", "jobs-1.redb"] {
        let path = file(&data, name);
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            hits.push((path, bytes, at));
        }
    }
    assert_eq!(hits.len(), 1, "the job's input is in exactly one file");
    let (path, mut bytes, at) = hits.pop().unwrap();
    assert_eq!(
        bytes[at - 2..at],
        [0xd0, 0x0f],
        "the length prefix precedes the input"
    );
    bytes[at - 2..at].copy_from_slice(&[0xff, 0xff]);
    std::fs::write(&path, &bytes).unwrap();
    let file_name = path.file_name().unwrap().to_string_lossy().to_string();

    let host = start_host_with(test_config(&data)).await;
    let (status, body) = host.get(&format!("/v1/jobs/{}", ids[7])).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{file_name} is damaged")),
        "{message}"
    );
    assert!(message.contains("sluice check"), "{message}");
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 7) {
        let (status, job) = host.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "job {i}: {job}");
    }
    host.stop().await;

    let (ok, report) = sluice_check(&data);
    assert!(!ok, "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("DAMAGED") && l.contains(&file_name)),
        "{report}"
    );
}
