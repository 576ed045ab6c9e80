//! The rules of a job's life as pure functions: from what a job is and what happened to what
//! it becomes. No tables, no clock, no randomness (the caller passes them in): the writer
//! applies what these decide, and any backend can reuse them unchanged.
//!
//! A job's attempts are fenced by number: only the current attempt may start or finish it, so a
//! stale attempt (cancelled, superseded, or whose outcome was lost) changes nothing.

use crate::job::{FailureKind, Job, JobStatus, MAX_CONFLICTS};
use crate::manifest::RetryPolicy;

/// True when attempt `attempt` may start a job that shows `status` after `attempts` attempts:
/// the next attempt of a queued job, or of a running one whose last outcome was lost.
pub(crate) fn may_start(status: JobStatus, attempts: u32, attempt: u32) -> bool {
    matches!(status, JobStatus::Queued | JobStatus::Running) && attempts + 1 == attempt
}

/// True when attempt `attempt` is the one whose outcome a job showing `status` after
/// `attempts` attempts is waiting for: the running attempt, or the next one (a short attempt
/// finishes before its start is recorded; a job whose outcome was lost with a failed commit is
/// handed out again while it still shows the lost attempt running).
pub(crate) fn is_current(status: JobStatus, attempts: u32, attempt: u32) -> bool {
    (status == JobStatus::Running && attempts == attempt) || may_start(status, attempts, attempt)
}

/// What a job becomes after one of its attempts ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// It succeeded: terminal.
    Succeeded,
    /// A permanent error: terminal, a dead letter.
    Failed,
    /// Out of attempts: terminal, a dead letter.
    Dead,
    /// It runs again after the retry policy's delay.
    Retry,
    /// A key-value conflict: it runs again soon, and this attempt does not count.
    Rerun,
}

/// What attempt `attempt` (which ended with `failure`, or succeeded when `None`) makes of a job
/// that had `conflicts` key-value conflicts before it, under `retry`.
pub(crate) fn after_attempt(
    failure: Option<FailureKind>,
    attempt: u32,
    conflicts: u32,
    retry: &RetryPolicy,
) -> Next {
    match failure {
        None => Next::Succeeded,
        Some(FailureKind::Conflict) if conflicts < MAX_CONFLICTS => Next::Rerun,
        Some(FailureKind::Permanent) => Next::Failed,
        // Attempts lost to conflicts do not count (the ones past the bound do).
        Some(_) if attempt.saturating_sub(conflicts) >= retry.max_attempts => Next::Dead,
        Some(_) => Next::Retry,
    }
}

/// The longest pause before a rerun after a job's `conflicts`-th conflict, in ms: it grows, so
/// attempts racing for one key spread out.
pub(crate) fn rerun_ceiling_ms(conflicts: u32) -> u64 {
    (5u64 << conflicts.min(8)).min(1000)
}

/// True when a client may cancel a job showing `status` (one that has not started running).
pub(crate) fn may_cancel(status: JobStatus) -> bool {
    matches!(status, JobStatus::Queued | JobStatus::Delayed)
}

/// True when a job showing `status` is a dead letter, which a redrive queues again.
pub(crate) fn is_dead_letter(status: JobStatus) -> bool {
    matches!(status, JobStatus::Failed | JobStatus::Dead)
}

/// A dead letter redriven at `now`: queued again under the same id, its attempts counted from
/// zero, its last end forgotten (its attempt history stays).
pub(crate) fn redriven(job: &mut Job, now: u64) {
    job.status = JobStatus::Queued;
    job.attempts = 0;
    job.conflicts = 0;
    job.started_at = None;
    job.finished_at = None;
    job.error = None;
    job.output = None;
    job.output_content_type = None;
    job.ready_at = now;
}

/// Where a new job starts: `delayed` while its not-before time is ahead, else `queued`.
pub(crate) fn on_submit(not_before: Option<u64>, now: u64) -> Accepted {
    match not_before.filter(|&at| at > now) {
        Some(at) => Accepted::Delayed(at),
        None => Accepted::Queued,
    }
}

