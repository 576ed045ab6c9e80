//! `probe`: pokes at the sandbox and misbehaves on request, so tests (and curious users) can see
//! what a handler can and cannot do. Input is JSON `{"action": ..., ...}`:
//!
//! - `{"action":"read_file","path":"/etc/hostname"}`: tries to read a host file.
//! - `{"action":"env","name":"HOME"}`: tries to read an environment variable.
//! - `{"action":"connect","addr":"127.0.0.1:8080"}`: tries to open a TCP connection.
//! - `{"action":"sleep","ms":200}`: sleeps, then answers (for concurrency and timeouts).
//! - `{"action":"spin","ms":200}`: burns CPU without yielding (for epoch interruption).
//! - `{"action":"panic"}`, `{"action":"print","text":"..."}`, `{"action":"fail","retryable":true}`.
//!
//! Hostile handlers, to show no handler can hurt the host or other functions:
//! - `{"action":"loop"}`: an endless loop that never calls the host (stopped by epochs).
//! - `{"action":"alloc","mb":1000}`: a memory bomb, 1 MiB at a time, every page touched.
//! - `{"action":"recurse","depth":1000000}`: recursion deep enough to exhaust the stack.
//! - `{"action":"flood","mb":8}`: that much text to stdout and stderr.
//! - `{"action":"emit","topic":"t","fail_until":3}`: publishes `probe.emitted` to the topic and
//!   enqueues an `inspect` job, then fails (retryable) until attempt 3.
//! - `{"action":"produce","mb":40}`: streams a 40 MiB output out with `OutputWriter`.
//! - `{"action":"read_blob","digest":"..."}`: asks the host for any blob by digest.
//! - `{"action":"fanout","function":"echo","n":1000}`: enqueues `n` empty jobs in one attempt.
//! - `{"action":"chain","function":"probe"}`: enqueues itself to `function`, forever.
//! - `{"action":"http","url":"http://127.0.0.1:9000/x","method":"POST","body":"hi","n":2,
//!   "timeout_ms":500,"headers":[["idempotency-key","mine"]]}`: sends the request `n` times
//!   (default 1) and answers the statuses and the last body, or the first error.
//! - `{"action":"config","name":"token"}`: reads a configuration value or secret.
//! - `{"action":"kv_set","key":"k","value":"v","fail":true}`: sets a key in the function's
//!   key-value state, reads it back, then fails (retryable) when asked.
//! - `{"action":"kv_get","key":"k"}`: reads a key.
//! - `{"action":"kv_add","key":"n","ms":200}`: adds one to a counter (get, then set), then
//!   sleeps `ms` before succeeding: an attempt that is mid-flight for a while.
//! - `{"action":"step","key":"a","seq":3,"ms":20}`: logs and answers `a 3 START END` (ms since
//!   the epoch), sleeping `ms` in between: for ordering tests.
//!
//! Each sandbox probe answers `{"ok": bool, "detail": "..."}` instead of failing, so the test sees
//! the exact error the sandbox gave.
use std::io::Read;
use std::time::{Duration, Instant};

use sluice_sdk::serde::Deserialize;
use sluice_sdk::serde_json::json;
use sluice_sdk::{Error, Event, Response, handler};

