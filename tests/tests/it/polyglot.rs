//! Handlers in other languages: `functions/py-order-total` (Python, `guest-sdk/python`), built
//! into a component by componentize-py against the same WIT, answers exactly as the Rust
//! `order-total` does, and fails the same way on bad input.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use sluice_tests::{components, python, start_host};

/// Builds `functions/py-order-total` into a component in `out`; returns its path.
fn build_python_order_total(out: &std::path::Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = out.join("py_order_total.wasm");
    let status = Command::new(python::componentize_py())
        .arg("-d")
        .arg(root.join("wit"))
        .args(["-w", "handler", "componentize", "app", "-p"])
        .arg(root.join("functions/py-order-total"))
        .arg("-p")
        .arg(root.join("guest-sdk/python"))
        .arg("-o")
        .arg(&wasm)
        .status()
        .expect("cannot run componentize-py");
    assert!(status.success(), "componentize-py failed");
    wasm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_answers_as_the_rust_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_path_buf();
    let wasm = tokio::task::spawn_blocking(move || build_python_order_total(&out))
        .await
        .unwrap();
    let host = start_host().await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest =
        std::fs::read_to_string(root.join("functions/py-order-total/sluice.toml")).unwrap();
    host.deploy_manifest("py-order-total", wasm.to_str().unwrap(), &manifest)
        .await;
    host.deploy("order-total", components::ORDER_TOTAL, "").await;

    let inputs = [
        r#"{"id":"o-1","items":[{"sku":"tea","quantity":2,"unit_cents":450},{"sku":"pot","quantity":1,"unit_cents":2500}],"discount_percent":10}"#,
        r#"{"id":"o-2","items":[]}"#,
        "not json",
        r#"{"id":"o-3","items":[{"sku":"tea","quantity":0,"unit_cents":450}]}"#,
        r#"{"id":"o-4","items":[{"sku":"tea","quantity":1,"unit_cents":450}],"discount_percent":101}"#,
    ];
    for input in inputs {
        let mut answers = Vec::new();
        for function in ["order-total", "py-order-total"] {
            let id = host.submit(function, input, "application/json").await;
            answers.push(host.wait(&id).await);
        }
        let (rust, python) = (&answers[0], &answers[1]);
        assert_eq!(python["status"], rust["status"], "{input}: {python} vs {rust}");
        assert_eq!(python["attempts"], 1, "{python}");
        if rust["status"] == "succeeded" {
            let parse = |j: &Value| -> Value {
                serde_json::from_str(j["output"].as_str().unwrap()).unwrap()
            };
            assert_eq!(parse(python), parse(rust), "{input}");
            assert_eq!(python["output_content_type"], "application/json");
            assert!(python["log"].as_str().unwrap().contains("order o-1"), "{python}");
        } else {
            assert!(python["error"].as_str().is_some_and(|e| !e.is_empty()), "{python}");
        }
    }
}
