//! The README's walkthrough runs as written: a real `sluice up` (building and deploying the
//! examples), then every `sh` block of the "Walkthrough" section in one shell, each command
//! required to succeed, against that host. Only the address changes (a free port instead of
//! 8080) and the `PATH` line (this build's binary instead of target/release).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_tests::{free_port, sluice_binary, wait_healthy};

/// The `sh` blocks of the README section whose heading starts with `## {title}`.
fn shell_blocks(readme: &str, title: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {title}"))
        .unwrap_or_else(|| panic!("README.md has no section {title:?}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = shell_blocks(&readme, "Walkthrough");
    assert!(blocks.len() >= 4, "{blocks:?}");

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut up = Command::new(sluice_binary())
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .current_dir(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_healthy(&http, &url).await;
    // `up` serves before it deploys: wait for the last example it deploys.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = http
            .get(format!("{url}/v1/functions"))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        if body["functions"].as_array().is_some_and(|f| f.len() >= 10) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up did not deploy the examples: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut script = String::from("set -euo pipefail\n");
    for block in &blocks {
        for line in block.lines() {
            if line.trim_start().starts_with("export PATH=") {
                continue;
            }
            script.push_str(&line.replace("localhost:8080", &format!("127.0.0.1:{port}")));
            script.push('\n');
        }
    }
    let bin_dir = sluice_binary().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking({
        let root = root.clone();
        let url = url.clone();
        move || {
            Command::new("bash")
                .arg("-c")
                .arg(&script)
                .current_dir(&root)
                .env("PATH", path)
                .env("SLUICE_URL", &url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a walkthrough command failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the README says the commands show.
    assert!(stdout.contains("HTTP/1.1 202 Accepted"), "{stdout}");
    assert!(stdout.contains(r#""total_cents":810"#), "{stdout}");
    assert!(
        stdout.contains("max_concurrency 8 -> 4"),
        "the deploy lists what changed: {stdout}"
    );
    assert!(stdout.contains("rollback to 1"), "{stdout}");
    assert!(!stderr.contains("error"), "{stderr}");

    assert!(
        Command::new("kill")
            .args(["-TERM", &up.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || up.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "sluice up exited with {status}");
}
