//! Why a store operation was refused or failed: one error type per operation, each message
//! saying what to do next.

use crate::job::{JobId, JobStatus};

/// A storage failure: the database could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend's storage failed (disk full, I/O error); the source says how.
    #[error("storage error: {0}; check the data directory's disk and permissions")]
    Backend(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// The store could not do what was asked (a file that will not open, a record that will
    /// not decode).
    #[error("storage error: {0}; check the data directory's disk and permissions")]
    Storage(String),
    /// The cluster the store lives on (NATS JetStream) did not answer or refused; the source
    /// says how.
    #[error(
        "cluster storage error: {0}; retry shortly, and check that the NATS servers are up and JetStream has its leaders (nats-server's /healthz)"
    )]
    Cluster(#[source] std::sync::Arc<dyn std::error::Error + Send + Sync>),
    /// What was asked is not done by this backend (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The host is shutting down and no longer writes.
    #[error("the host is shutting down; retry against the restarted host")]
    Closed,
    /// A deploy of changes was worked out from a version that is no longer the current one
    /// (another change landed meanwhile); nothing was stored.
    #[error(
        "function {function:?} changed while this deploy was prepared (it is now at version {current:?}); send the deploy again"
    )]
    Changed {
        /// The function.
        function: String,
        /// Its current version (`None`: not deployed).
        current: Option<u32>,
    },
    /// A data file holds something that does not read back: damaged on disk, or changed
    /// outside Sluice.
    #[error(
        "{file} is damaged ({detail}): stop the host, run `sluice check --data <data dir>`, and restore the data directory from a backup (docs/delivery.md#checking-and-restoring-a-data-directory)"
    )]
    Damaged {
        /// The file.
        file: String,
        /// What did not read back.
        detail: String,
    },
}

/// The file of a [`StoreError::Damaged`] not yet known where it is made.
const SOME_FILE: &str = "a data file";

impl StoreError {
    /// A record that does not decode (the file is named by [`StoreError::in_file`]).
    pub(crate) fn damaged(detail: String) -> StoreError {
        StoreError::Damaged {
            file: SOME_FILE.into(),
            detail,
        }
    }

    /// Names `path` in a damage report made without it; redb's own corruption reports become
    /// damage reports too.
    pub(crate) fn in_file(self, path: &std::path::Path) -> StoreError {
        match self {
            StoreError::Damaged { file, detail } if file == SOME_FILE => StoreError::Damaged {
                file: path.display().to_string(),
                detail,
            },
            StoreError::Backend(e)
                if e.downcast_ref::<redb::Error>()
                    .is_some_and(|r| matches!(r, redb::Error::Corrupted(_))) =>
            {
                StoreError::Damaged {
                    file: path.display().to_string(),
                    detail: e.to_string(),
                }
            }
            other => other,
        }
    }

    /// A damage report for a panic while reading or writing `path` (redb panics on some
    /// malformed pages).
    pub(crate) fn panicked(
        path: &std::path::Path,
        panic: &(dyn std::any::Any + Send),
    ) -> StoreError {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        StoreError::Damaged {
            file: path.display().to_string(),
            detail: format!("reading it failed: {what}"),
        }
    }
}

pub(crate) fn storage(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    StoreError::Backend(std::sync::Arc::new(e))
}

/// Why a submit was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// No function of that name is deployed.
    #[error(
        "function {0:?} is not deployed; deploy it first (`sluice deploy`, or PUT /v1/functions/{0})"
    )]
    FunctionNotFound(String),
    /// The function has `max_queued` unfinished jobs already.
    #[error(
        "function {function:?} would pass its max_queued of {max_queued} unfinished jobs: retry after some finish, or raise max_queued"
    )]
    QueueFull {
        /// The function.
        function: String,
        /// Its limit.
        max_queued: u64,
    },
    /// The host holds its budget of unfinished work (input bytes plus 128 bytes per job).
    #[error(
        "the host holds its budget of {budget} bytes of unfinished jobs (their inputs plus 128 bytes per job): retry after some finish, or raise --max-queued-bytes"
    )]
    BudgetExhausted {
        /// The budget, in bytes.
        budget: u64,
    },
    /// The idempotency key was used before with a different request.
    #[error(
        "idempotency key {0:?} was already used with a different request (another body or content type); use a new key for a new request"
    )]
    IdempotencyConflict(String),
    /// Storage failed; nothing was accepted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a function delete was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeleteError {
    /// No function of that name is deployed.
    #[error("function {0:?} is not deployed")]
    NotFound(String),
    /// The function still has queued or running jobs.
    #[error(
        "function {name:?} has {pending} queued or running job(s); wait for them, or delete with ?force=true to cancel them"
    )]
    Busy {
        /// The function.
        name: String,
        /// Its non-terminal jobs.
        pending: u64,
    },
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a rollback was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RollbackError {
    /// No function of that name is deployed.
    #[error("function {0:?} is not deployed")]
    NotFound(String),
    /// The function has only its first version.
    #[error(
        "function {0:?} has no earlier version to roll back to; see `sluice versions {0}` or GET /v1/functions/{0}/versions"
    )]
    NoEarlierVersion(String),
    /// The version asked for is the current one or later.
    #[error(
        "version {to} of {name:?} is not earlier than the current version {current}: name an earlier one (`sluice versions {name}`, or GET /v1/functions/{name}/versions)"
    )]
    NotEarlier {
        /// The function.
        name: String,
        /// The version asked for.
        to: u32,
        /// The current version.
        current: u32,
    },
    /// The function never had that version.
    #[error(
        "function {name:?} has no version {to}; see `sluice versions {name}` or GET /v1/functions/{name}/versions"
    )]
    UnknownVersion {
        /// The function.
        name: String,
        /// The version asked for.
        to: u32,
    },
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No such job.
    #[error("job {0} does not exist")]
    NotFound(JobId),
    /// Only `queued` and `delayed` jobs can be cancelled.
    #[error(
        "job {id} is {} and cannot be cancelled: only queued or delayed jobs can",
        status.as_str()
    )]
    NotCancellable {
        /// The job.
        id: JobId,
        /// Its status.
        status: JobStatus,
    },
    /// Storage failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
