//! Commands about jobs: `invoke` (submit, optionally wait), `job`, `jobs`, `logs`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use super::client::{Client, HostArgs};

/// `sluice invoke`.
#[derive(Args, Debug)]
pub struct InvokeArgs {
    /// The function to run.
    pub name: String,
    /// The input, inline.
    #[arg(long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// The input, from a file (`-` for stdin).
    #[arg(long)]
    pub data_file: Option<PathBuf>,
    /// Media type of the input.
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// Wait for the job to finish and print it; exit 1 unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Priority 0 (lowest) to 9 (default 5): higher runs first.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Run no earlier than this many seconds from now (e.g. `30`, `1.5`).
    #[arg(long)]
    pub delay: Option<String>,
    /// Idempotency key: the same key and request within the window answers with the same job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// URL to POST the finished job to (a signed webhook).
    #[arg(long)]
    pub callback: Option<String>,
    /// Correlation id carried by the job and everything it causes.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Ordering key: jobs with the same key run one at a time, in submission order.
    #[arg(long)]
    pub ordering_key: Option<String>,
    /// Concurrency key: jobs with the same key run at most `key_concurrency` at once, and keys
    /// take turns.
    #[arg(long)]
    pub concurrency_key: Option<String>,
    /// Submit one job per line of this file (`-` for stdin), its input the line, up to 1000
    /// jobs per request (each request all or nothing), with a progress bar; prints each id.
    #[arg(long, conflicts_with_all = ["data", "data_file", "wait", "idempotency_key"])]
    pub lines: Option<PathBuf>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl InvokeArgs {
    /// The request headers its flags ask for.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(p) = self.priority {
            out.push(("sluice-priority", p.to_string()));
        }
        let pairs = [
            ("sluice-delay", &self.delay),
            ("idempotency-key", &self.idempotency_key),
            ("sluice-callback", &self.callback),
            ("sluice-correlation-id", &self.correlation_id),
            ("sluice-ordering-key", &self.ordering_key),
            ("sluice-concurrency-key", &self.concurrency_key),
        ];
        for (name, value) in pairs {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        }
        out
    }
}

/// `sluice jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Only this function's jobs.
    #[arg(long)]
    pub function: Option<String>,
    /// Only jobs in this status (queued, delayed, running, succeeded, failed, dead, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Everything carrying this correlation id (jobs and events), instead of a listing.
    #[arg(long, conflicts_with_all = ["function", "status"])]
    pub correlation_id: Option<String>,
    /// Most jobs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Follow the listing until interrupted: on a terminal it is redrawn every second; in a
    /// pipe each job of the newest `--limit` is printed when it appears and whenever its status
    /// changes.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The job id.
    pub id: String,
    #[command(flatten)]
    pub host: HostArgs,
}

/// `sluice job`.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job id.
    pub id: String,
    /// Wait up to this many seconds for the job to finish.
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn invoke(args: InvokeArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.lines {
        return invoke_lines(&args, path).await;
    }
    let data = match (&args.data, &args.data_file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        (None, Some(p)) => {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        (None, None) => Vec::new(),
    };
    let client = Client::for_host(&args.host);
    let accepted = client
        .submit(&args.name, data, &args.content_type, &args.headers())
        .await?;
    let id = accepted["id"]
        .as_str()
        .context("the host answered without a job id")?
        .to_string();
    if !args.wait {
        if args.json {
            println!("{accepted}");
        } else {
            // The id alone on stdout, so `JOB=$(sluice invoke ...)` works.
            println!("{id}");
            eprintln!("accepted (see it with `sluice job {id}`)");
        }
        return Ok(());
    }
    let job = wait_terminal(&client, &id).await?;
    print_job(&job, args.json);
    match job["status"].as_str() {
        Some("succeeded") => Ok(()),
        status => bail!(
            "job {id} ended {}: see `sluice logs {id}`",
            status.unwrap_or("?")
        ),
    }
}

/// `sluice invoke NAME --lines FILE`: one job per line, in batches.
async fn invoke_lines(args: &InvokeArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let text = if path.as_os_str() == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // (Blank lines are skipped: a trailing newline is not a job.)
    if lines.is_empty() {
        bail!("{} has no lines: nothing to submit", path.display());
    }
    // Each line is an input: parsed for a JSON content type (so it is sent as that JSON, not
    // as a string of it), its text otherwise.
    let json = args.content_type.contains("json");
    let mut items = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let data = if json {
            serde_json::from_str::<Value>(line).with_context(|| {
                format!(
                    "line {} of {} is not JSON (pass --content-type text/plain to send lines as text)",
                    n + 1,
                    path.display()
                )
            })?
        } else {
            Value::String(line.to_string())
        };
        items.push(serde_json::json!({"data": data, "content_type": args.content_type}));
    }
    let client = Client::for_host(&args.host);
    let bar = super::progress::bar(lines.len() as u64, "submitting");
    let mut ids: Vec<String> = Vec::with_capacity(lines.len());
    // Batches of at most 1000 items and about 8 MiB (under the host's body limit).
    let mut rest = &items[..];
    while !rest.is_empty() {
        let mut take = 0;
        let mut bytes = 0;
        while take < rest.len() && take < 1000 {
            let size = rest[take].to_string().len() + 1;
            if take > 0 && bytes + size > 8 << 20 {
                break;
            }
            bytes += size;
            take += 1;
        }
        let (chunk, later) = rest.split_at(take);
        rest = later;
        let mut request = client.request(
            reqwest::Method::POST,
            &format!("/v1/functions/{}/jobs:batch", args.name),
        );
        for (name, value) in args.headers() {
            request = request.header(name, value);
        }
        match client.send_json(request.json(&chunk)).await {
            Ok(answer) => {
                for job in answer["jobs"].as_array().into_iter().flatten() {
                    ids.push(job["id"].as_str().unwrap_or("?").to_string());
                }
                bar.inc(chunk.len() as u64);
            }
            Err(e) => {
                bar.finish_and_clear();
                // What was accepted is printed, so the rest can be sent again.
                for id in &ids {
                    println!("{id}");
                }
                return Err(e.context(format!(
                    "the first {} lines were accepted (their ids are printed); the batch from line {} was refused whole",
                    ids.len(),
                    ids.len() + 1
                )));
            }
        }
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        for id in &ids {
            println!("{id}");
        }
        eprintln!("accepted {} jobs of {}", ids.len(), args.name);
    }
    Ok(())
}

