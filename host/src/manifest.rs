//! A function's manifest (`sluice.toml`): its name and limits, parsed and validated once.
//!
//! The same validation serves `sluice deploy` (before anything is sent) and the deploy endpoint
//! (whatever a client sends), so a bad setting is refused with the same message everywhere.

use serde::{Deserialize, Serialize};

/// Longest function name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// A function manifest as written in `sluice.toml`. Unknown keys are an error.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name; defaults to the name the deploy gives.
    pub name: Option<String>,
    /// Most attempts of this function running at once.
    pub max_concurrency: Option<u32>,
    /// Wall-clock limit for one attempt, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Limit on the sandbox's linear memory and tables, in MiB.
    pub memory_mb: Option<u32>,
    /// Attempts a job gets before it is dead (1 means no retries).
    pub max_attempts: Option<u32>,
    /// Upper bound of the first retry's delay, in milliseconds; it doubles per retry.
    pub backoff_base_ms: Option<u64>,
    /// Cap on a retry's delay, in milliseconds.
    pub backoff_max_ms: Option<u64>,
    /// Most unfinished jobs (queued, delayed, running); submits beyond it get 429.
    pub max_queued: Option<u64>,
    /// Most attempts started per second (smoothed); unset means unlimited.
    pub rate_per_second: Option<u32>,
    /// Where a job's concurrency key comes from when its submit sends no
    /// `Sluice-Concurrency-Key`: `{ header = "x-tenant" }` or `{ json = "/tenant" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<crate::flow::KeyRule>,
    /// Most attempts of one concurrency key running at once (unset: `max_concurrency`).
    pub key_concurrency: Option<u32>,
    /// Most attempts of one concurrency key started per second; unset means unlimited.
    pub key_rate_per_second: Option<u32>,
    /// Weights of concurrency keys (1 to 100, default 1): a key of weight `w` takes `w` turns
    /// for one of a weight-1 key and may run `w × key_concurrency` attempts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub key_weights: std::collections::BTreeMap<String, u32>,
    /// How long a submit with a `Sluice-Debounce-Key` waits, replaced by a newer one with the
    /// same key within that time; unset: the function takes no debounce keys.
    pub debounce_ms: Option<u64>,
    /// The longest a burst of debounced submits delays a run, from its first submit.
    pub debounce_max_ms: Option<u64>,
    /// Failed attempts in a row that open the function's circuit breaker (nothing starts for
    /// `breaker_cooldown_ms`, then one probe); unset: no breaker.
    pub breaker_failures: Option<u32>,
    /// Batch consumption: `{ max_size = 100, max_wait_ms = 200 }` hands the handler's
    /// `handle-batch` up to `max_size` events at once, waiting up to `max_wait_ms` to fill a
    /// batch; unset: one event per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// How long an open breaker holds starts back, in milliseconds (default 30000).
    pub breaker_cooldown_ms: Option<u64>,
    /// Topics whose events this function receives: `[[subscribe]] topic = "orders"`, with an
    /// optional `types = ["order.placed", "order.*"]` filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<Subscription>,
    /// The next stage of a pipeline: on success, the output becomes a job of this function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    /// Cron triggers: `[[schedule]] cron = "*/5 * * * *"`, with an optional `timezone`,
    /// `data` (the jobs' JSON input) and `catch_up` policy (see `crate::schedule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<crate::schedule::Schedule>,
    /// Origins the handler may send HTTP requests to, e.g. `["https://api.example.com",
    /// "http://127.0.0.1:9000", "https://*.example.org"]`; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Configuration the handler reads with `sluice_sdk::config::get` (`wasi:config/store`):
    /// a `[config]` table of string values. Secrets are set apart, through the API.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub config: std::collections::BTreeMap<String, String>,
}

/// Most `[config]` entries one function may have.
pub const MAX_CONFIG_ENTRIES: usize = 64;
/// Most bytes of `[config]` names and values together.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;

/// Most `key_weights` entries one function declares.
pub const MAX_KEY_WEIGHTS: usize = 1000;

/// Most subscriptions one function declares.
pub const MAX_SUBSCRIPTIONS: usize = 32;

/// A function's subscription to a topic: every matching event published there becomes a job of
/// the function (its own durable copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// Event types delivered: exact (`order.placed`) or a prefix ending in `*` (`order.*`);
    /// empty means every type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
}

impl Subscription {
    /// True when an event of `event_type` is delivered under this subscription.
    pub fn matches(&self, event_type: &str) -> bool {
        self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => t == event_type,
            })
    }
}

