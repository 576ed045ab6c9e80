//! Function secrets at rest: each value is sealed with the host's secrets key
//! (ChaCha20-Poly1305, a fresh random nonce per value, the function and secret names as
//! associated data) before it reaches the store, and opened only to hand it to a sandbox. The
//! key lives in its own file (`--secrets-key-file`), so a copy of the data directory alone
//! does not reveal the secrets when the key is kept elsewhere.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Bytes of a nonce, stored before each sealed value.
const NONCE: usize = 12;

/// Longest secret name.
pub const MAX_NAME: usize = 128;
/// Largest secret value, in bytes.
pub const MAX_VALUE: usize = 64 << 10;
/// Most secrets one function may have.
pub const MAX_SECRETS: usize = 64;

/// Seals and opens function secrets with the host's key.
pub struct Vault {
    cipher: ChaCha20Poly1305,
    /// Where the key is, for error messages.
    path: PathBuf,
}

/// Why the secrets key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("secrets key {path}: {message}")]
pub struct VaultError {
    path: String,
    message: String,
}

impl Vault {
    /// Opens the key at `path` (64 hex digits), creating a new random one (mode 0600) when the
    /// file does not exist.
    pub fn open(path: &Path) -> Result<Vault, VaultError> {
        let fail = |message: String| VaultError {
            path: path.display().to_string(),
            message,
        };
        let key = match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key).map_err(|_| {
                    fail("is not a secrets key (64 hex digits): restore the original key file, or point --secrets-key-file at it".into())
                })?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| fail(format!("no randomness: {e}")))?;
                write_new_key(path, &key).map_err(|e| fail(format!("cannot create it: {e}")))?;
                key
            }
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        };
        Ok(Vault {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            path: path.to_path_buf(),
        })
    }

    /// Seals `value` as secret `name` of `function`.
    pub fn seal(&self, function: &str, name: &str, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).expect("the OS provides randomness");
        let aad = associated(function, name);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .expect("sealing in memory cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Vault::seal`] sealed for the same function and name.
    pub fn open_value(
        &self,
        function: &str,
        name: &str,
        sealed: &[u8],
    ) -> Result<String, VaultError> {
        let fail = || VaultError {
            path: self.path.display().to_string(),
            message: format!(
                "cannot open secret {name:?} of function {function:?}: it was sealed with another key; start the host with the key that sealed it (--secrets-key-file), or set the secret again"
            ),
        };
        if sealed.len() < NONCE {
            return Err(fail());
        }
        let (nonce, body) = sealed.split_at(NONCE);
        let aad = associated(function, name);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// The associated data binding a sealed value to its place: it cannot be moved to another
/// function or name.
fn associated(function: &str, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(function.len() + name.len() + 1);
    aad.extend_from_slice(function.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

fn write_new_key(path: &Path, key: &[u8; 32]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(hex::encode(key).as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Checks a secret's (or a `[config]` key's) name: 1 to [`MAX_NAME`] letters, digits, `_`,
/// `-` and `.`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1 to {MAX_NAME} letters, digits, '_', '-' and '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_place_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secrets.key");
        let vault = Vault::open(&path).unwrap();
        let sealed = vault.seal("notify", "token", b"s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            vault.open_value("notify", "token", &sealed).unwrap(),
            "s3cret"
        );
        assert!(vault.open_value("other", "token", &sealed).is_err());
        assert!(vault.open_value("notify", "other", &sealed).is_err());
        // The same key file opens it again; another key does not.
        let again = Vault::open(&path).unwrap();
        assert_eq!(
            again.open_value("notify", "token", &sealed).unwrap(),
            "s3cret"
        );
        let other = Vault::open(&dir.path().join("other.key")).unwrap();
        let e = other.open_value("notify", "token", &sealed).unwrap_err();
        assert!(e.to_string().contains("--secrets-key-file"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "nope").unwrap();
        assert!(Vault::open(&path).is_err());
    }
}
