//! `sluice kv`: a function's key-value state from the command line: get, set, del, list.

use std::io::{Read as _, Write as _};

use clap::{Args, Subcommand};
use reqwest::Method;

use super::client::{Client, HostArgs};

/// `sluice kv ACTION ...`.
#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(subcommand)]
    action: KvAction,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Subcommand, Debug)]
enum KvAction {
    /// Print a key's value (raw bytes to stdout).
    Get {
        /// The function.
        function: String,
        /// The key.
        key: String,
    },
    /// Set a key to VALUE (or to stdin with `-`).
    Set {
        /// The function.
        function: String,
        /// The key.
        key: String,
        /// The value, or `-` to read it from stdin.
        value: String,
    },
    /// Delete a key.
    Del {
        /// The function.
        function: String,
        /// The key.
        key: String,
    },
    /// List keys (all of them, page by page), optionally those starting with a prefix.
    List {
        /// The function.
        function: String,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
}

/// The bytes of a value argument, or of stdin when it is `-`.
pub(super) fn value_or_stdin(value: String) -> anyhow::Result<Vec<u8>> {
    if value == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        Ok(value.into_bytes())
    }
}

/// Runs a `sluice kv` command.
pub async fn kv(args: KvArgs) -> anyhow::Result<()> {
    let client = Client::for_host(&args.host);
    match args.action {
        KvAction::Get { function, key } => {
            let value = client
                .raw(
                    Method::GET,
                    &format!("/v1/functions/{function}/kv/{key}"),
                    None,
                )
                .await?;
            std::io::stdout().write_all(&value)?;
        }
        KvAction::Set {
            function,
            key,
            value,
        } => {
            let value = value_or_stdin(value)?;
            client
                .raw(
                    Method::PUT,
                    &format!("/v1/functions/{function}/kv/{key}"),
                    Some(value),
                )
                .await?;
        }
        KvAction::Del { function, key } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/kv/{key}"),
                    None,
                )
                .await?;
        }
        KvAction::List { function, prefix } => {
            let mut cursor = String::from("0");
            loop {
                let mut path = format!("/v1/functions/{function}/kv?limit=1000&cursor={cursor}");
                if let Some(p) = &prefix {
                    path.push_str("&prefix=");
                    path.push_str(
                        &url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>(),
                    );
                }
                let page = client.call(Method::GET, &path, None).await?;
                for key in page["keys"].as_array().into_iter().flatten() {
                    println!("{}", key.as_str().unwrap_or_default());
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = next.to_string(),
                    None => break,
                }
            }
        }
    }
    Ok(())
}
