//! Configuration and secrets (`wasi:config/store`): the manifest's `[config]` values and the
//! secrets set through the API reach only their function's handler; a secret's value is sealed
//! at rest and never appears in any answer, version, log or metric; it survives restarts with
//! its key, and a host started with another key refuses to run rather than hand out garbage.
//! `notify` shows the whole path: config URL, secret token, outbound POST, retry on 5xx.

use serde_json::{Value, json};
use sluice_tests::{Receiver, TestHost, assert_error, components, start_host_with, test_config};

const TOKEN: &str = "xoxb-s3cret-token-9f2c";

fn config_for(dir: &std::path::Path) -> sluice::Config {
    let mut config = test_config(dir);
    config.allow_outbound_hosts = vec!["127.0.0.1".into()];
    config
}

/// Deploys `notify` posting to `upstream`, retrying quickly.
async fn deploy_notify(host: &TestHost, upstream: &Receiver) {
    let manifest = format!(
        "name = \"notify\"\nmax_attempts = 3\nbackoff_base_ms = 10\nbackoff_max_ms = 10\nallowed_outbound_hosts = [\"{}\"]\n\n[config]\nurl = \"{}\"\n",
        upstream.url(""),
        upstream.url("/hook")
    );
    host.deploy_manifest("notify", components::NOTIFY, &manifest)
        .await;
}

async fn probe_config(host: &TestHost, name: &str) -> Value {
    let job = host
        .wait(
            &host
                .submit_json("probe", &json!({"action": "config", "name": name}))
                .await,
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    serde_json::from_str(job["output"].as_str().unwrap()).unwrap()
}

/// The whole path: `[config] url`, the `token` secret as a bearer token, listed by name only,
/// invisible to another function and to every answer, sealed on disk, gone when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_its_handler_and_never_an_answer() {
    let upstream = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let host = start_host_with(config_for(tmp.path())).await;
    deploy_notify(&host, &upstream).await;
    host.deploy("probe", components::PROBE, "").await;

    let (status, body) = host.put("/v1/functions/notify/secrets/token", TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let job = host
        .wait(&host.submit("notify", "deploy finished", "text/plain").await)
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let got = upstream.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/hook");
    assert_eq!(
        got[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    let posted: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(posted, json!({"text": "deploy finished"}));

    // Names only, and nowhere a value.
    let (_, list) = host.get("/v1/functions/notify/secrets").await;
    assert_eq!(list["secrets"][0]["name"], "token", "{list}");
    let mut seen = vec![list.to_string(), job.to_string()];
    for path in [
        "/v1/functions/notify",
        "/v1/functions/notify/versions",
        "/v1/functions",
        "/v1/jobs",
    ] {
        seen.push(host.get(path).await.1.to_string());
    }
    seen.push(String::from_utf8_lossy(&host.get_raw("/metrics").await.2).into_owned());
    for text in &seen {
        assert!(!text.contains(TOKEN), "a secret value was answered: {text}");
    }
    // Sealed at rest: no file of the data directory holds it in the clear.
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "{} holds the secret in the clear",
                path.display()
            );
        }
    }
    // Another function does not see it.
    let r = probe_config(&host, "token").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["detail"], "token is not set");

    let (status, _) = host.delete("/v1/functions/notify/secrets/token").await;
    assert_eq!(status, 200);
    host.wait(&host.submit("notify", "again", "text/plain").await)
        .await;
    assert!(!upstream.requests()[1].headers.contains_key("authorization"));
    let (status, body) = host.delete("/v1/functions/notify/secrets/token").await;
    assert_eq!(status, 404);
    assert_error(&body, "secret_not_found");
    host.stop().await;
}

