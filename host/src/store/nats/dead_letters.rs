//! Dead letters on JetStream: listing, redrive and purge, on any host.
//!
//! The index is a hint kept beside the records: key `d.<function>.<id>` in the jobs bucket,
//! written just before the record that makes the job `failed` or `dead` (so a dead letter is
//! never missing from it) and removed after a redrive or purge. The record decides: an entry
//! whose job is no longer a dead letter (its change lost a race, or its host died before
//! removing the entry) is skipped, and removed when met.

use futures_util::StreamExt;

use super::fanout::Fanout;
use super::{NatsBackend, failed};
use crate::job::{JobId, JobStatus, JobSummary, now_ms};
use crate::store::machine::is_dead_letter;
use crate::store::{DeadLetterSelection, JobPage, JobQuery, StoreError};

impl NatsBackend {
    /// The index key of a dead letter.
    pub(super) fn dead_letter_key(function: &str, id: JobId) -> String {
        format!("d.{function}.{id}")
    }

    /// The subject the index entry of a dead letter is stored under.
    fn dead_letter_subject(&self, function: &str, id: JobId) -> String {
        format!(
            "$KV.{}-jobs.{}",
            self.options.prefix,
            Self::dead_letter_key(function, id)
        )
    }

    /// Notes job `id` of `function` in the dead-letter index (before the record says so).
    pub(super) async fn index_dead_letter(&self, function: &str, id: JobId) -> Result<(), StoreError> {
        let key = Self::dead_letter_key(function, id);
        super::patiently("indexing a dead letter", |_| false, || {
            self.jobs.put(&key, bytes::Bytes::new())
        })
        .await
        .map_err(failed)?;
        Ok(())
    }

    /// Drops an index entry, with no trace (a stream purge of its subject).
    async fn unindex(&self, function: &str, id: JobId) {
        let purged = self
            .jobs_stream
            .purge()
            .filter(self.dead_letter_subject(function, id))
            .await;
        if let Err(e) = purged {
            tracing::debug!(%id, error = %e, "a dead letter's index entry was not removed; it is skipped when met");
        }
    }

    /// The ids in `function`'s dead-letter index, newest first.
    async fn indexed(&self, function: &str) -> Result<Vec<JobId>, StoreError> {
        let filter = format!("$KV.{}-jobs.d.{function}.>", self.options.prefix);
        let mut subjects = super::patiently("listing dead letters", |_| false, || {
            self.jobs_stream.info_with_subjects(filter.clone())
        })
        .await
        .map_err(failed)?;
        let mut ids = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(failed)?;
            if let Some(id) = subject
                .rsplit('.')
                .next()
                .and_then(|id| id.parse::<JobId>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    /// The dead letters of `function` among `candidates`, as their records say (stale entries
    /// are removed on the way).
    async fn confirmed(
        &self,
        function: &str,
        candidates: Vec<JobId>,
    ) -> Result<Vec<(JobId, crate::job::Job, u64)>, StoreError> {
        let mut out = Vec::new();
        for id in candidates {
            match self.record(id).await? {
                Some((job, revision)) if job.function == function && is_dead_letter(job.status) => {
                    out.push((id, job, revision))
                }
                Some((job, _)) if job.function != function => {}
                _ => self.unindex(function, id).await,
            }
        }
        Ok(out)
    }

    /// A page of a function's dead letters (`failed` or `dead`), newest first.
    pub(super) async fn dead_letter_page(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        let Some(function) = &query.function else {
            return Err(StoreError::Unsupported(
                "listing dead letters needs a function (?function=NAME)".into(),
            ));
        };
        let limit = query.limit.max(1);
        let mut ids = self.indexed(function).await?;
        if let Some(before) = query.before {
            ids.retain(|id| *id < before);
        }
        let mut page = JobPage::default();
        for chunk in ids.chunks(limit) {
            for (id, job, _) in self.confirmed(function, chunk.to_vec()).await? {
                if query.status.is_some_and(|s| s != job.status) {
                    continue;
                }
                if page.jobs.len() == limit {
                    page.next_cursor = page.jobs.last().map(|(id, _)| *id);
                    return Ok(page);
                }
                page.jobs.push((id, JobSummary::of(job)));
            }
        }
        Ok(page)
    }

    /// The dead letters a selection names, newest first.
    async fn selected(
        &self,
        function: &str,
        which: DeadLetterSelection,
    ) -> Result<Vec<(JobId, crate::job::Job, u64)>, StoreError> {
        let candidates = match which {
            DeadLetterSelection::All => self.indexed(function).await?,
            DeadLetterSelection::Ids(ids) => ids,
        };
        self.confirmed(function, candidates).await
    }

    /// Puts dead letters back in their function's queue (same id, attempts from zero).
    pub(super) async fn redrive_dead(
        &self,
        function: &str,
        which: DeadLetterSelection,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut redriven = Vec::new();
        let mut todo = self.selected(function, which).await?;
        while let Some((id, mut job, revision)) = todo.pop() {
            let from = job.status;
            crate::store::machine::redriven(&mut job, now_ms());
            if let Some(callback) = &mut job.callback {
                crate::store::callbacks::next_round(callback);
            }
            // The record and the order to queue it again land together (an outbox entry):
            // a queue message sent first could be drawn while the record still says the job
            // ended, and be dropped. Hosts redriving it at once queue it once (the message id
            // names the revision redriven).
            let requeue = Fanout {
                requeue: vec![(id.0, function.to_string(), format!("{id}.{revision}"))],
                ..Fanout::default()
            };
            let key = format!("{}.r{revision}", Self::outbox_key(id));
            let entry = bytes::Bytes::from(requeue.encode());
            if self
                .replace_with_outbox(id, &job, revision, &key, entry)
                .await?
            {
                self.moved(function, Some(from), Some(job.status)).await?;
                self.unindex(function, id).await;
                self.fan_out(&key, &requeue, false).await;
                redriven.push(id);
            } else if let Some((job, revision)) = self.record(id).await?
                && is_dead_letter(job.status)
            {
                // Changed meanwhile but still a dead letter: once more.
                todo.push((id, job, revision));
            }
        }
        Ok(redriven)
    }

    /// Deletes dead letters for good.
    pub(super) async fn purge_dead(
        &self,
        function: &str,
        which: DeadLetterSelection,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut purged = Vec::new();
        for (id, job, revision) in self.selected(function, which).await? {
            let removed = self
                .jobs
                .purge_expect_revision(Self::job_key(id), Some(revision))
                .await;
            match removed {
                Ok(()) => {
                    self.moved(function, Some(job.status), None).await?;
                    self.unindex(function, id).await;
                    purged.push(id);
                }
                // Changed meanwhile (redriven on another host): no longer this purge's.
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::kv::PurgeErrorKind::WrongLastRevision => {}
                Err(e) => return Err(failed(e)),
            }
        }
        Ok(purged)
    }
}

/// True for a query this backend answers from the dead-letter index.
pub(super) fn wants_dead_letters(query: &JobQuery) -> bool {
    query.function.is_some()
        && (query.dead_letters
            || matches!(query.status, Some(JobStatus::Failed | JobStatus::Dead)))
}
