//! Shared helpers for Sluice's black-box tests: a real host on an ephemeral loopback port with
//! a temporary data dir, real HTTP, and the real example components from `functions/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Paths of the example components, built by `build.rs`.
pub mod browser;
pub mod conformance;
pub mod nats;
pub mod python;

pub mod components {
    /// `functions/echo`.
    pub const ECHO: &str = env!("SLUICE_COMPONENT_ECHO");
    /// `functions/ledger`: a batch handler.
    pub const LEDGER: &str = env!("SLUICE_COMPONENT_LEDGER");
    /// `functions/counter`.
    pub const COUNTER: &str = env!("SLUICE_COMPONENT_COUNTER");
    /// `functions/order-total`.
    pub const ORDER_TOTAL: &str = env!("SLUICE_COMPONENT_ORDER_TOTAL");
    /// `functions/probe`.
    pub const PROBE: &str = env!("SLUICE_COMPONENT_PROBE");
    /// `functions/inspect`: answers with the event attributes it saw.
    pub const INSPECT: &str = env!("SLUICE_COMPONENT_INSPECT");
    /// `functions/order-total/sluice.toml`.
    pub const ORDER_TOTAL_MANIFEST: &str = env!("SLUICE_MANIFEST_ORDER_TOTAL");
    /// `functions/echo/sluice.toml`.
    pub const ECHO_MANIFEST: &str = env!("SLUICE_MANIFEST_ECHO");
    /// `functions/ledger/sluice.toml`.
    pub const LEDGER_MANIFEST: &str = env!("SLUICE_MANIFEST_LEDGER");
    /// `functions/counter/sluice.toml`.
    pub const COUNTER_MANIFEST: &str = env!("SLUICE_MANIFEST_COUNTER");
    /// `functions/payment`: the choreography's first step.
    pub const PAYMENT: &str = env!("SLUICE_COMPONENT_PAYMENT");
    /// `functions/inventory`.
    pub const INVENTORY: &str = env!("SLUICE_COMPONENT_INVENTORY");
    /// `functions/shipping`.
    pub const SHIPPING: &str = env!("SLUICE_COMPONENT_SHIPPING");
    /// `functions/compensation`: the unhappy path.
    pub const COMPENSATION: &str = env!("SLUICE_COMPONENT_COMPENSATION");
    /// `functions/checksum`: streams its payload through SHA-256.
    pub const CHECKSUM: &str = env!("SLUICE_COMPONENT_CHECKSUM");
    /// `functions/payment/sluice.toml` (and the others': same directory layout).
    pub const PAYMENT_MANIFEST: &str = env!("SLUICE_MANIFEST_PAYMENT");
    /// `functions/inventory/sluice.toml`.
    pub const INVENTORY_MANIFEST: &str = env!("SLUICE_MANIFEST_INVENTORY");
    /// `functions/shipping/sluice.toml`.
    pub const SHIPPING_MANIFEST: &str = env!("SLUICE_MANIFEST_SHIPPING");
    /// `functions/compensation/sluice.toml`.
    pub const COMPENSATION_MANIFEST: &str = env!("SLUICE_MANIFEST_COMPENSATION");
    /// `functions/inspect/sluice.toml`.
    pub const INSPECT_MANIFEST: &str = env!("SLUICE_MANIFEST_INSPECT");
    /// `functions/probe/sluice.toml`.
    pub const PROBE_MANIFEST: &str = env!("SLUICE_MANIFEST_PROBE");
    /// `functions/visits`: counts visits in its key-value state.
    pub const VISITS: &str = env!("SLUICE_COMPONENT_VISITS");
    /// `functions/notify`: posts to the URL in its `[config]`, with its `token` secret.
    pub const NOTIFY: &str = env!("SLUICE_COMPONENT_NOTIFY");
}

/// A configuration for tests: a small sandbox pool, a short grace period, and two job shards
/// (so every test also crosses shard boundaries: routing, merged listings, recovery).
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        grace_period: Duration::from_secs(5),
        max_instances: 32,
        max_memory_mb: 128,
        cache_mb: 16,
        store_shards: 2,
        ..Config::default()
    }
}

