//! `clawnode join-token create|list|revoke`: join tokens for enrolment,
//! through the gateway's `clawnode.joinToken.*` methods. On the gateway
//! host it needs no flags (`super::operator_target`, as `devices`).
//!
//! `create` prints the token on stdout and nothing else there (so
//! `TOKEN=$(clawnode join-token create)` works); what it is good for goes
//! to stderr. The gateway keeps only its SHA-256: it is never shown again.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::devices::TargetArgs;
use crate::gateway::auth::short_duration;
use crate::protocol::join_token::{
    CreateJoinTokenParams, CreatedJoinToken, JoinTokenList, JoinTokenView, RevokedJoinToken,
    MAX_TTL_MS, MAX_USES, MIN_TTL_MS,
};
use crate::protocol::method;
use crate::safe_text::escape;

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    #[command(subcommand)]
    pub command: JoinTokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token and print it, once (the gateway keeps only its
    /// SHA-256). Hosts use it as their token: it admits them as role node.
    Create {
        #[command(flatten)]
        target: TargetArgs,
        /// How long it admits devices: a number and a unit, s, m, h or d
        /// (30m, 1h, 7d; from 1s to 365d).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
        ttl: u64,
        /// How many new devices it may enrol (1 to 100000). Devices it
        /// enrolled reconnecting take none.
        #[arg(long, value_name = "N", default_value = "1", value_parser = parse_uses)]
        uses: u64,
        /// What or whom it is for, shown by `join-token list` (at most 128
        /// characters).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
        /// Print the answer as JSON (the token included).
        #[arg(long)]
        json: bool,
    },
    /// Every join token (live ones, and dead ones for 90 days), newest
    /// first, with its uses and state; never the token itself.
    List {
        #[command(flatten)]
        target: TargetArgs,
        /// Print the raw clawnode.joinToken.list payload as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token: it admits nobody from now on. Devices that
    /// enrolled with it keep their access (`clawnode devices revoke`).
    Revoke {
        #[command(flatten)]
        target: TargetArgs,
        /// The token's id (as `join-token list` shows it).
        #[arg(value_name = "ID")]
        id: String,
    },
}

pub async fn run(args: JoinTokenArgs) -> Result<()> {
    let now = crate::clock::now_ms();
    match args.command {
        JoinTokenCommand::Create {
            target,
            ttl,
            uses,
            description,
            json,
        } => {
            let params = CreateJoinTokenParams {
                ttl_ms: Some(ttl),
                uses: Some(uses),
                description,
            };
            let params = serde_json::to_value(params)?;
            let raw = super::devices::call(&target, method::JOIN_TOKEN_CREATE, params).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&raw)?);
                return Ok(());
            }
            let created: CreatedJoinToken = decode(raw, method::JOIN_TOKEN_CREATE)?;
            println!("{}", created.token);
            let t = &created.join_token.token;
            eprintln!(
                "join token {}: enrols up to {} new device{} until it expires in {}; it is shown \
                 only this once. Hosts use it as their token (token_file, --token-file or \
                 CLAWNODE_TOKEN).",
                escape(&t.id),
                t.uses,
                if t.uses == 1 { "" } else { "s" },
                short_duration(t.expires_at_ms.saturating_sub(now)),
            );
        }
        JoinTokenCommand::List { target, json } => {
            let raw = super::devices::call(&target, method::JOIN_TOKEN_LIST, json!({})).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&raw)?);
            } else {
                let list: JoinTokenList = decode(raw, method::JOIN_TOKEN_LIST)?;
                print!("{}", table(&list.join_tokens, now));
            }
        }
        JoinTokenCommand::Revoke { target, id } => {
            let id = id.trim();
            if id.is_empty() {
                anyhow::bail!("the id is empty");
            }
            let raw = super::devices::call(&target, method::JOIN_TOKEN_REVOKE, json!({ "id": id }))
                .await?;
            let revoked: RevokedJoinToken = decode(raw, method::JOIN_TOKEN_REVOKE)?;
            println!(
                "revoked join token {}: it admits nobody from now on; devices that enrolled with \
                 it keep their access (`clawnode devices list` shows them, `clawnode devices \
                 revoke` takes it away)",
                escape(&revoked.join_token.token.id)
            );
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(raw: serde_json::Value, name: &str) -> Result<T> {
    serde_json::from_value(raw).with_context(|| format!("unexpected {name} answer"))
}

/// `--ttl`: a whole number and a unit (`30s`, `30m`, `1h`, `7d`), from 1s
/// to 365d; in ms.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let form = "use a whole number and a unit: 30s, 30m, 1h or 7d";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_ms: u64 = match unit {
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        "d" => 24 * 60 * 60 * 1000,
        _ => return Err(form.into()),
    };
    let n: u64 = number.parse().map_err(|_| form.to_string())?;
    match n.checked_mul(unit_ms) {
        Some(ms) if (MIN_TTL_MS..=MAX_TTL_MS).contains(&ms) => Ok(ms),
        _ => Err("the lifetime must be from 1s to 365d".into()),
    }
}