/// A function's validated settings, as stored and enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Most attempts of this function running at once.
    pub max_concurrency: u32,
    /// Wall-clock limit for one attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Limit on the sandbox's linear memory and tables, in MiB.
    pub memory_mb: u32,
    /// How failed attempts are retried.
    #[serde(flatten)]
    pub retry: RetryPolicy,
    /// Most unfinished jobs (queued, delayed, running); submits beyond it get 429.
    #[serde(default = "default_max_queued")]
    pub max_queued: u64,
    /// Most attempts started per second, evenly spaced; `None` means unlimited.
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// Most attempts of one concurrency key running at once; `None` means `max_concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_concurrency: Option<u32>,
    /// Most attempts of one concurrency key started per second; `None` means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rate_per_second: Option<u32>,
    /// How long a debounced submit waits for a newer one with the same key; `None`: the
    /// function takes no debounce keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
    /// The longest a burst of debounced submits delays a run; `None`: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce_max_ms: Option<u64>,
    /// Failed attempts in a row that open the circuit breaker; `None`: no breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_failures: Option<u32>,
    /// How long an open breaker holds starts back; `None`: 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_cooldown_ms: Option<u64>,
    /// Most events handed to `handle-batch` at once; `None`: one event per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_size: Option<u32>,
    /// How long a batch waits to fill up, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max_wait_ms: Option<u64>,
}

/// `batch = { max_size = 100, max_wait_ms = 200 }` in a manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Most events per batch (1 to 1000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
    /// How long a batch waits to fill up, in milliseconds (0 to 60000, default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
}

fn default_max_queued() -> u64 {
    Settings::DEFAULT.max_queued
}

impl Settings {
    /// Defaults for keys a manifest leaves out.
    pub const DEFAULT: Settings = Settings {
        max_concurrency: 8,
        timeout_ms: 30_000,
        memory_mb: 64,
        retry: RetryPolicy::DEFAULT,
        max_queued: 1_000_000,
        rate_per_second: None,
        key_concurrency: None,
        key_rate_per_second: None,
        debounce_ms: None,
        debounce_max_ms: None,
        breaker_failures: None,
        breaker_cooldown_ms: None,
        batch_max_size: None,
        batch_max_wait_ms: None,
    };

    /// How many unfinished jobs of one concurrency key the ready queue takes at once (the
    /// rest wait in the key's queue): `key_concurrency`, else `max_concurrency`.
    pub fn key_window(&self) -> u32 {
        self.key_concurrency.unwrap_or(self.max_concurrency).max(1)
    }
}

/// When a failed attempt is tried again: exponential backoff with full jitter, up to
/// `max_attempts` attempts in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts a job gets before it is dead (1 means no retries).
    pub max_attempts: u32,
    /// Upper bound of the first retry's delay, in milliseconds; it doubles per retry.
    pub backoff_base_ms: u64,
    /// Cap on a retry's delay, in milliseconds.
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    /// Five attempts; retries after up to 1 s, 2 s, 4 s, 8 s; never more than 5 minutes.
    pub const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        backoff_base_ms: 1_000,
        backoff_max_ms: 300_000,
    };

    /// Largest delay before retry number `retry` (0 for the first retry):
    /// `min(backoff_max_ms, backoff_base_ms * 2^retry)`.
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        let factor = 1u64.checked_shl(retry).unwrap_or(u64::MAX);
        self.backoff_base_ms
            .saturating_mul(factor)
            .min(self.backoff_max_ms)
    }

    /// The delay before retry number `retry`: uniform in `[0, ceiling_ms(retry)]` ("full
    /// jitter", so clients failing together do not retry together).
    pub fn delay_ms(&self, retry: u32, rng: &mut fastrand::Rng) -> u64 {
        rng.u64(0..=self.ceiling_ms(retry))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::DEFAULT
    }
}

/// Host-wide bounds a manifest must fit in.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Largest `max_concurrency` (the sandbox pool's size).
    pub max_concurrency: u32,
    /// Largest `timeout_ms`.
    pub max_timeout_ms: u64,
    /// Largest `memory_mb` (the pool's per-instance memory reservation).
    pub max_memory_mb: u32,
}

