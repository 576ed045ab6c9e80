//! The operator console in a real browser: Debian's Chromium driven by Playwright
//! (`tests/browser/console.py`) against a real host with API tokens: sign in, see the function,
//! open its dead letter, redrive it by clicking, and watch it succeed live. The screenshots of
//! each step are kept in `target/console-screenshots/`.

use serde_json::{Value, json};
use sluice_tests::{browser, components, start_host_with, test_config};

const ADMIN: &str = "console-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_redrives_a_dead_letter_in_a_real_browser() {
    let chromium = tokio::task::spawn_blocking(browser::chromium).await.unwrap();
    tokio::task::spawn_blocking(browser::playwright).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.tokens =
        sluice::api::auth::Tokens::parse([format!("admin+submit+read={ADMIN}").as_str()]).unwrap();
    let mut host = start_host_with(config).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().unwrap(),
    );
    host.http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    // A job that fails for good: a dead letter. Then the fix is deployed.
    host.deploy("orders", components::PROBE, "max_attempts=1").await;
    let input = json!({"action": "fail", "retryable": false}).to_string();
    let id = host.submit("orders", input.clone(), "application/json").await;
    assert_eq!(host.wait(&id).await["status"], "failed");
    host.deploy("orders", components::ECHO, "max_attempts=1").await;

    let shots = browser::screenshots("redrive");
    let run = tokio::process::Command::new("python3")
        .arg(browser::script("console.py"))
        .args([host.url.as_str(), ADMIN, "orders", id.as_str()])
        .arg(&shots)
        .env("SLUICE_CHROMIUM", &chromium)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the browser run failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    // What the browser did is what the API now says.
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["output"], input.as_str());
    assert_eq!(job["attempt_history"].as_array().unwrap().len(), 2);
    // Each step left a screenshot (a PNG of a full page).
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.len() >= 5, "{report}");
    for step in steps {
        let bytes = std::fs::read(step["screenshot"].as_str().unwrap()).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{step}");
    }
    host.stop().await;
}
