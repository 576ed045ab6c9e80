//! A real browser for the console's tests: Debian's Chromium driven by Playwright for Python
//! (PyPI `playwright`, pointed at the system browser: nothing is downloaded at test time).
//! `.ci/run` installs both; a test that finds one missing installs it (Playwright with
//! `pip install --user`, Chromium with `apt-get` when it runs as root) or says how.

use std::path::PathBuf;
use std::process::Command;

/// The Chromium binary: `$SLUICE_CHROMIUM`, else `chromium` on the `PATH`.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_CHROMIUM") {
        return path.into();
    }
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chromium"))
                .find(|p| p.is_file())
        })
    };
    if let Some(found) = find() {
        return found;
    }
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        with_lock("chromium", || {
            if find().is_none() {
                let _ = Command::new("apt-get").args(["update", "-qq"]).status();
                let _ = Command::new("apt-get")
                    .args(["install", "-y", "-qq", "chromium"])
                    .status();
            }
        });
    }
    find().expect("no chromium: install Debian's `chromium` package (apt-get install chromium) or set SLUICE_CHROMIUM")
}

/// Makes sure Python can import Playwright (installing it for this user when it cannot).
pub fn playwright() {
    crate::python::ensure(crate::python::PLAYWRIGHT);
}

/// Runs `install` while holding a lock file (other test processes wait).
fn with_lock(what: &str, install: impl FnOnce()) {
    let dir = std::env::temp_dir();
    let lock = std::fs::File::create(dir.join(format!("sluice-{what}-install.lock"))).unwrap();
    // Held until this function returns (the file closes).
    unsafe {
        libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
    }
    install();
}

/// Where the console's screenshots are kept: `target/console-screenshots/<test>`.
pub fn screenshots(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/console-screenshots")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The browser script `name` under `tests/browser/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("browser")
        .join(name)
}
