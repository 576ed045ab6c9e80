//! Commands for a function's life after deploy: versions, rollback, pause, resume.

use clap::Args;
use reqwest::Method;
use serde_json::json;

use super::client::{Client, HostArgs};

/// `sluice versions NAME`, `sluice pause NAME`, `sluice resume NAME`.
#[derive(Args, Debug)]
pub struct FunctionArgs {
    /// The function.
    pub name: String,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice rollback NAME [--to VERSION]`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The function.
    pub name: String,
    /// The version to make current again (default: the one before the current).
    #[arg(long)]
    pub to: Option<u32>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Lists a function's versions, oldest first.
pub async fn versions(args: FunctionArgs) -> anyhow::Result<()> {
    let answer = Client::for_host(&args.host)
        .call(
            Method::GET,
            &format!("/v1/functions/{}/versions", args.name),
            None,
        )
        .await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    for v in answer["versions"].as_array().cloned().unwrap_or_default() {
        let digest = v["digest"].as_str().unwrap_or("");
        println!(
            "{} {:>4}  {}  {:<16}  {}",
            if v["current"] == true { "*" } else { " " },
            v["version"].as_u64().unwrap_or(0),
            v["created_at"].as_str().unwrap_or(""),
            v["change"].as_str().unwrap_or(""),
            &digest[..digest.len().min(19)],
        );
        super::client::print_changes(&v);
    }
    Ok(())
}

/// Makes an earlier version current again.
pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let body = json!({ "version": args.to });
    let f = Client::for_host(&args.host)
        .call(
            Method::POST,
            &format!("/v1/functions/{}/rollback", args.name),
            Some(&body),
        )
        .await?;
    if args.json {
        println!("{f}");
    } else {
        println!(
            "{} is now version {} ({}), code {}",
            args.name,
            f["version"],
            f["change"].as_str().unwrap_or(""),
            f["digest"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Pauses (`true`) or resumes a function.
pub async fn set_paused(args: FunctionArgs, paused: bool) -> anyhow::Result<()> {
    let action = if paused { "pause" } else { "resume" };
    let f = Client::for_host(&args.host)
        .call(
            Method::POST,
            &format!("/v1/functions/{}/{action}", args.name),
            None,
        )
        .await?;
    if args.json {
        println!("{f}");
    } else if paused {
        println!(
            "{} is paused: jobs are accepted and wait; none starts",
            args.name
        );
    } else {
        println!("{} is running again", args.name);
    }
    Ok(())
}
