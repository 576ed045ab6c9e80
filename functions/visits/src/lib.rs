//! `visits`: counts visits in the function's key-value state. Each job is one visit; its input
//! is the visitor's name (optional). It reads the total, adds one and writes it back (a plain
//! read-modify-write: concurrent attempts that read the same total are caught by the host,
//! and the later one runs again on fresh state, so no visit is lost), and keeps a count per
//! visitor with `increment`. Answers `{"visits": total, "yours": per_visitor}`.
use sluice_sdk::serde_json::json;
use sluice_sdk::{Error, Event, Response, handler, kv};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let total = match kv::get("visits")? {
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .parse::<u64>()
            .map_err(|e| Error::permanent(format!("visits holds no number: {e}")))?,
        None => 0,
    } + 1;
    kv::set("visits", total.to_string())?;
    let visitor = ev.text().unwrap_or("").trim();
    let yours = if visitor.is_empty() {
        None
    } else {
        Some(kv::increment(&format!("visitor/{visitor}"), 1)?)
    };
    Response::json(&json!({ "visits": total, "yours": yours }))
}
