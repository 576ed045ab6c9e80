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

/// What a page of another site could make an operator's browser do is refused: a change with
/// a foreign `Origin` or `Sec-Fetch-Site: cross-site`; and the open API (no tokens) answers
/// a browser only for loopback names, so a name that resolves to 127.0.0.1 (DNS rebinding)
/// reaches nothing.
/// Same-origin changes and clients that send neither header work as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused() {
    let host = sluice_tests::start_host().await;
    host.deploy("echo", components::ECHO, "").await;
    let post = |headers: Vec<(&'static str, String)>| {
        let mut r = host.http.post(host.url("/v1/functions/echo/pause"));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["error"]["code"].as_str().unwrap_or("").to_string())
        }
    };
    let own = host.url.clone();
    assert_eq!(
        post(vec![("origin", "http://evil.example".into())]).await,
        (403, "cross_site_refused".into())
    );
    assert_eq!(
        post(vec![("sec-fetch-site", "cross-site".into())]).await,
        (403, "cross_site_refused".into())
    );
    assert_eq!(post(vec![("origin", own)]).await.0, 200, "same origin");
    assert_eq!(post(vec![]).await.0, 200, "no browser headers");
    let r = host
        .http
        .get(host.url("/v1/functions"))
        .header("host", "rebound.example:8080")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "host_refused", "{body}");
    host.stop().await;
}
