//! Listing jobs (`GET /v1/jobs?function=&status=&before=`), newest first, on any host.
//!
//! Every new job is noted in stream `<p>_index` under subject `<p>.i.<function>`, the job id
//! as payload, deduplicated by id: a hint beside the record, which decides (a job whose record
//! is gone, or whose status does not match, is skipped). A job's note is stored after its id
//! was made, so reading the notes stored since time T finds every job created since T. A page
//! reads the notes of a window of time before its cursor, keeps the jobs whose ids are in the
//! window, and widens the window (doubling) until the page is full or the stream's start is
//! reached.
//!
//! Limits: a note is published without waiting for its acknowledgement (like the counts), so
//! a job whose note was lost while a server failed over is missing from listings (its record
//! is whole); a page after a cursor reads notes up to [`LATE`] after the cursor's time, so a job
//! whose record was made more than that after its id (an outbox entry finished late) shows on
//! the first pages only; a status filter reads the records of the window until the page is full
//! (a rare status over a long history reads many).

use std::collections::BTreeSet;
use std::time::{Duration, UNIX_EPOCH};

use super::direct::{End, batch, sequence};
use super::{NatsBackend, failed};
use crate::job::{JobId, JobSummary, now_ms};
use crate::store::{JobPage, JobQuery, StoreError};

/// How long after its id's time a job's note may be stored and still be found behind a cursor.
const LATE: Duration = Duration::from_secs(60);
/// How far a host's clock (which dates job ids) may run ahead of the servers' (which date
/// notes): notes are read from this much before the window they settle.
const SKEW: Duration = Duration::from_secs(5);
/// Notes asked for per request.
const BATCH: u64 = 500;

/// When `id` was made, in ms since the Unix epoch.
fn made_at(id: JobId) -> u64 {
    (id.0 >> 80) as u64
}

/// `ms` as RFC 3339, as the server reads times.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl NatsBackend {
    fn index_stream(&self) -> String {
        format!("{}_index", self.options.prefix)
    }

    fn index_subject(&self, function: &str) -> String {
        format!("{}.i.{function}", self.options.prefix)
    }

    /// Notes a new job of `function` for listings (before or with its record; a note sent
    /// twice is stored once).
    pub(super) async fn note_job(&self, function: &str, id: JobId) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.to_string());
        let sent = self
            .client
            .publish_with_headers(
                self.index_subject(function),
                headers,
                id.to_string().into(),
            )
            .await;
        if let Err(e) = sent {
            tracing::warn!(function, %id, error = %e, "a job was not noted for listings");
        }
    }

    /// Forgets a deleted function's notes.
    pub(super) async fn forget_notes(&self, function: &str) -> Result<(), StoreError> {
        let stream = self
            .js
            .get_stream(self.index_stream())
            .await
            .map_err(failed)?;
        stream
            .purge()
            .filter(self.index_subject(function))
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// The first sequence of the index stored at or after `ms` (any function), if any.
    async fn index_sequence_at(&self, ms: u64) -> Result<Option<u64>, StoreError> {
        let request = serde_json::json!({ "start_time": rfc3339(ms), "batch": 1 });
        let (found, _) = batch(&self.client, &self.index_stream(), &request).await?;
        found.first().map(sequence).transpose()
    }

    /// The ids noted under `filter` from time `from` (ms) on, stopping before sequence
    /// `stop`; returns them and the sequence of the first (the next window's stop).
    async fn notes_since(
        &self,
        filter: &str,
        from: u64,
        stop: u64,
    ) -> Result<(Vec<JobId>, Option<u64>), StoreError> {
        let mut request = serde_json::json!({
            "start_time": rfc3339(from),
            "next_by_subj": filter,
            "batch": BATCH,
        });
        let mut ids = Vec::new();
        let mut first = None;
        loop {
            let (found, end) = batch(&self.client, &self.index_stream(), &request).await?;
            let mut last = None;
            for message in &found {
                let seq = sequence(message)?;
                if seq >= stop {
                    return Ok((ids, first));
                }
                first.get_or_insert(seq);
                last = Some(seq);
                if let Some(id) = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse::<JobId>().ok())
                {
                    ids.push(id);
                }
            }
            match (end, last) {
                (End::Complete { pending, .. }, Some(last)) if pending > 0 => {
                    request = serde_json::json!({
                        "seq": last + 1,
                        "next_by_subj": filter,
                        "batch": BATCH,
                    });
                }
                _ => return Ok((ids, first)),
            }
        }
    }

    /// A page of jobs, newest first.
    pub(super) async fn job_page(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let limit = query.limit.max(1);
        let filter = match &query.function {
            Some(function) => self.index_subject(function),
            None => format!("{}.i.>", self.options.prefix),
        };
        let info = self
            .js
            .get_stream(self.index_stream())
            .await
            .map_err(failed)?
            .cached_info()
            .clone();
        let mut page = JobPage::default();
        if info.state.messages == 0 {
            return Ok(page);
        }
        let oldest = (info.state.first_timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let top = query.before.map(made_at).unwrap_or_else(now_ms);
        let mut stop = match query.before {
            Some(before) => self
                .index_sequence_at(made_at(before) + LATE.as_millis() as u64)
                .await?
                .unwrap_or(u64::MAX),
            None => u64::MAX,
        };
        let mut window = (self.options.listing_window.as_millis() as u64).max(1);
        let mut from = top.saturating_sub(window);
        let mut candidates = BTreeSet::new();
        // Ids at or above this one are looked at.
        let mut below = query.before.unwrap_or(JobId(u128::MAX));
        loop {
            let read_from = from.saturating_sub(SKEW.as_millis() as u64);
            let (ids, first) = self.notes_since(&filter, read_from, stop).await?;
            stop = first.unwrap_or(stop);
            candidates.extend(ids.into_iter().filter(|id| *id < below));
            let everything = read_from <= oldest;
            // Every job made since `from` is among the candidates now.
            let settled = if everything { 0 } else { from };
            let ready: Vec<JobId> = candidates
                .range(..below)
                .rev()
                .take_while(|id| made_at(**id) >= settled)
                .copied()
                .collect();
            for id in ready {
                below = id;
                let Some((job, _)) = self.record(id).await? else {
                    continue;
                };
                if query.function.as_ref().is_some_and(|f| *f != job.function)
                    || query.status.is_some_and(|s| s != job.status)
                {
                    continue;
                }
                page.jobs.push((id, JobSummary::of(job)));
                if page.jobs.len() == limit {
                    page.next_cursor = Some(id);
                    return Ok(page);
                }
            }
            if everything {
                return Ok(page);
            }
            window = window.saturating_mul(2);
            from = from.saturating_sub(window);
        }
    }
}
