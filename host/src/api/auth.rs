//! API tokens and their scopes: who may call what.
//!
//! - `admin`: everything, including deploy, delete, settings, pause, rollback, dead-letter
//!   redrive and purge, and the webhook secret.
//! - `submit`: submit jobs, publish events, cancel and read jobs and events.
//! - `read`: read jobs, events, functions, topics, stats, dead letters and metrics.
//!
//! Tokens are configured on the host (`--tokens`/`SLUICE_TOKENS`, `--token-file`) as
//! `SCOPES=TOKEN` entries (`admin=...`, `submit+read=...`). Only their SHA-256 is kept; a
//! presented token is hashed and compared with every configured one in constant time, and
//! tokens are never logged. With no token configured the API is open, and the host refuses to
//! listen anywhere but loopback.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    admin: bool,
    submit: bool,
    read: bool,
}

impl Scopes {
    fn parse(text: &str) -> Result<Scopes, String> {
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

    fn allows(self, need: Need) -> bool {
        self.admin
            || match need {
                Need::Open => true,
                Need::ReadJobs => self.submit || self.read,
                Need::Read => self.read,
                Need::Submit => self.submit,
                Need::Admin => false,
            }
    }

    fn names(self) -> String {
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

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Open,
    Read,
    ReadJobs,
    Submit,
    Admin,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Open => "nothing",
            Need::Read => "read (or admin)",
            Need::ReadJobs => "read or submit (or admin)",
            Need::Submit => "submit (or admin)",
            Need::Admin => "admin",
        }
    }
}

/// The scope a request needs, from its method and route.
fn need(method: &Method, route: &str) -> Need {
    let read = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/healthz" => Need::Open,
        "/v1/functions/{name}/jobs" | "/v1/functions/{name}/jobs:batch" => Need::Submit,
        "/v1/topics/{topic}/events" => Need::Submit,
        "/v1/jobs/{id}" if *method == Method::DELETE => Need::Submit,
        "/v1/jobs" | "/v1/jobs/{id}" | "/v1/jobs/{id}/output" | "/v1/events/{id}" if read => {
            Need::ReadJobs
        }
        "/v1/secret" | "/v1/secret/rotate" => Need::Admin,
        "/v1/functions/{name}/secrets" | "/v1/functions/{name}/secrets/{secret}" => Need::Admin,
        _ if read => Need::Read,
        _ => Need::Admin,
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
    fn scopes_of(&self, presented: &str) -> Option<Scopes> {
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

/// Middleware: checks the bearer token against the route's scope.
pub(crate) async fn require(
    State(state): State<AppState>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = &state.config.tokens;
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let need = need(request.method(), route.as_ref().map_or("", |r| r.as_str()));
    if need == Need::Open {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(scopes) = presented.and_then(|t| tokens.scopes_of(t)) else {
        let whole = drain(request).await;
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown API token: send Authorization: Bearer <token> (the CLI reads SLUICE_TOKEN or --token)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return close_unless(whole, response);
    };
    if !scopes.allows(need) {
        let message = format!(
            "this token's scopes ({}) do not allow {} {}: it needs {}",
            scopes.names(),
            request.method(),
            request.uri().path(),
            need.name()
        );
        let whole = drain(request).await;
        let response = ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
        return close_unless(whole, response);
    }
    next.run(request).await
}

/// Most bytes of a refused request's body the host reads before answering: an unauthenticated
/// client must not make the host buffer (or even receive) a large upload.
const REFUSED_BODY_BYTES: usize = 64 << 10;

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 section 11.1), so `bearer` works too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Reads (and drops) a small refused request's body, so the client sees our error rather than a
/// reset; gives up past [`REFUSED_BODY_BYTES`]. True when the whole body was read.
async fn drain(request: Request) -> bool {
    axum::body::to_bytes(request.into_body(), REFUSED_BODY_BYTES)
        .await
        .is_ok()
}

/// Marks a refusal whose body was not read whole `Connection: close`: the connection cannot be
/// reused, and the host reads no more of the upload.
fn close_unless(whole: bool, mut response: Response) -> Response {
    if !whole {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn scopes_cover_their_routes() {
        let read = Scopes::parse("read").unwrap();
        let submit = Scopes::parse("submit").unwrap();
        let admin = Scopes::parse("admin").unwrap();
        let get = Method::GET;
        let post = Method::POST;
        assert!(read.allows(need(&get, "/v1/functions")));
        assert!(!submit.allows(need(&get, "/v1/functions")));
        assert!(submit.allows(need(&post, "/v1/functions/{name}/jobs")));
        assert!(!read.allows(need(&post, "/v1/functions/{name}/jobs")));
        assert!(submit.allows(need(&get, "/v1/jobs/{id}")));
        assert!(!submit.allows(need(&Method::PUT, "/v1/functions/{name}")));
        assert!(admin.allows(need(&Method::PUT, "/v1/functions/{name}")));
        assert!(!read.allows(need(&get, "/v1/secret")));
    }

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
