//! `clawnode devices list|approve|reject|revoke|remove|rename|rotate`: the
//! gateway's device records, pending pairing requests and device tokens,
//! through the methods OpenClaw's `openclaw devices` speaks (`device.pair.*`,
//! `device.token.rotate`, and clawnode's `clawnode.device.revoke`). On the gateway host it needs no
//! flags (`super::operator_target`, as `presence` and `forget`).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{ClientTlsArgs, CommonArgs};
use crate::protocol::{method, scope};
use crate::safe_text::escape;

#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[command(subcommand)]
    pub command: DevicesCommand,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Pending requests and every known device, with their states.
    List {
        #[command(flatten)]
        target: TargetArgs,
        /// Print the raw device.pair.list payload as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request (request id or device id), or let a
    /// rejected or revoked device back in.
    Approve(IdArgs),
    /// Reject a pending request (or a device): refused until approved.
    Reject(IdArgs),
    /// Revoke an approved device: its connections close at once and it is
    /// refused, with the gateway token too, until approved again.
    Revoke(IdArgs),
    /// Delete a device's record and its instance pins; its connections close.
    Remove(IdArgs),
    /// Rotate a device's token: the old one is refused at once and the
    /// device's connections of that role close; it is issued a new one on
    /// its next connect with the join token. Prints nothing secret.
    Rotate {
        #[command(flatten)]
        target: TargetArgs,
        /// The device id.
        #[arg(value_name = "DEVICE_ID")]
        id: String,
        /// The token's role.
        #[arg(long, value_name = "ROLE", default_value = "node")]
        role: String,
    },
    /// Set a device's operator label (shown before its host name).
    Rename {
        #[command(flatten)]
        target: TargetArgs,
        /// The device id.
        #[arg(value_name = "DEVICE_ID")]
        id: String,
        #[arg(value_name = "LABEL")]
        label: String,
    },
}

/// Which gateway, and how to reach it.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Gateway URL [default: the local gateway].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// File holding the operator token [default on the gateway host: its
    /// operator.token].
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub client_tls: ClientTlsArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// A request id or device id (as `clawnode devices list` shows them).
    #[arg(value_name = "ID")]
    pub id: String,
}

pub async fn run(args: DevicesArgs) -> Result<()> {
    match args.command {
        DevicesCommand::List { target, json } => {
            let payload = call(&target, method::DEVICE_PAIR_LIST, json!({})).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&payload)?);
            } else {
                print!("{}", table(&payload, crate::clock::now_ms()));
            }
        }
        DevicesCommand::Approve(a) => {
            let id = trimmed(&a.id)?;
            let out = call(
                &a.target,
                method::DEVICE_PAIR_APPROVE,
                json!({ "requestId": id }),
            )
            .await?;
            let device = out.get("device").unwrap_or(&Value::Null);
            println!(
                "approved device {}{}",
                escape(text(device, "deviceId")),
                name_of(device)
            );
        }
        DevicesCommand::Reject(a) => {
            let id = trimmed(&a.id)?;
            let out = call(
                &a.target,
                method::DEVICE_PAIR_REJECT,
                json!({ "requestId": id }),
            )
            .await?;
            println!(
                "rejected device {}: it is refused until approved again",
                escape(text(&out, "deviceId"))
            );
        }
        DevicesCommand::Revoke(a) => {
            let id = trimmed(&a.id)?;
            let out = call(&a.target, method::DEVICE_REVOKE, json!({ "deviceId": id })).await?;
            let device = out.get("device").unwrap_or(&Value::Null);
            println!(
                "revoked device {}{}: its connections are closed; it is refused until approved again",
                escape(text(&out, "deviceId")),
                name_of(device)
            );
        }
        DevicesCommand::Remove(a) => {
            let id = trimmed(&a.id)?;
            let out = call(
                &a.target,
                method::DEVICE_PAIR_REMOVE,
                json!({ "deviceId": id }),
            )
            .await?;
            println!(
                "removed device {} and its instance pins; its connections are closed",
                escape(text(&out, "deviceId"))
            );
        }
        DevicesCommand::Rotate { target, id, role } => {
            let id = trimmed(&id)?;
            let out = call(
                &target,
                method::DEVICE_TOKEN_ROTATE,
                json!({ "deviceId": id, "role": role.trim() }),
            )
            .await?;
            // A token handed back in band is never printed.
            let delivery = match text(&out, "tokenDelivery") {
                "in-band" => "a replacement was returned to this caller (not shown)",
                _ => "it is issued a new one on its next connect with the join token",
            };
            println!(
                "rotated the {} token of device {}: the old token is refused from now on and \
                 its {} connections are closed; {delivery}",
                escape(text(&out, "role")),
                escape(text(&out, "deviceId")),
                escape(text(&out, "role")),
            );
        }
        DevicesCommand::Rename { target, id, label } => {
            let id = trimmed(&id)?;
            let out = call(
                &target,
                method::DEVICE_PAIR_RENAME,
                json!({ "deviceId": id, "label": label }),
            )
            .await?;
            println!(
                "device {} is labelled {}",
                escape(text(&out, "deviceId")),
                escape(text(&out, "label"))
            );
        }
    }
    Ok(())
}

