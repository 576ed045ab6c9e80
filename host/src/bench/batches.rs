//! The batch scenario: the same 20,000 `echo` jobs drained by a function that takes them one
//! per sandbox, and by one deployed with `batch = { max_size = 100, max_wait_ms = 20 }`
//! (`#[handler]` answers a batch event by event, in one sandbox).

use super::*;

/// Runs the scenario with `jobs` queued per function.
pub(super) async fn scenario(
    base: &Path,
    wasm: &[u8],
    manifest: &crate::manifest::Manifest,
    jobs: usize,
) -> anyhow::Result<Value> {
    let dir = tempfile::Builder::new()
        .prefix("sluice-bench")
        .tempdir_in(base)?;
    let host = BenchHost::start_with(dir.path(), |_| {}).await?;
    let mut gated = manifest.clone();
    gated.max_queued = Some(jobs as u64 * 4);
    // Held back while the queue fills.
    gated.rate_per_second = Some(1);
    host.deploy_echo("single", wasm, &gated).await?;
    let mut batched = gated.clone();
    batched.batch = Some(crate::manifest::BatchSpec {
        max_size: Some(100),
        max_wait_ms: Some(20),
    });
    host.deploy_echo("batched", wasm, &batched).await?;
    let mut out = json!({"jobs": jobs});
    for function in ["single", "batched"] {
        // Counted before the fill: the gate lets a job a second through meanwhile.
        let before = host.counters().await?;
        super::fairness::fill(&host, function, None, jobs).await?;
        let started = Instant::now();
        Client::new(&format!("http://{}", host.addr))
            .configure(function, &json!({"rate_per_second": null}))
            .await?;
        host.wait_finished(before.finished + jobs as u64).await?;
        let rate = jobs as f64 / started.elapsed().as_secs_f64();
        out[format!("{function}_jobs_per_s")] = rate.round().into();
    }
    host.stop().await?;
    let single = out["single_jobs_per_s"].as_f64().unwrap_or(1.0);
    let batched = out["batched_jobs_per_s"].as_f64().unwrap_or(0.0);
    out["ratio_batched_vs_single"] = round2(batched / single).into();
    out["goal"] = "measured, no goal yet".into();
    Ok(out)
}
