//! The store conformance suite ([`sluice_tests::conformance`]) against the redb store: every
//! check through the store's traits only.

use std::path::Path;
use std::sync::Arc;

use sluice::store::{Backend, Pending, Store};

/// The redb store on `dir`, two shards (jobs cross shard boundaries), as the host opens it.
fn open_redb(dir: &Path) -> Pending<'static, Arc<dyn Backend>> {
    let config = sluice_tests::test_config(dir);
    let store: Arc<dyn Backend> = Arc::new(Store::open(dir, &config.store_options()).unwrap());
    Box::pin(async move { store })
}

sluice_tests::conformance_suite!(open_redb);
