//! The operations a shard's writer applies (one atomic domain operation each), the replies it
//! sends once a batch's fate is known, and what a batch did (its effects), delivered after its
//! commit.

use tokio::sync::oneshot;

use super::counts::CountDeltas;
use super::{
    AttemptStart, CancelError, NewEvent, NewJob, Published, StoreError, SubmitError, Submitted,
};
use crate::job::{AttemptReport, Job, JobId, QueuedJob};
use crate::manifest::RetryPolicy;

/// One atomic domain operation.
pub(crate) enum Op {
    Submit {
        job: NewJob,
        reply: oneshot::Sender<Result<Submitted, SubmitError>>,
    },
    /// Several jobs, accepted together or not at all.
    SubmitBatch {
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<Vec<JobId>, SubmitError>>,
    },
    /// Events and their deliveries, together or not at all.
    Publish {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<Published>, SubmitError>>,
    },
    Start {
        id: JobId,
        start: AttemptStart,
    },
    /// Extends a running attempt's lease.
    Renew {
        id: JobId,
        attempt: u32,
        lease_until: u64,
    },
    Finish {
        id: JobId,
        attempt: u32,
        report: AttemptReport,
        retry: RetryPolicy,
    },
    /// Cancels one queued or delayed job.
    Cancel {
        id: JobId,
        reply: oneshot::Sender<Result<Job, CancelError>>,
    },
    /// Moves dead letters of a function back to `queued` (the given ones, or up to `limit`).
    Redrive {
        function: String,
        ids: Option<Vec<JobId>>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<JobId>, StoreError>>,
    },
    /// Deletes dead letters of a function (the given ones, or up to `limit`).
    Purge {
        function: String,
        ids: Option<Vec<JobId>>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<JobId>, StoreError>>,
    },
    /// Cancels every non-terminal job of a function (it was deleted).
    CancelFunction {
        name: String,
        reason: String,
        reply: oneshot::Sender<Result<Vec<JobId>, StoreError>>,
    },
    /// How a webhook delivery attempt went.
    CallbackDone {
        id: JobId,
        result: super::CallbackResult,
    },
    /// Commits a job's key-value changes before its success (a job of another shard).
    KvCommit {
        id: JobId,
        attempt: u32,
        changes: crate::job::KvChanges,
        reply: oneshot::Sender<Result<super::kv::KvVerdict, StoreError>>,
    },
    /// Sets (or deletes) keys of a function's state from the API.
    KvWrite {
        changes: crate::job::KvChanges,
        reply: oneshot::Sender<Result<super::kv::KvVerdict, StoreError>>,
    },
    /// An ask waits for jobs this shard left in its table: hand them out (changes nothing).
    Refill,
    /// Jobs handed out to an ask that was dropped before it took them: hand them out again.
    Unclaim {
        jobs: Vec<(JobId, String)>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Op {
    /// True for operations that write (a batch of only the others commits nothing).
    pub(crate) fn writes(&self) -> bool {
        !matches!(self, Op::Refill | Op::Unclaim { .. } | Op::Shutdown { .. })
    }
}

/// A reply to send once the batch's fate is known.
pub(crate) enum Reply {
    Submit(
        oneshot::Sender<Result<Submitted, SubmitError>>,
        Result<Submitted, SubmitError>,
    ),
    /// A rare operation's answer, given the commit's outcome.
    Other(Answer),
    Shutdown(oneshot::Sender<()>),
}

/// Sends a rare operation's answer: the computed one, or the error that stopped the commit.
type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// The answer `value` to send on `tx` once the commit succeeded (or the storage error if not).
pub(crate) fn answer<T, E>(tx: oneshot::Sender<Result<T, E>>, value: Result<T, E>) -> Reply
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    Reply::Other(Box::new(move |failed| {
        let _ = tx.send(match failed {
            None => value,
            Some(e) => Err(e.clone().into()),
        });
    }))
}

impl Reply {
    /// Answers with the result computed in the transaction (the commit succeeded).
    pub(crate) fn commit(self) {
        let _ = match self {
            Reply::Submit(tx, r) => tx.send(r).map_err(drop),
            Reply::Other(f) => {
                f(None);
                Ok(())
            }
            Reply::Shutdown(tx) => tx.send(()).map_err(drop),
        };
    }

