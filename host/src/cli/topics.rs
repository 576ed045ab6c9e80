//! Commands for topics: list them with their subscriptions, publish an event.

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, HostArgs};

/// `sluice topics [TOPIC]`.
#[derive(Args, Debug)]
pub struct TopicsArgs {
    /// Show one topic's subscriptions and their backlog (default: list every topic).
    pub topic: Option<String>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice publish TOPIC --type TYPE [DATA]`.
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// The event's `type`, e.g. `order.placed`.
    #[arg(long = "type")]
    pub event_type: String,
    /// The event's `source`.
    #[arg(long, default_value = "sluice-cli")]
    pub source: String,
    /// The event's `id` (default: a new unique one).
    #[arg(long)]
    pub id: Option<String>,
    /// The event's `subject`.
    #[arg(long)]
    pub subject: Option<String>,
    /// The data, as JSON (sent as `application/json`); plain text with `--text`.
    #[arg(default_value = "null")]
    pub data: String,
    /// Send the data as `text/plain` instead of JSON.
    #[arg(long)]
    pub text: bool,
    /// Correlation id for everything the event causes.
    #[arg(long)]
    pub correlation_id: Option<String>,
    #[command(flatten)]
    pub host: HostArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Lists topics, or shows one.
pub async fn topics(args: TopicsArgs) -> anyhow::Result<()> {
    let client = Client::for_host(&args.host);
    let path = match &args.topic {
        Some(t) => format!("/v1/topics/{t}"),
        None => "/v1/topics".to_string(),
    };
    let answer = client.call(Method::GET, &path, None).await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let types = |s: &Value| match s["types"].as_array() {
        Some(t) if !t.is_empty() => t
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => "every type".into(),
    };
    match &args.topic {
        None => {
            let list = answer["topics"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!(
                    "no topics: declare [[subscribe]] topic = \"...\" in a function's manifest"
                );
            }
            for t in list {
                println!("{}", t["topic"].as_str().unwrap_or("?"));
                for s in t["subscriptions"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "  {:<20} {}",
                        s["function"].as_str().unwrap_or("?"),
                        types(&s)
                    );
                }
            }
        }
        Some(topic) => {
            println!("{topic}");
            for s in answer["subscriptions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let b = &s["backlog"];
                println!(
                    "  {:<20} {:<24} queued {} delayed {} running {} dead letters {}{}",
                    s["function"].as_str().unwrap_or("?"),
                    types(&s),
                    b["queued"],
                    b["delayed"],
                    b["running"],
                    b["dead_letters"],
                    if s["paused"] == true { " (paused)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

/// Publishes one event (structured mode).
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let id = args.id.unwrap_or_else(|| ulid::Ulid::new().to_string());
    let mut event = json!({
        "specversion": "1.0",
        "id": id,
        "source": args.source,
        "type": args.event_type,
    });
    if let Some(subject) = args.subject {
        event["subject"] = subject.into();
    }
    if args.text {
        event["datacontenttype"] = "text/plain".into();
        event["data"] = args.data.into();
    } else {
        let data: Value = serde_json::from_str(&args.data).map_err(|e| {
            anyhow::anyhow!("the data is not JSON ({e}); pass --text to send it as plain text")
        })?;
        event["datacontenttype"] = "application/json".into();
        event["data"] = data;
    }
    let answer = Client::for_host(&args.host)
        .publish(&args.topic, &event, args.correlation_id.as_deref())
        .await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    println!("event {}", answer["event_id"].as_str().unwrap_or("?"));
    let deliveries = answer["deliveries"].as_array().cloned().unwrap_or_default();
    if deliveries.is_empty() {
        println!("  no subscriber matched");
    }
    for d in deliveries {
        println!(
            "  -> {:<20} job {}",
            d["function"].as_str().unwrap_or("?"),
            d["job_id"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
