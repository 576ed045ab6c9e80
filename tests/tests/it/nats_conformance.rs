//! The store conformance suite ([`sluice_tests::conformance`]) against the JetStream backend on
//! a real NATS server: every check.

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
        // Listings widen their window of time from 2 ms: many times, in these checks.
        options.listing_window = Duration::from_millis(2);
        let backend: Arc<dyn Backend> = NatsBackend::connect(options).await.unwrap();
        backend
    })
}

sluice_tests::conformance_suite!(open_nats);
