//! `sluice schedules`: every function's cron triggers, with their next and last fire.

use clap::Args;
use reqwest::Method;

use super::client::{Client, HostArgs};

/// `sluice schedules`.
#[derive(Args, Debug)]
pub struct SchedulesArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Lists the schedules.
pub async fn schedules(args: SchedulesArgs) -> anyhow::Result<()> {
    let client = Client::for_host(&args.host);
    let answer = client.call(Method::GET, "/v1/schedules", None).await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let list = answer["schedules"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no schedules: declare [[schedule]] cron = \"...\" in a function's manifest");
        return Ok(());
    }
    println!(
        "{:<20} {:>2}  {:<16} {:<14} {:<6} {:<26} LAST FIRE",
        "FUNCTION", "#", "CRON", "TIMEZONE", "CATCH", "NEXT FIRE"
    );
    for s in list {
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_string();
        let paused = if s["paused"] == true { " (paused)" } else { "" };
        println!(
            "{:<20} {:>2}  {:<16} {:<14} {:<6} {:<26} {}{paused}",
            text("function"),
            s["index"],
            text("cron"),
            text("timezone"),
            text("catch_up"),
            text("next_fire_at"),
            text("last_fire_at"),
        );
    }
    Ok(())
}
