//! Direct gets that answer with several messages (JetStream's batched and multi-subject direct
//! get, ADR-31): the request goes to `$JS.API.DIRECT.GET.<stream>` with a reply inbox, the
//! messages come back one by one and a status message ends them. async-nats 0.52 asks for one
//! message at a time only.

use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;

use super::failed_because;
use crate::store::StoreError;

/// How a batched answer ended.
pub(super) enum End {
    /// Every message asked for came; `pending` more match after the last; a multi-subject
    /// get's answer is a snapshot at stream sequence `snapshot` (0 for other gets).
    Complete { pending: u64, snapshot: u64 },
    /// Nothing matched.
    NotFound,
    /// More subjects matched than one answer holds (1,024, for a multi-subject get).
    TooMany,
}

/// A header's value.
pub(super) fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a str> {
    headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// A message's stream sequence, as a direct get tells it.
pub(super) fn sequence(message: &async_nats::Message) -> Result<u64, StoreError> {
    header(&message.headers, "Nats-Sequence")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed_because("a direct get's answer has no sequence".into()))
}

/// Sends `request` to `stream`'s direct get and gathers the messages of its answer.
pub(super) async fn batch(
    client: &async_nats::Client,
    stream: &str,
    request: &serde_json::Value,
) -> Result<(Vec<async_nats::Message>, End), StoreError> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| failed_because(format!("reading {stream}: {e}")))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.to_string().into(),
        )
        .await
        .map_err(|e| failed_because(format!("reading {stream}: {e}")))?;
    let mut found = Vec::new();
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .map_err(|_| failed_because(format!("reading {stream}: the cluster did not answer")))?
            .ok_or_else(|| failed_because(format!("reading {stream}: the answer was cut")))?;
        match reply.status.map(|s| s.as_u16()) {
            Some(204) => {
                let number = |name| {
                    header(&reply.headers, name)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                let (pending, snapshot) = (number("Nats-Num-Pending"), number("Nats-UpTo-Sequence"));
                return Ok((found, End::Complete { pending, snapshot }));
            }
            Some(404) => return Ok((found, End::NotFound)),
            Some(413) => return Ok((found, End::TooMany)),
            Some(503) => {
                return Err(failed_because(format!(
                    "reading {stream}: no responders (is JetStream up?)"
                )));
            }
            Some(code) if code >= 300 => {
                return Err(failed_because(format!(
                    "reading {stream}: {code} {}",
                    reply.description.unwrap_or_default()
                )));
            }
            _ => found.push(reply),
        }
    }
}