/// Why a manifest or name was refused; the message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// The TOML did not parse, or had an unknown key.
    #[error("invalid manifest: {0}")]
    Parse(String),
    /// The name does not match `^[a-z][a-z0-9-]{{0,62}}$`.
    #[error(
        "invalid function name {0:?}: use 1 to 63 characters, lowercase letters, digits and '-', starting with a letter"
    )]
    Name(String),
    /// The manifest's name and the deploy's name differ.
    #[error(
        "the manifest names the function {manifest:?} but the deploy names it {deploy:?}: make them agree"
    )]
    NameMismatch {
        /// Name in the manifest.
        manifest: String,
        /// Name the deploy used.
        deploy: String,
    },
    /// `batch` does not fit the component.
    #[error("invalid batch: {0}")]
    Batch(String),
    /// The `concurrency_key` rule is invalid.
    #[error("invalid concurrency_key: {0}")]
    ConcurrencyKey(String),
    /// A `[[schedule]]` entry is invalid.
    #[error("invalid schedule: {0}")]
    Schedule(String),
    /// `then` is invalid.
    #[error("invalid then: {0}")]
    Then(String),
    /// A `[[subscribe]]` entry is invalid.
    #[error("invalid subscription: {0}")]
    Subscription(String),
    /// The `[config]` table is invalid.
    #[error("invalid [config]: {0}")]
    Config(String),
    /// An `allowed_outbound_hosts` entry is invalid.
    #[error("invalid allowed_outbound_hosts: {0}")]
    OutboundHosts(String),
    /// A value is out of range.
    #[error("{key} = {value} is out of range: use {range}")]
    Range {
        /// The manifest key.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range.
        range: String,
    },
}

/// Checks a function name against `^[a-z][a-z0-9-]{0,62}$`.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Name(name.to_string()))
    }
}

