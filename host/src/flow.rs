//! Flow control by key: which concurrency key a job has.
//!
//! A job's concurrency key comes from the `Sluice-Concurrency-Key` header of its submit, or
//! else from its function's rule (`concurrency_key = { header = "x-tenant" }` or
//! `{ json = "/tenant" }` in `sluice.toml`). Jobs of one key run at most `key_concurrency`
//! at once, start at most `key_rate_per_second`, and keys take turns: the store lets only a
//! key's first `key_concurrency` unfinished jobs into the ready queue (the rest wait in the
//! key's own queue, see `store::keys`), so a key with 100,000 jobs queued holds a few places
//! in it, not all of them.

use http::HeaderMap;
use serde::{Deserialize, Serialize};

/// Longest concurrency key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Where a function's jobs take their concurrency key from when the submit names none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyRule {
    /// A header of the submit request, e.g. `x-tenant`.
    Header(String),
    /// A JSON pointer into a JSON input, e.g. `/customer/tenant`: a string is the key itself,
    /// a number or boolean its JSON text.
    Json(String),
}

impl KeyRule {
    /// Checks the rule: a valid header name, or a JSON pointer (`/a/b`).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            KeyRule::Header(name) => http::HeaderName::from_bytes(name.as_bytes())
                .map(|_| ())
                .map_err(|_| format!("{name:?} is not a header name")),
            KeyRule::Json(pointer) if pointer.starts_with('/') && pointer.len() <= 512 => Ok(()),
            KeyRule::Json(pointer) => Err(format!(
                "{pointer:?} is not a JSON pointer: start it with / (e.g. /tenant)"
            )),
        }
    }

    /// The key this rule finds in a submit's headers (a header rule) or its input (a JSON
    /// rule); `None` when it finds none (the job then has no key).
    pub fn key_of(&self, headers: Option<&HeaderMap>, input: &[u8]) -> Option<String> {
        let key = match self {
            KeyRule::Header(name) => headers?.get(name.as_str())?.to_str().ok()?.to_string(),
            KeyRule::Json(pointer) => {
                let value: serde_json::Value = serde_json::from_slice(input).ok()?;
                match value.pointer(pointer)? {
                    serde_json::Value::String(s) => s.clone(),
                    v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => v.to_string(),
                    _ => return None,
                }
            }
        };
        valid_key(&key).then_some(key)
    }
}

/// A key is 1 to [`MAX_KEY_LEN`] bytes without control characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && !key.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_find_keys_in_headers_and_json() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        let header = KeyRule::Header("x-tenant".into());
        assert_eq!(header.key_of(Some(&headers), b"{}").as_deref(), Some("acme"));
        assert_eq!(header.key_of(None, b"{}"), None);
        let json = KeyRule::Json("/customer/tenant".into());
        let input = br#"{"customer":{"tenant":"globex"}}"#;
        assert_eq!(json.key_of(None, input).as_deref(), Some("globex"));
        assert_eq!(json.key_of(None, br#"{"customer":{"tenant":42}}"#).as_deref(), Some("42"));
        assert_eq!(json.key_of(None, br#"{"customer":{}}"#), None);
        assert_eq!(json.key_of(None, b"not json"), None);
        assert_eq!(json.key_of(None, br#"{"customer":{"tenant":""}}"#), None);
        assert!(KeyRule::Json("tenant".into()).validate().is_err());
        assert!(KeyRule::Header("bad header".into()).validate().is_err());
        assert!(json.validate().is_ok() && header.validate().is_ok());
    }

    #[test]
    fn a_rule_reads_from_toml() {
        #[derive(Deserialize)]
        struct M {
            concurrency_key: KeyRule,
        }
        let m: M = toml::from_str("concurrency_key = { json = \"/tenant\" }").unwrap();
        assert_eq!(m.concurrency_key, KeyRule::Json("/tenant".into()));
        let m: M = toml::from_str("concurrency_key = { header = \"x-tenant\" }").unwrap();
        assert_eq!(m.concurrency_key, KeyRule::Header("x-tenant".into()));
    }
}
