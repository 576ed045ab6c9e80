//! Atomic batch publish (JetStream, server 2.12 and later, ADR-50): several messages to one
//! stream that are stored all together or not at all. async-nats 0.52 has the headers but no
//! API for it; this is the wire protocol: the first message is a request (an empty reply is
//! "go on"), middle ones are plain publishes, the last carries `Nats-Batch-Commit: 1` and is
//! answered with the stream's acknowledgement of the whole batch. The stream needs
//! `allow_atomic` set.

use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::jetstream;
use async_nats::{HeaderMap, HeaderValue};

/// One message of a batch.
pub(super) struct Part {
    /// Its subject (in the stream).
    pub(super) subject: String,
    /// The sequence the subject's last message must have (a compare-and-set), checked when
    /// the batch commits.
    pub(super) expected_subject_sequence: Option<u64>,
    /// The subject whose last sequence is checked, when not this message's own (wildcards
    /// allowed: the last message of any subject matching).
    pub(super) check_subject: Option<String>,
    /// Further headers (`KV-Operation`, `Nats-TTL`).
    pub(super) headers: Vec<(&'static str, String)>,
    /// Its payload.
    pub(super) payload: bytes::Bytes,
}

/// How a batch ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Committed {
    /// Every message is stored.
    Yes,
    /// A subject's last sequence was not the one expected, or the stream could not take the
    /// batch right now (another batch on the same subject in flight, too many batches in
    /// flight): nothing is stored; read again and retry.
    WrongSequence,
}

/// JetStream's error code for a failed `Nats-Expected-Last-Subject-Sequence` check.
const WRONG_LAST_SEQUENCE: u64 = 10071;
/// Its code when another batch checking or writing the same subject is still being applied.
const SUBJECT_IN_FLIGHT: u64 = 10164;
/// A check that cannot be made right now (the subject's state is being recovered).
const CHECK_UNAVAILABLE: u64 = 10163;
/// The batch lost a message on the way (it can be sent again whole).
const INCOMPLETE_BATCH: u64 = 10176;
/// Too many batches in flight on the stream.
const TOO_MANY_IN_FLIGHT: u64 = 10210;

/// Publishes `parts` (at least one, at most 1000) to one stream as one atomic batch. An error
/// says nothing was stored, or (a lost reply) that it is unknown: the caller reads again.
pub(super) async fn publish_atomic(
    js: &jetstream::Context,
    parts: Vec<Part>,
) -> Result<Committed, String> {
    assert!(!parts.is_empty(), "an atomic batch needs a message");
    let client = js.client();
    let batch = ulid::Ulid::new().to_string();
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        let sequence = i as u64 + 1;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_BATCH_ID, batch.as_str());
        headers.insert(NATS_BATCH_SEQUENCE, HeaderValue::from(sequence));
        if let Some(expected) = part.expected_subject_sequence {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                HeaderValue::from(expected),
            );
            if let Some(subject) = &part.check_subject {
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    subject.as_str(),
                );
            }
        }
        for (name, value) in &part.headers {
            headers.insert(*name, value.as_str());
        }
        if i + 1 == n {
            headers.insert(NATS_BATCH_COMMIT, "1");
            let reply = client
                .request_with_headers(part.subject, headers, part.payload)
                .await
                .map_err(|e| format!("committing an atomic batch: {e}"))?;
            return verdict(&reply.payload);
        } else if i == 0 {
            let reply = client
                .request_with_headers(part.subject, headers, part.payload)
                .await
                .map_err(|e| format!("starting an atomic batch: {e}"))?;
            if !reply.payload.is_empty() {
                return verdict(&reply.payload);
            }
        } else {
            client
                .publish_with_headers(part.subject, headers, part.payload)
                .await
                .map_err(|e| format!("publishing in an atomic batch: {e}"))?;
        }
    }
    unreachable!("the last part commits")
}

/// Reads the stream's answer to a batch's commit (or to its first message, when refused).
fn verdict(reply: &[u8]) -> Result<Committed, String> {
    let answer: serde_json::Value = serde_json::from_slice(reply)
        .map_err(|e| format!("an atomic batch's answer does not parse: {e}"))?;
    match answer.get("error") {
        None if answer.get("seq").is_some() => Ok(Committed::Yes),
        None => Err(format!("an atomic batch's answer says nothing: {answer}")),
        Some(error)
            if matches!(
                error["err_code"].as_u64(),
                Some(
                    WRONG_LAST_SEQUENCE
                        | SUBJECT_IN_FLIGHT
                        | CHECK_UNAVAILABLE
                        | INCOMPLETE_BATCH
                        | TOO_MANY_IN_FLIGHT
                )
            ) =>
        {
            Ok(Committed::WrongSequence)
        }
        Some(error) => Err(format!("the cluster refused an atomic batch: {error}")),
    }
}
