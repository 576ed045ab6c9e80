//! API tokens and their scopes: who may call what.
//!
//! - `admin`: everything, including deploy, delete, settings, pause, rollback, dead-letter
//!   redrive and purge, secrets, and the webhook secret.
//! - `submit`: submit jobs, publish events, cancel and read jobs and events.
//! - `read`: read jobs, events, functions, topics, stats, dead letters and metrics.
//!
//! Tokens are configured on the host (`--tokens`/`SLUICE_TOKENS`, `--token-file`) as
//! `SCOPES=TOKEN` entries (`admin=...`, `submit+read=...`). Only their SHA-256 is kept; a
//! presented token is hashed and compared with every configured one in constant time, and
//! tokens are never logged. Which route needs which scope is the API's (`api::auth`).

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    admin: bool,
    submit: bool,
    read: bool,
}

impl Scopes {
    /// Parses `admin`, `submit`, `read` joined with `+`.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut s = Scopes::default();
        for part in text.split('+') {
            match part.trim() {
                "admin" => s.admin = true,
                "submit" => s.submit = true,
                "read" => s.read = true,
                other => {
                    return Err(format!(
                        "unknown scope {other:?}: use admin, submit or read (joined with +)"
                    ));
                }
            }
        }
        Ok(s)
    }

    /// True when these scopes may do what `need` names.
    pub fn allows(self, need: Need) -> bool {
        self.admin
            || match need {
                Need::Open => true,
                Need::ReadJobs => self.submit || self.read,
                Need::Read => self.read,
                Need::Submit => self.submit,
                Need::Admin => false,
            }
    }

    /// The scopes' names, joined with `+`.
    pub fn names(self) -> String {
        let mut out = Vec::new();
        if self.admin {
            out.push("admin");
        }
        if self.submit {
            out.push("submit");
        }
        if self.read {
            out.push("read");
        }
        out.join("+")
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Nothing: anyone.
    Open,
    /// The read scope.
    Read,
    /// The read or the submit scope (jobs and events).
    ReadJobs,
    /// The submit scope.
    Submit,
    /// The admin scope.
    Admin,
}

impl Need {
    /// What it needs, in words.
    pub fn name(self) -> &'static str {
        match self {
            Need::Open => "nothing",
            Need::Read => "read (or admin)",
            Need::ReadJobs => "read or submit (or admin)",
            Need::Submit => "submit (or admin)",
            Need::Admin => "admin",
        }
    }
}

/// The configured tokens (their hashes and scopes).
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<([u8; 32], Scopes)>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Parses `SCOPES=TOKEN` entries (blank entries and `#` comments are skipped).
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Tokens, String> {
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (scopes, token) = entry.split_once('=').ok_or(
                "a token entry is SCOPES=TOKEN, e.g. admin=... or submit+read=... (the token itself is not shown)",
            )?;
            let token = token.trim();
            if token.len() < 16 {
                return Err(format!(
                    "a token for {scopes} is shorter than 16 characters: use a long random one"
                ));
            }
            out.push((
                Sha256::digest(token.as_bytes()).into(),
                Scopes::parse(scopes)?,
            ));
        }
        Ok(Tokens(Arc::new(out)))
    }

    /// Reads entries from a file, one per line.
    pub fn from_file(path: &std::path::Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        Tokens::parse(text.lines())
    }

    /// These and `other`'s entries together.
    pub fn merged(&self, other: &Tokens) -> Tokens {
        let mut all = (*self.0).clone();
        all.extend(other.0.iter().copied());
        Tokens(Arc::new(all))
    }

    /// True when no token is configured (an open API).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes of a presented token, comparing with every entry in constant time.
    pub fn scopes_of(&self, presented: &str) -> Option<Scopes> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (known, scopes) in self.0.iter() {
            let diff = known
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(*scopes);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_parsed_and_matched() {
        let t = Tokens::parse([
            "admin=aaaaaaaaaaaaaaaaaaaa",
            "submit+read=bbbbbbbbbbbbbbbbbbbb",
        ])
        .unwrap();
        assert_eq!(
            t.scopes_of("aaaaaaaaaaaaaaaaaaaa"),
            Some(Scopes::parse("admin").unwrap())
        );
        assert_eq!(t.scopes_of("nope"), None);
        assert!(Tokens::parse(["admin=short"]).is_err());
        assert!(Tokens::parse(["owner=aaaaaaaaaaaaaaaaaaaa"]).is_err());
        assert_eq!(format!("{t:?}"), "Tokens(2 configured)");
    }
}
