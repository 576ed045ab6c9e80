//! The API's description: OpenAPI 3.1 at `GET /v1/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` attributes and the shapes below (the JSON each route answers; every field
//! a route adds is listed, and objects may grow new fields). Every operation also answers the
//! errors of [`common_errors`] (added to each by [`Common`]) and takes a bearer token when the
//! host has tokens.
//!
//! The shapes are descriptions, never built: the handlers answer `serde_json` values. The test
//! `tests/it/openapi.rs` checks the document with an independent validator and fuzzes a running
//! host against it (schemathesis), which catches a shape that drifts from what a route sends.
#![allow(dead_code)]

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error: a stable `code` and a message saying what to do.
#[derive(ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, for programs (`function_not_found`, `queue_full`, ...).
    code: String,
    /// For people.
    message: String,
}

/// A job's status.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Queued,
    Delayed,
    Running,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
    Superseded,
}

/// A submit's answer.
#[derive(ToSchema)]
pub(crate) struct Accepted {
    id: String,
    status: Status,
}

/// A job.
#[derive(ToSchema)]
pub(crate) struct Job {
    id: String,
    function: String,
    status: Status,
    attempts: u32,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    correlation_id: String,
    input_content_type: Option<String>,
    output_content_type: Option<String>,
    input_size: u64,
    /// `null` until it has an output.
    output_size: Option<u64>,
    output_url: Option<String>,
    error: Option<String>,
    not_before: Option<String>,
    lease_until: Option<String>,
    priority: u8,
    ordering_key: Option<String>,
    concurrency_key: Option<String>,
    debounce_key: Option<String>,
    /// The job that replaced it (status `superseded`).
    superseded_by: Option<String>,
    version: Option<u32>,
    /// `{"kind": "event" | "job", "id": ...}`; `null` for a request.
    parent: Option<Value>,
    hops: u32,
    kv_conflicts: u32,
    callback: Option<Value>,
    event: Option<Value>,
    attempt_history: Vec<Attempt>,
    /// Only on `GET /v1/jobs/{id}`: the output when at most 64 KiB of UTF-8.
    output: Option<String>,
    /// Only on `GET /v1/jobs/{id}`.
    log: Option<String>,
    /// Only on `GET /v1/jobs/{id}`: the input's first 2 KiB as text.
    input_preview: Option<String>,
    /// A pipeline's stages (on its head) or head (on a later stage).
    pipeline: Option<Value>,
}

/// One attempt of a job.
#[derive(ToSchema)]
pub(crate) struct Attempt {
    attempt: u32,
    version: u32,
    started_at: String,
    finished_at: String,
    error: Option<String>,
    retry_at: Option<String>,
    log: String,
    outbound: Vec<Value>,
}

/// A page of jobs, newest first.
#[derive(ToSchema)]
pub(crate) struct JobPage {
    jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; `null` when done.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// Every job and event of a correlation id.
#[derive(ToSchema)]
pub(crate) struct Correlated {
    correlation_id: String,
    jobs: Vec<Job>,
    events: Vec<Event>,
}

/// `GET /v1/jobs`: a page of jobs, or with `correlation_id` everything of that id.
#[derive(ToSchema)]
#[serde(untagged)]
pub(crate) enum JobListing {
    Page(JobPage),
    Correlated(Correlated),
}

/// A publish's answer: one event's, or a batch's.
#[derive(ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishAnswer {
    One(Published),
    Batch(PublishedBatch),
}

