//! Builds the example components in `functions/` for wasm32-wasip2 (into `functions/target`,
//! never this workspace's target dir: cargo's lock would deadlock) and tells the tests where they
//! are through `SLUICE_COMPONENT_*` variables. Fails loudly on a function it does not know, so
//! every example is used by some test.

use std::path::PathBuf;
use std::process::Command;

/// Every function in `functions/` and the constant the tests read it from.
const KNOWN: &[(&str, &str)] = &[
    ("echo", "ECHO"),
    ("notify", "NOTIFY"),
    ("visits", "VISITS"),
    ("counter", "COUNTER"),
    ("order-total", "ORDER_TOTAL"),
    ("probe", "PROBE"),
    ("inspect", "INSPECT"),
    ("payment", "PAYMENT"),
    ("inventory", "INVENTORY"),
    ("shipping", "SHIPPING"),
    ("compensation", "COMPENSATION"),
    ("checksum", "CHECKSUM"),
    ("ledger", "LEDGER"),
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let functions = root.join("functions");
    for watched in [
        "functions/Cargo.toml",
        "functions/Cargo.lock",
        "guest-sdk",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&functions).expect("functions/ is missing") {
        let dir = entry.unwrap().path();
        // Rust functions only: the others are built by their tests (tests/it/polyglot.rs).
        if !dir.join("sluice.toml").exists() || !dir.join("Cargo.toml").exists() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", dir.display());
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let Some((_, constant)) = KNOWN.iter().find(|(n, _)| *n == name) else {
            panic!("functions/{name} is not known to tests/build.rs: add it to KNOWN and test it");
        };
        found.push((name, *constant));
    }
    for (name, _) in KNOWN {
        assert!(
            found.iter().any(|(n, _)| n == name),
            "functions/{name} is missing"
        );
    }

    ensure_target();
    let target_dir = functions.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(functions.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // What the outer cargo set for this build script must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .expect("cannot run cargo");
    assert!(
        status.success(),
        "building functions/ for wasm32-wasip2 failed"
    );
    for (name, constant) in found {
        let wasm = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        println!(
            "cargo:rustc-env=SLUICE_COMPONENT_{constant}={}",
            wasm.display()
        );
        let manifest = functions.join(&name).join("sluice.toml");
        println!(
            "cargo:rustc-env=SLUICE_MANIFEST_{constant}={}",
            manifest.display()
        );
    }
}

fn ensure_target() {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = out
        && !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
    {
        let ok = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed"
        );
    }
}