impl Manifest {
    /// Parses `sluice.toml` text.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError::Parse(e.message().to_string()))
    }

    /// The manifest that gives exactly `settings` (to change some of them).
    pub fn from_settings(settings: &Settings) -> Manifest {
        Manifest {
            name: None,
            max_concurrency: Some(settings.max_concurrency),
            timeout_ms: Some(settings.timeout_ms),
            memory_mb: Some(settings.memory_mb),
            max_attempts: Some(settings.retry.max_attempts),
            backoff_base_ms: Some(settings.retry.backoff_base_ms),
            backoff_max_ms: Some(settings.retry.backoff_max_ms),
            max_queued: Some(settings.max_queued),
            rate_per_second: settings.rate_per_second,
            concurrency_key: None,
            key_concurrency: settings.key_concurrency,
            key_rate_per_second: settings.key_rate_per_second,
            key_weights: Default::default(),
            debounce_ms: settings.debounce_ms,
            debounce_max_ms: settings.debounce_max_ms,
            breaker_failures: settings.breaker_failures,
            breaker_cooldown_ms: settings.breaker_cooldown_ms,
            batch: settings.batch_max_size.map(|n| BatchSpec {
                max_size: Some(n),
                max_wait_ms: settings.batch_max_wait_ms,
            }),
            subscribe: Vec::new(),
            then: None,
            schedule: Vec::new(),
            allowed_outbound_hosts: Vec::new(),
            config: Default::default(),
        }
    }

    /// This manifest's keys laid over `base`: what it sets wins, what it leaves out (an unset
    /// key, an empty list or table) is `base`'s.
    pub fn over(&self, base: Manifest) -> Manifest {
        let pick_list = |mine: &Vec<String>, theirs: Vec<String>| {
            if mine.is_empty() {
                theirs
            } else {
                mine.clone()
            }
        };
        Manifest {
            name: self.name.clone().or(base.name),
            max_concurrency: self.max_concurrency.or(base.max_concurrency),
            timeout_ms: self.timeout_ms.or(base.timeout_ms),
            memory_mb: self.memory_mb.or(base.memory_mb),
            max_attempts: self.max_attempts.or(base.max_attempts),
            backoff_base_ms: self.backoff_base_ms.or(base.backoff_base_ms),
            backoff_max_ms: self.backoff_max_ms.or(base.backoff_max_ms),
            max_queued: self.max_queued.or(base.max_queued),
            rate_per_second: self.rate_per_second.or(base.rate_per_second),
            concurrency_key: self.concurrency_key.clone().or(base.concurrency_key),
            key_concurrency: self.key_concurrency.or(base.key_concurrency),
            key_rate_per_second: self.key_rate_per_second.or(base.key_rate_per_second),
            key_weights: if self.key_weights.is_empty() {
                base.key_weights
            } else {
                self.key_weights.clone()
            },
            debounce_ms: self.debounce_ms.or(base.debounce_ms),
            debounce_max_ms: self.debounce_max_ms.or(base.debounce_max_ms),
            breaker_failures: self.breaker_failures.or(base.breaker_failures),
            breaker_cooldown_ms: self.breaker_cooldown_ms.or(base.breaker_cooldown_ms),
            batch: self.batch.or(base.batch),
            subscribe: if self.subscribe.is_empty() {
                base.subscribe
            } else {
                self.subscribe.clone()
            },
            then: self.then.clone().or(base.then),
            schedule: if self.schedule.is_empty() {
                base.schedule
            } else {
                self.schedule.clone()
            },
            allowed_outbound_hosts: pick_list(
                &self.allowed_outbound_hosts,
                base.allowed_outbound_hosts,
            ),
            config: if self.config.is_empty() {
                base.config
            } else {
                self.config.clone()
            },
        }
    }

    /// Validates the `[config]` table and returns it.
    pub fn config(&self) -> Result<std::collections::BTreeMap<String, String>, ManifestError> {
        if self.config.len() > MAX_CONFIG_ENTRIES {
            return Err(ManifestError::Config(format!(
                "{} entries: a function may have at most {MAX_CONFIG_ENTRIES}",
                self.config.len()
            )));
        }
        let mut bytes = 0;
        for (name, value) in &self.config {
            crate::vault::validate_name(name).map_err(ManifestError::Config)?;
            bytes += name.len() + value.len();
        }
        if bytes > MAX_CONFIG_BYTES {
            return Err(ManifestError::Config(format!(
                "{bytes} bytes of names and values: at most {MAX_CONFIG_BYTES} (keep large data out of the manifest)"
            )));
        }
        Ok(self.config.clone())
    }

    /// Validates `allowed_outbound_hosts` and returns the entries normalised.
    pub fn allowed_outbound_hosts(&self) -> Result<Vec<String>, ManifestError> {
        crate::runtime::outbound::allowed::validate(&self.allowed_outbound_hosts)
            .map_err(ManifestError::OutboundHosts)
    }

    /// Validates `then` (the pipeline's next function) for a function named `name`.
    pub fn then(&self, name: &str) -> Result<Option<String>, ManifestError> {
        match &self.then {
            None => Ok(None),
            Some(next) if next == name => Err(ManifestError::Then(format!(
                "then = {next:?} names the function itself: a pipeline stage cannot loop"
            ))),
            Some(next) => {
                validate_name(next).map_err(|e| ManifestError::Then(e.to_string()))?;
                Ok(Some(next.clone()))
            }
        }
    }

    /// Validates the `[[subscribe]]` entries and returns them.
    pub fn subscriptions(&self) -> Result<Vec<Subscription>, ManifestError> {
        if self.subscribe.len() > MAX_SUBSCRIPTIONS {
            return Err(ManifestError::Subscription(format!(
                "{} subscriptions: a function may have at most {MAX_SUBSCRIPTIONS}",
                self.subscribe.len()
            )));
        }
        let mut topics = std::collections::HashSet::new();
        for sub in &self.subscribe {
            crate::event::validate_topic(&sub.topic).map_err(ManifestError::Subscription)?;
            if !topics.insert(sub.topic.as_str()) {
                return Err(ManifestError::Subscription(format!(
                    "topic {:?} is subscribed twice: list all its types in one [[subscribe]]",
                    sub.topic
                )));
            }
            for t in &sub.types {
                let star = t.find('*');
                if t.is_empty() || t.len() > 256 || star.is_some_and(|i| i != t.len() - 1) {
                    return Err(ManifestError::Subscription(format!(
                        "type filter {t:?} of topic {:?}: use an exact type (order.placed) or a prefix ending in * (order.*)",
                        sub.topic
                    )));
                }
            }
        }
        Ok(self.subscribe.clone())
    }

    /// Validates `key_weights` and returns them.
    pub fn key_weights(&self) -> Result<std::collections::BTreeMap<String, u32>, ManifestError> {
        if self.key_weights.len() > MAX_KEY_WEIGHTS {
            return Err(ManifestError::ConcurrencyKey(format!(
                "key_weights has {} entries: at most {MAX_KEY_WEIGHTS}",
                self.key_weights.len()
            )));
        }
        for (key, weight) in &self.key_weights {
            if !crate::flow::valid_key(key) {
                return Err(ManifestError::ConcurrencyKey(format!(
                    "key_weights: {key:?} is not a concurrency key (1 to {} visible characters)",
                    crate::flow::MAX_KEY_LEN
                )));
            }
            check("key_weights", u64::from(*weight), 1, 100)?;
        }
        Ok(self.key_weights.clone())
    }

    /// Validates the `[[schedule]]` entries and returns them.
    pub fn schedules(&self) -> Result<Vec<crate::schedule::Schedule>, ManifestError> {
        if self.schedule.len() > crate::schedule::MAX_SCHEDULES {
            return Err(ManifestError::Schedule(format!(
                "{} entries: a function may have at most {}",
                self.schedule.len(),
                crate::schedule::MAX_SCHEDULES
            )));
        }
        for s in &self.schedule {
            s.validate().map_err(ManifestError::Schedule)?;
        }
        Ok(self.schedule.clone())
    }

    /// Renders the manifest as TOML (what `sluice deploy` sends).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    /// Validates the manifest for a deploy named `name` and returns the settings to enforce.
    pub fn validate(&self, name: &str, bounds: &Bounds) -> Result<Settings, ManifestError> {
        validate_name(name)?;
        if let Some(manifest) = &self.name
            && manifest != name
        {
            return Err(ManifestError::NameMismatch {
                manifest: manifest.clone(),
                deploy: name.to_string(),
            });
        }
        let d = Settings::DEFAULT;
        let settings = Settings {
            max_concurrency: self
                .max_concurrency
                .unwrap_or(d.max_concurrency.min(bounds.max_concurrency)),
            timeout_ms: self
                .timeout_ms
                .unwrap_or(d.timeout_ms.min(bounds.max_timeout_ms)),
            memory_mb: self
                .memory_mb
                .unwrap_or(d.memory_mb.min(bounds.max_memory_mb)),
            retry: RetryPolicy {
                max_attempts: self.max_attempts.unwrap_or(d.retry.max_attempts),
                backoff_base_ms: self.backoff_base_ms.unwrap_or(d.retry.backoff_base_ms),
                backoff_max_ms: self.backoff_max_ms.unwrap_or(d.retry.backoff_max_ms),
            },
            max_queued: self.max_queued.unwrap_or(d.max_queued),
            rate_per_second: self.rate_per_second,
            key_concurrency: self.key_concurrency,
            key_rate_per_second: self.key_rate_per_second,
            debounce_ms: self.debounce_ms,
            debounce_max_ms: self.debounce_max_ms,
            breaker_failures: self.breaker_failures,
            breaker_cooldown_ms: self.breaker_cooldown_ms,
            batch_max_size: self.batch.map(|b| b.max_size.unwrap_or(100)),
            batch_max_wait_ms: self.batch.map(|b| b.max_wait_ms.unwrap_or(200)),
        };
        check(
            "max_concurrency",
            settings.max_concurrency.into(),
            1,
            bounds.max_concurrency.into(),
        )?;
        check("timeout_ms", settings.timeout_ms, 1, bounds.max_timeout_ms)?;
        check(
            "memory_mb",
            settings.memory_mb.into(),
            1,
            bounds.max_memory_mb.into(),
        )?;
        check("max_queued", settings.max_queued, 1, 100_000_000)?;
        if let Some(rate) = settings.rate_per_second {
            check("rate_per_second", rate.into(), 1, 1_000_000)?;
        }
        if let Some(n) = settings.key_concurrency {
            check("key_concurrency", n.into(), 1, bounds.max_concurrency.into())?;
        }
        if let Some(rate) = settings.key_rate_per_second {
            check("key_rate_per_second", rate.into(), 1, 1_000_000)?;
        }
        if let Some(wait) = settings.debounce_ms {
            check("debounce_ms", wait, 1, 86_400_000)?;
        }
        if let Some(max) = settings.debounce_max_ms {
            let Some(wait) = settings.debounce_ms else {
                return Err(ManifestError::Range {
                    key: "debounce_max_ms",
                    value: max,
                    range: "it only with debounce_ms".into(),
                });
            };
            check("debounce_max_ms", max, wait, 86_400_000)?;
        }
        if let Some(n) = settings.batch_max_size {
            check("batch.max_size", n.into(), 1, 1000)?;
        }
        if let Some(ms) = settings.batch_max_wait_ms {
            check("batch.max_wait_ms", ms, 0, 60_000)?;
        }
        if let Some(n) = settings.breaker_failures {
            check("breaker_failures", n.into(), 1, 10_000)?;
        }
        if let Some(ms) = settings.breaker_cooldown_ms {
            check("breaker_cooldown_ms", ms, 1, 86_400_000)?;
        }
        if let Some(rule) = &self.concurrency_key {
            rule.validate().map_err(ManifestError::ConcurrencyKey)?;
        }
        let retry = settings.retry;
        check("max_attempts", retry.max_attempts.into(), 1, 100)?;
        check("backoff_base_ms", retry.backoff_base_ms, 1, 86_400_000)?;
        check(
            "backoff_max_ms",
            retry.backoff_max_ms,
            retry.backoff_base_ms,
            86_400_000,
        )?;
        Ok(settings)
    }
}