/// What a submit makes of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Ready now (or, with an ordering key, once the jobs before it end).
    Queued,
    /// Waiting until this time (ms since the Unix epoch).
    Delayed(u64),
}

/// True when a job may enter its function's ready queue now: it is not behind an earlier job of
/// its ordering key (`key_head`: the first unfinished job of its key, if it has a key).
pub(crate) fn may_enter_ready(id: u128, key_head: Option<u128>) -> bool {
    key_head.is_none_or(|head| head == id)
}

/// True when a job that now shows `status` lets the next job of its ordering key run: it ended.
pub(crate) fn releases_key(status: JobStatus) -> bool {
    status.is_terminal()
}

/// True when the next job of a key, showing `status`, enters the ready queue as the key's new
/// head (a delayed one enters when due; a cancelled one never).
pub(crate) fn next_head_enters_ready(status: JobStatus) -> bool {
    status == JobStatus::Queued
}

/// What a job's end does to the pipeline it is part of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PipelineStep {
    /// Not part of a pipeline, or not ended: nothing.
    None,
    /// It succeeded and its version names a next function: its output becomes a job of it.
    NextStage(String),
    /// The chain ends here with this status (shown by its head).
    End(JobStatus),
}

/// What a job that ended with `status` (in a pipeline when `in_pipeline`) does next, given its
/// version's `then`.
pub(crate) fn pipeline_step(
    in_pipeline: bool,
    status: JobStatus,
    then: Option<String>,
) -> PipelineStep {
    match then {
        Some(next) if status == JobStatus::Succeeded => PipelineStep::NextStage(next),
        _ if in_pipeline && status.is_terminal() => PipelineStep::End(status),
        _ => PipelineStep::None,
    }
}

/// True when a job's callback is due: the job shows a terminal status (a pipeline's head once
/// its chain ended) and its callback has not been scheduled yet.
pub(crate) fn callback_due(visible: JobStatus, state: crate::job::CallbackState) -> bool {
    visible.is_terminal() && state == crate::job::CallbackState::Waiting
}

/// What a callback becomes after its `attempts`-th delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterDelivery {
    /// The receiver took it.
    Delivered,
    /// It is tried again after the callback retry policy's delay.
    RetryLater,
    /// No more tries: a failure the receiver refused for good, or attempts used up.
    GaveUp,
}

/// What a delivery attempt that `delivered` (or failed, retryable when `retry`) makes of a
/// callback after `attempts` attempts, under `policy`.
pub(crate) fn after_delivery(
    delivered: bool,
    retry: bool,
    attempts: u32,
    policy: &RetryPolicy,
) -> AfterDelivery {
    if delivered {
        AfterDelivery::Delivered
    } else if retry && attempts < policy.max_attempts {
        AfterDelivery::RetryLater
    } else {
        AfterDelivery::GaveUp
    }
}

