//! Pipelines (`then`) on JetStream: a stage that succeeds makes the next function's job from
//! its output; the head (the job the client submitted) stands for the chain and takes the
//! last stage's end. The same rules as the embedded store (`store::machine::pipeline_step`).
//!
//! A stage's own record changes with its outcome (one compare-and-set); the next stage's job
//! and the change to the head's record travel in the stage's outbox entry (see `fanout`),
//! written with that outcome, so a host that dies in between leaves them to the sweep. The
//! head's change is idempotent: a stage is added once, the chain ends once.

use serde::{Deserialize, Serialize};

use super::NatsBackend;
use super::fanout::Fanout;
use crate::job::{Job, JobId, JobStatus, Pipeline, now_ms};
use crate::store::machine::{PipelineStep, pipeline_step};
use crate::store::StoreError;

/// A change to a pipeline's head, carried in an outbox entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct HeadChange {
    /// The head's job id.
    pub(super) head: u128,
    /// A stage to add to its list.
    pub(super) add_stage: Option<u128>,
    /// How the chain ended, with the last stage's output.
    pub(super) end: Option<ChainEnd>,
}

/// The end of a chain, as its head takes it: its status, error and end time, and the stage
/// whose output the head takes (read from that stage's record when the change is applied, so
/// a large output never travels in the entry).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ChainEnd {
    pub(super) status: JobStatus,
    pub(super) last_stage: Option<u128>,
    pub(super) error: Option<String>,
    pub(super) finished_at: Option<u64>,
}

impl NatsBackend {
    /// Moves a pipeline on after job `id` (`job`, as its outcome leaves it) ended with `then`
    /// as its version's next function: its own record's pipeline changes here; the next
    /// stage and the head's change go in `fanout`.
    pub(super) fn plan_pipeline(
        &self,
        id: JobId,
        job: &mut Job,
        then: Option<String>,
        fanout: &mut Fanout,
    ) {
        let head = match &job.pipeline {
            Some(Pipeline::Stage { head }) => Some(JobId(*head)),
            Some(Pipeline::Head { .. }) => Some(id),
            None => None,
        };
        match pipeline_step(head.is_some(), job.status, then) {
            PipelineStep::NextStage(next) => {
                let head = head.unwrap_or(id);
                let stage = self.plan_job(
                    crate::store::outbox::next_stage(id, job, next, head),
                    now_ms(),
                    fanout,
                );
                // A stage that ended as it was made (its function is gone, or the chain is
                // too long) ends the chain with it.
                let ended = fanout
                    .jobs
                    .iter()
                    .find(|(j, _)| *j == stage)
                    .map(|(_, s)| s)
                    .filter(|s| s.status.is_terminal())
                    .map(|s| (s.status, s.function.clone(), s.error.clone()));
                let end = ended.map(|(status, function, error)| ChainEnd {
                    status,
                    last_stage: None,
                    error: Some(format!(
                        "stage {stage} ({function}) ended {}: {}",
                        status.as_str(),
                        error.unwrap_or_default()
                    )),
                    finished_at: Some(now_ms()),
                });
                if head == id {
                    if let Some(end) = &end {
                        job.error = end.error.clone();
                    }
                    job.pipeline = Some(Pipeline::Head {
                        stages: vec![id.0, stage.0],
                        ended: end.map(|e| e.status),
                    });
                } else {
                    fanout.head = Some(HeadChange {
                        head: head.0,
                        add_stage: Some(stage.0),
                        end,
                    });
                }
            }
            PipelineStep::End(status) => match head {
                Some(head) if head == id => {
                    if let Some(Pipeline::Head { ended, .. }) = &mut job.pipeline {
                        *ended = Some(status);
                    }
                }
                Some(head) => {
                    fanout.head = Some(HeadChange {
                        head: head.0,
                        add_stage: None,
                        end: Some(ChainEnd {
                            status,
                            last_stage: Some(id.0),
                            error: job.error.as_ref().map(|e| {
                                format!(
                                    "stage {id} ({}) ended {}: {e}",
                                    job.function,
                                    status.as_str()
                                )
                            }),
                            finished_at: job.finished_at,
                        }),
                    });
                }
                None => {}
            },
            PipelineStep::None => {}
        }
    }

    /// Records job `id`'s new state over `revision` after an end that is not an attempt's
    /// outcome (its lease ran out for good, a cancel): its callback scheduled, and the change
    /// its pipeline's head takes in an outbox entry written with it. False when another change
    /// came first.
    pub(super) async fn replace_ending(
        &self,
        id: JobId,
        job: &mut Job,
        revision: u64,
    ) -> Result<bool, StoreError> {
        let mut fanout = Fanout::default();
        if job.status.is_terminal() {
            self.plan_pipeline(id, job, None, &mut fanout);
        }
        self.schedule_callback(id, job).await?;
        if fanout.is_empty() {
            return self.replace(id, job, revision).await;
        }
        let key = format!("{}.e{revision}", Self::outbox_key(id));
        let entry = bytes::Bytes::from(fanout.encode());
        if !self
            .replace_with_outbox(id, job, revision, &key, entry)
            .await?
        {
            return Ok(false);
        }
        self.fan_out(&key, &fanout, false).await;
        Ok(true)
    }

    /// Applies a change to a pipeline's head (again and again gives the same head).
    pub(super) async fn change_head(&self, change: &HeadChange) -> Result<(), StoreError> {
        let id = JobId(change.head);
        loop {
            let Some((mut head, revision)) = self.record(id).await? else {
                return Ok(());
            };
            let Some(Pipeline::Head { stages, ended }) = &mut head.pipeline else {
                return Ok(());
            };
            let mut changed = false;
            if let Some(stage) = change.add_stage
                && !stages.contains(&stage)
            {
                stages.push(stage);
                changed = true;
            }
            if let Some(end) = &change.end
                && ended.is_none()
            {
                *ended = Some(end.status);
                head.error = end.error.clone();
                head.finished_at = end.finished_at;
                changed = true;
            }
            let ending = changed && change.end.is_some();
            // The head takes the last stage's output (a large one as the same blob).
            if ending && let Some(stage) = change.end.as_ref().and_then(|e| e.last_stage) {
                if let Some((last, _)) = self.record(JobId(stage)).await? {
                    head.output = last.output;
                    head.output_blob = last.output_blob;
                    head.output_content_type = last.output_content_type;
                }
            }
            if !changed {
                return Ok(());
            }
            self.schedule_callback(id, &mut head).await?;
            if self.replace(id, &head, revision).await? {
                return Ok(());
            }
        }
    }
}
