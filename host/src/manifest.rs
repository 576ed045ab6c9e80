//! A function's manifest (`sluice.toml`): its name and limits, parsed and validated once.
//!
//! The same validation serves `sluice deploy` (before anything is sent) and the deploy endpoint
//! (whatever a client sends), so a bad setting is refused with the same message everywhere.

use serde::{Deserialize, Serialize};

/// Longest function name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// A function manifest as written in `sluice.toml`. Unknown keys are an error.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The function's name; defaults to the name the deploy gives.
    pub name: Option<String>,
    /// Most attempts of this function running at once.
    pub max_concurrency: Option<u32>,
    /// Wall-clock limit for one attempt, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Limit on the sandbox's linear memory and tables, in MiB.
    pub memory_mb: Option<u32>,
}

/// A function's validated settings, as stored and enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Most attempts of this function running at once.
    pub max_concurrency: u32,
    /// Wall-clock limit for one attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Limit on the sandbox's linear memory and tables, in MiB.
    pub memory_mb: u32,
}

impl Settings {
    /// Defaults for keys a manifest leaves out.
    pub const DEFAULT: Settings = Settings {
        max_concurrency: 8,
        timeout_ms: 30_000,
        memory_mb: 64,
    };
}

/// Host-wide bounds a manifest must fit in.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Largest `max_concurrency` (the sandbox pool's size).
    pub max_concurrency: u32,
    /// Largest `timeout_ms`.
    pub max_timeout_ms: u64,
    /// Largest `memory_mb` (the pool's per-instance memory reservation).
    pub max_memory_mb: u32,
}

/// Why a manifest or name was refused; the message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// The TOML did not parse, or had an unknown key.
    #[error("invalid manifest: {0}")]
    Parse(String),
    /// The name does not match `^[a-z][a-z0-9-]{{0,62}}$`.
    #[error(
        "invalid function name {0:?}: use 1 to 63 characters, lowercase letters, digits and '-', starting with a letter"
    )]
    Name(String),
    /// The manifest's name and the deploy's name differ.
    #[error(
        "the manifest names the function {manifest:?} but the deploy names it {deploy:?}: make them agree"
    )]
    NameMismatch {
        /// Name in the manifest.
        manifest: String,
        /// Name the deploy used.
        deploy: String,
    },
    /// A value is out of range.
    #[error("{key} = {value} is out of range: use {range}")]
    Range {
        /// The manifest key.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range.
        range: String,
    },
}

/// Checks a function name against `^[a-z][a-z0-9-]{0,62}$`.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Name(name.to_string()))
    }
}

impl Manifest {
    /// Parses `sluice.toml` text.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        toml::from_str(text).map_err(|e| ManifestError::Parse(e.message().to_string()))
    }

    /// Renders the manifest as TOML (what `sluice deploy` sends).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    /// Validates the manifest for a deploy named `name` and returns the settings to enforce.
    pub fn validate(&self, name: &str, bounds: &Bounds) -> Result<Settings, ManifestError> {
        validate_name(name)?;
        if let Some(manifest) = &self.name
            && manifest != name
        {
            return Err(ManifestError::NameMismatch {
                manifest: manifest.clone(),
                deploy: name.to_string(),
            });
        }
        let d = Settings::DEFAULT;
        let settings = Settings {
            max_concurrency: self
                .max_concurrency
                .unwrap_or(d.max_concurrency.min(bounds.max_concurrency)),
            timeout_ms: self
                .timeout_ms
                .unwrap_or(d.timeout_ms.min(bounds.max_timeout_ms)),
            memory_mb: self
                .memory_mb
                .unwrap_or(d.memory_mb.min(bounds.max_memory_mb)),
        };
        check(
            "max_concurrency",
            settings.max_concurrency.into(),
            1,
            bounds.max_concurrency.into(),
        )?;
        check("timeout_ms", settings.timeout_ms, 1, bounds.max_timeout_ms)?;
        check(
            "memory_mb",
            settings.memory_mb.into(),
            1,
            bounds.max_memory_mb.into(),
        )?;
        Ok(settings)
    }
}

fn check(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ManifestError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ManifestError::Range {
            key,
            value,
            range: format!("{min} to {max} on this host"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_concurrency: 100,
        max_timeout_ms: 60_000,
        max_memory_mb: 256,
    };

    /// Names follow `^[a-z][a-z0-9-]{0,62}$` exactly.
    #[test]
    fn names() {
        for ok in ["a", "echo", "order-total", "a1-2", &"a".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1a", "-a", "Echo", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    /// Unknown keys and out-of-range values are refused with the key's name.
    #[test]
    fn validation() {
        let err = Manifest::from_toml("name = \"x\"\nretries = 3").unwrap_err();
        assert!(err.to_string().contains("retries"), "{err}");
        let m = Manifest::from_toml("max_concurrency = 0").unwrap();
        assert!(
            m.validate("x", &BOUNDS)
                .unwrap_err()
                .to_string()
                .contains("max_concurrency")
        );
        let m = Manifest::from_toml("name = \"y\"").unwrap();
        assert!(matches!(
            m.validate("x", &BOUNDS),
            Err(ManifestError::NameMismatch { .. })
        ));
        let m = Manifest::from_toml("memory_mb = 16\ntimeout_ms = 100").unwrap();
        let s = m.validate("x", &BOUNDS).unwrap();
        assert_eq!((s.memory_mb, s.timeout_ms, s.max_concurrency), (16, 100, 8));
    }
}