/// True when a lease that ends at `until` has run out at `now`.
pub(crate) fn lease_expired(until: u64, now: u64) -> bool {
    until <= now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::FailureKind as K;
    use JobStatus::*;

    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff_base_ms: 10,
        backoff_max_ms: 10,
    };

    /// Every status against the attempt numbers around it: only the next attempt starts, only
    /// the running or next one finishes.
    #[test]
    fn fences_admit_only_the_current_attempt() {
        for (status, starts, finishes) in [
            (Queued, vec![3], vec![3]),
            (Running, vec![3], vec![2, 3]),
            (Delayed, vec![], vec![]),
            (Succeeded, vec![], vec![]),
            (Failed, vec![], vec![]),
            (Dead, vec![], vec![]),
            (Cancelled, vec![], vec![]),
        ] {
            for attempt in 0..6 {
                assert_eq!(
                    may_start(status, 2, attempt),
                    starts.contains(&attempt),
                    "{status:?} start {attempt}"
                );
                assert_eq!(
                    is_current(status, 2, attempt),
                    finishes.contains(&attempt),
                    "{status:?} finish {attempt}"
                );
            }
        }
    }

    /// Each way an attempt ends, on each side of the attempt budget.
    #[test]
    fn every_ending_leads_where_it_should() {
        assert_eq!(after_attempt(None, 3, 0, &RETRY), Next::Succeeded);
        assert_eq!(
            after_attempt(Some(K::Permanent), 1, 0, &RETRY),
            Next::Failed
        );
        for kind in [K::Retryable, K::Trap, K::Timeout, K::Instantiate] {
            assert_eq!(after_attempt(Some(kind), 1, 0, &RETRY), Next::Retry);
            assert_eq!(after_attempt(Some(kind), 2, 0, &RETRY), Next::Retry);
            assert_eq!(after_attempt(Some(kind), 3, 0, &RETRY), Next::Dead);
            // Two attempts lost to conflicts leave room for two more.
            assert_eq!(after_attempt(Some(kind), 4, 2, &RETRY), Next::Retry);
        }
        assert_eq!(
            after_attempt(Some(K::Conflict), 50, 10, &RETRY),
            Next::Rerun
        );
        assert_eq!(
            after_attempt(Some(K::Conflict), 200, MAX_CONFLICTS, &RETRY),
            Next::Dead,
            "past the bound a conflict counts"
        );
        assert!(may_cancel(Queued) && may_cancel(Delayed));
        assert!(!may_cancel(Running) && !may_cancel(Succeeded));
        assert!(is_dead_letter(Failed) && is_dead_letter(Dead) && !is_dead_letter(Cancelled));
        assert_eq!(rerun_ceiling_ms(1), 10);
        assert_eq!(rerun_ceiling_ms(50), 1000);
    }

    #[test]
    fn a_submit_waits_only_for_a_time_ahead() {
        assert_eq!(on_submit(None, 100), Accepted::Queued);
        assert_eq!(on_submit(Some(100), 100), Accepted::Queued);
        assert_eq!(on_submit(Some(50), 100), Accepted::Queued);
        assert_eq!(on_submit(Some(101), 100), Accepted::Delayed(101));
    }

    #[test]
    fn ordering_keys_let_one_job_run_at_a_time() {
        assert!(may_enter_ready(7, None), "no key");
        assert!(may_enter_ready(7, Some(7)), "the key's head");
        assert!(!may_enter_ready(8, Some(7)), "behind the head");
        for status in JobStatus::ALL {
            assert_eq!(releases_key(status), status.is_terminal(), "{status:?}");
            assert_eq!(
                next_head_enters_ready(status),
                status == Queued,
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_pipeline_goes_on_only_after_a_success() {
        let then = || Some("next".to_string());
        assert_eq!(
            pipeline_step(false, Succeeded, then()),
            PipelineStep::NextStage("next".into())
        );
        assert_eq!(
            pipeline_step(true, Succeeded, then()),
            PipelineStep::NextStage("next".into())
        );
        assert_eq!(
            pipeline_step(true, Succeeded, None),
            PipelineStep::End(Succeeded)
        );
        for ended in [Failed, Dead, Cancelled] {
            assert_eq!(pipeline_step(true, ended, then()), PipelineStep::End(ended));
            assert_eq!(pipeline_step(false, ended, then()), PipelineStep::None);
        }
        assert_eq!(pipeline_step(false, Succeeded, None), PipelineStep::None);
        assert_eq!(pipeline_step(true, Delayed, then()), PipelineStep::None);
    }

    #[test]
    fn callbacks_are_due_once_and_retried_within_their_policy() {
        use crate::job::CallbackState as C;
        for status in JobStatus::ALL {
            assert_eq!(callback_due(status, C::Waiting), status.is_terminal());
            assert!(!callback_due(status, C::Pending));
            assert!(!callback_due(status, C::Delivered));
        }
        assert_eq!(
            after_delivery(true, false, 9, &RETRY),
            AfterDelivery::Delivered
        );
        assert_eq!(
            after_delivery(false, true, 1, &RETRY),
            AfterDelivery::RetryLater
        );
        assert_eq!(
            after_delivery(false, true, 2, &RETRY),
            AfterDelivery::RetryLater
        );
        assert_eq!(
            after_delivery(false, true, 3, &RETRY),
            AfterDelivery::GaveUp
        );
        assert_eq!(
            after_delivery(false, false, 1, &RETRY),
            AfterDelivery::GaveUp
        );
    }

    #[test]
    fn a_lease_runs_out_at_its_end() {
        assert!(!lease_expired(100, 99));
        assert!(lease_expired(100, 100));
        assert!(lease_expired(100, 101));
    }

    mod model {
        //! Random histories of one job's attempts, applied through the rules above, checked
        //! against a model that just counts.
        use super::*;
        use proptest::prelude::*;

        /// What happens next to the job.
        #[derive(Clone, Debug)]
        enum Step {
            /// The scheduler hands it out and the attempt ends this way.
            Run(Option<K>),
            /// A stale attempt (this many behind) reports an outcome.
            Stale(u32, Option<K>),
        }

        fn kind() -> impl Strategy<Value = Option<K>> {
            prop_oneof![
                Just(None),
                Just(Some(K::Retryable)),
                Just(Some(K::Permanent)),
                Just(Some(K::Trap)),
                Just(Some(K::Timeout)),
                Just(Some(K::Conflict)),
            ]
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => kind().prop_map(Step::Run),
                1 => (1u32..4, kind()).prop_map(|(b, k)| Step::Stale(b, k)),
            ]
        }

        proptest! {
            #[test]
            fn a_job_ends_as_the_model_says(
                steps in proptest::collection::vec(step(), 1..60),
                max_attempts in 1u32..6,
            ) {
                let retry = RetryPolicy { max_attempts, backoff_base_ms: 1, backoff_max_ms: 1 };
                // The job as the rules keep it.
                let (mut status, mut attempts, mut conflicts) = (Queued, 0u32, 0u32);
                // The model: failures that count, and how the job ended.
                let (mut counted, mut model_conflicts) = (0u32, 0u32);
                let mut ended: Option<JobStatus> = None;
                for step in steps {
                    let (attempt, kind) = match step {
                        Step::Run(kind) => {
                            if !matches!(status, Queued | Delayed) {
                                continue;
                            }
                            // A delayed job comes due and is queued again.
                            status = Queued;
                            prop_assert!(may_start(status, attempts, attempts + 1));
                            (attempts + 1, kind)
                        }
                        Step::Stale(behind, kind) => (attempts.saturating_sub(behind), kind),
                    };
                    if !is_current(status, attempts, attempt) {
                        // Fenced out: nothing changes.
                        continue;
                    }
                    prop_assert!(ended.is_none(), "a terminal job took an outcome");
                    attempts = attempt;
                    match after_attempt(kind, attempt, conflicts, &retry) {
                        Next::Succeeded => status = Succeeded,
                        Next::Failed => status = Failed,
                        Next::Dead => status = Dead,
                        Next::Retry => status = Delayed,
                        Next::Rerun => {
                            conflicts += 1;
                            status = Delayed;
                        }
                    }
                    // The model's view of the same outcome.
                    match kind {
                        None => ended = Some(Succeeded),
                        Some(K::Permanent) => ended = Some(Failed),
                        Some(K::Conflict) if model_conflicts < MAX_CONFLICTS => {
                            model_conflicts += 1;
                        }
                        Some(_) => {
                            counted += 1;
                            if counted >= max_attempts {
                                ended = Some(Dead);
                            }
                        }
                    }
                    match ended {
                        Some(end) => prop_assert_eq!(status, end),
                        None => prop_assert_eq!(status, Delayed),
                    }
                    prop_assert_eq!(conflicts, model_conflicts);
                    prop_assert!(attempts - conflicts <= max_attempts);
                }
            }
        }
    }
}
