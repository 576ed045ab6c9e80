//! Events: CloudEvents 1.0 as published to a topic, read from HTTP in structured mode
//! (`application/cloudevents+json`), batch mode (`application/cloudevents-batch+json`) or binary
//! mode (`ce-*` headers, the body as data), and what a job remembers of the event that caused it.
//!
//! Parsing is strict where the specification is: `specversion` must be `1.0`, and `id`,
//! `source` and `type` must be non-empty strings; each problem is named in the error.

use axum::http::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Media type of one event in structured mode.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// Media type of a batch of events.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// Most events in one batch publish.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// The CloudEvents context attributes of an event (everything but its data), as a delivery job
/// keeps them and a handler sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventAttributes {
    /// The topic it was published to.
    pub topic: String,
    /// `id`: unique within its source.
    pub id: String,
    /// `source`: who produced it (a URI reference).
    pub source: String,
    /// `type`: what happened, e.g. `order.placed`.
    pub event_type: String,
    /// `subject`: what it is about, within the source.
    pub subject: Option<String>,
    /// `time`: when it happened (RFC 3339, as sent).
    pub time: Option<String>,
    /// `dataschema`: the schema the data adheres to.
    pub dataschema: Option<String>,
    /// Extension attributes, as name/value strings, in name order.
    pub extensions: Vec<(String, String)>,
}

/// A parsed event: its attributes and data.
#[derive(Clone, Debug)]
pub struct CloudEvent {
    /// Context attributes (the topic is filled in by the publish).
    pub attributes: EventAttributes,
    /// `datacontenttype`, if any.
    pub content_type: Option<String>,
    /// The data bytes (empty when the event has none).
    pub data: Bytes,
}

/// Why an event was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventError {
    /// A required attribute is missing or empty.
    #[error(
        "the event has no {0:?} attribute: every CloudEvent needs specversion, id, source and type"
    )]
    Missing(&'static str),
    /// An attribute has the wrong form.
    #[error("the event's {name:?} attribute is invalid: {problem}")]
    Invalid {
        /// The attribute.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The body is not what its content type says.
    #[error("{0}")]
    Body(String),
}

/// Attributes the specification defines (everything else is an extension).
const CONTEXT: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// How a request carries its events, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One event as JSON.
    Structured,
    /// A JSON array of events.
    Batch,
    /// Attributes in `ce-*` headers, data in the body.
    Binary,
}

impl Mode {
    /// The mode a request's `Content-Type` selects (anything not CloudEvents JSON is binary).
    pub fn of(content_type: Option<&str>) -> Mode {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some(STRUCTURED) => Mode::Structured,
            Some(BATCH) => Mode::Batch,
            _ => Mode::Binary,
        }
    }
}

/// Reads the events of a publish request.
pub fn parse(headers: &HeaderMap, body: Bytes) -> Result<Vec<CloudEvent>, EventError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match Mode::of(content_type) {
        Mode::Structured => {
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| EventError::Body(format!("the body is not a JSON CloudEvent: {e}")))?;
            Ok(vec![from_json(value)?])
        }
        Mode::Batch => {
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                EventError::Body(format!("the body is not a JSON array of CloudEvents: {e}"))
            })?;
            let Value::Array(items) = value else {
                return Err(EventError::Body(
                    "a batch must be a JSON array of CloudEvents".into(),
                ));
            };
            if items.is_empty() || items.len() > MAX_BATCH_EVENTS {
                return Err(EventError::Body(format!(
                    "a batch holds 1 to {MAX_BATCH_EVENTS} events, not {}",
                    items.len()
                )));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| from_json(v).map_err(|e| EventError::Body(format!("event {i}: {e}"))))
                .collect()
        }
        Mode::Binary => Ok(vec![from_binary(headers, body)?]),
    }
}

/// One event in the JSON format (structured mode).
fn from_json(value: Value) -> Result<CloudEvent, EventError> {
    let Value::Object(mut o) = value else {
        return Err(EventError::Body(
            "a CloudEvent must be a JSON object".into(),
        ));
    };
    let mut text = |name: &'static str| -> Result<Option<String>, EventError> {
        match o.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(EventError::Invalid {
                name: name.into(),
                problem: format!("must be a string, not {other}"),
            }),
        }
    };
    let specversion = text("specversion")?;
    let id = text("id")?;
    let source = text("source")?;
    let event_type = text("type")?;
    let subject = text("subject")?;
    let time = text("time")?;
    let content_type = text("datacontenttype")?;
    let dataschema = text("dataschema")?;
    let data = match (o.remove("data"), o.remove("data_base64")) {
        (Some(_), Some(_)) => {
            return Err(EventError::Invalid {
                name: "data".into(),
                problem: "send data or data_base64, not both".into(),
            });
        }
        (None | Some(Value::Null), None | Some(Value::Null)) => Bytes::new(),
        (None, Some(Value::String(b64))) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| EventError::Invalid {
                    name: "data_base64".into(),
                    problem: format!("not base64: {e}"),
                })?,
        ),
        (None, Some(_)) => {
            return Err(EventError::Invalid {
                name: "data_base64".into(),
                problem: "must be a base64 string".into(),
            });
        }
        // A string is the data itself unless the content type says JSON; anything else is JSON.
        (Some(Value::String(s)), _) if !is_json(content_type.as_deref()) => Bytes::from(s),
        (Some(v), _) => Bytes::from(serde_json::to_vec(&v).expect("JSON values serialise")),
    };
    let content_type =
        content_type.or_else(|| (!data.is_empty()).then(|| "application/json".into()));
    let mut extensions = Vec::new();
    for (name, value) in o {
        let value = match value {
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) if n.is_i64() => n.to_string(),
            Value::Null => continue,
            other => {
                return Err(EventError::Invalid {
                    name,
                    problem: format!(
                        "an extension must be a string, integer or boolean, not {other}"
                    ),
                });
            }
        };
        extensions.push((name, value));
    }
    build(
        specversion,
        id,
        source,
        event_type,
        subject,
        time,
        dataschema,
        extensions,
        content_type,
        data,
    )
}

