//! Failed attempts: retries with backoff, dead letters (list, redrive, purge), cancellation,
//! and one function's stuck handlers never holding up another function.

use serde_json::{Value, json};
use sluice_tests::{
    assert_error, components, is_terminal, millis, start_host, start_host_with, test_config,
};

fn fail(retryable: bool) -> Value {
    json!({ "action": "fail", "retryable": retryable })
}

/// A retryable failure is retried after a backoff, each retry no earlier than the time recorded
/// for it, until attempts run out: then the job is dead and in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_then_the_job_is_dead() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=4&backoff_base_ms=40&backoff_max_ms=100",
    )
    .await;
    let id = host.submit_json("probe", &fail(true)).await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 4);
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 4 attempt(s)") && error.contains("probe failed on purpose"),
        "{error}"
    );
    let history = job["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 4, "{job}");
    for (i, pair) in history.windows(2).enumerate() {
        let retry_at = millis(&pair[0]["retry_at"]);
        let finished = millis(&pair[0]["finished_at"]);
        let next_start = millis(&pair[1]["started_at"]);
        assert_eq!(pair[1]["attempt"], i as u64 + 2);
        // Full jitter: the delay is at most min(max, base * 2^retry).
        let ceiling = (40u64 << i).min(100);
        assert!(
            retry_at >= finished && retry_at <= finished + ceiling + 5,
            "retry {i} at {retry_at}, finished {finished}, ceiling {ceiling}"
        );
        assert!(
            next_start >= retry_at,
            "attempt {} started at {next_start}, before its not-before time {retry_at}",
            i + 2
        );
        assert!(pair[0]["error"].as_str().unwrap().contains("on purpose"));
    }
    assert!(history[3]["retry_at"].is_null());
    // Each attempt keeps its own log; the job's `log` is the last one's.
    for (i, attempt) in history.iter().enumerate() {
        assert_eq!(
            attempt["log"],
            format!("attempt {} fails on purpose\n", i + 1),
            "{job}"
        );
    }
    assert_eq!(job["log"], history[3]["log"]);
    assert_eq!(host.metric("sluice_job_retries_total").await, 3.0);
    // Per function: its outcome counted, each attempt timed (ran, waited).
    let (_, _, metrics) = host.get_raw("/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        r#"sluice_function_jobs_ended_total{function="probe",outcome="dead"} 1"#,
        r#"sluice_function_jobs_ended_total{function="probe",outcome="succeeded"} 0"#,
        r#"sluice_function_attempt_duration_seconds_count{function="probe"} 4"#,
        r#"sluice_function_attempt_duration_seconds_bucket{function="probe",le="+Inf"} 4"#,
        r#"sluice_function_queue_wait_seconds_count{function="probe"} 4"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert_eq!(host.metric("sluice_dead_letters_total").await, 1.0);
    assert_eq!(host.metric("sluice_jobs_accepted_total").await, 1.0);
    let (_, dlq) = host.get("/v1/functions/probe/dead-letters").await;
    let ids: Vec<&str> = dlq["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
}

/// A permanent error is not retried: the job fails after one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_fail_at_once() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=5&backoff_base_ms=10",
    )
    .await;
    let job = host
        .wait(&host.submit_json("probe", &fail(false)).await)
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["attempt_history"].as_array().unwrap().len(), 1);
    assert!(job["attempt_history"][0]["retry_at"].is_null());
}

