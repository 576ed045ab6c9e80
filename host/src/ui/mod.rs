//! The operator console at `/ui`: a dashboard of functions, jobs, dead letters and topics,
//! served from assets embedded in the binary (no build step, no network), reading the same
//! JSON API as every client.
//!
//! Signing in trades an API token for two cookies: `sluice_session` (the token, `HttpOnly`,
//! `SameSite=Strict`: no script reads it, no other site's page sends it) and `sluice_csrf` (a
//! random value the page reads and sends back as `x-sluice-csrf` on every change; the API
//! refuses a change made with the session cookie without it, see `api::auth`). Pages are
//! served with a content security policy that allows only their own scripts and styles and no
//! framing.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::json;

use crate::api::auth::{CSRF_COOKIE, SESSION_COOKIE, cookie};
use crate::api::{ApiError, AppState};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// How long a console session lasts, in seconds.
const SESSION_SECONDS: u64 = 12 * 3600;

/// The console's routes (open: the pages hold no data; the API they call checks the session).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/session", get(session))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
}

/// An embedded asset with its type and the console's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The API token a session cookie holds (base64url, so any token fits in a cookie).
pub(crate) fn session_token(headers: &HeaderMap) -> Option<String> {
    let value = cookie(headers, SESSION_COOKIE)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `GET /ui/session`: whether this browser is signed in (always, when the API has no tokens).
async fn session(State(state): State<AppState>, headers: HeaderMap) -> Json<serde_json::Value> {
    let tokens = &state.config.tokens;
    if tokens.is_empty() {
        return Json(json!({"signed_in": true, "open": true, "scopes": "admin, submit, read"}));
    }
    let scopes = session_token(&headers).and_then(|t| tokens.scopes_of(&t));
    Json(json!({
        "signed_in": scopes.is_some(),
        "open": false,
        "scopes": scopes.map(|s| s.names()),
    }))
}

#[derive(serde::Deserialize)]
struct SignIn {
    token: String,
}

/// `POST /ui/login` with `{"token": "..."}`: sets the session and CSRF cookies.
async fn login(
    State(state): State<AppState>,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(SignIn { token }) = body.map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("send {{\"token\": \"...\"}} as JSON: {e}"),
        )
    })?;
    let tokens = &state.config.tokens;
    let scopes = if tokens.is_empty() {
        "admin, submit, read".to_string()
    } else {
        tokens
            .scopes_of(token.trim())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "unknown API token: use one given to the host with --tokens or --token-file",
                )
            })?
            .names()
    };
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("no randomness for a session: {e}"),
        )
    })?;
    let csrf = hex::encode(random);
    let session = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.trim());
    let mut response = Json(json!({ "signed_in": true, "scopes": scopes })).into_response();
    let headers = response.headers_mut();
    for value in [
        format!(
            "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}"
        ),
        format!("{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict; Max-Age={SESSION_SECONDS}"),
    ] {
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_str(&value).expect("cookie values are ASCII"),
        );
    }
    Ok(response)
}

/// `POST /ui/logout`: forgets the session (the cookies expire).
async fn logout() -> Response {
    let mut response = Json(json!({ "signed_in": false })).into_response();
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        response.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_str(&format!(
                "{name}=; Path=/; SameSite=Strict; Max-Age=0"
            ))
            .expect("ASCII"),
        );
    }
    response
}
