//! One operation of a batch applied inside the batch's transaction: which transition each
//! operation is, and what its caller is answered once the batch's fate is known.

use super::StoreError;
use super::ops::{Effects, Op, Reply, answer};
use super::txn::Tables;
use super::writer::Writer;

impl Writer {
    pub(super) fn apply(
        &mut self,
        op: Op,
        t: &mut Tables<'_>,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        match op {
            Op::Submit { job, reply } => {
                let result = self.submit(job, t, fx)?;
                fx.replies.push(Reply::Submit(reply, result));
            }
            Op::SubmitBatch { jobs, reply } => {
                let result = self.submit_batch(jobs, t, fx)?;
                fx.replies.push(answer(reply, result));
            }
            Op::Publish { events, reply } => {
                let result = self.publish(events, t, fx)?;
                fx.replies.push(answer(reply, result));
            }
            // Kept until the commit (`Effects::held`): a failed one applies them again.
            // Kept (before they are applied, so even a panic keeps them) until the commit.
            Op::Start { id, start } => {
                fx.held.push(Op::Start { id, start });
                self.start(id, start, t, fx)?
            }
            Op::Renew {
                id,
                attempt,
                lease_until,
            } => {
                fx.held.push(Op::Renew {
                    id,
                    attempt,
                    lease_until,
                });
                self.renew(id, attempt, lease_until, t)?
            }
            Op::Finish {
                id,
                attempt,
                report,
                retry,
            } => {
                fx.held.push(Op::Finish {
                    id,
                    attempt,
                    report: report.clone(),
                    retry,
                });
                self.finish(id, attempt, report, retry, t, fx)?
            }
            Op::Cancel { id, reply } => {
                let result = self.cancel(id, t, fx)?;
                fx.replies.push(answer(reply, result));
            }
            Op::Redrive {
                function,
                ids,
                limit,
                reply,
            } => {
                let ids = t.dead_letters_of(&function, ids, limit)?;
                for &id in &ids {
                    self.redrive(&function, id, t, fx)?;
                }
                fx.replies.push(answer(reply, Ok(ids)));
            }
            Op::Purge {
                function,
                ids,
                limit,
                reply,
            } => {
                let ids = t.dead_letters_of(&function, ids, limit)?;
                for &id in &ids {
                    self.purge(&function, id, t, fx)?;
                }
                fx.replies.push(answer(reply, Ok(ids)));
            }
            Op::CancelFunction {
                name,
                reason,
                reply,
            } => {
                let cancelled = self.cancel_function(&name, &reason, t, fx)?;
                if self.shard == super::kv::KV_SHARD {
                    // A deleted function's state goes with it.
                    t.kv.open()?.remove_function(&name)?;
                }
                fx.replies.push(answer(reply, Ok(cancelled)));
            }
            Op::CallbackDone { id, result } => {
                fx.held.push(Op::CallbackDone {
                    id,
                    result: result.clone(),
                });
                self.callback_done(id, result, t, fx)?
            }
            Op::KvCommit {
                id,
                attempt,
                changes,
                reply,
            } => {
                let verdict =
                    t.kv.open()?
                        .apply(&changes, Some((id, attempt)), self.max_kv_bytes)?;
                fx.replies.push(answer(reply, Ok(verdict)));
            }
            Op::KvWrite { changes, reply } => {
                let verdict = t.kv.open()?.apply(&changes, None, self.max_kv_bytes)?;
                fx.replies.push(answer(reply, Ok(verdict)));
            }
            // Unclaims are taken out of the batch before (`Writer::unclaim`).
            Op::Refill | Op::Unclaim { .. } => {}
            Op::Shutdown { reply } => {
                fx.shutdown = true;
                fx.replies.push(Reply::Shutdown(reply));
            }
        }
        Ok(())
    }
}