/// Dead letters can be listed (paginated), redriven after a fix (same id, attempts from zero)
/// and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_redrive_and_purge() {
    let host = start_host().await;
    // A buggy version of "orders": every job fails for good.
    host.deploy("orders", components::PROBE, "max_attempts=1")
        .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(host.submit_json("orders", &fail(false)).await);
    }
    for id in &ids {
        assert_eq!(host.wait(id).await["status"], "failed");
    }
    // Listing pages through all five, newest first.
    let (status, page) = host.get("/v1/functions/orders/dead-letters?limit=3").await;
    assert_eq!(status, 200, "{page}");
    let mut listed: Vec<String> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), 3);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = host
        .get(&format!(
            "/v1/functions/orders/dead-letters?limit=3&cursor={cursor}"
        ))
        .await;
    listed.extend(
        page["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string()),
    );
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(listed, expected);

    // The fix: the same name now runs echo. Redrive one, then the rest.
    host.deploy("orders", components::ECHO, "max_attempts=1")
        .await;
    let (status, body) = host
        .post_json(
            "/v1/functions/orders/dead-letters/redrive",
            &json!({ "ids": [ids[0]] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"], json!([ids[0]]));
    let job = host.wait(&ids[0]).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "attempts count from zero again: {job}");
    assert_eq!(job["output"], fail(false).to_string());
    // The failed attempt stays in the history.
    assert_eq!(job["attempt_history"].as_array().unwrap().len(), 2);
    // A job that is no longer a dead letter cannot be redriven or purged.
    let (status, body) = host
        .post_json(
            "/v1/functions/orders/dead-letters/purge",
            &json!({ "ids": [ids[0]] }),
        )
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "dead_letter_not_found");
    // Redrive two more, purge the rest.
    let (_, body) = host
        .post_json(
            "/v1/functions/orders/dead-letters/redrive",
            &json!({ "ids": [ids[1], ids[2]] }),
        )
        .await;
    assert_eq!(body["redriven"].as_array().unwrap().len(), 2);
    let (status, body) = host
        .post_json(
            "/v1/functions/orders/dead-letters/purge",
            &json!({ "all": true }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut purged: Vec<&str> = body["purged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    purged.sort();
    let mut rest = vec![ids[3].as_str(), ids[4].as_str()];
    rest.sort();
    assert_eq!(purged, rest);
    for id in &ids[1..3] {
        assert_eq!(host.wait(id).await["status"], "succeeded");
    }
    for id in &ids[3..] {
        assert_eq!(host.get(&format!("/v1/jobs/{id}")).await.0, 404);
    }
    let (_, page) = host.get("/v1/functions/orders/dead-letters").await;
    assert_eq!(page["dead_letters"], json!([]));
    // Bad requests are refused with a clear error.
    for bad in [
        json!({}),
        json!({ "ids": [] }),
        json!({ "ids": ["x"], "all": true }),
    ] {
        let (status, body) = host
            .post_json("/v1/functions/orders/dead-letters/redrive", &bad)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = host
        .post_json(
            "/v1/functions/nope/dead-letters/redrive",
            &json!({ "all": true }),
        )
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "function_not_found");
}

/// Queued and delayed jobs can be cancelled; running and finished ones answer 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_rules() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_concurrency=1&max_attempts=3&backoff_base_ms=60000&backoff_max_ms=60000",
    )
    .await;
    let running = host
        .submit_json("probe", &json!({ "action": "sleep", "ms": 600 }))
        .await;
    let queued = host
        .submit_json("probe", &json!({ "action": "print", "text": "x" }))
        .await;
    host.wait_status(&running, "running").await;

    let (status, job) = host.delete(&format!("/v1/jobs/{queued}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    let (status, body) = host.delete(&format!("/v1/jobs/{running}")).await;
    assert_eq!(status, 409, "{body}");
    assert_error(&body, "job_not_cancellable");
    let (status, body) = host.delete(&format!("/v1/jobs/{queued}")).await;
    assert_eq!(status, 409, "a cancelled job is terminal: {body}");
    let (status, body) = host.delete("/v1/jobs/01JAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(status, 404, "{body}");

    // The running job finishes normally; the cancelled one never ran.
    assert_eq!(host.wait(&running).await["status"], "succeeded");
    let job = host.job(&queued).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["attempts"], 0, "{job}");

    // A job waiting for its retry is delayed, and can be cancelled too.
    let delayed = host.submit_json("probe", &fail(true)).await;
    let job = host.wait_status(&delayed, "delayed").await;
    assert!(job["not_before"].is_string(), "{job}");
    let (status, job) = host.delete(&format!("/v1/jobs/{delayed}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "cancelled");
    let (_, dlq) = host.get("/v1/functions/probe/dead-letters").await;
    assert_eq!(
        dlq["dead_letters"],
        json!([]),
        "cancelled jobs are not dead letters"
    );
}

/// With every slot of a function stuck in endless handlers, another function's jobs still run,
/// and all of them finish before any stuck handler is stopped by its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_handlers_do_not_hold_up_other_functions() {
    let host = start_host().await;
    host.deploy(
        "stuck",
        components::PROBE,
        "max_concurrency=2&timeout_ms=3000&max_attempts=1",
    )
    .await;
    host.deploy("echo", components::ECHO, "").await;
    let stuck: Vec<String> = futures_join(&host, 2).await;
    for id in &stuck {
        host.wait_status(id, "running").await;
    }
    let mut echoes = Vec::new();
    for i in 0..10 {
        echoes.push(host.submit("echo", format!("echo {i}"), "text/plain").await);
    }
    let mut last_echo = 0;
    for id in &echoes {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        last_echo = last_echo.max(millis(&job["finished_at"]));
    }
    for id in &stuck {
        let job = host.wait(id).await;
        assert_eq!(job["status"], "dead", "{job}");
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .contains("timed out after 3000 ms"),
            "{job}"
        );
        assert!(
            millis(&job["finished_at"]) > last_echo,
            "every echo job must finish before a stuck handler is stopped: {job}"
        );
    }
}

async fn futures_join(host: &sluice_tests::TestHost, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            host.submit_json("stuck", &json!({ "action": "loop" }))
                .await,
        );
    }
    ids
}

/// A job waiting for its retry stays delayed across a restart and runs when due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_retries_survive_a_restart() {
    let host = start_host().await;
    host.deploy(
        "probe",
        components::PROBE,
        "max_attempts=2&backoff_base_ms=1500&backoff_max_ms=1500",
    )
    .await;
    // The retry's delay is drawn from 0-1500 ms (full jitter): a draw of a few ms can end
    // before it is seen; such a job is simply not the one this test restarts on.
    let mut waiting = None;
    for _ in 0..5 {
        let id = host.submit_json("probe", &fail(true)).await;
        loop {
            let job = host.job(&id).await;
            if job["status"] == "delayed" {
                waiting = Some(id);
                break;
            }
            if is_terminal(&job) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        if waiting.is_some() {
            break;
        }
    }
    let id = waiting.expect("one of five retries is seen waiting");
    let data = host.data_dir.clone();
    let _tmp = host.stop().await;
    let host = start_host_with(test_config(&data)).await;
    // Kept: still waiting, or (its delay over) queued, running or ended.
    let job = host.job(&id).await;
    assert!(
        matches!(
            job["status"].as_str(),
            Some("delayed" | "queued" | "running")
        ) || is_terminal(&job),
        "after restart: {job}"
    );
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 2);
    let history = job["attempt_history"].as_array().unwrap();
    assert!(millis(&history[1]["started_at"]) >= millis(&history[0]["retry_at"]));
}
