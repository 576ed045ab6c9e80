//! The JetStream backend: the store's traits on a NATS cluster, so several hosts share one
//! set of functions and jobs (`sluice serve --backend nats://...`, in progress: see
//! docs/scale-out.md for what it does and does not do yet).
//!
//! Where things live (every name starts with the deployment's prefix, `sluice` by default, so
//! several deployments share a cluster):
//! - job records: KV bucket `<p>-jobs`, key `j.<id>`, the store's own job encoding; every change
//!   is a compare-and-set on the record's revision, so two hosts never both apply a transition;
//!   events' records (`e.<id>`) and outbox entries (`o.<id>`: what a publish or a successful
//!   attempt causes, see [`fanout`]) in the same bucket, whose stream takes atomic batches;
//! - each function's queue: stream `<p>_q_<function>` (work queue, `max_queued` as its message
//!   limit with new messages refused, so the cluster enforces it), one message per unfinished
//!   job, deduplicated by job id, and one durable pull consumer `run` shared by every host: a
//!   lease is a delivery, its expiry the consumer's ack wait, renewed with in-progress acks;
//!   a retry is a negative ack with the retry's delay; the message is acked when the job ends;
//! - idempotency keys: KV bucket `<p>-keys` (create-if-absent);
//! - per-function counts per status: stream `<p>_counts` of JetStream counters;
//! - the catalog: KV buckets `<p>-functions`, `<p>-versions`, `<p>-secrets`, `<p>-settings`;
//!   components and compiled artifacts in object store `<p>-objects`.
//!
//! A write is answered once the cluster acknowledged it (stored on a majority of the stream's
//! replicas with the server settings docs/scale-out.md lists).

mod batch;
mod blobs;
mod callbacks;
mod catalog;
mod correlation;
mod dead_letters;
mod direct;
mod dispatch;
mod fanout;
mod jobs;
mod listing;
mod pace;
mod pipelines;
mod state;
mod timers;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, kv, object_store::ObjectStore};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{CallbackFeed, FunctionRecord, StoreError, StoreStats};
use crate::job::JobStatus;

/// How to reach the cluster and how to lay the data out on it.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:port`); the client also learns the cluster's other servers.
    pub servers: Vec<String>,
    /// Prefix of every stream, bucket and subject (one deployment's data).
    pub prefix: String,
    /// Replicas of every stream and bucket (3 on a 3-node cluster: a node may die).
    pub replicas: usize,
    /// How long a lease lasts without renewal (the consumer's ack wait).
    pub lease: Duration,
    /// A `.creds` file (JWT and nkey seed), if the cluster wants one.
    pub credentials: Option<std::path::PathBuf>,
    /// A CA certificate to trust (and require TLS), if the cluster uses a private CA.
    pub tls_ca: Option<std::path::PathBuf>,
    /// How long idempotency keys are remembered.
    pub idempotency_window: Duration,
    /// How many jobs a chain of emits may grow before its next job is a dead letter.
    pub max_hops: u32,
    /// How webhook callbacks are retried.
    pub callback_retry: crate::manifest::RetryPolicy,
    /// Most bytes of key-value state one function holds.
    pub max_kv_bytes: u64,
    /// The first window of time a page of a job listing reads back (doubled until the page is
    /// full): about the time a page's worth of jobs takes to arrive.
    pub listing_window: Duration,
}

impl NatsOptions {
    /// Options for `servers` (a comma-separated list of URLs) with the defaults.
    pub fn new(servers: &str) -> NatsOptions {
        NatsOptions {
            servers: servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            prefix: "sluice".into(),
            replicas: 1,
            lease: Duration::from_secs(30),
            credentials: None,
            tls_ca: None,
            idempotency_window: Duration::from_secs(24 * 3600),
            max_hops: 64,
            callback_retry: crate::manifest::RetryPolicy {
                max_attempts: 10,
                backoff_base_ms: 1000,
                backoff_max_ms: 3_600_000,
            },
            max_kv_bytes: 256 << 20,
            listing_window: Duration::from_secs(10),
        }
    }
}

