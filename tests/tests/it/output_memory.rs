//! Large streamed outputs cost the host bounded memory: `write-output` chunks past the
//! claim-check threshold go to a spool file and into blob chunks a chunk at a time, so four
//! attempts streaming 120 MiB each grow the real binary's peak RSS by far less than the 480 MiB
//! they produce (the host held every byte in memory before).

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use sluice_tests::{components, free_port, get_json, sluice_binary, wait_healthy};

const ATTEMPTS: usize = 4;
const MB: u64 = 120;

/// Peak resident set of a process, in MiB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024.0
}

/// What probe's `produce` writes: `mb` times the same 1 MiB piece (byte i is i % 251).
fn expected_sha256(mb: u64) -> String {
    let piece: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut h = sha2::Sha256::new();
    for _ in 0..mb {
        h.update(&piece);
    }
    hex::encode(h.finalize())
}

async fn wait_terminal(http: &reqwest::Client, url: &str, id: &str) -> Value {
    loop {
        let job = get_json(http, &format!("{url}/v1/jobs/{id}?wait=30")).await;
        if sluice_tests::is_terminal(&job) {
            return job;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_outputs_do_not_grow_host_memory_with_their_size() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(sluice_binary())
        .arg("serve")
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_DATA", tmp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let pid = child.0.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    wait_healthy(&http, &url).await;
    let r = http
        .put(format!(
            "{url}/v1/functions/probe?memory_mb=16&timeout_ms=120000&max_concurrency={ATTEMPTS}"
        ))
        .header("content-type", "application/wasm")
        .body(std::fs::read(components::PROBE).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "deploy: {}", r.status());

    let submit = |mb: u64| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(format!("{url}/v1/functions/probe/jobs"))
                .json(&json!({"action": "produce", "mb": mb}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // Warm up: a sandbox, a spooled output, a blob commit.
    let warm = submit(2).await;
    assert_eq!(
        wait_terminal(&http, &url, &warm).await["status"],
        "succeeded"
    );
    let before = peak_rss_mb(pid);

    let mut ids = Vec::new();
    for _ in 0..ATTEMPTS {
        ids.push(submit(MB).await);
    }
    for id in &ids {
        let job = wait_terminal(&http, &url, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["output_size"], MB << 20);
    }
    let after = peak_rss_mb(pid);
    let produced = (ATTEMPTS as u64 * MB) as f64;
    eprintln!(
        "peak RSS {before:.0} MiB -> {after:.0} MiB while {ATTEMPTS} attempts streamed {produced:.0} MiB"
    );
    // The page cache, guest memories and buffers are bounded; holding the outputs is not.
    assert!(
        after - before < produced / 2.0,
        "peak RSS grew by {:.0} MiB for {produced:.0} MiB of streamed output",
        after - before
    );

    // The output is whole and right, streamed back from its chunks.
    let mut r = http
        .get(format!("{url}/v1/jobs/{}/output", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut h = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        size += chunk.len() as u64;
        h.update(&chunk);
    }
    assert_eq!(size, MB << 20);
    assert_eq!(hex::encode(h.finalize()), expected_sha256(MB));

    // Nothing is left in the spool once the outputs are committed.
    let spool: Vec<_> = std::fs::read_dir(tmp.path().join("spool"))
        .unwrap()
        .collect();
    assert!(spool.is_empty(), "spool files left: {spool:?}");
    drop(child);
}

/// Kills the host when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
