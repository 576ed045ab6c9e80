//! Standard Webhooks signatures: `webhook-id`, `webhook-timestamp` and `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by a `whsec_...` secret. During a
//! rotation the previous secret signs too (space-separated signatures), so receivers can move to
//! the new one at their own pace.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Prefix of a Standard Webhooks secret.
const PREFIX: &str = "whsec_";

/// How long the previous secret keeps signing after a rotation.
pub const ROTATION_OVERLAP_MS: u64 = 24 * 3600 * 1000;

/// The host's signing secrets, as stored in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Signs every callback.
    pub current: String,
    /// The one before the last rotation, still signing until `previous_until`.
    pub previous: Option<String>,
    /// When the previous secret stops signing (ms since the Unix epoch).
    pub previous_until: Option<u64>,
}

impl SecretRecord {
    /// A new record with a fresh random secret.
    pub fn generate() -> SecretRecord {
        SecretRecord {
            current: new_secret(),
            previous: None,
            previous_until: None,
        }
    }

    /// The record after a rotation at `now`: a new current secret, the old one signing on for
    /// [`ROTATION_OVERLAP_MS`].
    pub fn rotated(&self, now: u64) -> SecretRecord {
        SecretRecord {
            current: new_secret(),
            previous: Some(self.current.clone()),
            previous_until: Some(now + ROTATION_OVERLAP_MS),
        }
    }
}

/// The host setting the signing secrets are stored under.
const SETTING: &str = "webhook_secrets";

impl SecretRecord {
    /// The stored secrets, generated and stored the first time.
    pub async fn load(
        store: &dyn crate::store::Backend,
    ) -> Result<SecretRecord, crate::store::StoreError> {
        let initial = serde_json::to_vec(&SecretRecord::generate()).expect("a record serialises");
        let stored = store.setting_or_init(SETTING, initial).await?;
        serde_json::from_slice(&stored).map_err(|e| {
            crate::store::StoreError::Storage(format!(
                "the stored webhook secrets do not decode: {e}"
            ))
        })
    }

    /// Stores these secrets (a rotation).
    pub async fn save(
        &self,
        store: &dyn crate::store::Backend,
    ) -> Result<(), crate::store::StoreError> {
        let json = serde_json::to_vec(self).expect("a record serialises");
        store.set_setting(SETTING, json).await
    }
}

/// A fresh `whsec_` secret: 32 random bytes from the OS.
fn new_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the OS random source works");
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// The key bytes of a `whsec_` secret.
fn key_of(secret: &str) -> Vec<u8> {
    STANDARD
        .decode(secret.strip_prefix(PREFIX).unwrap_or(secret))
        .unwrap_or_else(|_| secret.as_bytes().to_vec())
}

/// The secrets in force, shared by the API (which shows and rotates them) and the sender.
#[derive(Debug)]
pub struct Secrets(RwLock<SecretRecord>);

impl Secrets {
    /// Secrets from their stored record.
    pub fn new(record: SecretRecord) -> Secrets {
        Secrets(RwLock::new(record))
    }

    /// The stored record.
    pub fn record(&self) -> SecretRecord {
        self.0.read().clone()
    }

    /// Replaces the record (after it was stored).
    pub fn set(&self, record: SecretRecord) {
        *self.0.write() = record;
    }

    /// The `webhook-signature` header value for a message at `now`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8], now: u64) -> String {
        let record = self.0.read();
        let mut keys = vec![key_of(&record.current)];
        if let (Some(previous), Some(until)) = (&record.previous, record.previous_until)
            && now < until
        {
            keys.push(key_of(previous));
        }
        keys.iter()
            .map(|key| {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}
