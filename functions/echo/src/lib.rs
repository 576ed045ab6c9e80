//! `echo`: returns its input unchanged, with the same content type. The benchmark's handler.
use sluice_sdk::{Error, Event, Response, handler};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let content_type = ev.content_type().unwrap_or("application/octet-stream");
    Ok(Response::bytes(ev.data(), content_type))
}