pub(super) async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    if args.watch {
        return watch_jobs(args).await;
    }
    let client = Client::for_host(&args.host);
    let mut path = format!("/v1/jobs?limit={}", args.limit);
    let query = [
        ("function", &args.function),
        ("status", &args.status),
        ("correlation_id", &args.correlation_id),
    ];
    for (key, value) in query {
        if let Some(v) = value {
            path.push_str(&format!("&{key}={}", urlencode(v)));
        }
    }
    let page = client.call(reqwest::Method::GET, &path, None).await?;
    if args.json {
        println!("{page}");
        return Ok(());
    }
    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs");
    } else {
        println!(
            "{:<26}  {:<20}  {:<10}  {:>8}  CREATED",
            "ID", "FUNCTION", "STATUS", "ATTEMPTS"
        );
    }
    for j in &jobs {
        println!(
            "{:<26}  {:<20}  {:<10}  {:>8}  {}",
            j["id"].as_str().unwrap_or("?"),
            j["function"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            j["attempts"],
            j["created_at"].as_str().unwrap_or("")
        );
    }
    for e in page["events"].as_array().into_iter().flatten() {
        println!(
            "event {}  topic {}  type {}",
            e["event_id"].as_str().or(e["id"].as_str()).unwrap_or("?"),
            e["topic"].as_str().unwrap_or("?"),
            e["type"].as_str().unwrap_or("?")
        );
    }
    if let Some(cursor) = page["next_cursor"].as_str() {
        eprintln!("more: the API's ?cursor={cursor} continues the listing");
    }
    Ok(())
}

