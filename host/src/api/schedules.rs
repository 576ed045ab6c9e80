//! `GET /v1/schedules`: every deployed cron trigger, its next fire and the last one this host
//! fired (see `crate::schedule`).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// `GET /v1/schedules`: every function's `[[schedule]]` entries with their next fire.
#[utoipa::path(get, path = "/v1/schedules", tag = "functions",
    responses((status = 200, description = "Cron triggers of every function", body = super::openapi::Schedules)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let records = state.store.functions().await?;
    Ok(Json(json!({
        "schedules": crate::schedule::listing(&state.clock, &records),
    })))
}