/// A host running in this process on `127.0.0.1:0`.
pub struct TestHost {
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// A keep-alive HTTP client.
    pub http: reqwest::Client,
    /// The data directory (kept for restarts).
    pub data_dir: PathBuf,
    /// Owns the temp dir when the host created it.
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a host on a fresh temp data dir.
pub async fn start_host() -> TestHost {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = test_config(tmp.path());
    let mut host = start_host_with(config).await;
    host._tmp = Some(tmp);
    host
}

/// Starts a host with the given configuration (e.g. on an existing data dir, for restarts).
pub async fn start_host_with(config: Config) -> TestHost {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let data_dir = config.data_dir.clone();
    let task = tokio::spawn(sluice::run(
        listener,
        async move {
            let _ = stopped.await;
        },
        config,
    ));
    let host = TestHost {
        url,
        http: reqwest::Client::new(),
        data_dir,
        _tmp: None,
        stop: Some(stop),
        task: Some(task),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = host.http.get(host.url("/healthz")).send().await
            && r.status() == 200
        {
            return host;
        }
        assert!(Instant::now() < deadline, "the host did not become healthy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestHost {
    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Shuts the host down gracefully and waits for it; returns the temp dir so a restart can
    /// reuse the data.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("host task panicked")
                .expect("host failed");
        }
        self._tmp.take()
    }

    /// Deploys a component with settings as query parameters (`"max_concurrency=2"`).
    /// Panics unless the host answers 200 or 201.
    pub async fn deploy(&self, name: &str, component: &str, settings: &str) -> Value {
        let (status, body) = self
            .deploy_raw(name, std::fs::read(component).unwrap(), settings)
            .await;
        assert!(
            status == 200 || status == 201,
            "deploy {name}: {status} {body}"
        );
        body
    }

    /// Deploys a component with a `sluice.toml` manifest (multipart, as `sluice deploy` does).
    /// Panics unless the host answers 200 or 201.
    pub async fn deploy_manifest(&self, name: &str, component: &str, manifest: &str) -> Value {
        let (status, body) = self.deploy_manifest_raw(name, component, manifest).await;
        assert!(
            status == 200 || status == 201,
            "deploy {name}: {status} {body}"
        );
        body
    }

    /// Sends a deploy with a manifest (multipart) and returns status and JSON body, whatever
    /// they are.
    pub async fn deploy_manifest_raw(
        &self,
        name: &str,
        component: &str,
        manifest: &str,
    ) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "component",
                reqwest::multipart::Part::bytes(std::fs::read(component).unwrap()),
            )
            .part(
                "manifest",
                reqwest::multipart::Part::text(manifest.to_string()),
            );
        let r = self
            .http
            .put(self.url(&format!("/v1/functions/{name}")))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends a deploy and returns status and JSON body, whatever they are.
    pub async fn deploy_raw(&self, name: &str, wasm: Vec<u8>, settings: &str) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(&format!("/v1/functions/{name}?{settings}")))
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Submits a job; panics unless 202. Returns the job id.
    pub async fn submit(
        &self,
        function: &str,
        body: impl Into<reqwest::Body>,
        content_type: &str,
    ) -> String {
        let r = self
            .http
            .post(self.url(&format!("/v1/functions/{function}/jobs")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "submit to {function}: {body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Submits JSON; returns the job id.
    pub async fn submit_json(&self, function: &str, value: &Value) -> String {
        self.submit(function, value.to_string(), "application/json")
            .await
    }

    /// GETs a path, returning status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs a path, returning status, content type and the raw body.
    pub async fn get_raw(&self, path: &str) -> (u16, String, Vec<u8>) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .map_or(String::new(), |v| v.to_str().unwrap().to_string());
        (status, content_type, r.bytes().await.unwrap().to_vec())
    }

    /// DELETEs a path, returning status and JSON body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self.http.delete(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a body to a path, returning status and JSON body.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// PUTs a body; returns status and JSON body.
    pub async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, body).await
    }

    /// Sends `method` with a body; returns status and JSON body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The job as the host shows it now.
    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "job {id}: {body}");
        body
    }

    /// Long-polls until the job is terminal (panics after 60 s).
    pub async fn wait(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, job) = self.get(&format!("/v1/jobs/{id}?wait=10")).await;
            assert_eq!(status, 200, "job {id}: {job}");
            if is_terminal(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        }
    }

    /// Polls until the job shows `status` (panics after 30 s, or if it ends in another status).
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let job = self.job(id).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                !is_terminal(&job) && Instant::now() < deadline,
                "job {id} never became {status}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// POSTs JSON to a path, returning status and JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A metric's value from `/metrics` (first sample of that name).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
    }
}

