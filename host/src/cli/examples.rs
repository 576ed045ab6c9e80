//! Finding and building the example functions in `functions/` (used by `sluice up` and
//! `sluice bench`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::manifest::Manifest;

/// One example function: its manifest and the component its build produces.
#[derive(Clone)]
pub struct Example {
    /// The function's name (from its manifest).
    pub name: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// The built component.
    pub wasm: PathBuf,
}

/// Builds every function of the `functions/` workspace for `wasm32-wasip2` (installing the target
/// with rustup if it is missing) into `functions/target`, and lists them.
pub fn build(functions: &Path) -> anyhow::Result<Vec<Example>> {
    let cargo_toml = functions.join("Cargo.toml");
    if !cargo_toml.exists() {
        bail!(
            "no {} here: run this from the root of a Sluice checkout, or pass --functions DIR",
            cargo_toml.display()
        );
    }
    ensure_wasm_target()?;
    eprintln!(
        "building the functions in {} for wasm32-wasip2 (cargo's progress follows) ...",
        functions.display()
    );
    let started = std::time::Instant::now();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&cargo_toml)
        .arg("--target-dir")
        .arg(functions.join("target"))
        .status()
        .context("cannot run cargo: is Rust installed?")?;
    if !status.success() {
        bail!("building the functions failed (see cargo's output above)");
    }
    let examples = discover(functions)?;
    eprintln!(
        "built {} functions in {:.1} s",
        examples.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(examples)
}

/// Lists the Rust functions in `functions/`: every folder with a `sluice.toml` and a
/// `Cargo.toml` (a function in another language, like `py-order-total`, is built by its own
/// tools: see `guest-sdk/python`).
pub fn discover(functions: &Path) -> anyhow::Result<Vec<Example>> {
    let out = functions.join("target/wasm32-wasip2/release");
    let mut examples = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(functions)
        .with_context(|| format!("cannot read {}", functions.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("sluice.toml").exists() && p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("sluice.toml"))?;
        let manifest = Manifest::from_toml(&text)
            .with_context(|| format!("in {}", dir.join("sluice.toml").display()))?;
        let crate_name = dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .replace('-', "_");
        let name = manifest
            .name
            .clone()
            .unwrap_or_else(|| crate_name.replace('_', "-"));
        examples.push(Example {
            name,
            manifest,
            wasm: out.join(format!("{crate_name}.wasm")),
        });
    }
    Ok(examples)
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2") =>
        {
            Ok(())
        }
        Ok(_) => {
            eprintln!(
                "the wasm32-wasip2 target is missing: installing it with `rustup target add wasm32-wasip2` ..."
            );
            let status = Command::new("rustup")
                .args(["target", "add", "wasm32-wasip2"])
                .status()?;
            if !status.success() {
                bail!("`rustup target add wasm32-wasip2` failed; run it by hand and retry");
            }
            Ok(())
        }
        // No rustup: let cargo say whether the target is there.
        Err(_) => Ok(()),
    }
}