/// `sluice jobs --watch`.
async fn watch_jobs(args: JobsArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let client = Client::for_host(&args.host);
    let mut path = format!("/v1/jobs?limit={}", args.limit);
    for (key, value) in [
        ("function", &args.function),
        ("status", &args.status),
        ("correlation_id", &args.correlation_id),
    ] {
        if let Some(v) = value {
            path.push_str(&format!("&{key}={}", urlencode(v)));
        }
    }
    let terminal = std::io::stdout().is_terminal();
    let mut seen: std::collections::HashMap<String, (String, u64)> = Default::default();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let page = client.call(reqwest::Method::GET, &path, None).await?;
        let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
        let line = |j: &Value| {
            format!(
                "{:<26}  {:<20}  {:<10}  {:>8}  {}",
                j["id"].as_str().unwrap_or("?"),
                j["function"].as_str().unwrap_or("?"),
                j["status"].as_str().unwrap_or("?"),
                j["attempts"],
                j["created_at"].as_str().unwrap_or("")
            )
        };
        if terminal {
            // Clear, home, the table.
            print!("\x1b[2J\x1b[H");
            println!(
                "{:<26}  {:<20}  {:<10}  {:>8}  CREATED",
                "ID", "FUNCTION", "STATUS", "ATTEMPTS"
            );
            for j in &jobs {
                println!("{}", line(j));
            }
            println!("\n{} jobs, refreshed every second; Ctrl-C stops", jobs.len());
        } else {
            // Oldest first, so a pipe reads them in the order they came; jobs that left the
            // page (newer ones pushed them past --limit) are forgotten.
            seen.retain(|id, _| jobs.iter().any(|j| j["id"].as_str() == Some(id.as_str())));
            for j in jobs.iter().rev() {
                let id = j["id"].as_str().unwrap_or("?").to_string();
                let now = (
                    j["status"].as_str().unwrap_or("?").to_string(),
                    j["attempts"].as_u64().unwrap_or(0),
                );
                if seen.get(&id) != Some(&now) {
                    println!("{}", line(j));
                    seen.insert(id, now);
                }
            }
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// Percent-encodes a query value.
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let job = Client::for_host(&args.host).job(&args.id, 0).await?;
    let history = job["attempt_history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if history.is_empty() {
        println!(
            "job {} has not finished an attempt yet ({})",
            args.id,
            job["status"].as_str().unwrap_or("?")
        );
        return Ok(());
    }
    for a in &history {
        let outcome = match a["error"].as_str() {
            Some(e) => format!("failed: {e}"),
            None => "succeeded".into(),
        };
        println!(
            "--- attempt {} (version {}, {} to {}): {outcome}",
            a["attempt"],
            a["version"],
            a["started_at"].as_str().unwrap_or("?"),
            a["finished_at"].as_str().unwrap_or("?")
        );
        print!("{}", a["log"].as_str().unwrap_or(""));
        if !a["log"].as_str().unwrap_or("").ends_with('\n')
            && !a["log"].as_str().unwrap_or("").is_empty()
        {
            println!();
        }
    }
    Ok(())
}

/// Long-polls until the job is terminal.
async fn wait_terminal(client: &Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let job = client.job(id, 30).await?;
        let status = job["status"].as_str().and_then(|s| s.parse::<crate::job::JobStatus>().ok());
        if status.is_some_and(crate::job::JobStatus::is_terminal) {
            return Ok(job);
        }
    }
}

pub(super) async fn job(args: JobArgs) -> anyhow::Result<()> {
    let job = Client::for_host(&args.host)
        .job(&args.id, args.wait)
        .await?;
    print_job(&job, args.json);
    Ok(())
}

fn print_job(job: &Value, json: bool) {
    if json {
        println!("{job}");
        return;
    }
    let field = |k: &str| job[k].as_str().unwrap_or("-").to_string();
    println!("job       {}", field("id"));
    println!("function  {}", field("function"));
    println!("status    {}", field("status"));
    println!("attempts  {}", job["attempts"]);
    println!("created   {}", field("created_at"));
    println!("finished  {}", field("finished_at"));
    if let Some(e) = job["error"].as_str() {
        println!("error     {e}");
    }
    for a in job["attempt_history"].as_array().into_iter().flatten() {
        println!(
            "attempt {} {}",
            a["attempt"],
            a["error"]
                .as_str()
                .map_or("succeeded".to_string(), |e| format!("failed: {e}"))
        );
    }
    for stage in job["pipeline"]["stages"].as_array().into_iter().flatten() {
        println!(
            "stage     {} {} {}",
            stage["function"].as_str().unwrap_or("?"),
            stage["job_id"].as_str().unwrap_or("?"),
            stage["status"].as_str().unwrap_or("(deleted)")
        );
    }
    if let Some(head) = job["pipeline"]["head"].as_str() {
        println!("pipeline  a stage of {head}");
    }
    let callback = &job["callback"];
    if callback.is_object() {
        let when = callback["delivered_at"]
            .as_str()
            .map(|t| format!(" at {t}"))
            .or_else(|| {
                callback["next_attempt_at"]
                    .as_str()
                    .map(|t| format!(", next try at {t}"))
            })
            .unwrap_or_default();
        println!(
            "callback  {} {} after {} attempt(s){when}",
            callback["url"].as_str().unwrap_or("?"),
            callback["state"].as_str().unwrap_or("?"),
            callback["attempts"]
        );
        if let Some(e) = callback["last_error"].as_str() {
            println!("          last error: {e}");
        }
    }
    match job["output"].as_str() {
        Some(o) => println!("output    {o}"),
        None if job["output_url"].is_string() => {
            println!("output    (binary or large: GET {})", field("output_url"))
        }
        None => {}
    }
    if let Some(log) = job["log"].as_str().filter(|l| !l.is_empty()) {
        println!("log:");
        for line in log.lines() {
            println!("  {line}");
        }
    }
}
