//! `sluice secrets`: a function's secrets from the command line: set, del, list (names only;
//! a value is never shown).

use clap::{Args, Subcommand};
use reqwest::Method;

use super::client::{Client, HostArgs};

/// `sluice secrets ACTION ...`.
#[derive(Args, Debug)]
pub struct SecretsArgs {
    #[command(subcommand)]
    action: SecretsAction,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Subcommand, Debug)]
enum SecretsAction {
    /// Set a secret to VALUE (or to stdin with `-`, which keeps it out of the shell history).
    Set {
        /// The function.
        function: String,
        /// The secret's name (what the handler passes to `config::get`).
        name: String,
        /// The value, or `-` to read it from stdin.
        value: String,
    },
    /// Delete a secret.
    Del {
        /// The function.
        function: String,
        /// The secret's name.
        name: String,
    },
    /// List a function's secrets: names and when each was set.
    List {
        /// The function.
        function: String,
    },
}

/// Runs a `sluice secrets` command.
pub async fn secrets(args: SecretsArgs) -> anyhow::Result<()> {
    let client = Client::for_host(&args.host);
    match args.action {
        SecretsAction::Set {
            function,
            name,
            value,
        } => {
            let value = super::kv::value_or_stdin(value)?;
            client
                .raw(
                    Method::PUT,
                    &format!("/v1/functions/{function}/secrets/{name}"),
                    Some(value),
                )
                .await?;
        }
        SecretsAction::Del { function, name } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/secrets/{name}"),
                    None,
                )
                .await?;
        }
        SecretsAction::List { function } => {
            let answer = client
                .call(
                    Method::GET,
                    &format!("/v1/functions/{function}/secrets"),
                    None,
                )
                .await?;
            for s in answer["secrets"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}",
                    s["name"].as_str().unwrap_or_default(),
                    s["updated_at"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
