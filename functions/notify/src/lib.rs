//! `notify`: posts each job's text as `{"text": ...}` to a chat-style webhook. The URL is the
//! manifest's `[config] url`; a secret named `token`, when set, goes out as a bearer token.
//! A 5xx or 429 answer fails the attempt retryably (the retry carries the same
//! `Idempotency-Key`, so a receiver that honours it posts once); a 4xx fails it for good.
use std::time::Duration;

use sluice_sdk::serde_json::json;
use sluice_sdk::{Error, Event, Response, config, handler, http};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let url = config::get("url")?.ok_or_else(|| {
        Error::permanent("no url: set `url` in the [config] table of sluice.toml")
    })?;
    let mut request = http::Request::post(&url)
        .json(&json!({ "text": ev.text()? }))?
        .timeout(Duration::from_secs(5));
    if let Some(token) = config::get("token")? {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let answer = request.send()?.error_for_status()?;
    Response::json(&json!({ "delivered": true, "status": answer.status() }))
}
