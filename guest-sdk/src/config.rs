//! The function's configuration: its manifest's `[config]` values and the secrets set for it
//! through the API (a secret wins over a value of the same name), read through the standard
//! `wasi:config/store`.
//!
//! ```ignore
//! let url = sluice_sdk::config::get("url")?.ok_or(Error::permanent("no url configured"))?;
//! let token = sluice_sdk::config::get("token")?; // a secret: PUT /v1/functions/{name}/secrets/token
//! ```

use crate::__private::bindings::wasi::config::store;
use crate::Error;

/// The value of `name`, or `None` when neither the manifest nor a secret sets it.
pub fn get(name: &str) -> Result<Option<String>, Error> {
    store::get(name).map_err(describe)
}

/// Every name and value the function can read.
pub fn get_all() -> Result<Vec<(String, String)>, Error> {
    store::get_all().map_err(describe)
}

fn describe(e: store::Error) -> Error {
    match e {
        store::Error::Upstream(m) | store::Error::Io(m) => {
            Error::retryable(format!("reading configuration failed: {m}"))
        }
    }
}
