//! The store conformance suite ([`sluice_tests::conformance`]) against the JetStream backend on
//! a real NATS server: the checks it passes so far (it does not do
//! listings other than dead letters and correlations yet: docs/scale-out.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::store::nats::{NatsBackend, NatsOptions};
use sluice::store::{Backend, Pending};

/// The JetStream backend on a one-node server of this test's own (the same one when reopened),
/// with a 1 s lease so expiry shows within the checks' patience.
fn open_nats(dir: &Path) -> Pending<'static, Arc<dyn Backend>> {
    let url = sluice_tests::nats::server_for(dir);
    Box::pin(async move {
        let mut options = NatsOptions::new(&url);
        options.lease = Duration::from_secs(1);
        let backend: Arc<dyn Backend> = NatsBackend::connect(options).await.unwrap();
        backend
    })
}

sluice_tests::conformance_suite!(open_nats; only:
    submits_are_durable_across_a_reopen,
    idempotency_keys_answer_the_same_job_or_a_conflict,
    a_batch_is_accepted_whole_or_not_at_all,
    ready_jobs_are_leased_up_to_what_is_asked_and_finish,
    stale_attempts_are_fenced,
    an_expired_lease_hands_the_job_out_again,
    a_renewed_lease_keeps_its_attempt,
    cancel_takes_waiting_jobs_only,
    failures_retry_then_dead_letter_redrive_and_purge,
    a_publish_makes_one_delivery_per_matching_subscriber,
    a_success_keeps_what_it_emitted_and_a_failure_nothing,
    deliveries_past_a_full_queue_all_run,
    a_waiting_job_does_not_hold_a_slot,
    the_catalog_keeps_versions_pauses_and_deletes,
    secrets_and_settings_are_kept,
    key_value_writes_bump_versions,
);