fn trimmed(id: &str) -> Result<&str> {
    let id = id.trim();
    if id.is_empty() {
        anyhow::bail!("the id is empty");
    }
    Ok(id)
}

/// Calls `name` on the gateway `target` names, as an operator.
pub(super) async fn call(target: &TargetArgs, name: &str, params: Value) -> Result<Value> {
    let (settings, url, tls) = super::operator_target(
        &target.common,
        &target.url,
        &target.token_file,
        &target.client_tls,
    )?;
    let token = settings.token.read()?;
    crate::client::call_with_scopes(
        &url,
        &tls,
        token.as_ref(),
        &[scope::OPERATOR_ADMIN],
        name,
        params,
    )
    .await
    .with_context(|| format!("{name} failed"))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// ` (label or host name)`, escaped; empty without either.
fn name_of(device: &Value) -> String {
    device
        .get("label")
        .or_else(|| device.get("displayName"))
        .and_then(Value::as_str)
        .map(|n| format!(" ({})", escape(n)))
        .unwrap_or_default()
}

/// "12s", "5m", "3h", "2d" ago.
fn age(now: u64, then: Option<u64>) -> String {
    let Some(then) = then else {
        return "-".into();
    };
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// One line per pending request, then per device: every value escaped.
pub fn table(payload: &Value, now: u64) -> String {
    let list = |key: &str| -> Vec<Value> {
        payload
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut rows = vec![[
        "STATE".to_string(),
        "ID".into(),
        "NAME".into(),
        "ROLES".into(),
        "ADDRESS".into(),
        "SEEN".into(),
        "INSTANCES".into(),
        "JOIN TOKEN".into(),
        "TOKENS".into(),
    ]];
    for p in list("pending") {
        rows.push([
            "pending".into(),
            format!(
                "{} (device {})",
                text(&p, "requestId"),
                short(text(&p, "deviceId"))
            ),
            text(&p, "displayName").into(),
            text(&p, "role").into(),
            text(&p, "remoteIp").into(),
            age(now, p.get("ts").and_then(Value::as_u64)),
            "-".into(),
            text(&p, "joinTokenId").into(),
            "-".into(),
        ]);
    }
    for d in list("paired").into_iter().chain(list("refused")) {
        let joined = |key: &str| {
            let v: Vec<&str> = d
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        let name = d
            .get("label")
            .or_else(|| d.get("displayName"))
            .and_then(Value::as_str)
            .unwrap_or("-");
        rows.push([
            text(&d, "state").into(),
            text(&d, "deviceId").into(),
            name.into(),
            joined("roles"),
            text(&d, "lastAddress").into(),
            age(now, d.get("lastSeenMs").and_then(Value::as_u64)),
            joined("instanceIds"),
            text(&d, "joinTokenId").into(),
            tokens(&d),
        ]);
    }
    super::text_table(&rows, "(no devices)")
}

/// A device's tokens by role: `node` when valid, `node:revoked` or
/// `node:rotated` (none valid until its next connect with the join token).
fn tokens(device: &Value) -> String {
    let all: Vec<String> = device
        .get("tokens")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|t| {
                    let role = text(t, "role");
                    match (
                        t.get("active").and_then(Value::as_bool),
                        t.get("revokedAtMs"),
                    ) {
                        (Some(true), _) => role.to_string(),
                        (_, Some(v)) if !v.is_null() => format!("{role}:revoked"),
                        _ => format!("{role}:rotated"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(",")
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_escapes_what_devices_sent() {
        let payload = json!({
            "pending": [{ "requestId": "r-1", "deviceId": "abcdef0123456789", "displayName": "evil\u{1b}[2J", "role": "node", "ts": 0 }],
            "paired": [{ "deviceId": "d-2", "state": "approved", "displayName": "web\u{202e}1", "roles": ["node"], "lastSeenMs": 0, "instanceIds": ["i-2"], "joinTokenId": "0123456789ab",
                         "tokens": [{ "role": "node", "active": true, "createdAtMs": 1 }, { "role": "operator", "active": false, "createdAtMs": 1, "revokedAtMs": 2 }] }],
            "refused": [{ "deviceId": "d-3", "state": "revoked", "roles": [], "lastSeenMs": 0, "instanceIds": [] }],
        });
        let out = table(&payload, 61_000);
        assert!(
            !out.chars()
                .any(|c| c != '\n' && crate::safe_text::is_unsafe(c)),
            "{out}"
        );
        assert!(out.contains("evil\\u{1b}[2J"), "{out}");
        assert!(out.contains("r-1 (device abcdef012345)"), "{out}");
        assert!(out.contains("revoked"), "{out}");
        assert!(out.contains("1m"), "{out}");
        assert!(
            out.contains("JOIN TOKEN") && out.contains("0123456789ab"),
            "{out}"
        );
        assert!(out.contains("node,operator:revoked"), "{out}");
    }
}
