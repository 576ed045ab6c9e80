//! The function's key-value state (`wasi:keyvalue` on its one bucket), durable and private to
//! the function.
//!
//! ```ignore
//! let visits = sluice_sdk::kv::increment("visits", 1)?;
//! sluice_sdk::kv::set("last-visitor", ev.data())?;
//! ```
//!
//! Reads see what is committed plus this attempt's own writes. Writes are staged and committed
//! only with the handler's success, together with a check that no key it read was changed by
//! another attempt in the meantime; if one was, nothing is kept and the job runs again on fresh
//! state (it does not count as a failed attempt). So a read-modify-write is never lost, and a
//! failed or timed-out attempt changes nothing.

use std::cell::OnceCell;

use crate::__private::bindings::wasi::keyvalue::{atomics, store};
use crate::Error;

thread_local! {
    static BUCKET: OnceCell<store::Bucket> = const { OnceCell::new() };
}

fn with_bucket<T>(f: impl FnOnce(&store::Bucket) -> Result<T, store::Error>) -> Result<T, Error> {
    BUCKET.with(|cell| {
        if cell.get().is_none() {
            let bucket = store::open("default").map_err(describe)?;
            let _ = cell.set(bucket);
        }
        f(cell.get().expect("opened above")).map_err(describe)
    })
}

fn describe(e: store::Error) -> Error {
    match e {
        store::Error::NoSuchStore => {
            Error::permanent("the host has no key-value store for this function")
        }
        store::Error::AccessDenied => Error::permanent("key-value access denied"),
        store::Error::Other(m) => Error::retryable(format!("key-value: {m}")),
    }
}

/// The value of `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    with_bucket(|b| b.get(key))
}

/// The value of `key` parsed as JSON, if any.
pub fn get_json<T: serde::de::DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match get(key)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::permanent(format!("key {key:?} does not hold the JSON expected: {e}"))
        }),
        None => Ok(None),
    }
}

/// Sets `key` to `value` (committed with the handler's success).
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
    with_bucket(|b| b.set(key, value.as_ref()))
}

/// Sets `key` to `value` as JSON.
pub fn set_json<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<(), Error> {
    set(key, serde_json::to_vec(value)?)
}

/// Deletes `key` (committed with the handler's success).
pub fn delete(key: &str) -> Result<(), Error> {
    with_bucket(|b| b.delete(key))
}

/// True when `key` has a value.
pub fn exists(key: &str) -> Result<bool, Error> {
    with_bucket(|b| b.exists(key))
}

/// Every key, in order.
pub fn keys() -> Result<Vec<String>, Error> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = with_bucket(|b| b.list_keys(cursor))?;
        all.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// Adds `delta` to the number held by `key` (decimal text; absent counts as 0) and returns
/// the new value.
pub fn increment(key: &str, delta: u64) -> Result<u64, Error> {
    with_bucket(|b| atomics::increment(b, key, delta))
}