/// `--uses`: 1 to [`MAX_USES`].
pub fn parse_uses(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_USES).contains(&n) => Ok(n),
        _ => Err(format!("use a whole number from 1 to {MAX_USES}")),
    }
}

/// "in 5m", "3h ago".
fn relative(now: u64, at: u64) -> String {
    if at > now {
        format!("in {}", short_duration(at - now))
    } else {
        format!("{} ago", short_duration(now - at))
    }
}

/// One line per token: every value escaped.
pub fn table(tokens: &[JoinTokenView], now: u64) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".into(),
        "USED".into(),
        "EXPIRES".into(),
        "LAST USED".into(),
        "CREATED".into(),
        "DESCRIPTION".into(),
    ]];
    for v in tokens {
        let t = &v.token;
        rows.push([
            t.id.clone(),
            v.state.as_str().into(),
            format!("{}/{}", t.used, t.uses),
            relative(now, t.expires_at_ms),
            t.last_used_at_ms
                .map_or_else(|| "-".into(), |at| relative(now, at)),
            relative(now, t.created_at_ms),
            t.description.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    super::text_table(&rows, "(no join tokens: `clawnode join-token create`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::join_token::JoinToken;

    #[test]
    fn lifetimes_are_a_number_and_a_unit_within_bounds() {
        assert_eq!(parse_ttl("30s"), Ok(30_000));
        assert_eq!(parse_ttl("30m"), Ok(30 * 60_000));
        assert_eq!(parse_ttl(" 1h "), Ok(3_600_000));
        assert_eq!(parse_ttl("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_ttl("365d"), Ok(MAX_TTL_MS));
        for bad in ["", "1", "h", "1x", "1.5h", "-1h", "1h30m", "1 h", "1H"] {
            assert!(
                parse_ttl(bad).is_err_and(|e| e.contains("30s, 30m, 1h or 7d")),
                "{bad:?}"
            );
        }
        for bad in ["0s", "366d", "99999999999999999999d"] {
            let e = parse_ttl(bad).unwrap_err();
            assert!(
                e.contains("from 1s to 365d") || e.contains("30s, 30m"),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(parse_uses("3"), Ok(3));
        assert!(parse_uses("0").is_err_and(|e| e.contains("from 1 to 100000")));
        assert!(parse_uses("many").is_err());
    }

    #[test]
    fn the_table_shows_state_uses_and_times_escaped() {
        let t = JoinToken {
            id: "0123456789ab".into(),
            description: Some("rack\u{1b}[2J 4".into()),
            created_at_ms: 0,
            created_by: None,
            expires_at_ms: 3_600_000 + 120_000,
            uses: 3,
            used: 1,
            last_used_at_ms: Some(60_000),
            revoked_at_ms: None,
        };
        let out = table(&[t.view(120_000)], 120_000);
        assert!(
            !out.chars()
                .any(|c| c != '\n' && crate::safe_text::is_unsafe(c)),
            "{out}"
        );
        for want in [
            "0123456789ab",
            "active",
            "1/3",
            "in 1h",
            "1m ago",
            "2m ago",
            "rack\\u{1b}[2J 4",
        ] {
            assert!(out.contains(want), "{want}: {out}");
        }
        assert!(table(&[], 0).contains("no join tokens"));
    }
}