/// One event in binary mode: `ce-*` headers and the body as data.
fn from_binary(headers: &HeaderMap, body: Bytes) -> Result<CloudEvent, EventError> {
    let get = |name: &'static str| -> Result<Option<String>, EventError> {
        match headers.get(format!("ce-{name}")) {
            None => Ok(None),
            Some(v) => {
                v.to_str()
                    .map(|s| Some(percent_decode(s)))
                    .map_err(|_| EventError::Invalid {
                        name: name.into(),
                        problem: "the header is not visible ASCII".into(),
                    })
            }
        }
    };
    let specversion = get("specversion")?;
    let id = get("id")?;
    let source = get("source")?;
    let event_type = get("type")?;
    let subject = get("subject")?;
    let time = get("time")?;
    let dataschema = get("dataschema")?;
    let mut extensions = Vec::new();
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if CONTEXT.contains(&attr) {
            continue;
        }
        let value = value.to_str().map_err(|_| EventError::Invalid {
            name: attr.into(),
            problem: "the header is not visible ASCII".into(),
        })?;
        extensions.push((attr.to_string(), percent_decode(value)));
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    build(
        specversion,
        id,
        source,
        event_type,
        subject,
        time,
        dataschema,
        extensions,
        content_type,
        body,
    )
}

#[allow(clippy::too_many_arguments)]
fn build(
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    event_type: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    dataschema: Option<String>,
    mut extensions: Vec<(String, String)>,
    content_type: Option<String>,
    data: Bytes,
) -> Result<CloudEvent, EventError> {
    let required = |v: Option<String>, name: &'static str| {
        v.filter(|s| !s.is_empty()).ok_or(EventError::Missing(name))
    };
    let specversion = required(specversion, "specversion")?;
    if specversion != "1.0" {
        return Err(EventError::Invalid {
            name: "specversion".into(),
            problem: format!("Sluice accepts CloudEvents 1.0, not {specversion:?}"),
        });
    }
    let id = required(id, "id")?;
    let source = required(source, "source")?;
    let event_type = required(event_type, "type")?;
    if let Some(t) = &time
        && humantime::parse_rfc3339_weak(t).is_err()
    {
        return Err(EventError::Invalid {
            name: "time".into(),
            problem: format!("{t:?} is not an RFC 3339 time"),
        });
    }
    for (name, _) in &extensions {
        let ok = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(EventError::Invalid {
                name: name.clone(),
                problem: "extension names are 1 to 20 lowercase letters or digits".into(),
            });
        }
    }
    extensions.sort();
    Ok(CloudEvent {
        attributes: EventAttributes {
            topic: String::new(),
            id,
            source,
            event_type,
            subject,
            time,
            dataschema,
            extensions,
        },
        content_type,
        data,
    })
}

/// True for JSON media types (`application/json`, `text/json`, `*+json`).
fn is_json(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(c) => {
            let media = c
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media == "application/json" || media == "text/json" || media.ends_with("+json")
        }
    }
}

/// Decodes `%XX` escapes in a binary-mode header value (the HTTP binding escapes non-ASCII).
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Validates a topic name: 1 to 128 characters, letters, digits, `.`, `_` and `-`, starting
/// with a letter or digit.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    let ok = !topic.is_empty()
        && topic.len() <= 128
        && topic.as_bytes()[0].is_ascii_alphanumeric()
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid topic {topic:?}: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structured(v: Value) -> Result<CloudEvent, EventError> {
        from_json(v)
    }

    #[test]
    fn missing_attributes_are_named() {
        let base =
            serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        for name in ["specversion", "id", "source", "type"] {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(name);
            assert_eq!(structured(v).unwrap_err(), EventError::Missing(name));
        }
        assert!(structured(base).is_ok());
    }

    #[test]
    fn data_follows_the_content_type() {
        let e = structured(
            serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s",
            "type": "t", "data": {"a": 1}}),
        )
        .unwrap();
        assert_eq!(&e.data[..], br#"{"a":1}"#);
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        let e = structured(
            serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s",
            "type": "t", "datacontenttype": "text/plain", "data": "hi", "traceid": "x"}),
        )
        .unwrap();
        assert_eq!(&e.data[..], b"hi");
        assert_eq!(
            e.attributes.extensions,
            vec![("traceid".into(), "x".into())]
        );
        let e = structured(
            serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s",
            "type": "t", "data_base64": "AAE="}),
        )
        .unwrap();
        assert_eq!(&e.data[..], &[0, 1]);
    }

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
