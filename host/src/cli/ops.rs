//! Commands that operate on deployed functions and their jobs: stats, settings, dead letters,
//! cancellation.

use anyhow::bail;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, HostArgs};

/// `sluice stats NAME`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The function.
    pub name: String,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice config NAME key=value ...`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// The function.
    pub name: String,
    /// Settings to change, as manifest keys: `max_concurrency=4`, `rate_per_second=none`.
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice cancel ID`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job to cancel (queued or delayed).
    pub id: String,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice dlq ...`.
#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// List a function's dead letters, newest first.
    List {
        /// The function.
        name: String,
        /// At most this many (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after this page's `next cursor`.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        host: HostArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue (same ids, attempts from zero).
    Redrive(Selection),
    /// Delete dead letters for good.
    Purge(Selection),
}

/// Which dead letters: some by id, or all.
#[derive(Args, Debug)]
#[group(required = true, multiple = false, args = ["id", "all"])]
struct Selection {
    /// The function.
    name: String,
    /// A job id (repeat for several).
    #[arg(long)]
    id: Vec<String>,
    /// Every dead letter of the function.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `sluice secret [--rotate]`.
#[derive(Args, Debug)]
pub struct SecretArgs {
    /// Make a new secret; the old one keeps signing for 24 hours.
    #[arg(long)]
    pub rotate: bool,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints or rotates the webhook signing secret.
pub async fn secret(args: SecretArgs) -> anyhow::Result<()> {
    let client = Client::for_host(&args.host);
    let answer = if args.rotate {
        client.call(Method::POST, "/v1/secret/rotate", None).await?
    } else {
        client.call(Method::GET, "/v1/secret", None).await?
    };
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    println!("{}", answer["secret"].as_str().unwrap_or("?"));
    if let Some(previous) = answer["previous"].as_str() {
        eprintln!(
            "the previous secret {previous} also signs until {}",
            answer["previous_signs_until"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Prints a function's stats.
pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let s = Client::for_host(&args.host).stats(&args.name).await?;
    if args.json {
        println!("{s}");
        return Ok(());
    }
    let paused = if s["paused"] == true { ", paused" } else { "" };
    println!("{} (version {}{paused})", args.name, s["version"]);
    for key in [
        "queued",
        "delayed",
        "running",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
        "superseded",
    ] {
        println!("  {key:<10} {}", s[key]);
    }
    match s["oldest_queued_age_ms"].as_u64() {
        Some(ms) => println!("  oldest queued job waits for {:.1} s", ms as f64 / 1000.0),
        None => println!("  nothing queued"),
    }
    Ok(())
}

/// Changes a function's settings without redeploying it.
pub async fn config(args: ConfigArgs) -> anyhow::Result<()> {
    let mut changes = serde_json::Map::new();
    for setting in &args.settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("{setting:?} is not KEY=VALUE (e.g. max_concurrency=4)");
        };
        let value = match value {
            "none" | "null" | "" => Value::Null,
            v => match v.parse::<i64>() {
                Ok(n) => n.into(),
                Err(_) => bail!("{key} must be a whole number (or none), not {v:?}"),
            },
        };
        changes.insert(key.to_string(), value);
    }
    let f = Client::for_host(&args.host)
        .configure(&args.name, &Value::Object(changes))
        .await?;
    if args.json {
        println!("{f}");
    } else {
        println!(
            "{} is now version {}: max_concurrency {}, timeout_ms {}, memory_mb {}, max_attempts {}, max_queued {}, rate_per_second {}",
            f["name"],
            f["version"],
            f["max_concurrency"],
            f["timeout_ms"],
            f["memory_mb"],
            f["max_attempts"],
            f["max_queued"],
            f["rate_per_second"]
        );
    }
    Ok(())
}

/// Cancels a queued or delayed job.
pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let job = Client::for_host(&args.host)
        .call(Method::DELETE, &format!("/v1/jobs/{}", args.id), None)
        .await?;
    if args.json {
        println!("{job}");
    } else {
        println!(
            "{} {}",
            job["id"].as_str().unwrap_or(&args.id),
            job["status"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Lists, redrives or purges dead letters.
pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List {
            name,
            limit,
            cursor,
            host,
            json,
        } => {
            let mut path = format!("/v1/functions/{name}/dead-letters?limit={limit}");
            if let Some(c) = cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = Client::for_host(&host)
                .call(Method::GET, &path, None)
                .await?;
            if json {
                println!("{page}");
                return Ok(());
            }
            let letters = page["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters for {name}");
            }
            for job in letters {
                let error = job["error"].as_str().unwrap_or("");
                let error: String = error.chars().take(80).collect();
                println!(
                    "{}  {:<6}  attempts {}  {}  {error}",
                    job["id"].as_str().unwrap_or("?"),
                    job["status"].as_str().unwrap_or("?"),
                    job["attempts"],
                    job["finished_at"].as_str().unwrap_or("-"),
                );
            }
            if let Some(next) = page["next_cursor"].as_str() {
                println!("more: sluice dlq list {name} --cursor {next}");
            }
            Ok(())
        }
        DlqCommand::Redrive(sel) => act(sel, "redrive", "redriven").await,
        DlqCommand::Purge(sel) => act(sel, "purge", "purged").await,
    }
}

async fn act(sel: Selection, action: &str, key: &str) -> anyhow::Result<()> {
    let body = if sel.all {
        json!({ "all": true })
    } else {
        json!({ "ids": sel.id })
    };
    let answer = Client::for_host(&sel.host)
        .call(
            Method::POST,
            &format!("/v1/functions/{}/dead-letters/{action}", sel.name),
            Some(&body),
        )
        .await?;
    if sel.json {
        println!("{answer}");
    } else {
        let n = answer[key].as_array().map_or(0, |a| a.len());
        println!("{key} {n} job(s) of {}", sel.name);
    }
    Ok(())
}
