//! `sluice up`: the one-command demo. Builds `functions/`, starts a host on the embedded default
//! data dir, deploys every function with its manifest, prints how to call them, serves until
//! Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::client::Client;
use super::{ServeArgs, examples, shutdown_signal};

/// Flags of `sluice up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// The functions workspace to build and deploy.
    #[arg(long, default_value = "functions")]
    pub functions: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub(super) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let functions = args.functions.clone();
    let examples = tokio::task::spawn_blocking(move || examples::build(&functions)).await??;
    let config = args.serve.config()?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.serve.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (pick another with --listen)",
                args.serve.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    eprintln!(
        "starting the host on {url} (data in {})",
        config.data_dir.display()
    );
    let host = tokio::spawn(crate::run(listener, shutdown_signal(), config.clone()));

    let client = Client::new(&url);
    for example in &examples {
        let wasm = std::fs::read(&example.wasm)
            .with_context(|| format!("cannot read {}", example.wasm.display()))?;
        let f = client
            .deploy(&example.name, wasm, Some(&example.manifest))
            .await?;
        eprintln!(
            "deployed {:<12} version {} ({} bytes)",
            example.name, f["version"], f["size"]
        );
    }
    println!(
        r#"
Sluice is up on {url} (data in {data}). Try:

  curl -si -X POST {url}/v1/functions/order-total/jobs -H 'content-type: application/json' \
       -d '{{"id":"o-1","items":[{{"sku":"tea","quantity":2,"unit_cents":450}}],"discount_percent":10}}'
  curl -s '{url}/v1/jobs/<id from the Location header>?wait=5'

  cargo run --release -p sluice -- invoke echo --data '"hello"' --wait --url {url}
  cargo run --release -p sluice -- functions --url {url}

  # a choreography (payment -> inventory -> shipping), then everything the order caused:
  cargo run --release -p sluice -- publish shop --type order.placed --correlation-id order-1 \
       '{{"order_id":"o-1","amount_cents":1200,"card":"ok"}}' --url {url}
  curl -s '{url}/v1/jobs?correlation_id=order-1'

Ctrl-C stops it; the data file keeps everything for the next start."#,
        data = config.data_dir.display()
    );
    host.await.context("the host task failed")?
}
