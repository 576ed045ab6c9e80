//! Functions' key-value state on the cluster: the same contract as the embedded store
//! (store::kv): versions never reused, an attempt's writes committed only if every key it read
//! and every page of keys it listed is unchanged, at most once per job, within
//! `--max-kv-bytes` per function.
//!
//! Layout, in KV bucket `<p>-state` (a stream that takes atomic batches and per-message TTLs):
//! - `v.<function>.<key>`: a key's value; a key is written as one subject token per byte, in
//!   hex (`"ab"` is `61.62`), so keys sort as bytes and a prefix is a subject prefix. Its version
//!   is the stream sequence of its last message (a deletion is a marker that expires after
//!   [`DELETED_KEPT`]);
//! - `k.<function>.<key>`: the key index, an empty message written only when a key comes or
//!   goes, so listing keys reads no values and a listing conflicts only with keys added or
//!   removed;
//! - `a.<job>`: the marker that an attempt of that job committed its writes (kept a week);
//! - `x.<function>`: a message that only carries a check (a key read but not written, or a
//!   listing), since each message of a batch checks one subject.
//!
//! A commit reads what it will change, then writes it in one atomic batch whose every message
//! checks the sequence it read: if anything moved in between, nothing is stored and the commit
//! starts over (a key the attempt itself read having moved is a conflict: the job runs again).
//!
//! A value larger than one message takes (the servers' `max_payload` less 4 KiB) is a blob in
//! the object store, named by a `Sluice-Blob` header on its message.
//!
//! Limits: a batch holds at most 1,000 messages (about 450 keys written by one attempt); the bytes a function holds are a
//! JetStream counter updated after each commit (a host dying in between leaves it off by that
//! commit); a listing that checks the key index through a wildcard does not see commits that
//! are proposed but not yet applied on a clustered stream (a window of a few milliseconds).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::batch::{Committed, Part};
use super::direct::header;
use super::{NatsBackend, failed, failed_because, unsupported};
use crate::job::{JobId, KvChanges};
use crate::store::seam::Versioned;
use crate::store::{KvVerdict, StoreError};

/// How long a deleted key's marker stays (a reader that saw the deletion and commits after it
/// is gone runs again: a conflict, never a lost update).
const DELETED_KEPT: Duration = Duration::from_secs(600);
/// How long a job's marker stays (an attempt whose success was lost and that runs again
/// within it does not apply its writes twice).
const APPLIED_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// What a stored key costs besides its value (as the embedded store counts it).
const KEY_OVERHEAD: u64 = 64;
/// Most messages in one atomic batch.
const MAX_BATCH: usize = 1000;
/// How often a commit starts over when keys it did not read moved under it.
const TRIES: usize = 8;

