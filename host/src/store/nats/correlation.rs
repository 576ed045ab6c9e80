//! Correlation listings on JetStream: everything a request caused, found from any host. The
//! index is a hint beside the records, as for dead letters: key `c.<hash>.<kind>.<id>` in the
//! jobs bucket (hash: of the correlation id; kind: `j` job, `e` event), written before the
//! record of a job or event that got its correlation id from elsewhere (a request header, or
//! the job or event that caused it). A job's own id needs no entry: it is looked up directly.
//! The records decide: an entry whose record is missing or carries another id is skipped.

use futures_util::StreamExt;
use sha2::Digest;

use super::{NatsBackend, failed};
use crate::job::{JobId, JobSummary};
use crate::store::{Correlated, StoreError};

impl NatsBackend {
    /// The prefix of a correlation id's index keys.
    fn correlation_prefix(correlation_id: &str) -> String {
        let hash = sha2::Sha256::digest(correlation_id.as_bytes());
        format!("c.{}", hex::encode(&hash[..16]))
    }

    /// Notes a job (`kind` `j`) or event (`e`) under its correlation id, before its record.
    pub(super) async fn index_correlated(
        &self,
        correlation_id: &str,
        kind: char,
        id: JobId,
    ) -> Result<(), StoreError> {
        let key = format!("{}.{kind}.{id}", Self::correlation_prefix(correlation_id));
        super::patiently("indexing a correlation id", |_| false, || {
            self.jobs.put(&key, bytes::Bytes::new())
        })
        .await
        .map_err(failed)?;
        Ok(())
    }

    /// Every job and event carrying `correlation_id`, oldest first.
    pub(super) async fn correlated_with(
        &self,
        correlation_id: &str,
    ) -> Result<Correlated, StoreError> {
        let filter = format!(
            "$KV.{}-jobs.{}.>",
            self.options.prefix,
            Self::correlation_prefix(correlation_id)
        );
        let mut subjects = super::patiently("listing a correlation id", |_| false, || {
            self.jobs_stream.info_with_subjects(filter.clone())
        })
        .await
        .map_err(failed)?;
        let mut jobs = Vec::new();
        let mut events = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(failed)?;
            let mut parts = subject.rsplit('.');
            let id = parts.next().and_then(|id| id.parse::<JobId>().ok());
            match (parts.next(), id) {
                (Some("j"), Some(id)) => jobs.push(id),
                (Some("e"), Some(id)) => events.push(id),
                _ => {}
            }
        }
        // The request's own job (or event), whose id is the correlation id.
        if let Ok(id) = correlation_id.parse::<JobId>() {
            jobs.push(id);
            events.push(id);
        }
        jobs.sort_unstable();
        jobs.dedup();
        events.sort_unstable();
        events.dedup();
        let mut found = Correlated::default();
        for id in jobs {
            if let Some((job, _)) = self.record(id).await?
                && job.correlation_id == correlation_id
            {
                found.jobs.push((id, JobSummary::of(job)));
            }
        }
        for id in events {
            if let Some(event) = self.event_record(id).await?
                && event.correlation_id == correlation_id
            {
                found.events.push((id, event));
            }
        }
        Ok(found)
    }
}