/// True when a job JSON shows a terminal status.
pub fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "dead" | "cancelled" | "superseded")
    )
}

/// Parses one of the API's RFC 3339 timestamps into ms since the epoch.
pub fn millis(ts: &Value) -> u64 {
    let t = humantime_parse(
        ts.as_str()
            .unwrap_or_else(|| panic!("not a timestamp: {ts}")),
    );
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn humantime_parse(s: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("bad timestamp {s}: {e}"))
}

/// Asserts a JSON error body has the API's shape and the given code.
pub fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "unexpected error body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
}

/// The `sluice` binary of this build: built here (a no-op when up to date), because a workspace
/// test run builds the host's library and test harnesses, not its binary.
pub fn sluice_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let target_dir = profile_dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            // `--workspace --tests` resolves features exactly as the test build did (dev-dependencies
            // included), so this only links the binary instead of rebuilding the host and half its
            // dependencies with another feature set (twice the disk, and minutes on a cold CI run).
            build
                .args(["build", "--workspace", "--bins", "--tests", "--target-dir"])
                .arg(target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("cannot run cargo");
            assert!(status.success(), "building the sluice binary failed");
            let bin = profile_dir.join("sluice");
            assert!(bin.exists(), "{} is missing after the build", bin.display());
            bin
        })
        .clone()
}

/// GETs a URL and parses its JSON body.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A TCP port free on loopback right now, for a process to listen on: drawn below the
/// kernel's ephemeral range (see [`nats::free_port`]), so no outgoing connection takes it
/// before that process binds it.
pub fn free_port() -> u16 {
    nats::free_port()
}

/// Polls `{url}/healthz` until it answers 200 (panics after 30 s).
pub async fn wait_healthy(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "sluice serve did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    /// Its path.
    pub path: String,
    /// Its headers, names lowercase.
    pub headers: axum::http::HeaderMap,
    /// Its body.
    pub body: Vec<u8>,
}

/// A webhook receiver (or any upstream server) on `127.0.0.1:0`: records every request (as it
/// arrives); waits `delay_ms`, then answers 500 to the first `fail_first` of them, a redirect
/// while `redirect_to` is set, `respond_with` while that is set, else 204.
pub struct Receiver {
    /// Its port.
    pub port: u16,
    /// Requests so far.
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    /// Requests still to fail with 500.
    pub fail_first: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Where to redirect (307) instead of answering.
    pub redirect_to: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// How long to wait before answering, in ms: a slow receiver.
    pub delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The status and body to answer with instead of 204.
    pub respond_with: std::sync::Arc<std::sync::Mutex<Option<(u16, Vec<u8>)>>>,
}

impl Receiver {
    /// Starts one.
    pub async fn start() -> Receiver {
        use axum::response::IntoResponse;
        let received: std::sync::Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let fail_first: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let redirect_to: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64> = Default::default();
        let respond_with: std::sync::Arc<std::sync::Mutex<Option<(u16, Vec<u8>)>>> =
            Default::default();
        let (r, f, d, w, a) = (
            received.clone(),
            fail_first.clone(),
            redirect_to.clone(),
            delay_ms.clone(),
            respond_with.clone(),
        );
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (r, f, d, w, a) = (r.clone(), f.clone(), d.clone(), w.clone(), a.clone());
            async move {
                let path = request.uri().path().to_string();
                let headers = request.headers().clone();
                let body = axum::body::to_bytes(request.into_body(), 64 << 20)
                    .await
                    .unwrap_or_default()
                    .to_vec();
                r.lock().unwrap().push(Received {
                    path,
                    headers,
                    body,
                });
                use std::sync::atomic::Ordering::SeqCst;
                let delay = w.load(SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                if f.load(SeqCst) > 0 {
                    f.fetch_sub(1, SeqCst);
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                if let Some(to) = d.lock().unwrap().clone() {
                    return (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [(axum::http::header::LOCATION, to)],
                    )
                        .into_response();
                }
                if let Some((status, body)) = a.lock().unwrap().clone() {
                    return (axum::http::StatusCode::from_u16(status).unwrap(), body)
                        .into_response();
                }
                axum::http::StatusCode::NO_CONTENT.into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            port,
            received,
            fail_first,
            redirect_to,
            delay_ms,
            respond_with,
        }
    }

    /// `http://127.0.0.1:{port}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What it got so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}
