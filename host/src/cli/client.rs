//! Commands that talk to a running host over its HTTP API.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::manifest::{Manifest, validate_name};

/// Where the host is.
#[derive(Args, Debug, Clone)]
pub struct HostArgs {
    /// The host's base URL.
    #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// API token (sent as `Authorization: Bearer`), when the host requires one.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `sluice deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The component file (`cargo build --target wasm32-wasip2 --release` output).
    pub component: PathBuf,
    /// Function name (default: the manifest's name, else the file name).
    #[arg(long)]
    pub name: Option<String>,
    /// The manifest (`sluice.toml`): the function's whole configuration. Default: the
    /// `sluice.toml` found beside the component or its crate (see `--no-manifest`).
    #[arg(long, conflicts_with = "no_manifest")]
    pub manifest: Option<PathBuf>,
    /// Deploy the code only: settings, subscriptions and config stay as deployed.
    #[arg(long)]
    pub no_manifest: bool,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print the host's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `sluice functions`.
#[derive(Args, Debug)]
pub struct FunctionsArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A small client for the host's API: every non-2xx answer becomes an error with the host's message.
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// Bearer token for hosts that require one.
    token: Option<String>,
}

impl Client {
    /// A client for the host at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token: None,
        }
    }

    /// A client for the host the flags name, with their token.
    pub fn for_host(host: &HostArgs) -> Self {
        Client {
            token: host.token.clone(),
            ..Client::new(&host.url)
        }
    }

    /// A request to `path` on the host (sent with [`Client::send_json`], which adds the token).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request built with [`Client::request`]: the JSON answer, or the host's error.
    pub async fn send_json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.with_context(|| {
            format!("cannot reach the Sluice host at {}: is `sluice serve` running? (set --url or SLUICE_URL)", self.base)
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no details");
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    /// Deploys a component with its whole manifest, or (`None`) its code only, keeping what is
    /// deployed; returns the host's function JSON.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest: Option<&Manifest>,
    ) -> anyhow::Result<Value> {
        let mut form = reqwest::multipart::Form::new().part(
            "component",
            reqwest::multipart::Part::bytes(wasm).mime_str("application/wasm")?,
        );
        if let Some(manifest) = manifest {
            form = form.part(
                "manifest",
                reqwest::multipart::Part::text(manifest.to_toml()).mime_str("application/toml")?,
            );
        }
        self.send(
            self.http
                .put(format!("{}/v1/functions/{name}", self.base))
                .multipart(form),
        )
        .await
    }

    /// Submits a job with extra request headers; returns `{"id", "status"}`.
    pub async fn submit(
        &self,
        name: &str,
        data: Vec<u8>,
        content_type: &str,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let url = format!("{}/v1/functions/{name}/jobs", self.base);
        let mut request = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(data);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.send(request).await
    }

    /// Shows a job, waiting up to `wait` seconds for it to be terminal.
    pub async fn job(&self, id: &str, wait: u64) -> anyhow::Result<Value> {
        self.send(
            self.http
                .get(format!("{}/v1/jobs/{id}?wait={wait}", self.base)),
        )
        .await
    }

    /// Lists functions.
    pub async fn functions(&self) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}/v1/functions", self.base)))
            .await
    }

    /// An API call with a raw body both ways (key-value values); an error answer's message
    /// becomes the error.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.with_context(|| {
            format!("cannot reach the Sluice host at {}: is `sluice serve` running? (set --url or SLUICE_URL)", self.base)
        })?;
        let status = response.status();
        let bytes = response.bytes().await?.to_vec();
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = body["error"]["message"].as_str().unwrap_or("no details");
            bail!("{status}: {message}");
        }
        Ok(bytes)
    }

    /// Any API call: `method` on `path` (from `/v1/...`) with an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// `PATCH /v1/functions/{name}` with settings as JSON (`null` unsets `rate_per_second`).
    pub async fn configure(&self, name: &str, settings: &Value) -> anyhow::Result<Value> {
        self.send(
            self.http
                .patch(format!("{}/v1/functions/{name}", self.base))
                .json(settings),
        )
        .await
    }

    /// Publishes one CloudEvent (structured mode) to a topic.
    pub async fn publish(
        &self,
        topic: &str,
        event: &Value,
        correlation_id: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .post(format!("{}/v1/topics/{topic}/events", self.base))
            .header("content-type", crate::event::STRUCTURED)
            .body(event.to_string());
        if let Some(c) = correlation_id {
            request = request.header("sluice-correlation-id", c);
        }
        self.send(request).await
    }

    /// `GET /v1/functions/{name}/stats`.
    pub async fn stats(&self, name: &str) -> anyhow::Result<Value> {
        self.send(
            self.http
                .get(format!("{}/v1/functions/{name}/stats", self.base)),
        )
        .await
    }
}

