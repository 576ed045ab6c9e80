//! Answers with the SHA-256 and size of its payload, read in pieces with `ev.reader()`: a
//! payload far larger than the function's memory limit streams through it.

use std::io::Read;

use sha2::{Digest, Sha256};
use sluice_sdk::serde_json::json;
use sluice_sdk::{Error, Event, Response, handler};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let mut reader = ev.reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::retryable(format!("cannot read the payload: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Response::json(&json!({ "sha256": digest, "bytes": total, "large": ev.is_large() }))
}