fn check(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ManifestError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ManifestError::Range {
            key,
            value,
            range: format!("{min} to {max}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_concurrency: 100,
        max_timeout_ms: 60_000,
        max_memory_mb: 256,
    };

    /// Names follow `^[a-z][a-z0-9-]{0,62}$` exactly.
    /// A manifest with every kind of key survives being sent as TOML (what `sluice deploy`
    /// does): tables and arrays of tables after plain keys, whatever the field order.
    #[test]
    fn every_key_survives_the_round_trip() {
        let text = r#"
name = "notify"
max_concurrency = 2
allowed_outbound_hosts = ["https://hooks.example.com", "http://127.0.0.1:9000"]
then = "next"
concurrency_key = { json = "/tenant" }
key_concurrency = 2
[[subscribe]]
topic = "deploys"
types = ["deploy.*"]
[config]
url = "https://hooks.example.com/x"
"#;
        let m = Manifest::from_toml(text).unwrap();
        let again = Manifest::from_toml(&m.to_toml()).unwrap();
        assert_eq!(again.allowed_outbound_hosts, m.allowed_outbound_hosts);
        assert_eq!(again.config, m.config);
        assert_eq!(again.subscribe, m.subscribe);
        assert_eq!(again.then.as_deref(), Some("next"));
        assert_eq!(again.concurrency_key, Some(crate::flow::KeyRule::Json("/tenant".into())));
        assert_eq!(again.key_concurrency, Some(2));
        assert_eq!(
            again.config().unwrap()["url"],
            "https://hooks.example.com/x"
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "echo", "order-total", "a1-2", &"a".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1a", "-a", "Echo", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    /// Unknown keys and out-of-range values are refused with the key's name.
    #[test]
    fn validation() {
        let err = Manifest::from_toml("name = \"x\"\nretries = 3").unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
        let m = Manifest::from_toml("max_concurrency = 0").unwrap();
        assert!(
            m.validate("x", &BOUNDS)
                .unwrap_err()
                .to_string()
                .contains("max_concurrency")
        );
        let m = Manifest::from_toml("name = \"y\"").unwrap();
        assert!(matches!(
            m.validate("x", &BOUNDS),
            Err(ManifestError::NameMismatch { .. })
        ));
        let m = Manifest::from_toml("memory_mb = 16\ntimeout_ms = 100").unwrap();
        let s = m.validate("x", &BOUNDS).unwrap();
        assert_eq!((s.memory_mb, s.timeout_ms, s.max_concurrency), (16, 100, 8));
        assert_eq!(s.retry, RetryPolicy::DEFAULT);
        let m = Manifest::from_toml("backoff_base_ms = 500\nbackoff_max_ms = 100").unwrap();
        let err = m.validate("x", &BOUNDS).unwrap_err().to_string();
        assert!(err.contains("backoff_max_ms"), "{err}");
    }

    /// Every delay lies in `[0, min(max, base * 2^n)]`, and the draws spread over that range.
    #[test]
    fn backoff_draws_stay_within_their_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 30,
            backoff_base_ms: 100,
            backoff_max_ms: 60_000,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 0..30 {
            let ceiling = (100u64 << retry.min(40)).min(60_000);
            assert_eq!(policy.ceiling_ms(retry), ceiling);
            let draws: Vec<u64> = (0..1000)
                .map(|_| policy.delay_ms(retry, &mut rng))
                .collect();
            assert!(draws.iter().all(|&d| d <= ceiling), "retry {retry}");
            // Full jitter: both halves of the range are used.
            assert!(draws.iter().any(|&d| d < ceiling / 2), "retry {retry}");
            assert!(draws.iter().any(|&d| d > ceiling / 2), "retry {retry}");
        }
        // Huge retry numbers saturate at the cap instead of overflowing.
        assert_eq!(policy.ceiling_ms(200), 60_000);
    }
}