/// The store on a NATS JetStream cluster. Open with [`NatsBackend::connect`].
pub struct NatsBackend {
    js: jetstream::Context,
    client: async_nats::Client,
    options: NatsOptions,
    jobs: kv::Store,
    /// The jobs bucket's stream (its index keys are listed and removed through it).
    jobs_stream: jetstream::stream::Stream,
    /// Running attempts and their lease ends, for the sweep that fails expired ones.
    running: kv::Store,
    /// Its stream: an ended attempt's entry is purged from it without a trace (a KV purge
    /// leaves a marker, which every sweep would read again).
    running_stream: jetstream::stream::Stream,
    keys: kv::Store,
    /// Each rate-limited function's next free start (see `pace`).
    pace: kv::Store,
    functions: kv::Store,
    versions: kv::Store,
    secrets: kv::Store,
    settings: kv::Store,
    objects: ObjectStore,
    counters: jetstream::stream::Stream,
    /// Each function's queue consumer, once looked up.
    queues: Mutex<HashMap<String, PullConsumer>>,
    /// The last record this host read or wrote of each job it is working on, with its
    /// revision: a change tries it first (a compare-and-set refuses it if it is stale), saving
    /// a read per step.
    known: Mutex<HashMap<crate::job::JobId, (crate::job::Job, u64)>>,
    /// Deliveries this host holds (leased jobs), by job: acked when the job ends.
    held: Arc<Mutex<HashMap<crate::job::JobId, dispatch::Held>>>,
    /// Starts, renewals and outcomes, applied in order per job by a few tasks.
    dispatch: Vec<mpsc::UnboundedSender<dispatch::Op>>,
    /// The catalog as this host last saw it (records and their revisions): whom a topic's
    /// events go to, and which functions a handler may enqueue to.
    view: CatalogView,
    /// Names of functions changed in the catalog (by any host), until taken.
    changes: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    stats: StoreStats,
    /// The callback feed and its sending end, until this host's sender takes the feed.
    callbacks: Mutex<Option<(CallbackFeed, mpsc::UnboundedSender<Vec<crate::job::JobId>>)>>,
    /// The consumer handing due timers (jobs whose wait is over) to one host at a time.
    timer_consumer: PullConsumer,
    /// The consumer handing due callbacks to one host at a time.
    callback_consumer: PullConsumer,
    /// Callback messages this host's sender holds, by job.
    callbacks_held: Mutex<HashMap<crate::job::JobId, async_nats::jetstream::message::Acker>>,
    /// This backend, for tasks started later.
    me: std::sync::Weak<NatsBackend>,
}

/// How long an operation keeps trying while the cluster moves a leader (a server died) or the
/// client reconnects, before its caller gets the error (a `503`).
const PATIENCE: Duration = Duration::from_secs(15);

/// Runs `attempt` until it succeeds, fails for good (`fatal`), or [`PATIENCE`] runs out: a
/// cluster that lost a server answers "no responders" or times out until it elected new
/// leaders. Every write retried this way is safe to repeat (deduplicated message ids,
/// compare-and-set on revisions, puts of the same value).
async fn patiently<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    fatal: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if fatal(&e) || tokio::time::Instant::now() + pause > deadline => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "{what}: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Runs `attempt` until it succeeds or `deadline` passes (a cluster that just started may
/// still be electing its leaders or learning which servers are online).
async fn until_ready<T, E, F>(
    deadline: tokio::time::Instant,
    mut attempt: impl FnMut() -> F,
) -> Result<T, StoreError>
where
    E: std::error::Error + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "JetStream not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(failed(e)),
        }
    }
}

/// A cluster failure, with its source.
fn failed(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Cluster(Arc::new(e))
}

/// A cluster failure described in words.
fn failed_because(message: String) -> StoreError {
    StoreError::Cluster(Arc::new(std::io::Error::other(message)))
}

/// What this backend does not do yet, as the error a caller sees (`501`).
fn unsupported(what: &str) -> StoreError {
    StoreError::Unsupported(format!(
        "{what} is not supported by the NATS backend yet; use the embedded store (no --backend) for it (docs/scale-out.md lists what works across hosts)"
    ))
}

/// The catalog as a host sees it: function records by name, with their revisions.
type CatalogView = Arc<parking_lot::RwLock<HashMap<String, (FunctionRecord, u64)>>>;

