//! `counter`: increments a static counter and returns it. Every job gets a fresh sandbox, so the
//! answer is always 1: no state leaks from one event to the next.
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_sdk::{Error, Event, Response, handler};

static CALLS: AtomicU64 = AtomicU64::new(0);

#[handler]
fn handle(_ev: Event) -> Result<Response, Error> {
    let calls = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    Response::json(&sluice_sdk::serde_json::json!({ "calls": calls }))
}
