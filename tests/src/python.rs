//! Python tools some tests drive (Playwright, openapi-spec-validator, schemathesis), from
//! PyPI at pinned versions: `.ci/run` installs them; a test that finds one missing installs it
//! for this user (one test process at a time) or says how.

use std::process::Command;

/// Playwright for Python (drives the system's Chromium).
pub const PLAYWRIGHT: (&str, &str) = ("playwright.sync_api", "playwright==1.65.3");
/// An OpenAPI validator independent of the code that makes the document.
pub const OPENAPI_SPEC_VALIDATOR: (&str, &str) =
    ("openapi_spec_validator", "openapi-spec-validator==0.9.0");
/// Builds Python handlers into components (its `componentize-py` command).
pub const COMPONENTIZE_PY: (&str, &str) = ("componentize_py", "componentize-py==0.25.1");
/// A fuzzer of HTTP APIs from their OpenAPI description.
pub const SCHEMATHESIS: (&str, &str) = ("schemathesis", "schemathesis==4.32.5");

/// The `componentize-py` command (installed on demand): on the PATH, or in `~/.local/bin`.
pub fn componentize_py() -> std::path::PathBuf {
    ensure(COMPONENTIZE_PY);
    let local = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".local/bin/componentize-py");
    if local.exists() {
        return local;
    }
    "componentize-py".into()
}

/// Makes sure `python3` can import `tool.0`, installing package `tool.1` when it cannot.
pub fn ensure(tool: (&str, &str)) {
    let (module, package) = tool;
    let importable = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable() {
        return;
    }
    let dir = std::env::temp_dir();
    let lock = std::fs::File::create(dir.join("sluice-pip-install.lock")).unwrap();
    // Held until this function returns (the file closes): other test processes wait here.
    unsafe {
        libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
    }
    if importable() {
        return;
    }
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--user", "--quiet"])
            .args(extra)
            .arg(package)
            .status()
            .is_ok_and(|s| s.success())
    };
    // Debian's Python refuses user installs unless told the system packages are not touched.
    if !pip(&[]) {
        pip(&["--break-system-packages"]);
    }
    assert!(
        importable(),
        "no {module} for Python: run `python3 -m pip install --user {package}`"
    );
}
