//! A handler written outside this repository, as README.md says to: its own crate depending on
//! `sluice-sdk` by path, built for wasm32-wasip2 with the recommended release profile, deployed
//! with `sluice deploy` (which finds its `sluice.toml`) and run. And the SDK packages its WIT,
//! so it builds wherever it is copied or published.

use std::path::Path;
use std::process::Command;

use sluice_tests::{sluice_binary, start_host};

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // What the outer cargo set must not leak into this build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn the_sdk_packages_its_wit() {
    let out = cargo()
        .args(["package", "--list", "--allow-dirty", "-p", "sluice-sdk"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(files.lines().any(|l| l == "wit/sluice.wit"), "{files}");
    assert!(
        files.lines().any(|l| l.starts_with("wit/deps/keyvalue/")),
        "{files}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_crate_outside_the_repository_builds_deploys_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("greeter");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let sdk = workspace_root().join("guest-sdk");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            r#"[package]
name = "greeter"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
sluice-sdk = {{ path = "{}" }}

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
"#,
            sdk.display()
        ),
    )
    .unwrap();
    std::fs::write(
        krate.join("src/lib.rs"),
        r#"use sluice_sdk::{handler, Error, Event, Response};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let name = ev.text()?;
    Ok(Response::text(format!("hello, {name}")))
}
"#,
    )
    .unwrap();
    std::fs::write(
        krate.join("sluice.toml"),
        "name = \"greeter\"\nmax_concurrency = 2\ntimeout_ms = 3000\n",
    )
    .unwrap();
    // The examples' target dir: same dependencies and profile, so they are not built again.
    let target = workspace_root().join("functions/target");
    let status = cargo()
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&krate)
        .status()
        .unwrap();
    assert!(status.success(), "building the handler failed");
    // Where the crate's own build would put it (its own target dir would build the same
    // dependencies again): `sluice deploy` finds the crate's sluice.toml from there.
    let built = krate.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&built).unwrap();
    let wasm = built.join("greeter.wasm");
    std::fs::rename(target.join("wasm32-wasip2/release/greeter.wasm"), &wasm).unwrap();

    let host = start_host().await;
    let url = host.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(sluice_binary())
            .arg("deploy")
            .arg(&wasm)
            .current_dir(&krate)
            .env("SLUICE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("using the manifest"), "{stderr}");
    let (_, f) = host.get("/v1/functions/greeter").await;
    assert_eq!(f["max_concurrency"], 2, "the crate's sluice.toml: {f}");
    assert_eq!(f["timeout_ms"], 3000, "{f}");
    let job = host
        .wait(&host.submit("greeter", "ada", "text/plain").await)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output"], "hello, ada");
    host.stop().await;
}
