//! `clawnode presence`: the gateway's presence list as a table (with the
//! Active/Idle/Stale status) or as the raw `system-presence` JSON.

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::PresenceArgs;
use crate::presence::PresenceStatus;
use crate::protocol::{method, PresenceEntry};

pub async fn run(args: PresenceArgs) -> Result<()> {
    let (settings, url, tls) =
        super::operator_target(&args.common, &args.url, &args.token_file, &args.client_tls)?;
    let token = settings.token.read()?;
    let payload = crate::client::call(
        &url,
        &tls,
        token.as_ref(),
        method::SYSTEM_PRESENCE,
        Value::Null,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&payload)?);
        return Ok(());
    }
    let entries: Vec<PresenceEntry> =
        serde_json::from_value(payload).context("gateway sent an invalid presence list")?;
    print!(
        "{}",
        render_table(&entries, crate::gateway::state::now_ms())
    );
    Ok(())
}

/// "Active 5s", "Idle 2m", "Stale 1h".
fn status_cell(ts: u64, now: u64) -> String {
    let age = now.saturating_sub(ts) / 1000;
    let age = match age {
        0..=119 => format!("{age}s"),
        120..=7199 => format!("{}m", age / 60),
        _ => format!("{}h", age / 3600),
    };
    format!("{} {age}", PresenceStatus::of(ts, now).as_str())
}

/// Renders entries as an aligned table.
pub fn render_table(entries: &[PresenceEntry], now_ms: u64) -> String {
    let header = [
        "HOST", "IP", "MODE", "VERSION", "PLATFORM", "FAMILY", "MODEL", "IDLE", "REASON", "STATUS",
        "INSTANCE",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 11]> = entries
        .iter()
        .map(|e| {
            [
                e.host.clone().unwrap_or_else(dash),
                e.ip.clone().unwrap_or_else(dash),
                e.mode.clone().unwrap_or_else(dash),
                e.version.clone().unwrap_or_else(dash),
                e.platform.clone().unwrap_or_else(dash),
                e.device_family.clone().unwrap_or_else(dash),
                e.model_identifier.clone().unwrap_or_else(dash),
                e.last_input_seconds
                    .map(|s| format!("{s}s"))
                    .unwrap_or_else(dash),
                e.reason.clone().unwrap_or_else(dash),
                status_cell(e.ts, now_ms),
                e.instance_id.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < widths.len() {
                s.push_str(&" ".repeat(w - cell.chars().count()));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&mut header.iter().copied());
    for row in &rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_status_and_dashes_for_absent_fields() {
        let now = 1_000_000;
        let entries = vec![
            PresenceEntry {
                host: Some("gw".into()),
                mode: Some("gateway".into()),
                ts: now - 1_000,
                ..Default::default()
            },
            PresenceEntry {
                host: Some("old".into()),
                ts: now - 200_000,
                ..Default::default()
            },
        ];
        let t = render_table(&entries, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("HOST"));
        assert!(lines[1].contains("Active 1s"), "{t}");
        assert!(lines[2].contains("Stale 3m"), "{t}");
        assert!(lines[2].contains(" - "), "{t}");
    }
}
