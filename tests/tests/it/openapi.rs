//! The API's OpenAPI 3.1 document (`GET /v1/openapi.json`), checked by tools that share no code
//! with the host: `openapi-spec-validator` validates it, and schemathesis fuzzes a running host
//! from it (every operation, valid and invalid inputs): no answer may be a 5xx, and every answer
//! must match what the document says of its status, content type and body.

use sluice_tests::python::{OPENAPI_SPEC_VALIDATOR, SCHEMATHESIS, ensure};
use sluice_tests::{components, start_host};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_the_host_keeps_to_it() {
    tokio::task::spawn_blocking(|| {
        ensure(OPENAPI_SPEC_VALIDATOR);
        ensure(SCHEMATHESIS);
    })
    .await
    .unwrap();
    let host = start_host().await;
    // Something to find: a function, jobs of it, a dead letter.
    host.deploy("echo", components::ECHO, "").await;
    host.deploy("probe", components::PROBE, "max_attempts=1").await;
    let id = host.submit("echo", "hello", "text/plain").await;
    host.wait(&id).await;
    let failed = host
        .submit("probe", r#"{"action":"fail","retryable":false}"#, "application/json")
        .await;
    host.wait(&failed).await;

    let (status, doc) = host.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"].as_object().unwrap().len() >= 30, "{}", doc["paths"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();

    let validated = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        validated.status.success(),
        "openapi-spec-validator refused the document: {}",
        String::from_utf8_lossy(&validated.stderr)
    );

    let fuzzed = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(host.url("/v1/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--no-color",
        ])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&fuzzed.stdout);
    assert!(
        fuzzed.status.success(),
        "schemathesis found answers that break the document:\n{report}\n{}",
        String::from_utf8_lossy(&fuzzed.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    eprintln!("{}", report.lines().rev().take(6).collect::<Vec<_>>().join("\n"));
    host.stop().await;
}