/// A key as subject tokens: each byte in hex.
fn tokens(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for (i, b) in key.bytes().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The key whose tokens end `subject` after `prefix`, if they decode.
fn key_of(subject: &str, prefix: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?;
    let bytes = rest
        .split('.')
        .map(|t| u8::from_str_radix(t, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The last message of a subject, as a direct get returns it.
struct Last {
    sequence: u64,
    deleted: bool,
    payload: Bytes,
    /// A value too large for one message is a blob in the object store; this names it.
    blob: Option<crate::job::BlobRef>,
}

impl Last {
    /// The value's size in bytes.
    fn size(&self) -> usize {
        self.blob.map_or(self.payload.len(), |b| b.size as usize)
    }
}

/// The header naming a value's blob: `<sha-256 hex>:<size>`.
const BLOB_HEADER: &str = "Sluice-Blob";

fn blob_of(headers: &Option<HeaderMap>) -> Option<crate::job::BlobRef> {
    let (digest, size) = header(headers, BLOB_HEADER)?.split_once(':')?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digest, &mut bytes).ok()?;
    Some(crate::job::BlobRef {
        digest: bytes,
        size: size.parse().ok()?,
    })
}

/// One answer of a multi-subject direct get.
enum Listing {
    /// The last message of every subject matched: (subject, deleted), and the stream sequence
    /// the answer is a snapshot at (the replica that answered had everything up to it; `None`
    /// when nothing matched, which says nothing of how current it was).
    Found(Vec<(String, bool)>, Option<u64>),
    /// More subjects matched than one answer holds (1,024).
    TooMany,
}

fn is_deletion(headers: &Option<HeaderMap>) -> bool {
    matches!(header(headers, "KV-Operation"), Some("DEL" | "PURGE"))
}

impl NatsBackend {
    fn state_subject(&self, space: &str, function: &str, key: &str) -> String {
        format!(
            "$KV.{}-state.{space}.{function}.{}",
            self.options.prefix,
            tokens(key)
        )
    }

    fn state_space(&self, space: &str, function: &str) -> String {
        format!("$KV.{}-state.{space}.{function}.", self.options.prefix)
    }

    fn state_api(&self) -> String {
        format!("$JS.API.DIRECT.GET.KV_{}-state", self.options.prefix)
    }

    fn bytes_subject(&self, function: &str) -> String {
        format!("{}.count.{function}.kv_bytes", self.options.prefix)
    }

    /// The last message on `subject` (wildcards allowed), if any.
    async fn last(&self, subject: &str) -> Result<Option<Last>, StoreError> {
        let request = serde_json::json!({ "last_by_subj": subject }).to_string();
        let reply = super::patiently("reading key-value state", |_| false, || {
            self.client.request(self.state_api(), request.clone().into())
        })
        .await
        .map_err(failed)?;
        match reply.status.map(|s| s.as_u16()) {
            Some(404) => return Ok(None),
            Some(code) if code >= 300 => {
                return Err(failed_because(format!(
                    "reading key-value state: {code} {}",
                    reply.description.unwrap_or_default()
                )));
            }
            _ => {}
        }
        let sequence = super::direct::sequence(&reply)?;
        Ok(Some(Last {
            sequence,
            deleted: is_deletion(&reply.headers),
            blob: blob_of(&reply.headers),
            payload: reply.payload,
        }))
    }

    /// The last message of every subject matching `filters`, as of stream sequence `up_to`.
    async fn last_of_each(&self, filters: &[String], up_to: u64) -> Result<Listing, StoreError> {
        let mut request = serde_json::json!({ "multi_last": filters });
        if up_to > 0 {
            request["up_to_seq"] = up_to.into();
        }
        let stream = format!("KV_{}-state", self.options.prefix);
        let (found, end) = super::direct::batch(&self.client, &stream, &request).await?;
        let snapshot = match end {
            super::direct::End::TooMany => return Ok(Listing::TooMany),
            super::direct::End::Complete { snapshot, .. } => Some(snapshot),
            super::direct::End::NotFound => None,
        };
        let found = found
            .into_iter()
            .map(|m| {
                let subject = header(&m.headers, "Nats-Subject")
                    .ok_or_else(|| failed_because("a listed key has no subject".into()))?;
                Ok((subject.to_string(), is_deletion(&m.headers)))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Listing::Found(found, snapshot))
    }

    /// Keys of `function` under `prefix` (subject tokens, `""` for all), in order, until
    /// `need` are found; splits by the next byte where one answer cannot hold them all.
    async fn collect_keys(
        &self,
        function: &str,
        prefix: &str,
        need: usize,
        at_least: u64,
        out: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let space = self.state_space("k", function);
        let filters = if prefix.is_empty() {
            vec![format!("{space}>")]
        } else {
            vec![format!("{space}{prefix}"), format!("{space}{prefix}.>")]
        };
        // A replica a little behind answers an older snapshot: ask again until it has caught
        // up with `at_least` (a listing a commit checks must not miss what its check covers).
        // Nothing at all under the whole function while a check expects something there is
        // as stale as an older snapshot.
        let stale = |answer: &Listing| match answer {
            Listing::Found(_, Some(snapshot)) => *snapshot < at_least,
            Listing::Found(_, None) => prefix.is_empty() && at_least > 0,
            Listing::TooMany => false,
        };
        let mut answer = self.last_of_each(&filters, 0).await?;
        for _ in 0..50 {
            if !stale(&answer) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = self.last_of_each(&filters, 0).await?;
        }
        if stale(&answer) {
            return Err(failed_because(format!(
                "listing keys: the servers answered snapshots older than {at_least} for a second"
            )));
        }
        match answer {
            Listing::Found(found, _) => {
                let mut keys: Vec<String> = found
                    .into_iter()
                    .filter(|(_, deleted)| !deleted)
                    .filter_map(|(subject, _)| key_of(&subject, &space))
                    .collect();
                keys.sort_unstable();
                out.extend(keys);
                Ok(())
            }
            Listing::TooMany => {
                // Each piece is a snapshot of its own, each at least `at_least`.
                if !prefix.is_empty() {
                    let exact = format!("{space}{prefix}");
                    if let Some(last) = self.last(&exact).await?
                        && !last.deleted
                        && let Some(key) = key_of(&exact, &space)
                    {
                        out.push(key);
                    }
                }
                for byte in 0..=255u8 {
                    if out.len() >= need {
                        break;
                    }
                    let next = match prefix.is_empty() {
                        true => format!("{byte:02x}"),
                        false => format!("{prefix}.{byte:02x}"),
                    };
                    Box::pin(self.collect_keys(function, &next, need, at_least, out)).await?;
                }
                Ok(())
            }
        }
    }

    /// The committed keys of `function` starting with `prefix`, in order, after skipping
    /// `skip`, at most `limit`.
    pub(super) async fn state_keys(
        &self,
        function: &str,
        prefix: Option<&str>,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.keys_at_least(function, prefix, skip, limit, 0).await
    }

    /// [`NatsBackend::state_keys`] from a snapshot at stream sequence `at_least` or later.
    async fn keys_at_least(
        &self,
        function: &str,
        prefix: Option<&str>,
        skip: usize,
        limit: usize,
        at_least: u64,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.unwrap_or("");
        // Whole bytes as tokens; a prefix ending inside a character still matches by bytes.
        let mut keys = Vec::new();
        let need = skip.saturating_add(limit);
        self.collect_keys(function, &tokens(prefix), need, at_least, &mut keys)
            .await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .skip(skip)
            .take(limit)
            .collect())
    }

    /// A key's committed version (0: never written, or its deletion expired) and value.
    pub(super) async fn state_get(
        &self,
        function: &str,
        key: &str,
    ) -> Result<Versioned, StoreError> {
        Ok(
            match self.last(&self.state_subject("v", function, key)).await? {
                None => (0, None),
                Some(last) if last.deleted => (last.sequence, None),
                Some(Last {
                    sequence,
                    blob: Some(blob),
                    ..
                }) => {
                    let value = self
                        .blob_part(&blob.digest, 0, blob.size as usize)
                        .await?
                        .ok_or_else(|| {
                            failed_because(format!(
                                "key {key:?} of {function}: its value's blob is missing"
                            ))
                        })?;
                    (sequence, Some(value))
                }
                Some(last) => (last.sequence, Some(last.payload.to_vec())),
            },
        )
    }

    /// The bytes a function's state holds, as its counter says.
    async fn state_bytes(&self, function: &str) -> Result<i64, StoreError> {
        match self
            .counters
            .direct_get_last_for_subject(self.bytes_subject(function))
            .await
        {
            Ok(message) => Ok(super::jobs::counter_value(&message.payload)),
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                Ok(0)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// Commits `changes` (for `job`: at most once for that job), or says why not.
    pub(super) async fn state_write(
        &self,
        changes: &KvChanges,
        job: Option<JobId>,
        max_bytes: u64,
    ) -> Result<KvVerdict, StoreError> {
        for try_ in 0..TRIES {
            if let Some(verdict) = self.try_state_write(changes, job, max_bytes).await? {
                return Ok(verdict);
            }
            // Others commit to the same keys (or the stream is busy): let them finish.
            tokio::time::sleep(Duration::from_millis(2 << try_) + Duration::from_micros(fastrand::u64(0..2000))).await;
        }
        Ok(KvVerdict::Conflict(
            "its keys, written by other commits at the same time,".into(),
        ))
    }

    /// One try: `None` when something it did not read moved under it (try again).
    async fn try_state_write(
        &self,
        changes: &KvChanges,
        job: Option<JobId>,
        max_bytes: u64,
    ) -> Result<Option<KvVerdict>, StoreError> {
        let f = changes.function.as_str();
        let bucket = format!("$KV.{}-state", self.options.prefix);
        let marker = job.map(|id| format!("{bucket}.a.{id}"));
        if let Some(marker) = &marker
            && self.last(marker).await?.is_some()
        {
            return Ok(Some(KvVerdict::AlreadyApplied));
        }
        let reads: HashMap<&str, u64> = changes
            .reads
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        // The last write of a key wins (as staged writes do).
        let writes: BTreeMap<&str, Option<&Vec<u8>>> = changes
            .writes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        let max_value = self.client.server_info().max_payload.saturating_sub(4096);
        let mut parts = Vec::new();
        if let Some(marker) = &marker {
            parts.push(Part {
                subject: marker.clone(),
                expected_subject_sequence: Some(0),
                check_subject: None,
                headers: vec![("Nats-TTL", APPLIED_KEPT.as_secs().to_string())],
                payload: Bytes::new(),
            });
        }
        let carrier = format!("{bucket}.x.{f}");
        let mut checked = HashSet::new();
        for page in &changes.listed {
            let index = format!("{}>", self.state_space("k", f));
            // The index's last sequence first: a key that comes or goes after it is a
            // conflict at commit, even one this listing already shows.
            let watermark = self.last(&index).await?.map_or(0, |l| l.sequence);
            let now = self
                .keys_at_least(f, None, page.skip, page.limit, watermark)
                .await?;
            if now != page.keys {
                return Ok(Some(KvVerdict::Conflict(format!(
                    "the listing of its keys from {}",
                    page.skip
                ))));
            }
            if checked.insert(index.clone()) {
                parts.push(Part {
                    subject: carrier.clone(),
                    expected_subject_sequence: Some(watermark),
                    check_subject: Some(index),
                    headers: Vec::new(),
                    payload: Bytes::new(),
                });
            }
        }
        let mut delta: i64 = 0;
        for (key, seen) in &reads {
            // A key written is checked by its write.
            if writes.contains_key(key) {
                continue;
            }
            let subject = self.state_subject("v", f, key);
            let (now, _) = self.state_get(f, key).await?;
            if now != *seen {
                return Ok(Some(KvVerdict::Conflict(format!("key {key:?}"))));
            }
            parts.push(Part {
                subject: carrier.clone(),
                expected_subject_sequence: Some(*seen),
                check_subject: Some(subject),
                headers: Vec::new(),
                payload: Bytes::new(),
            });
        }
        for (key, value) in &writes {
            let subject = self.state_subject("v", f, key);
            let last = self.last(&subject).await?;
            let (version, old) = match &last {
                None => (0, None),
                Some(l) if l.deleted => (l.sequence, None),
                Some(l) => (l.sequence, Some(l.size())),
            };
            if let Some(seen) = reads.get(key)
                && *seen != version
            {
                return Ok(Some(KvVerdict::Conflict(format!("key {key:?}"))));
            }
            if let Some(old) = old {
                delta -= (old + key.len()) as i64 + KEY_OVERHEAD as i64;
            }
            let index = self.state_subject("k", f, key);
            match (value, old.is_some()) {
                (Some(value), existed) => {
                    delta += (value.len() + key.len()) as i64 + KEY_OVERHEAD as i64;
                    // A value one message cannot carry goes to the object store (stored before
                    // the batch that names it; content-addressed, so a retry stores nothing).
                    let (payload, headers) = if value.len() > max_value {
                        let blob = crate::job::BlobRef::of(value);
                        self.keep_blob(blob, value).await?;
                        let named = format!("{}:{}", hex::encode(blob.digest), blob.size);
                        (Bytes::new(), vec![(BLOB_HEADER, named)])
                    } else {
                        (Bytes::copy_from_slice(value), Vec::new())
                    };
                    parts.push(Part {
                        subject,
                        expected_subject_sequence: Some(version),
                        check_subject: None,
                        headers,
                        payload,
                    });
                    if !existed {
                        parts.push(Part {
                            subject: index,
                            expected_subject_sequence: None,
                            check_subject: None,
                            headers: Vec::new(),
                            payload: Bytes::new(),
                        });
                    }
                }
                (None, true) => {
                    for subject in [subject, index] {
                        parts.push(Part {
                            subject,
                            expected_subject_sequence: None,
                            check_subject: None,
                            headers: vec![
                                ("KV-Operation", "DEL".into()),
                                ("Nats-TTL", DELETED_KEPT.as_secs().to_string()),
                            ],
                            payload: Bytes::new(),
                        });
                    }
                    // The value's own check: it is still what was read.
                    let n = parts.len();
                    parts[n - 2].expected_subject_sequence = Some(version);
                }
                (None, false) => {
                    // Deleting what is absent changes nothing; it was still absent.
                    parts.push(Part {
                        subject: carrier.clone(),
                        expected_subject_sequence: Some(version),
                        check_subject: Some(subject),
                        headers: Vec::new(),
                        payload: Bytes::new(),
                    });
                }
            }
        }
        if parts.is_empty() {
            return Ok(Some(KvVerdict::Applied));
        }
        if parts.len() > MAX_BATCH {
            return Err(unsupported(&format!(
                "a commit of {} key-value changes (one atomic batch holds {MAX_BATCH} messages: about 450 keys written)",
                parts.len()
            )));
        }
        if delta > 0 {
            let before = self.state_bytes(f).await?.max(0);
            let after = before + delta;
            if after as u64 > max_bytes {
                return Ok(Some(KvVerdict::Full(format!(
                    "function {f}'s key-value state would hold {after} bytes, more than the {max_bytes} allowed (the host operator sets --max-kv-bytes): delete keys first"
                ))));
            }
        }
        match super::batch::publish_atomic(&self.js, parts)
            .await
            .map_err(failed_because)?
        {
            Committed::Yes => {}
            Committed::WrongSequence => return Ok(None),
        }
        if delta != 0 {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Incr", format!("{delta:+}"));
            let counted = async {
                self.js
                    .publish_with_headers(self.bytes_subject(f), headers, Bytes::new())
                    .await?
                    .await
            };
            if let Err(e) = counted.await {
                tracing::warn!(function = f, error = %e, "the bytes a function's state holds were not counted");
            }
        }
        Ok(Some(KvVerdict::Applied))
    }

    /// Removes a deleted function's state (its keys, index and byte count).
    pub(super) async fn forget_state(&self, function: &str) -> Result<(), StoreError> {
        let stream = self
            .js
            .get_stream(format!("KV_{}-state", self.options.prefix))
            .await
            .map_err(failed)?;
        for space in ["v", "k"] {
            stream
                .purge()
                .filter(format!("{}>", self.state_space(space, function)))
                .await
                .map_err(failed)?;
        }
        stream
            .purge()
            .filter(format!("$KV.{}-state.x.{function}", self.options.prefix))
            .await
            .map_err(failed)?;
        self.counters
            .purge()
            .filter(self.bytes_subject(function))
            .await
            .map_err(failed)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_tokens_that_sort_as_bytes_and_come_back() {
        assert_eq!(tokens("ab"), "61.62");
        assert_eq!(key_of("p.k.f.61.62", "p.k.f."), Some("ab".into()));
        assert_eq!(key_of("p.k.f.c3.a9", "p.k.f.").as_deref(), Some("é"));
        let mut keys = vec!["b", "a", "ab", "é", "A"];
        let mut by_tokens = keys.clone();
        keys.sort_unstable();
        by_tokens.sort_by_key(|k| tokens(k));
        assert_eq!(keys, by_tokens);
        assert_eq!(key_of("p.k.f.zz", "p.k.f."), None);
    }
}
