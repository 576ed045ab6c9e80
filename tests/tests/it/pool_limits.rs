//! A component's shape is bounded per sandbox: one with more core instances, memories or
//! tables than a sandbox may hold is refused at deploy, and `memory_mb` is the budget of all
//! its memories together. So no handler can take the pool's slots from other functions.
//!
//! The components here are hand-written (WAT): no Rust handler has several memories.

use serde_json::{Value, json};
use sluice_tests::{TestHost, assert_error, components, start_host_with, test_config};

/// A handler component of `sluice:platform/handler` whose main module calls into
/// `extra` more core instances, each with a memory of its own. Each call grows the main memory
/// by `grow_pages` and the first extra memory by as much (trapping if either is refused), then
/// spins `spin` iterations, and answers an empty success.
fn handler(extra: usize, grow_pages: u32, spin: u32) -> Vec<u8> {
    let mut instances = String::new();
    for i in 0..extra {
        instances.push_str(&format!("(core instance $x{i} (instantiate $extra))\n"));
    }
    let grow_other = if extra > 0 {
        "(core instance $main (instantiate $main (with \"other\" (instance $x0))))\n".to_string()
    } else {
        "(core instance $lone (instantiate $extra))\n\
         (core instance $main (instantiate $main (with \"other\" (instance $lone))))\n"
            .to_string()
    };
    let wat = format!(
        r#"(component
  (core module $extra
    (memory 1)
    (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))
  (core module $main
    (import "other" "grow" (func $grow_other (param i32) (result i32)))
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32) (local $end i32)
      ;; Bump allocation: align up, then grow the memory if the end is past it.
      global.get $bump local.get 2 i32.add i32.const 1 i32.sub
      i32.const 0 local.get 2 i32.sub i32.and local.tee $p
      local.get 3 i32.add local.tee $end global.set $bump
      (block $fits
        local.get $end memory.size i32.const 65536 i32.mul i32.le_u br_if $fits
        local.get $end i32.const 65535 i32.add i32.const 16 i32.shr_u
        memory.size i32.sub memory.grow i32.const -1 i32.eq if unreachable end)
      local.get $p)
    (func (export "handle") (param i32) (result i32)
      (local $n i32)
      i32.const {grow_pages} memory.grow i32.const -1 i32.eq if unreachable end
      i32.const {grow_pages} call $grow_other i32.const -1 i32.eq if unreachable end
      (loop $spin
        local.get $n i32.const 1 i32.add local.tee $n i32.const {spin} i32.lt_u br_if $spin)
      ;; The result area at 0..24 is zero: ok, empty data, no content type.
      i32.const 0))
  {instances}{grow_other}
  (type $blob-ref (record (field "digest" string) (field "size" u64)))
  (export $blob-ref-e "blob-ref" (type $blob-ref))
  (type $payload (variant (case "inline" (list u8)) (case "blob" $blob-ref-e)))
  (export $payload-e "payload" (type $payload))
  (type $event (record
    (field "id" string) (field "source" string) (field "type" string)
    (field "subject" (option string)) (field "time" (option string))
    (field "content-type" (option string)) (field "dataschema" (option string))
    (field "extensions" (list (tuple string string))) (field "attempt" u32)
    (field "correlation-id" string) (field "data" $payload-e)))
  (export $event-e "event" (type $event))
  (type $response (record (field "data" (list u8)) (field "content-type" (option string))))
  (export $response-e "response" (type $response))
  (type $handler-error (variant (case "retryable" string) (case "permanent" string)))
  (export $handler-error-e "handler-error" (type $handler-error))
  (type $handle (func (param "event" $event-e) (result (result $response-e (error $handler-error-e)))))
  (func $handle (type $handle)
    (canon lift (core func $main "handle") (memory (core memory $main "memory"))
      (realloc (core func $main "cabi_realloc"))))
  (export "handle" (func $handle)))"#
    );
    wat::parse_str(&wat).expect("the test's WAT is valid")
}

async fn deploy(host: &TestHost, name: &str, wasm: Vec<u8>, settings: &str) -> (u16, Value) {
    host.deploy_raw(name, wasm, settings).await
}

/// A component with more core instances or memories than a sandbox may hold is refused at
/// deploy, naming the limit and the flag that sets it; one at the limits deploys and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_wider_than_a_sandbox_is_refused_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host_with(test_config(dir.path())).await;

    // 21 core instances (the default limit is 20), each with a memory.
    let (status, body) = deploy(&host, "wide", handler(20, 0, 0), "").await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_component");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-core-instances"), "{message}");
    assert!(message.contains("core instances"), "{message}");
    assert_eq!(host.get("/v1/functions/wide").await.0, 404);

    // Four memories (the main one and three more) are the default limit; five are refused.
    let (status, body) = deploy(&host, "wide", handler(4, 0, 0), "").await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_component");
    let (status, body) = deploy(&host, "wide", handler(3, 0, 0), "max_attempts=1").await;
    assert_eq!(status, 201, "{body}");
    let job = host
        .wait(&host.submit("wide", "x", "text/plain").await)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// `memory_mb` bounds the sandbox, not each memory: two memories of 12 MiB do not run under
/// 16 MiB, and do under 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_mb_is_the_budget_of_every_memory_together() {
    let dir = tempfile::tempdir().unwrap();
    let host = start_host_with(test_config(dir.path())).await;
    // 192 pages: 12 MiB in each of two memories.
    let (status, body) = deploy(
        &host,
        "two",
        handler(1, 192, 0),
        "memory_mb=16&max_attempts=1",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let job = host
        .wait(&host.submit("two", "x", "text/plain").await)
        .await;
    assert_eq!(job["status"], "dead", "{job}");
    let e = job["attempt_history"][0]["error"].as_str().unwrap();
    assert!(e.contains("memory limit of 16 MiB exceeded"), "{e}");
    assert!(e.contains("memories and tables"), "{e}");

    let r = host
        .http
        .patch(host.url("/v1/functions/two"))
        .json(&json!({"memory_mb": 32}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job = host
        .wait(&host.submit("two", "x", "text/plain").await)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// The pool holds `--max-instances` sandboxes of the widest component allowed: sandboxes at
/// the limits, running side by side with other functions, never find it full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_at_the_limits_never_exhaust_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_instances = 3;
    let host = start_host_with(config).await;
    // Four memories each, spinning a while so that attempts overlap.
    let (status, body) = deploy(
        &host,
        "wide",
        handler(3, 0, 20_000_000),
        "max_concurrency=3&max_attempts=1",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    host.deploy("echo", components::ECHO, "max_attempts=1")
        .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(host.submit("wide", "x", "text/plain").await);
        ids.push(host.submit("echo", format!("e{i}"), "text/plain").await);
    }
    for id in ids {
        let job = host.wait(&id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}