/// A page of dead letters, newest first.
#[derive(ToSchema)]
pub(crate) struct DeadLetterPage {
    dead_letters: Vec<Job>,
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// Which dead letters: some ids, or all.
#[derive(ToSchema)]
pub(crate) struct Selection {
    ids: Option<Vec<String>>,
    all: Option<bool>,
}

#[derive(ToSchema)]
pub(crate) struct Redriven {
    redriven: Vec<String>,
}

#[derive(ToSchema)]
pub(crate) struct Purged {
    purged: Vec<String>,
}

/// A batch submit's answer: one entry per job, in order.
#[derive(ToSchema)]
pub(crate) struct BatchAccepted {
    jobs: Vec<Accepted>,
}

/// A deployed function, its settings and its current version.
#[derive(ToSchema)]
pub(crate) struct Function {
    name: String,
    version: u32,
    change: String,
    changes: Value,
    paused: bool,
    digest: String,
    size: u64,
    deployed_at: String,
    max_concurrency: u32,
    timeout_ms: u64,
    memory_mb: u32,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    max_queued: u64,
    rate_per_second: Option<u32>,
    key_concurrency: Option<u32>,
    key_rate_per_second: Option<u32>,
    /// `{"header": NAME}` or `{"json": POINTER}`: where jobs take their concurrency key from.
    concurrency_key: Option<Value>,
    /// Weights of concurrency keys: `{"premium": 4}`.
    key_weights: Value,
    debounce_ms: Option<u64>,
    debounce_max_ms: Option<u64>,
    breaker_failures: Option<u32>,
    breaker_cooldown_ms: Option<u64>,
    /// `{"max_size", "max_wait_ms"}` when it takes batches.
    batch: Option<Value>,
    subscriptions: Value,
    /// Its cron triggers: `[{"cron", "timezone", "data", "catch_up"}]`.
    schedules: Value,
    then: Option<String>,
    allowed_outbound_hosts: Vec<String>,
    config: Value,
    jobs_url: String,
    pending_jobs: Option<u64>,
}

#[derive(ToSchema)]
pub(crate) struct FunctionList {
    functions: Vec<Function>,
}

/// A function's figures now.
#[derive(ToSchema)]
pub(crate) struct Stats {
    function: String,
    version: u32,
    paused: bool,
    queued: u64,
    delayed: u64,
    running: u64,
    succeeded: u64,
    failed: u64,
    dead: u64,
    cancelled: u64,
    superseded: u64,
    oldest_queued_age_ms: Option<u64>,
    queued_bytes: u64,
    max_queued: u64,
    max_concurrency: u32,
    rate_per_second: Option<u32>,
    /// The function's circuit breaker on the host answering (`null`: not loaded here).
    circuit_breaker: Option<CircuitBreaker>,
    recent: Recent,
}

/// A circuit breaker's state on the host answering.
#[derive(ToSchema)]
pub(crate) struct CircuitBreaker {
    /// `off` (no `breaker_failures`), `closed`, `open` or `half_open`.
    state: String,
    /// Failed attempts in a row (the threshold, once open).
    consecutive_failures: u32,
    /// When open: milliseconds until the probe may start.
    probe_in_ms: Option<u64>,
    /// Times it opened since the host started.
    opened_total: u64,
    last_opened_at: Option<String>,
}

/// Outcomes over the last minutes (sampled every 5 s by the host answering).
#[derive(ToSchema)]
pub(crate) struct Recent {
    seconds: u64,
    succeeded_per_minute: Option<f64>,
    failed_per_minute: Option<f64>,
    error_rate: Option<f64>,
    per_minute: Vec<Value>,
}

#[derive(ToSchema)]
pub(crate) struct Versions {
    function: String,
    current: u32,
    versions: Vec<Value>,
}

#[derive(ToSchema)]
pub(crate) struct Deleted {
    deleted: String,
    cancelled_jobs: Vec<String>,
}

#[derive(ToSchema)]
pub(crate) struct SecretNames {
    function: String,
    secrets: Vec<Value>,
}

#[derive(ToSchema)]
pub(crate) struct SecretStored {
    function: String,
    secret: String,
    stored: bool,
}

#[derive(ToSchema)]
pub(crate) struct SecretDeleted {
    function: String,
    deleted: String,
}

/// The webhook signing secret.
#[derive(ToSchema)]
pub(crate) struct SigningSecret {
    secret: String,
    previous: Option<String>,
    previous_signs_until: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct KvKeys {
    function: String,
    keys: Vec<String>,
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct KvStored {
    function: String,
    key: String,
    size: u64,
}

#[derive(ToSchema)]
pub(crate) struct KvDeleted {
    function: String,
    deleted: String,
}

/// What a publish did with one event.
#[derive(ToSchema)]
pub(crate) struct Published {
    event_id: String,
    deliveries: Vec<Delivery>,
}

#[derive(ToSchema)]
pub(crate) struct Delivery {
    function: String,
    job_id: String,
}

/// A batch publish's answer.
#[derive(ToSchema)]
pub(crate) struct PublishedBatch {
    events: Vec<Published>,
}

/// A published event's record.
#[derive(ToSchema)]
pub(crate) struct Event {
    event_id: String,
    topic: String,
    id: String,
    source: String,
    #[schema(rename = "type")]
    event_type: String,
    subject: Option<String>,
    time: Option<String>,
    dataschema: Option<String>,
    datacontenttype: Option<String>,
    extensions: Value,
    size: u64,
    correlation_id: String,
    parent: Option<Value>,
    published_at: String,
    deliveries: Vec<Delivery>,
}

/// One cron trigger.
#[derive(ToSchema)]
pub(crate) struct ScheduleEntry {
    function: String,
    /// Its place among the function's `[[schedule]]` entries.
    index: u32,
    cron: String,
    timezone: String,
    /// `none`, `one` or `all`.
    catch_up: String,
    data: Value,
    paused: bool,
    next_fire_at: Option<String>,
    /// The last fire this host made (or when it first saw the entry).
    last_fire_at: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct Schedules {
    schedules: Vec<ScheduleEntry>,
}

#[derive(ToSchema)]
pub(crate) struct Topics {
    topics: Vec<Value>,
}

#[derive(ToSchema)]
pub(crate) struct Topic {
    topic: String,
    subscriptions: Vec<Value>,
}

/// One Server-Sent Event: its name and its data (JSON: a `Job` for `status`, a `Stats` for
/// `stats`, `{"function", "deleted"}` for `end`).
#[derive(ToSchema)]
pub(crate) struct ServerSentEvent {
    event: String,
    data: String,
}

/// A deploy as a form: the component and, optionally, its manifest (`sluice.toml`).
#[derive(ToSchema)]
pub(crate) struct DeployForm {
    #[schema(content_media_type = "application/wasm")]
    component: Vec<u8>,
    manifest: Option<String>,
}

#[derive(ToSchema)]
pub(crate) struct Health {
    status: String,
}

/// The API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        description = "A WebAssembly-hosted serverless event platform: deploy handlers, submit jobs, publish events. See docs/api.md.",
    ),
    paths(
        super::health,
        super::functions::list, super::functions::deploy, super::functions::show,
        super::functions::configure, super::functions::delete, super::functions::stats,
        super::streams::function_events,
        super::lifecycle::versions, super::lifecycle::rollback, super::lifecycle::pause,
        super::lifecycle::resume,
        super::kv::list, super::kv::get, super::kv::put, super::kv::delete,
        super::function_secrets::list, super::function_secrets::put, super::function_secrets::delete,
        super::jobs::submit, super::batch::submit_batch, super::jobs::list, super::jobs::show,
        super::jobs::cancel, super::jobs::output, super::streams::job_events,
        super::dead_letters::list, super::dead_letters::redrive, super::dead_letters::purge,
        super::schedules::list,
        super::topics::list, super::topics::show, super::topics::publish, super::topics::show_event,
        super::secret::show, super::secret::rotate,
        super::metrics::render, openapi_json,
    ),
    modifiers(&Common),
)]
pub(crate) struct ApiDoc;

/// Adds what every operation has: the bearer token and the errors any route may answer.
struct Common;

/// The errors any operation may answer.
fn common_errors() -> Vec<(&'static str, RefOr<Response>)> {
    let error = |description: &str| -> RefOr<Response> {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into()
    };
    vec![
        ("400", error("Bad input: the message says what to send instead")),
        ("401", error("No token, or an unknown one (with tokens configured)")),
        ("403", error("The token's scopes do not allow this, or a console change without its CSRF header")),
        ("404", error("No such route, function, job or other resource")),
        ("405", error("The route exists but not with this method")),
        ("413", error("The body is over the host's limit")),
        ("503", error("The host is stopping, overloaded or its store is unavailable: retry after Retry-After")),
    ]
}

impl Modify for Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (name, schema) in [
            ("ErrorBody", <ErrorBody as utoipa::PartialSchema>::schema()),
            ("ErrorDetail", <ErrorDetail as utoipa::PartialSchema>::schema()),
            ("DeployForm", <DeployForm as utoipa::PartialSchema>::schema()),
        ] {
            components.schemas.entry(name.to_string()).or_insert(schema);
        }
        let security = vec![
            utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
            utoipa::openapi::security::SecurityRequirement::default(),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ] {
                let Some(operation) = operation else { continue };
                // A deploy also comes as a form, or as plain bytes.
                if method == "put" && path == "/v1/functions/{name}"
                    && let Some(body) = operation.request_body.as_mut()
                {
                    body.content.insert(
                        "multipart/form-data".into(),
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("DeployForm")))
                            .build(),
                    );
                    if let Some(wasm) = body.content.get("application/wasm").cloned() {
                        body.content.insert("application/octet-stream".into(), wasm);
                    }
                }
                // Unique ids from the method and path (handlers in several modules share
                // names: `list`, `show`): `get_v1_functions_name_dead_letters`.
                let words: Vec<String> = path
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|w| !w.is_empty())
                    .map(str::to_string)
                    .collect();
                operation.operation_id = Some(format!("{method}_{}", words.join("_")));
                for (status, response) in common_errors() {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(response);
                }
                operation.security = Some(security.clone());
            }
        }
    }
}

/// `GET /v1/openapi.json`: this description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router serves (read from its source) is described, with every method.
    #[test]
    fn every_route_is_described() {
        let doc = ApiDoc::openapi();
        // Without whitespace: `.route("/v1/x",get(a).post(b))`.
        let source: String = include_str!("mod.rs")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let mut routes = 0;
        for part in source.split(".route(\"").skip(1) {
            let path = part.split('"').next().unwrap().replace("{*", "{");
            let call = part.split(".route(").next().unwrap();
            let item = doc
                .paths
                .paths
                .get(&path)
                .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
            for (method, described) in [
                ("get(", item.get.is_some()),
                ("put(", item.put.is_some()),
                ("post(", item.post.is_some()),
                ("patch(", item.patch.is_some()),
                ("delete(", item.delete.is_some()),
            ] {
                let served =
                    call.contains(&format!(",{method}")) || call.contains(&format!(".{method}"));
                assert_eq!(served, described, "{method} {path}: served {served}, described {described}");
            }
            routes += 1;
        }
        assert!(routes >= 30, "only {routes} routes found in the router's source");
        assert_eq!(doc.paths.paths.len(), routes, "a described path the router does not serve");
    }
}
