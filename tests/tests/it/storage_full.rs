//! A full disk: commits fail, every waiting request gets `503 storage_unavailable`, the host
//! keeps serving, no accepted job is stranded, and once space is free again the host recovers
//! by itself (it reopens its data file) and every accepted job ends `succeeded`.

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::{components, start_host_with, test_config};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_strands_nothing_and_recovers() {
    let disk = SmallDisk::mount(24);
    let data = disk.dir.path().join("data");
    let mut config = test_config(&data);
    config.store_shards = 1;
    let host = start_host_with(config).await;
    host.deploy("echo", components::ECHO, "").await;
    // Leave a few MiB: the filler goes once the disk is full.
    let filler = disk.dir.path().join("filler");
    let free = |path: &std::path::Path| {
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
    };
    let avail = free(disk.dir.path());
    std::fs::write(&filler, vec![0u8; (avail - (4 << 20)) as usize]).unwrap();

    let payload = vec![b'x'; 64 << 10];
    let mut accepted = Vec::new();
    let mut refused = None;
    for _ in 0..2000 {
        let r = host
            .http
            .post(host.url("/v1/functions/echo/jobs"))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            202 => accepted.push(body["id"].as_str().unwrap().to_string()),
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("submit answered {other}: {body}"),
        }
    }
    let refused = refused.expect("the disk never filled up");
    assert_eq!(refused["error"]["code"], "storage_unavailable", "{refused}");
    assert!(!accepted.is_empty());

    // Still serving while full.
    let r = host.http.get(host.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Space comes back: the host recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = host
            .http
            .post(host.url("/v1/functions/echo/jobs"))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            let body: Value = r.json().await.unwrap();
            accepted.push(body["id"].as_str().unwrap().to_string());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the host never recovered: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &accepted {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output_size"], 64 << 10, "{job}");
    }
    host.stop().await;
    drop(disk);
}