/// Keeps `view` in step with the functions bucket (its current records first), and forwards
/// the names of functions whose record or secrets change from now on.
async fn watch_changes(
    functions: &kv::Store,
    secrets: &kv::Store,
    view: &CatalogView,
) -> Result<mpsc::UnboundedReceiver<String>, StoreError> {
    use futures_util::StreamExt;
    let (tx, rx) = mpsc::unbounded_channel();
    let records = functions.watch_all().await.map_err(failed)?;
    let sealed = secrets.watch_all().await.map_err(failed)?;
    // Watching first, then reading what is there: nothing falls between (an older record
    // never replaces a newer one).
    let mut names = functions.keys().await.map_err(failed)?;
    while let Some(name) = names.next().await {
        let name = name.map_err(failed)?;
        if let Some(entry) = functions.entry(&name).await.map_err(failed)? {
            see(view, &entry);
        }
    }
    let view = view.clone();
    // A secret's key is `<function>.<hex name>`.
    let mut changed = futures_util::stream::select(
        records.map(move |e| {
            e.map(|e| {
                see(&view, &e);
                e.key
            })
        }),
        sealed.map(|e| e.map(|e| e.key.split('.').next().unwrap_or_default().to_string())),
    );
    tokio::spawn(async move {
        while let Some(change) = changed.next().await {
            match change {
                Ok(name) => {
                    if tx.send(name).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching the catalog failed"),
            }
        }
    });
    Ok(rx)
}

/// Applies one entry of the functions bucket to `view`, unless it has seen a later one.
fn see(view: &CatalogView, entry: &kv::Entry) {
    let mut view = view.write();
    if view
        .get(&entry.key)
        .is_some_and(|(_, revision)| *revision >= entry.revision)
    {
        return;
    }
    if entry.operation != kv::Operation::Put {
        view.remove(&entry.key);
        return;
    }
    match super::tables::decode_function(&entry.value) {
        Ok(record) => {
            view.insert(entry.key.clone(), (record, entry.revision));
        }
        Err(e) => tracing::warn!(function = %entry.key, error = %e, "a function record does not decode"),
    }
}

impl NatsBackend {
    /// The functions subscribed to `topic` for events of `event_type`, by name.
    pub(super) fn subscribers(&self, topic: &str, event_type: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .view
            .read()
            .values()
            .filter(|(record, _)| {
                record
                    .subscriptions
                    .iter()
                    .any(|s| s.topic == topic && s.matches(event_type))
            })
            .map(|(record, _)| record.name.clone())
            .collect();
        out.sort_unstable();
        out
    }

    /// Notes a record this host just stored (its own writes reach the view at once).
    pub(super) fn saw(&self, record: &FunctionRecord, revision: u64) {
        let mut view = self.view.write();
        if view.get(&record.name).is_none_or(|(_, r)| *r < revision) {
            view.insert(record.name.clone(), (record.clone(), revision));
        }
    }
}

impl NatsBackend {
    /// Connects to the cluster and creates (or finds) the streams and buckets.
    pub async fn connect(options: NatsOptions) -> Result<Arc<NatsBackend>, StoreError> {
        if options.servers.is_empty() {
            return Err(failed_because(
                "no NATS server given: --backend nats://HOST:PORT[,HOST:PORT...]".into(),
            ));
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name("sluice")
            .connection_timeout(Duration::from_secs(5));
        if let Some(creds) = &options.credentials {
            connect = connect.credentials_file(creds).await.map_err(failed)?;
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = connect
            .connect(options.servers.as_slice())
            .await
            .map_err(|e| {
                failed_because(format!(
                    "cannot reach NATS at {}: {e}",
                    options.servers.join(",")
                ))
            })?;
        // Replicated writes on a busy cluster can take a while; a request still unanswered
        // after this fails (503, retried by clients).
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(20))
            .build(client.clone());
        let p = &options.prefix;
        // A cluster that just started may still be electing its leaders: keep asking a while.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let bucket = |name: String, history: i64, max_age: Duration| kv::Config {
            bucket: name,
            history,
            max_age,
            num_replicas: options.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        // A bucket made before keeps its stream's settings (the jobs bucket's stream has
        // atomic batches switched on, which a plain create would call a different config).
        let kv_of = async |config: kv::Config| {
            until_ready(deadline, || async {
                match js.create_key_value(config.clone()).await {
                    Ok(store) => Ok(store),
                    Err(e) => js.get_key_value(&config.bucket).await.map_err(|_| e),
                }
            })
            .await
        };
        let jobs = kv_of(bucket(format!("{p}-jobs"), 1, Duration::ZERO)).await?;
        // An attempt's success and what it emitted are one atomic batch on this stream.
        let jobs_stream = until_ready(deadline, || js.get_stream(format!("KV_{p}-jobs"))).await?;
        if !jobs_stream.cached_info().config.allow_atomic_publish {
            let mut config = jobs_stream.cached_info().config.clone();
            config.allow_atomic_publish = true;
            until_ready(deadline, || js.update_stream(config.clone())).await?;
        }
        let jobs_stream = until_ready(deadline, || js.get_stream(format!("KV_{p}-jobs"))).await?;
        // Entries of attempts that ended are purged from its stream (see `not_running`); a day's
        // age drops any left behind.
        let running = kv_of(bucket(
            format!("{p}-running"),
            1,
            Duration::from_secs(24 * 3600),
        ))
        .await?;
        let running_stream =
            until_ready(deadline, || js.get_stream(format!("KV_{p}-running"))).await?;
        let keys = kv_of(bucket(format!("{p}-keys"), 1, options.idempotency_window)).await?;
        // A pace older than an hour is in the past anyway.
        let pace = kv_of(bucket(format!("{p}-pace"), 1, Duration::from_secs(3600))).await?;
        // Functions' key-value state: commits are atomic batches; deletions and job markers
        // expire (see `state`).
        kv_of(bucket(format!("{p}-state"), 1, Duration::ZERO)).await?;
        let state_stream = until_ready(deadline, || js.get_stream(format!("KV_{p}-state"))).await?;
        let state_config = &state_stream.cached_info().config;
        if !state_config.allow_atomic_publish || !state_config.allow_message_ttl {
            let mut config = state_config.clone();
            config.allow_atomic_publish = true;
            config.allow_message_ttl = true;
            until_ready(deadline, || js.update_stream(config.clone())).await?;
        }
        let functions = kv_of(bucket(format!("{p}-functions"), 1, Duration::ZERO)).await?;
        let versions = kv_of(bucket(format!("{p}-versions"), 1, Duration::ZERO)).await?;
        let secrets = kv_of(bucket(format!("{p}-secrets"), 1, Duration::ZERO)).await?;
        let settings = kv_of(bucket(format!("{p}-settings"), 1, Duration::ZERO)).await?;
        let objects = until_ready(deadline, || {
            js.create_object_store(jetstream::object_store::Config {
                bucket: format!("{p}-objects"),
                num_replicas: options.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
        })
        .await?;
        let counters = until_ready(deadline, || {
            js.create_or_update_stream(jetstream::stream::Config {
                name: format!("{p}_counts"),
                subjects: vec![format!("{p}.count.>")],
                num_replicas: options.replicas,
                allow_message_counter: true,
                allow_direct: true,
                ..Default::default()
            })
        })
        .await?;
        let counters = until_ready(deadline, || js.get_stream(&counters.config.name)).await?;
        // Notes of new jobs, for listings (see `listing`).
        until_ready(deadline, || {
            js.get_or_create_stream(jetstream::stream::Config {
                name: format!("{p}_index"),
                subjects: vec![format!("{p}.i.>")],
                num_replicas: options.replicas,
                storage: jetstream::stream::StorageType::File,
                allow_direct: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
        })
        .await?;
        let (callbacks_tx, callbacks) = mpsc::unbounded_channel();
        let timer_consumer = until_ready(deadline, || async {
            NatsBackend::timer_queue(&js, p, options.replicas).await
        })
        .await?;
        let callback_consumer = until_ready(deadline, || async {
            NatsBackend::callback_queue(&js, p, options.replicas).await
        })
        .await?;
        let view = Arc::default();
        let changes = watch_changes(&functions, &secrets, &view).await?;
        let sweep_every = (options.lease / 4).min(Duration::from_secs(1));
        let backend = Arc::new_cyclic(|me: &std::sync::Weak<NatsBackend>| {
            let dispatch = dispatch::workers(me.clone());
            tokio::spawn(NatsBackend::sweep(me.clone(), sweep_every));
            tokio::spawn(NatsBackend::keep_held(me.clone(), options.lease / 4));
            tokio::spawn(NatsBackend::sweep_outbox(me.clone(), Duration::from_secs(1)));
            tokio::spawn(NatsBackend::pull_timers(me.clone()));
            NatsBackend {
                js,
                client,
                options,
                jobs,
                jobs_stream,
                running,
                running_stream,
                keys,
                pace,
                functions,
                versions,
                secrets,
                settings,
                objects,
                counters,
                queues: Mutex::new(HashMap::new()),
                known: Mutex::new(HashMap::new()),
                view,
                held: Arc::default(),
                dispatch,
                changes: Mutex::new(Some(changes)),
                stats: StoreStats::default(),
                callbacks: Mutex::new(Some((callbacks, callbacks_tx))),
                callback_consumer,
                timer_consumer,
                callbacks_held: Mutex::new(HashMap::new()),
                me: me.clone(),
            }
        });
        Ok(backend)
    }

    fn job_key(id: crate::job::JobId) -> String {
        format!("j.{id}")
    }

    fn queue_subject(&self, function: &str) -> String {
        format!("{}.q.{function}", self.options.prefix)
    }

    fn queue_stream(&self, function: &str) -> String {
        format!("{}_q_{function}", self.options.prefix)
    }

    fn count_subject(&self, function: &str, status: JobStatus) -> String {
        format!(
            "{}.count.{function}.{}",
            self.options.prefix,
            status.as_str()
        )
    }

    /// Creates or updates a function's queue for its settings (`max_queued` is the stream's
    /// message limit: the cluster refuses a job beyond it).
    async fn ensure_queue(&self, record: &FunctionRecord) -> Result<PullConsumer, StoreError> {
        // A replicated stream being created by another host at the same moment can leave a
        // request unanswered, and a cluster whose servers just (re)started places no replicas
        // until it knows them online ("no suitable peers"): ask again a while.
        patiently("making a queue", |_| false, || self.make_queue(record)).await
    }

    async fn make_queue(&self, record: &FunctionRecord) -> Result<PullConsumer, StoreError> {
        let stream = self
            .js
            .create_or_update_stream(jetstream::stream::Config {
                name: self.queue_stream(&record.name),
                subjects: vec![self.queue_subject(&record.name)],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                num_replicas: self.options.replicas,
                discard: jetstream::stream::DiscardPolicy::New,
                max_messages: i64::try_from(record.settings.max_queued).unwrap_or(i64::MAX),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(failed)?;
        let stream = self
            .js
            .get_stream(&stream.config.name)
            .await
            .map_err(failed)?;
        // `max_concurrency` holds cluster-wide, exactly: the cluster hands out at most that
        // many of the function's jobs at once (deliveries not yet acknowledged), whichever
        // hosts lease them.
        let config = jetstream::consumer::pull::Config {
            durable_name: Some("run".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.options.lease,
            max_ack_pending: i64::from(record.settings.max_concurrency.max(1)),
            max_deliver: -1,
            ..Default::default()
        };
        let mut consumer: PullConsumer = stream
            .get_or_create_consumer("run", config.clone())
            .await
            .map_err(failed)?;
        if consumer.cached_info().config.max_ack_pending != config.max_ack_pending {
            consumer = stream.update_consumer(config).await.map_err(failed)?;
        }
        self.queues
            .lock()
            .insert(record.name.clone(), consumer.clone());
        Ok(consumer)
    }

    /// A function's queue consumer (`None`: the function is not deployed, or its deploy has
    /// not made the queue yet). Only deploys and configures create or change queues.
    async fn queue(&self, function: &str) -> Result<Option<PullConsumer>, StoreError> {
        if let Some(consumer) = self.queues.lock().get(function) {
            return Ok(Some(consumer.clone()));
        }
        let Ok(stream) = self.js.get_stream(self.queue_stream(function)).await else {
            return Ok(None);
        };
        let Ok(consumer) = stream
            .get_consumer::<jetstream::consumer::pull::Config>("run")
            .await
        else {
            return Ok(None);
        };
        self.queues
            .lock()
            .insert(function.to_string(), consumer.clone());
        Ok(Some(consumer))
    }

    /// Adds `by` to a function's count of jobs with `status`.
    async fn count(&self, function: &str, status: JobStatus, by: i64) -> Result<(), StoreError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Incr", format!("{by:+}"));
        // Sent without waiting for the stream's acknowledgement: the counts are figures, not
        // the jobs' state, and a job's path should not wait on them (one lost while a server
        // fails over leaves a figure off by one).
        self.client
            .publish_with_headers(
                self.count_subject(function, status),
                headers,
                bytes::Bytes::new(),
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Moves one job of `function` from one status to another in the counts. The change it
    /// counts is durable already: a count that fails is logged, never the caller's error (a
    /// client told 503 for a stored job would submit it again).
    async fn moved(
        &self,
        function: &str,
        from: Option<JobStatus>,
        to: Option<JobStatus>,
    ) -> Result<(), StoreError> {
        if from == to {
            return Ok(());
        }
        // This host's own figures (`/metrics`): what it accepted and ended.
        use std::sync::atomic::Ordering::Relaxed;
        if from.is_none() {
            self.stats.accepted.fetch_add(1, Relaxed);
        }
        if to.is_some_and(|s| s.is_terminal()) {
            self.stats.finished.fetch_add(1, Relaxed);
        }
        let counted = async {
            if let Some(from) = from {
                self.count(function, from, -1).await?;
            }
            if let Some(to) = to {
                self.count(function, to, 1).await?;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = counted.await {
            tracing::warn!(function, error = %e, "a count was not updated; the figures are off by one");
        }
        Ok(())
    }
}
