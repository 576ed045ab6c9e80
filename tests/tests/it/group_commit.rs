//! Group commit: concurrent submits share durable commits instead of paying one fsync each, and
//! every accepted job is still durable and finishes.

use sluice_tests::{components, start_host};

/// 800 submits from 32 concurrent clients share commits (far fewer commits than operations),
/// and every job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_share_commits() {
    let host = std::sync::Arc::new(start_host().await);
    host.deploy("echo", components::ECHO, "max_concurrency=16")
        .await;
    let commits_before = host.metric("sluice_store_commits_total").await;
    let mut tasks = Vec::new();
    for c in 0..32 {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                ids.push(host.submit("echo", format!("{c}-{i}"), "text/plain").await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    assert_eq!(ids.len(), 800);
    for id in &ids {
        assert_eq!(host.wait(id).await["status"], "succeeded");
    }
    let commits = host.metric("sluice_store_commits_total").await - commits_before;
    let accepted = host.metric("sluice_jobs_accepted_total").await;
    assert_eq!(accepted, 800.0);
    // Each job needs a durable submit and a durable result: 1,600 operations, so one commit each
    // would be 1,600 commits (seen here: under 300). The bound leaves room for fast disks, where
    // batches are smaller, and still fails if operations stop sharing commits.
    eprintln!("{commits} commits for 800 jobs");
    assert!(
        commits < 1200.0,
        "{commits} commits for 800 jobs: operations are not sharing commits"
    );
    std::sync::Arc::try_unwrap(host)
        .ok()
        .expect("no other handle")
        .stop()
        .await;
}
