//! The host a benchmark runs against: a real one in this process, on loopback, with its data
//! in a temp dir (or one given), and the writer counters it reports in `/metrics`.

use super::*;

/// A host running in this process for the benchmark.
pub(super) struct BenchHost {
    pub(super) addr: SocketAddr,
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub(super) _dir: Option<tempfile::TempDir>,
}

/// Writer counters read from `/metrics`.
pub(super) struct Counters {
    pub(super) finished: u64,
    pub(super) commits: u64,
    pub(super) ops: u64,
    pub(super) apply_s: f64,
    pub(super) commit_s: f64,
}

impl BenchHost {
    pub(super) async fn start(
        base: &Path,
        backend: Option<crate::store::nats::NatsOptions>,
    ) -> anyhow::Result<BenchHost> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-bench")
            .tempdir_in(base)?;
        let mut host = BenchHost::start_with(dir.path(), |c| c.backend = backend).await?;
        host._dir = Some(dir);
        Ok(host)
    }

    pub(super) async fn start_in(dir: &Path) -> anyhow::Result<BenchHost> {
        Self::start_with(dir, |_| {}).await
    }

    pub(super) async fn start_with(
        dir: &Path,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<BenchHost> {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        tweak(&mut config);
        // The host's tuning variables apply to the benchmark's host too.
        if let Ok(us) = std::env::var("SLUICE_COMMIT_DELAY_US") {
            config.commit_delay = Duration::from_micros(us.parse()?);
        }
        if let Ok(n) = std::env::var("SLUICE_SANDBOX_THREADS") {
            config.sandbox_threads = n.parse()?;
        }
        if let Ok(n) = std::env::var("SLUICE_STORE_SHARDS") {
            config.store_shards = n.parse()?;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(
            listener,
            async move {
                let _ = stopped.await;
            },
            config,
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Connection::open(addr).await
                && let Ok((status, _)) = c.get("/healthz").await
                && status == 200
            {
                break;
            }
            if task.is_finished() {
                return match task.await {
                    Ok(Err(e)) => Err(e.context("the benchmark host stopped while starting")),
                    Ok(Ok(())) => bail!("the benchmark host stopped while starting"),
                    Err(e) => bail!("the benchmark host failed while starting: {e}"),
                };
            }
            if Instant::now() > deadline {
                bail!("the benchmark host did not start");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(BenchHost {
            addr,
            stop,
            task,
            _dir: None,
        })
    }

    pub(super) async fn deploy_echo(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: &crate::manifest::Manifest,
    ) -> anyhow::Result<()> {
        let mut manifest = manifest.clone();
        manifest.name = Some(name.to_string());
        Client::new(&format!("http://{}", self.addr))
            .deploy(name, wasm.to_vec(), Some(&manifest))
            .await?;
        Ok(())
    }

    pub(super) async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let mut conn = Connection::open(self.addr).await?;
        let (_, body) = conn.get("/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .filter(|r| r.starts_with(' '))
                    .and_then(|r| r.trim().parse().ok())
            })
            .with_context(|| format!("metric {name} missing"))
    }

    pub(super) async fn counters(&self) -> anyhow::Result<Counters> {
        Ok(Counters {
            finished: self.metric("sluice_jobs_finished_total").await? as u64,
            commits: self.metric("sluice_store_commits_total").await? as u64,
            ops: self.metric("sluice_store_operations_total").await? as u64,
            apply_s: self.metric("sluice_store_apply_seconds_total").await?,
            commit_s: self.metric("sluice_store_commit_seconds_total").await?,
        })
    }

    /// A function's stats.
    pub(super) async fn stats(&self, function: &str) -> anyhow::Result<Value> {
        let mut conn = Connection::open(self.addr).await?;
        let (_, body) = conn.get(&format!("/v1/functions/{function}/stats")).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Waits until the host has committed `total` terminal jobs since it started.
    pub(super) async fn wait_finished(&self, total: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut conn = Connection::open(self.addr).await?;
        loop {
            let (_, body) = conn.get("/metrics").await?;
            let text = String::from_utf8_lossy(&body);
            let finished = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("sluice_jobs_finished_total ")
                        .and_then(|r| r.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0) as u64;
            if finished >= total {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {finished} of {total} jobs finished in time");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub(super) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}