/// A secret survives a restart with its key; with another key the host refuses to start and
/// says which flag points at the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_survive_a_restart_only_with_their_key() {
    let upstream = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let mut config = config_for(tmp.path());
    config.secrets_key_file = Some(keys.path().join("sluice.key"));
    let host = start_host_with(config.clone()).await;
    deploy_notify(&host, &upstream).await;
    assert_eq!(
        host.put("/v1/functions/notify/secrets/token", TOKEN)
            .await
            .0,
        200
    );
    host.stop().await;
    assert!(
        !tmp.path().join("secrets.key").exists(),
        "the key is kept where the flag says, apart from the data"
    );

    let host = start_host_with(config.clone()).await;
    host.wait(&host.submit("notify", "after restart", "text/plain").await)
        .await;
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    host.stop().await;

    let mut wrong = config.clone();
    wrong.secrets_key_file = Some(keys.path().join("other.key"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = sluice::run(listener, std::future::pending(), wrong)
        .await
        .expect_err("a host with the wrong key must not start");
    let message = format!("{refused:#}");
    assert!(message.contains("--secrets-key-file"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
}

/// A 5xx answer fails the attempt retryably; the retry sends the same `Idempotency-Key`, and
/// the attempt history shows each attempt's request and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_retried_with_the_same_idempotency_key() {
    let upstream = Receiver::start().await;
    upstream
        .fail_first
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let host = start_host_with(config_for(tmp.path())).await;
    deploy_notify(&host, &upstream).await;
    let id = host.submit("notify", "hello", "text/plain").await;
    let job = host.wait(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let keys: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, vec![format!("{id}.1"), format!("{id}.1")]);
    let history = job["attempt_history"].as_array().unwrap();
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap()
            .contains("answered 500"),
        "{job}"
    );
    assert_eq!(history[0]["outbound"][0]["status"], 500);
    assert_eq!(history[1]["outbound"][0]["status"], 204);
    host.stop().await;
}

/// Bad names, values and configuration are refused with a clear error; secrets need a
/// deployed function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_and_config_are_refused() {
    let upstream = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let host = start_host_with(config_for(tmp.path())).await;
    let (status, body) = host.put("/v1/functions/nobody/secrets/token", "x").await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, "function_not_found");
    deploy_notify(&host, &upstream).await;
    let (status, body) = host
        .put("/v1/functions/notify/secrets/bad%20name", "x")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_secret");
    let (status, body) = host
        .put(
            "/v1/functions/notify/secrets/big",
            vec![b'x'; (64 << 10) + 1],
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_secret");

    let (status, body) = host
        .deploy_manifest_raw(
            "notify",
            components::NOTIFY,
            "[config]\n\"bad key\" = \"x\"\n",
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_manifest");
    assert!(body.to_string().contains("[config]"), "{body}");

    // Configuration and allowed hosts change with a deploy, not with PATCH.
    for change in [
        json!({"config": {"url": "http://elsewhere"}}),
        json!({"allowed_outbound_hosts": ["https://evil.example"]}),
    ] {
        let r = host
            .http
            .patch(host.url("/v1/functions/notify"))
            .json(&change)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("changes with a deploy"),
            "{body}"
        );
    }
    host.stop().await;
}

/// `sluice secrets` sets (from stdin), lists and deletes a function's secrets; a value is never
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_secrets() {
    use std::io::Write as _;
    let upstream = Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let host = start_host_with(config_for(tmp.path())).await;
    deploy_notify(&host, &upstream).await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        let mut child = std::process::Command::new(sluice_tests::sluice_binary())
            .arg("secrets")
            .args(args)
            .env("SLUICE_URL", &host.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(cli(&["set", "notify", "token", "-"], Some(TOKEN)).0);
    let (ok, listed) = cli(&["list", "notify"], None);
    assert!(ok);
    assert!(listed.starts_with("token\t"), "{listed}");
    assert!(!listed.contains(TOKEN));
    host.wait(&host.submit("notify", "via cli", "text/plain").await)
        .await;
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        format!("Bearer {TOKEN}").as_str()
    );
    assert!(cli(&["del", "notify", "token"], None).0);
    assert_eq!(cli(&["list", "notify"], None).1, "");
    host.stop().await;
}