    /// Answers with the storage error (the batch was not committed).
    pub(crate) fn fail(self, e: &StoreError) {
        let _ = match self {
            Reply::Submit(tx, _) => tx.send(Err(e.clone().into())).map_err(drop),
            Reply::Other(f) => {
                f(Some(e));
                Ok(())
            }
            Reply::Shutdown(tx) => tx.send(()).map_err(drop),
        };
    }
}

/// What a batch did, delivered only after its commit.
#[derive(Default)]
pub(crate) struct Effects {
    pub(crate) replies: Vec<Reply>,
    /// Jobs submitted in this batch.
    pub(crate) accepted: u64,
    /// Events published in this batch.
    pub(crate) published: u64,
    /// Failed attempts that will be retried.
    pub(crate) retried: u64,
    /// Jobs that became dead letters (`failed` or `dead`).
    pub(crate) dead_lettered: u64,
    /// Expired jobs and keys deleted.
    pub(crate) swept: u64,
    /// Jobs that became ready (or were read from the ready table to refill the scheduler), in
    /// order; handed to the waiting leases after the commit.
    pub(crate) ready: Vec<QueuedJob>,
    /// Jobs the scheduler no longer holds (finished or cancelled) in this batch.
    pub(crate) released: Vec<JobId>,
    /// Functions whose ready table this batch read to the end (nothing left to hand out).
    pub(crate) drained: Vec<String>,
    pub(crate) terminal: Vec<JobId>,
    /// Changes to the per-function counters.
    pub(crate) counts: CountDeltas,
    /// Blobs added and deleted.
    pub(crate) blobs: super::blobs::BlobDelta,
    /// Callbacks due, for the sender.
    pub(crate) callbacks_due: Vec<JobId>,
    /// Callbacks whose delivery attempt was recorded (no longer with the sender).
    pub(crate) callbacks_finished: Vec<JobId>,
    /// Operations no caller waits on (an attempt's start and outcome, a callback's result),
    /// kept until the commit: when it fails on storage they are applied again once the file
    /// works, so an attempt's outcome is never dropped.
    pub(crate) held: Vec<Op>,
    /// Outcomes and attempt timings for the per-function tallies.
    pub(crate) noted: Vec<super::tally::Noted>,
    /// Leases this batch found run out: granted back if it does not commit.
    pub(crate) expired_leases: Vec<(JobId, u32, u64)>,
    pub(crate) shutdown: bool,
}

/// Answers an operation of a batch that failed before reaching it.
pub(crate) fn reject(op: Op, fx: &mut Effects) {
    match op {
        Op::Submit { reply, .. } => fx
            .replies
            .push(Reply::Submit(reply, Err(StoreError::Closed.into()))),
        Op::SubmitBatch { reply, .. } => fx
            .replies
            .push(answer(reply, Err(StoreError::Closed.into()))),
        Op::Publish { reply, .. } => fx
            .replies
            .push(answer(reply, Err(StoreError::Closed.into()))),
        Op::CancelFunction { reply, .. } | Op::Redrive { reply, .. } | Op::Purge { reply, .. } => {
            fx.replies.push(answer(reply, Ok(vec![])))
        }
        Op::Cancel { reply, .. } => fx
            .replies
            .push(answer(reply, Err(StoreError::Closed.into()))),
        Op::KvCommit { reply, .. } | Op::KvWrite { reply, .. } => {
            fx.replies.push(answer(reply, Err(StoreError::Closed)))
        }
        Op::Shutdown { reply } => {
            fx.shutdown = true;
            fx.replies.push(Reply::Shutdown(reply))
        }
        // Applied again once the file works (the writer decides; see `Effects::held`).
        op
        @ (Op::Finish { .. } | Op::Start { .. } | Op::Renew { .. } | Op::CallbackDone { .. }) => {
            fx.held.push(op)
        }
        Op::Refill | Op::Unclaim { .. } => {}
    }
}
