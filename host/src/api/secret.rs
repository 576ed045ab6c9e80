//! The webhook signing secret: show it (receivers need it to verify callbacks) and rotate it.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::job::{now_ms, rfc3339};
use crate::webhook::sign::SecretRecord;

/// `GET /v1/secret`: the current `whsec_` secret (and the previous one while it still signs).
#[utoipa::path(get, path = "/v1/secret", tag = "secrets",
    responses((status = 200, description = "The webhook signing secret", body = super::openapi::SigningSecret)))]
pub(crate) async fn show(State(state): State<AppState>) -> Json<Value> {
    Json(secret_json(&state.secrets.record()))
}

/// `POST /v1/secret/rotate`: a new secret; the old one keeps signing for 24 hours, so both
/// signatures are sent and receivers can switch without missing a callback.
#[utoipa::path(post, path = "/v1/secret/rotate", tag = "secrets",
    responses((status = 200, description = "A new secret; the previous one signs too for a day", body = super::openapi::SigningSecret)))]
pub(crate) async fn rotate(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let record = state.secrets.record().rotated(now_ms());
    record.save(&*state.store).await?;
    state.secrets.set(record.clone());
    Ok(Json(secret_json(&record)))
}

fn secret_json(r: &SecretRecord) -> Value {
    json!({
        "secret": r.current,
        "previous": r.previous,
        "previous_signs_until": r.previous_until.map(rfc3339),
    })
}
