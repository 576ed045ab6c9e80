//! Checking API tokens: which scope each route needs, and the middleware that checks the bearer
//! token against it (tokens and scopes themselves: [`crate::access`]). With no token configured
//! the API is open, and the host refuses to listen anywhere but loopback.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
pub use crate::access::{Need, Scopes, Tokens};

/// The scope a request needs, from its method and route.
fn need(method: &Method, route: &str) -> Need {
    let read = *method == Method::GET || *method == Method::HEAD;
    match route {
        "/healthz" | "/v1/openapi.json" => Need::Open,
        _ if route.starts_with("/ui") => Need::Open,
        "/v1/functions/{name}/jobs" | "/v1/functions/{name}/jobs:batch" => Need::Submit,
        "/v1/topics/{topic}/events" => Need::Submit,
        "/v1/jobs/{id}" if *method == Method::DELETE => Need::Submit,
        "/v1/jobs"
        | "/v1/jobs/{id}"
        | "/v1/jobs/{id}/output"
        | "/v1/jobs/{id}/events"
        | "/v1/events/{id}"
            if read =>
        {
            Need::ReadJobs
        }
        "/v1/secret" | "/v1/secret/rotate" => Need::Admin,
        "/v1/functions/{name}/secrets" | "/v1/functions/{name}/secrets/{secret}" => Need::Admin,
        _ if read => Need::Read,
        _ => Need::Admin,
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
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    // The console's session: the token in an `HttpOnly` cookie (see `crate::ui`). A change
    // made with it must also carry the CSRF token its page read from the other cookie: a page
    // of another site can make the browser send cookies (not with `SameSite=Strict`, but
    // older browsers ignore it) and cannot read or send that header.
    let session = match bearer {
        Some(_) => None,
        None => crate::ui::session_token(request.headers()),
    };
    if session.is_some() && !(request.method() == Method::GET || request.method() == Method::HEAD) {
        let expected = cookie(request.headers(), CSRF_COOKIE);
        let sent = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if expected.is_none() || sent != expected.as_deref() {
            let whole = drain(request).await;
            let response = ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_check_failed",
                "a change made with the console's session cookie needs the x-sluice-csrf header set to the sluice_csrf cookie (the console sends it; other clients send Authorization: Bearer <token> instead)",
            )
            .into_response();
            return close_unless(whole, response);
        }
    }
    let presented = bearer.map(str::to_string).or(session);
    let Some(scopes) = presented.and_then(|t| tokens.scopes_of(&t)) else {
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

/// Middleware on every route, tokens or not: refuses a change a browser sends from another
/// site (its `Origin` names another host, or `Sec-Fetch-Site` says `cross-site`), so a page
/// an operator visits cannot make their browser submit, rotate or pause; and, with no tokens
/// (the host on loopback), refuses a browser's request for a name other than a loopback one,
/// so a page cannot reach the open API through a name that resolves to 127.0.0.1 (DNS
/// rebinding). Clients other than browsers send none of these headers and are not affected.
pub(crate) async fn same_site(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let change = !(request.method() == Method::GET || request.method() == Method::HEAD);
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let foreign_origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null")
        .is_some_and(|origin| {
            let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
            !authority.eq_ignore_ascii_case(&host)
        });
    if change && (cross_site || foreign_origin) {
        let whole = drain(request).await;
        let response = ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_refused",
            "a change sent by a page of another site is refused; call the API from your own client, or use the console served by this host",
        )
        .into_response();
        return close_unless(whole, response);
    }
    // A browser's request (it says where it comes from; other clients do not).
    let from_browser = headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-mode")
        || headers.contains_key(header::ORIGIN);
    if state.config.tokens.is_empty() && from_browser && !host.is_empty() && !loopback_name(&host)
    {
        let whole = drain(request).await;
        let response = ApiError::new(
            StatusCode::FORBIDDEN,
            "host_refused",
            format!(
                "this host has no API tokens, so it answers only requests for a loopback name (localhost, 127.0.0.1, [::1]), not {host:?}: configure --tokens to serve other names"
            ),
        )
        .into_response();
        return close_unless(whole, response);
    }
    next.run(request).await
}

/// True for `localhost`, `127.x.x.x` and `[::1]`, with or without a port.
fn loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The cookie holding the console's session (the API token), `HttpOnly`.
pub(crate) const SESSION_COOKIE: &str = "sluice_session";
/// The cookie holding the console's CSRF token, readable by its page.
pub(crate) const CSRF_COOKIE: &str = "sluice_csrf";
/// The header a console page sends the CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-sluice-csrf";

/// The value of cookie `name` in a request's `Cookie` headers.
pub(crate) fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
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
    fn loopback_names_are_known() {
        for host in ["localhost", "localhost:8080", "127.0.0.1:9", "127.1.2.3", "[::1]:8080", "[::1]"] {
            assert!(loopback_name(host), "{host}");
        }
        for host in ["evil.example", "evil.example:8080", "10.0.0.1:80", "localhost.evil.example"] {
            assert!(!loopback_name(host), "{host}");
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; sluice_session=tok; sluice_csrf=\"x\"".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, "sluice_session").as_deref(), Some("tok"));
        assert_eq!(cookie(&headers, "sluice_csrf").as_deref(), Some("x"));
        assert_eq!(cookie(&headers, "b"), None);
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
}