/// The `sluice.toml` of a component built by cargo: beside the file, or in one of its parent
/// directories, or in a crate directory named like the component inside one of them
/// (`functions/target/wasm32-wasip2/release/order_total.wasm` -> `functions/order-total/`).
pub fn find_manifest(component: &Path) -> Option<PathBuf> {
    let stem = component.file_stem()?.to_str()?.to_string();
    let kebab = stem.replace('_', "-");
    let component = std::path::absolute(component).ok()?;
    for dir in component.ancestors().skip(1).take(6) {
        for candidate in [
            dir.join("sluice.toml"),
            dir.join(&kebab).join("sluice.toml"),
            dir.join(&stem).join("sluice.toml"),
        ] {
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Reads a manifest file and works out the function's name: `--name`, else the manifest's,
/// else the file name (`order_total.wasm` -> `order-total`). No manifest: `None`.
pub fn resolve_manifest(
    component: &Path,
    name: Option<&str>,
    manifest: Option<&Path>,
) -> anyhow::Result<(String, Option<Manifest>)> {
    let manifest = match manifest {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(Manifest::from_toml(&text).with_context(|| format!("in {}", path.display()))?)
        }
        None => None,
    };
    let manifest_name = manifest.as_ref().and_then(|m| m.name.clone());
    let name = match (name, &manifest_name) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) => n.clone(),
        (None, None) => component
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('_', "-"))
            .context("cannot tell the function's name from the file name: pass --name")?,
    };
    validate_name(&name)?;
    Ok((name, manifest))
}

pub(super) async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let manifest_path = match (&args.manifest, args.no_manifest) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => None,
        (None, false) => {
            let found = find_manifest(&args.component);
            match &found {
                Some(path) => eprintln!("using the manifest {}", path.display()),
                None => eprintln!(
                    "no sluice.toml found beside {} or its crate: deploying the code only (settings, subscriptions and config stay as deployed; defaults for a new function). Pass --manifest FILE to set them.",
                    args.component.display()
                ),
            }
            found
        }
    };
    let (name, manifest) = resolve_manifest(
        &args.component,
        args.name.as_deref(),
        manifest_path.as_deref(),
    )?;
    let wasm = std::fs::read(&args.component)
        .with_context(|| format!("cannot read {}", args.component.display()))?;
    let body = Client::for_host(&args.host)
        .deploy(&name, wasm, manifest.as_ref())
        .await?;
    if args.json {
        println!("{body}");
    } else {
        println!(
            "deployed {} version {} ({} bytes, max_concurrency {}, timeout {} ms, memory {} MiB)",
            body["name"].as_str().unwrap_or(&name),
            body["version"],
            body["size"],
            body["max_concurrency"],
            body["timeout_ms"],
            body["memory_mb"]
        );
        print_changes(&body);
    }
    Ok(())
}

/// Prints a version's `changes` (what differs from the version before), one per line.
pub(super) fn print_changes(function: &Value) {
    for change in function["changes"].as_array().into_iter().flatten() {
        println!("  {}", change.as_str().unwrap_or("?"));
    }
}

pub(super) async fn functions(args: FunctionsArgs) -> anyhow::Result<()> {
    let body = Client::for_host(&args.host).functions().await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let list = body["functions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no functions deployed (deploy one with `sluice deploy`)");
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:>11} {:>10} {:>9} {:>8}  STATE",
        "NAME", "VERSION", "CONCURRENCY", "TIMEOUT_MS", "MEMORY_MB", "PENDING"
    );
    for f in list {
        println!(
            "{:<24} {:>7} {:>11} {:>10} {:>9} {:>8}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["version"].to_string(),
            f["max_concurrency"].to_string(),
            f["timeout_ms"].to_string(),
            f["memory_mb"].to_string(),
            f["pending_jobs"].to_string(),
            if f["paused"] == true {
                "paused"
            } else {
                "active"
            }
        );
    }
    Ok(())
}
