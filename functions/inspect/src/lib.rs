//! Answers with what it was given: the CloudEvents attributes of its event, the correlation id,
//! the attempt and the data (as text). Shows what a handler sees of a topic delivery or a job.

use sluice_sdk::serde_json::{Map, Value, json};
use sluice_sdk::{Error, Event, Response, handler};

#[handler]
fn handle(ev: Event) -> Result<Response, Error> {
    let extensions: Map<String, Value> = ev
        .extensions()
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Response::json(&json!({
        "id": ev.id(),
        "source": ev.source(),
        "type": ev.event_type(),
        "subject": ev.subject(),
        "time": ev.time(),
        "datacontenttype": ev.content_type(),
        "dataschema": ev.dataschema(),
        "extensions": extensions,
        "correlation_id": ev.correlation_id(),
        "attempt": ev.attempt(),
        "data": String::from_utf8_lossy(ev.data()),
    }))
}
