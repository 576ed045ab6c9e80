//! A full disk: commits fail, every waiting request gets `503 storage_unavailable` with a
//! `Retry-After`, the host keeps serving without spinning, no accepted job is stranded, an
//! attempt that ends meanwhile keeps its outcome, and once space is free again the host
//! recovers by itself (it reopens its data file) and every accepted job ends `succeeded`.
//! A host stopped while its disk is full still stops.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{TestHost, components, start_host_with, test_config};

/// A tmpfs of `mb` MiB mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("cannot run mount");
        assert!(
            status.success(),
            "mounting a {mb} MiB tmpfs failed: this test needs root (CI runs as root)"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes free on the file system holding `path`.
fn free(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
}

/// CPU time this process used so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

const PAYLOAD: usize = 64 << 10;

/// Fills the disk: a filler file leaves 4 MiB, then 64 KiB submits until one is refused.
/// Returns the accepted ids, the refusal's body and its `Retry-After`.
async fn fill(host: &TestHost, disk: &SmallDisk) -> (Vec<String>, Value, Option<String>) {
    let avail = free(disk.dir.path());
    std::fs::write(filler(disk), vec![0u8; (avail - (4 << 20)) as usize]).unwrap();
    let mut accepted = Vec::new();
    for _ in 0..2000 {
        let r = host
            .http
            .post(host.url("/v1/functions/echo/jobs"))
            .body(vec![b'x'; PAYLOAD])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            202 => accepted.push(body["id"].as_str().unwrap().to_string()),
            503 => return (accepted, body, retry_after),
            other => panic!("submit answered {other}: {body}"),
        }
    }
    panic!("the disk never filled up");
}

fn filler(disk: &SmallDisk) -> std::path::PathBuf {
    disk.dir.path().join("filler")
}

/// Submits until one is accepted (the host recovered), within a minute.
async fn submit_until_accepted(host: &TestHost) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = host
            .http
            .post(host.url("/v1/functions/echo/jobs"))
            .body(vec![b'x'; PAYLOAD])
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            let body: Value = r.json().await.unwrap();
            return body["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the host never recovered: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_strands_nothing_and_recovers() {
    let disk = SmallDisk::mount(24);
    let mut config = test_config(&disk.dir.path().join("data"));
    config.store_shards = 1;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;

    let (mut accepted, refused, retry_after) = fill(&host, &disk).await;
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage error"),
        "the answer names the cause: {refused}"
    );
    let secs: u64 = retry_after.expect("503 has Retry-After").parse().unwrap();
    assert!(secs >= 1, "{secs}");
    assert!(!accepted.is_empty());

    // Still serving while full, and idle: a writer that cannot write waits for its next try
    // instead of spinning (a spin would use about one core, i.e. two seconds in these two).
    let r = host.http.get(host.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time() - before;
    assert!(
        used < Duration::from_millis(1000),
        "used {used:?} of CPU in 2 s while full"
    );

    // Space comes back: the host recovers without a restart.
    std::fs::remove_file(filler(&disk)).unwrap();
    accepted.push(submit_until_accepted(&host).await);
    for id in &accepted {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output_size"], PAYLOAD, "{job}");
    }
    host.stop().await;
    drop(disk);
}

/// An attempt that ends while the disk is full does not lose its outcome: it is committed once
/// the disk has room, and the job does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_ending_while_the_disk_is_full_keeps_its_outcome() {
    let disk = SmallDisk::mount(24);
    let mut config = test_config(&disk.dir.path().join("data"));
    config.store_shards = 1;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    host.deploy("probe", components::PROBE, "timeout_ms=10000")
        .await;
    let slow = host
        .submit_json("probe", &serde_json::json!({"action": "sleep", "ms": 1500}))
        .await;
    host.wait_status(&slow, "running").await;
    let filled_at = Instant::now();
    let (accepted, refused, _) = fill(&host, &disk).await;
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    // The attempt ends (its outcome cannot be written) while the disk stays full.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(filled_at.elapsed())).await;
    std::fs::remove_file(filler(&disk)).unwrap();
    submit_until_accepted(&host).await;
    let job = host.wait(&slow).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "the outcome was kept, not run again: {job}"
    );
    assert_eq!(job["attempt_history"].as_array().unwrap().len(), 1, "{job}");
    for id in &accepted {
        assert_eq!(host.wait(id).await["status"], "succeeded");
    }
    host.stop().await;
    drop(disk);
}

/// A host stopped while its disk is full stops (it does not wait for a commit that cannot
/// happen); restarted once there is room, it runs every job it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_stops_while_its_disk_is_full_and_restarts_whole() {
    let disk = SmallDisk::mount(24);
    let mut config = test_config(&disk.dir.path().join("data"));
    config.store_shards = 1;
    let host = start_host_with(config.clone()).await;
    host.deploy("echo", components::ECHO, "max_concurrency=1")
        .await;
    let (accepted, refused, _) = fill(&host, &disk).await;
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), host.stop())
        .await
        .expect("the host did not stop while its disk was full");
    println!("stopped in {:?}", stopping.elapsed());

    std::fs::remove_file(filler(&disk)).unwrap();
    let host = start_host_with(config).await;
    for id in &accepted {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    host.stop().await;
    drop(disk);
}
