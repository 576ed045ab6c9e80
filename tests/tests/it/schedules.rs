//! Cron triggers: `[[schedule]]` fires durable jobs on time, `GET /v1/schedules` and
//! `sluice schedules` list them, and fires missed while no host ran follow each entry's
//! `catch_up` policy after a restart.

use std::time::Duration;

use serde_json::Value;
use sluice_tests::{
    TestHost, components, millis, sluice_binary, start_host, start_host_with, test_config,
};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The fire times of `function`'s scheduled jobs (from their correlation ids), each job
/// finished, sorted.
async fn fires(host: &TestHost, function: &str) -> Vec<u64> {
    let (status, page) = host.get(&format!("/v1/jobs?function={function}&limit=500")).await;
    assert_eq!(status, 200, "{page}");
    let mut out = Vec::new();
    for job in page["jobs"].as_array().unwrap() {
        let correlation = job["correlation_id"].as_str().unwrap();
        let prefix = format!("schedule/{function}/0/");
        let at = correlation
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("not a scheduled job: {job}"));
        out.push(millis(&Value::String(at.to_string())));
        let done = host.wait(job["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    out.sort_unstable();
    out
}

/// Every second: jobs fire on whole seconds, once each, with the entry's data as input;
/// the listing shows the next fire; a bad pattern or time zone is refused at deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_durable_jobs_on_time() {
    let host = start_host().await;
    host.deploy_manifest(
        "ticker",
        components::PROBE,
        "name = \"ticker\"\n[[schedule]]\ncron = \"* * * * * *\"\ndata = { action = \"print\", text = \"tick\" }\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_, listing) = host.get("/v1/schedules").await;
    let entry = &listing["schedules"][0];
    assert_eq!(entry["function"], "ticker", "{listing}");
    assert_eq!(entry["cron"], "* * * * * *");
    assert_eq!(entry["timezone"], "UTC");
    assert_eq!(entry["catch_up"], "one");
    let next = millis(&entry["next_fire_at"]);
    assert!(next > now_ms() - 1000 && next % 1000 == 0, "{entry}");
    assert!(entry["last_fire_at"].is_string(), "{entry}");

    // `sluice schedules` shows the same, through the real binary.
    let url = host.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(sluice_binary())
            .arg("schedules")
            .env("SLUICE_URL", url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ticker") && stdout.contains("* * * * * *"), "{stdout}");
    assert!(stdout.contains("NEXT FIRE") && stdout.contains("UTC"), "{stdout}");

    let at = fires(&host, "ticker").await;
    assert!(at.len() >= 2, "{} fires in 3.5 s: {at:?}", at.len());
    assert!(at.iter().all(|t| t % 1000 == 0), "{at:?}");
    assert!(at.windows(2).all(|w| w[1] - w[0] == 1000), "one job per second, none twice: {at:?}");
    let (_, page) = host.get("/v1/jobs?function=ticker&limit=1").await;
    let job = host.job(page["jobs"][0]["id"].as_str().unwrap()).await;
    assert!(job["log"].as_str().unwrap_or("").contains("tick"), "{job}");

    for (manifest, needle) in [
        ("[[schedule]]\ncron = \"61 * * * *\"\n", "cron"),
        ("[[schedule]]\ncron = \"* * * * *\"\ntimezone = \"Mars/Olympus\"\n", "timezone"),
    ] {
        let (status, body) = host.deploy_manifest_raw("ticker", components::PROBE, manifest).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("invalid schedule") && message.contains(needle), "{body}");
    }
}

/// Three entries fire at the same three seconds while no host runs: after the restart,
/// `catch_up = "none"` fires none of them, `"one"` the latest, `"all"` all three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_missed_while_down_follow_the_catch_up_policy() {
    let start = now_ms();
    // Three seconds, 12 to 14 s from now (each minute: the next round is a minute away).
    let first = start / 1000 + 12;
    let seconds: Vec<String> = (first..first + 3).map(|s| (s % 60).to_string()).collect();
    let cron = format!("{} * * * * *", seconds.join(","));
    let tmp = tempfile::tempdir().unwrap();
    let host = start_host_with(test_config(tmp.path())).await;
    for policy in ["none", "one", "all"] {
        let manifest = format!(
            "name = \"p-{policy}\"\n[[schedule]]\ncron = \"{cron}\"\ncatch_up = \"{policy}\"\ndata = {{ action = \"sleep\", ms = 1 }}\n"
        );
        host.deploy_manifest(&format!("p-{policy}"), components::PROBE, &manifest)
            .await;
    }
    // The clock has seen every entry (it fires what it misses from there on).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, listing) = host.get("/v1/schedules").await;
        let entries = listing["schedules"].as_array().unwrap();
        if entries.len() == 3 && entries.iter().all(|e| e["last_fire_at"].is_string()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{listing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    host.stop().await;
    let stopped = now_ms();
    assert!(
        stopped < first * 1000,
        "the host stopped {} ms after the first fire it was to miss: too slow to test",
        stopped - first * 1000
    );
    // Down until all three have passed.
    tokio::time::sleep(Duration::from_millis((first + 3) * 1000 - stopped + 200)).await;
    let host = start_host_with(test_config(tmp.path())).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expected = |policy: &str| -> Vec<u64> {
        let all: Vec<u64> = (first..first + 3).map(|s| s * 1000).collect();
        match policy {
            "none" => Vec::new(),
            "one" => vec![all[2]],
            _ => all,
        }
    };
    for policy in ["none", "one", "all"] {
        let at = fires(&host, &format!("p-{policy}")).await;
        assert_eq!(at, expected(policy), "catch_up = {policy}");
    }
    host.stop().await;
}
