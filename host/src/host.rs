//! Wires the host together and serves until shutdown: [`run`].
//!
//! Start-up: validate config, open the store (requeueing jobs a previous process left running),
//! load every deployed function from its cached artifact (compiling only if the engine changed),
//! start the scheduler, serve HTTP. Shutdown: stop accepting connections and starting attempts,
//! let running attempts and open requests finish for the grace period (then cut them), commit
//! everything pending, close the data file.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::functions::{Functions, Loader};
use crate::guard::AllowList;
use crate::runtime::Runtime;
use crate::scheduler::Scheduler;
use crate::store::{Backend, Store};
use crate::webhook::Sender;
use crate::webhook::sign::Secrets;

/// Serves the Sluice API on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: Config,
) -> anyhow::Result<()> {
    config.validate()?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let addr = listener.local_addr()?;
    if config.tokens.is_empty() {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to serve an open API on {addr}: with no API token configured Sluice listens on loopback only; configure tokens (--tokens or --token-file, see docs/security.md) or listen on 127.0.0.1"
            );
        }
        tracing::warn!(%addr, "no API tokens configured: the API is open to local clients (loopback only)");
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    // The store first: it refuses a data directory another host holds, before the runtime
    // clears the directory's spool files.
    let store: Arc<dyn Backend> = match &config.backend {
        None => Arc::new(Store::open(&config.data_dir, &config.store_options())?),
        Some(nats) => {
            let mut options = nats.clone();
            options.max_hops = config.max_hops;
            options.callback_retry = config.callback_retry;
            options.max_kv_bytes = config.max_kv_bytes;
            crate::store::nats::NatsBackend::connect(options).await?
        }
    };
    let runtime = Arc::new(Runtime::new(&config).context("cannot set up the WebAssembly engine")?);
    let callbacks = store
        .take_callbacks()
        .expect("a freshly opened store has its callback feed");
    let secrets = Arc::new(Secrets::new(
        crate::webhook::sign::SecretRecord::load(&*store).await?,
    ));
    let tracer = crate::trace::Tracer::new(config.otlp_endpoint.as_deref());
    let api_tracer = tracer.clone();
    let sender = Sender::new(
        store.clone(),
        secrets.clone(),
        AllowList::parse(&config.allow_callback_hosts, crate::guard::CALLBACK)
            .map_err(anyhow::Error::msg)?,
        config.callback_timeout,
        public_base(config.public_url.as_deref(), addr),
        config.callback_per_destination,
        config.callback_cool_down,
        tracer.clone(),
    );
    let sending = tokio::spawn(sender.run(callbacks));
    let key_file = config
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("secrets.key"));
    let vault = Arc::new(crate::vault::Vault::open(&key_file)?);
    let loader = Loader::new(store.clone(), runtime.clone(), vault);
    loader.load_all().await?;

    let sandboxes = sandbox_threads(config.sandbox_threads)?;
    let scheduler = Scheduler::new(
        store.clone(),
        runtime.clone(),
        config.max_instances,
        sandboxes.handle().clone(),
        tracer,
    );
    // Each function leases its window of the ready queue (including jobs left by the previous
    // process).
    for record in store.functions().await? {
        scheduler.function_updated(&record.name);
    }
    let functions = Arc::new(Functions::new(loader, scheduler.clone(), config.bounds()));
    // A backend shared with other hosts tells of their deploys, settings and deletes.
    let following = store.take_changes().map(|mut changes| {
        let functions = functions.clone();
        tokio::spawn(async move {
            while let Some(name) = changes.recv().await {
                if let Err(e) = functions.follow(&name).await {
                    tracing::warn!(function = %name, error = %e, "cannot load a function changed by another host");
                }
            }
        })
    });

    let stopping = CancellationToken::new();
    let grace = config.grace_period;
    let limits = api::listen::ConnectionLimits::new(config.header_timeout, config.max_connections);
    let state = AppState::new(
        store.clone(),
        runtime.clone(),
        scheduler.clone(),
        config,
        stopping.clone(),
        secrets,
        functions,
        api_tracer,
    );
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    };
    tokio::spawn(signal);
    tracing::info!(%addr, "serving");
    // At the signal, attempts stop starting at once; running ones and open requests get the
    // grace period, side by side.
    let attempts = async {
        stopping.cancelled().await;
        tracing::info!(
            "shutting down: waiting up to {:?} for running attempts and open requests",
            grace
        );
        scheduler.shutdown(grace).await;
    };
    tokio::join!(
        api::listen::serve(
            listener,
            api::router(state),
            limits,
            stopping.clone(),
            grace
        ),
        attempts
    );
    store.shutdown().await;
    sending.abort();
    if let Some(following) = following {
        following.abort();
    }
    // Every task holding the store must be gone before `run` returns, so the data file is closed
    // (a restart in the same process reopens it).
    tokio::task::spawn_blocking(move || {
        sandboxes.shutdown_timeout(std::time::Duration::from_secs(10))
    })
    .await
    .context("cannot stop the sandbox threads")?;
    Ok(())
}

/// Niceness of the sandbox threads, relative to the rest of the host (Linux: per thread).
const SANDBOX_NICE: i32 = 19;

/// The threads attempts run on (default one per CPU), at a lower OS priority than the API threads and the
/// writer. Running guests then take the CPU the request path leaves, and a burst of events never
/// delays accepting requests or answering them after their commit.
fn sandbox_threads(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("sluice-sandbox")
        .worker_threads(threads)
        .enable_all()
        .on_thread_start(|| {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority on the calling thread (who = 0) only lowers its own priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, SANDBOX_NICE);
            }
        })
        .build()
        .context("cannot start the sandbox threads")
}

/// Where callbacks link large outputs: the configured public URL, else the listening address
/// (nothing, for a relative link, when that address is unspecified).
fn public_base(configured: Option<&str>, addr: std::net::SocketAddr) -> String {
    match configured {
        Some(url) => url.trim_end_matches('/').to_string(),
        None if addr.ip().is_unspecified() => String::new(),
        None => format!("http://{addr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::public_base;

    #[test]
    fn output_links_use_the_public_url_else_the_listening_address() {
        let local = "127.0.0.1:7070".parse().unwrap();
        let any = "0.0.0.0:7070".parse().unwrap();
        assert_eq!(
            public_base(Some("https://sluice.example/"), any),
            "https://sluice.example"
        );
        assert_eq!(public_base(None, local), "http://127.0.0.1:7070");
        assert_eq!(public_base(None, any), "");
    }
}