#[derive(Deserialize)]
#[serde(crate = "sluice_sdk::serde", tag = "action", rename_all = "snake_case")]
enum Action {
    ReadFile {
        path: String,
    },
    Env {
        name: String,
    },
    Connect {
        addr: String,
    },
    Sleep {
        ms: u64,
    },
    Spin {
        ms: u64,
    },
    Panic,
    Print {
        text: String,
    },
    Fail {
        retryable: bool,
    },
    Loop,
    Alloc {
        mb: Option<u64>,
    },
    Recurse {
        depth: u64,
    },
    Flood {
        mb: u64,
    },
    Step {
        key: String,
        seq: u64,
        ms: u64,
    },
    Emit {
        topic: String,
        fail_until: u32,
    },
    Produce {
        mb: u64,
    },
    ReadBlob {
        digest: String,
    },
    Fanout {
        function: String,
        n: u32,
    },
    Chain {
        function: String,
    },
    Config {
        name: String,
    },
    KvSet {
        key: String,
        value: String,
        #[serde(default)]
        fail: bool,
    },
    KvGet {
        key: String,
    },
    KvAdd {
        key: String,
        ms: u64,
    },
    Http {
        url: String,
        method: Option<String>,
        body: Option<String>,
        n: Option<u32>,
        timeout_ms: Option<u64>,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
}

/// Wall-clock ms since the Unix epoch, as the guest sees it.
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Counts down through `depth` real stack frames (`black_box` keeps it from becoming a loop).
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    let frame = std::hint::black_box([depth; 4]);
    1 + recurse(std::hint::black_box(depth - 1)) + frame[3] % 2
}

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let outcome = match ev.json::<Action>()? {
        Action::ReadFile { path } => std::fs::File::open(&path)
            .and_then(|mut f| {
                let mut s = String::new();
                f.read_to_string(&mut s).map(|_| s)
            })
            .map_err(|e| e.to_string()),
        Action::Env { name } => std::env::var(&name).map_err(|e| e.to_string()),
        Action::Connect { addr } => std::net::TcpStream::connect(&addr)
            .map(|_| "connected".into())
            .map_err(|e| e.to_string()),
        Action::Sleep { ms } => {
            std::thread::sleep(Duration::from_millis(ms));
            Ok(format!("slept {ms} ms"))
        }
        Action::Spin { ms } => {
            let start = Instant::now();
            let mut x: u64 = 0;
            while start.elapsed() < Duration::from_millis(ms) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            Ok(format!("spun {ms} ms ({x})"))
        }
        Action::Panic => panic!("probe was asked to panic"),
        Action::Print { text } => {
            print!("{text}");
            eprintln!("to stderr");
            Ok("printed".into())
        }
        Action::Loop => {
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Action::Alloc { mb } => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            for i in 0..mb.unwrap_or(u64::MAX) {
                held.push(vec![(i % 251) as u8; 1 << 20]);
            }
            Ok(format!("allocated {} MiB", held.len()))
        }
        Action::Recurse { depth } => Ok(format!("recursed {}", recurse(depth))),
        Action::Flood { mb } => {
            let line = "flood ".repeat(170) + "\n";
            let lines = (mb << 20) / line.len() as u64;
            for _ in 0..lines {
                print!("{line}");
                eprint!("{line}");
            }
            Ok(format!("flooded {mb} MiB"))
        }
        Action::Step { key, seq, ms } => {
            let start = now_ms();
            std::thread::sleep(Duration::from_millis(ms));
            let line = format!("{key} {seq} {start} {}", now_ms());
            println!("step {line}");
            Ok(line)
        }
        Action::Emit { topic, fail_until } => {
            // Emits first, then fails until the given attempt: only the success's emit counts.
            let attempt = ev.attempt();
            sluice_sdk::publish_json(&topic, "probe.emitted", &json!({ "attempt": attempt }))?;
            sluice_sdk::enqueue_json("inspect", &json!({ "from_attempt": attempt }))?;
            if attempt < fail_until {
                return Err(Error::retryable(format!(
                    "attempt {attempt} fails after emitting"
                )));
            }
            Ok(format!("emitted on attempt {attempt}"))
        }
        Action::Produce { mb } => {
            // Streams `mb` MiB out (byte i is i % 251) without ever holding it.
            use std::io::Write;
            let mut out = sluice_sdk::OutputWriter::new();
            let piece: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
            for _ in 0..mb {
                out.write_all(&piece)
                    .map_err(|e| Error::retryable(e.to_string()))?;
            }
            return out
                .finish("application/octet-stream")
                .map_err(|e| Error::retryable(e.to_string()));
        }
        Action::ReadBlob { digest } => {
            // Asks the host for a blob by digest, as a handler that learnt one might.
            use sluice_sdk::__private::bindings::sluice::platform::payload;
            payload::read_blob(&digest, 0, 16).map(|b| format!("read {} bytes", b.len()))
        }
        Action::Fanout { function, n } => {
            // Enqueues `n` empty jobs for `function` in one attempt.
            for i in 0..n {
                sluice_sdk::enqueue(&function, Vec::new(), None)
                    .map_err(|e| Error::retryable(format!("enqueue {i} refused: {e}")))?;
            }
            Ok(format!("enqueued {n}"))
        }
        Action::Chain { function } => {
            // Enqueues itself again: a chain that never ends on its own.
            sluice_sdk::enqueue_json(
                &function,
                &json!({ "action": "chain", "function": function }),
            )?;
            Ok("chained".into())
        }
        Action::KvSet { key, value, fail } => {
            sluice_sdk::kv::set(&key, &value)?;
            let seen = sluice_sdk::kv::get(&key)?.unwrap_or_default();
            if fail {
                return Err(Error::retryable("probe failed after writing"));
            }
            Ok(format!("set {key} = {}", String::from_utf8_lossy(&seen)))
        }
        Action::KvAdd { key, ms } => {
            let n = sluice_sdk::kv::get(&key)?
                .and_then(|v| String::from_utf8_lossy(&v).parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            sluice_sdk::kv::set(&key, n.to_string())?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(format!("{key} = {n}"))
        }
        Action::KvGet { key } => match sluice_sdk::kv::get(&key)? {
            Some(value) => Ok(String::from_utf8_lossy(&value).into_owned()),
            None => Err(format!("{key} is not set")),
        },
        Action::Config { name } => match sluice_sdk::config::get(&name)? {
            Some(value) => Ok(value),
            None => Err(format!("{name} is not set")),
        },
        Action::Http {
            url,
            method,
            body,
            n,
            timeout_ms,
            headers,
        } => {
            use sluice_sdk::http::{Method, Request};
            let method = match method.as_deref().unwrap_or("GET") {
                "POST" => Method::Post,
                "PUT" => Method::Put,
                "DELETE" => Method::Delete,
                _ => Method::Get,
            };
            let mut statuses = Vec::new();
            let mut last = String::new();
            let mut failure = None;
            for _ in 0..n.unwrap_or(1) {
                let mut request = Request::new(method.clone(), &url);
                for (name, value) in &headers {
                    request = request.header(name, value);
                }
                if let Some(body) = &body {
                    request = request.body(body.as_bytes());
                }
                if let Some(ms) = timeout_ms {
                    request = request.timeout(Duration::from_millis(ms));
                }
                match request.send() {
                    Ok(response) => {
                        statuses.push(response.status());
                        last = response.text();
                    }
                    Err(e) => {
                        failure = Some(format!("{e} (denied: {})", e.is_denied()));
                        break;
                    }
                }
            }
            match failure {
                Some(e) => Err(format!("{statuses:?} then {e}")),
                None => Ok(format!("{statuses:?} {last}")),
            }
        }
        Action::Fail { retryable: true } => {
            println!("attempt {} fails on purpose", ev.attempt());
            return Err(Error::retryable("probe failed on purpose"));
        }
        Action::Fail { retryable: false } => {
            println!("attempt {} fails on purpose", ev.attempt());
            return Err(Error::permanent("probe failed on purpose"));
        }
    };
    let body = match outcome {
        Ok(detail) => json!({ "ok": true, "detail": detail }),
        Err(detail) => json!({ "ok": false, "detail": detail }),
    };
    Ok(body.into())
}
