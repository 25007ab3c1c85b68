//! `clawnode presence`: the gateway's presence list as a table (status dot,
//! sorted, fitted to the terminal), as the raw `system-presence` JSON, or
//! live with `--watch`.

pub mod table;
mod watch;

use std::io::IsTerminal as _;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{PresenceArgs, StatusArg};
use crate::presence::PresenceStatus;
use crate::protocol::{method, PresenceEntry};
use table::Style;

pub async fn run(args: PresenceArgs) -> Result<()> {
    let filter = Filter::parse(&args.filter, &args.status)?;
    let (settings, url, tls) =
        super::operator_target(&args.common, &args.url, &args.token_file, &args.client_tls)?;
    let token = settings.token.read()?;
    if args.watch {
        return watch::run(&url, &tls, token.as_ref(), &args, &filter).await;
    }
    let payload = crate::client::call(
        &url,
        &tls,
        token.as_ref(),
        method::SYSTEM_PRESENCE,
        Value::Null,
    )
    .await?;
    let now = crate::clock::now_ms();
    let list = Listed::parse(payload)?.filtered(&filter, now);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list.raw)?);
        return Ok(());
    }
    print!("{}", list.table(now, style(&args)));
    Ok(())
}

/// How stdout is drawn on: dots and colour on a terminal (no colour with
/// `NO_COLOR`), its width when it has one.
fn style(args: &PresenceArgs) -> Style {
    let tty = std::io::stdout().is_terminal();
    Style {
        dot: tty,
        color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        wide: args.wide,
        width: if tty {
            terminal_size().map(|(cols, _)| cols)
        } else {
            None
        },
    }
}

/// The terminal's (columns, rows), if stdout is one.
fn terminal_size() -> Option<(usize, usize)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0).then_some((ws.ws_col as usize, ws.ws_row as usize))
}

/// A presence list as received: the raw objects (for `--json`, unchanged)
/// and the same rows parsed (for filtering and the table).
pub struct Listed {
    raw: Vec<Value>,
    entries: Vec<PresenceEntry>,
}

impl Listed {
    pub fn parse(payload: Value) -> Result<Listed> {
        let Value::Array(raw) = payload else {
            bail!("gateway sent an invalid presence list: expected a JSON array");
        };
        let entries = raw
            .iter()
            .map(|v| serde_json::from_value(v.clone()))
            .collect::<Result<Vec<PresenceEntry>, _>>()
            .context("gateway sent an invalid presence list")?;
        Ok(Listed { raw, entries })
    }

    /// Only the rows `filter` keeps.
    pub fn filtered(self, filter: &Filter, now_ms: u64) -> Listed {
        let (raw, entries) = self
            .raw
            .into_iter()
            .zip(self.entries)
            .filter(|(_, e)| filter.keeps(e, now_ms))
            .unzip();
        Listed { raw, entries }
    }

    /// A filtered copy (the original is kept: statuses change with time).
    pub fn clone_filtered(&self, filter: &Filter, now_ms: u64) -> Listed {
        Listed {
            raw: self.raw.clone(),
            entries: self.entries.clone(),
        }
        .filtered(filter, now_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A `tick` from the gateway proves its own row current: its `ts`
    /// becomes the tick's (rows otherwise change only with `presence`).
    pub fn touch_self(&mut self, ts: u64) {
        for (raw, entry) in self.raw.iter_mut().zip(&mut self.entries) {
            if entry.reason.as_deref() == Some("self") && entry.ts < ts {
                entry.ts = ts;
                raw["ts"] = Value::from(ts);
            }
        }
    }

    /// Rows per status: (Active, Idle, Stale, Left).
    pub fn counts(&self, now_ms: u64) -> [usize; 4] {
        table::counts(&self.entries, now_ms)
    }

    /// Sorted and drawn.
    pub fn table(&self, now_ms: u64, style: Style) -> String {
        let mut entries = self.entries.clone();
        table::sort(&mut entries, now_ms);
        table::render(&entries, now_ms, style)
    }
}

/// `--filter FIELD=VALUE` and `--status`.
#[derive(Debug, Default)]
pub struct Filter {
    fields: Vec<(Field, String)>,
    statuses: Vec<PresenceStatus>,
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Host,
    Ip,
    Mode,
    Version,
    Platform,
    Family,
    Model,
    Instance,
    Reason,
    Device,
    Label,
}

const FIELDS: [(&str, Field); 11] = [
    ("host", Field::Host),
    ("ip", Field::Ip),
    ("mode", Field::Mode),
    ("version", Field::Version),
    ("platform", Field::Platform),
    ("family", Field::Family),
    ("model", Field::Model),
    ("instance", Field::Instance),
    ("reason", Field::Reason),
    ("device", Field::Device),
    ("label", Field::Label),
];

impl Filter {
    pub fn parse(filters: &[String], statuses: &[StatusArg]) -> Result<Filter> {
        let mut fields = Vec::new();
        for f in filters {
            let Some((name, value)) = f.split_once('=') else {
                bail!("--filter {f:?}: expected FIELD=VALUE, such as mode=node");
            };
            let name = name.trim().to_ascii_lowercase();
            let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
                bail!(
                    "--filter {f:?}: unknown field {name:?}; expected one of {}",
                    known.join(", ")
                );
            };
            fields.push((*field, value.trim().to_lowercase()));
        }
        let statuses = statuses
            .iter()
            .map(|s| match s {
                StatusArg::Active => PresenceStatus::Active,
                StatusArg::Idle => PresenceStatus::Idle,
                StatusArg::Stale => PresenceStatus::Stale,
                StatusArg::Left => PresenceStatus::Left,
            })
            .collect();
        Ok(Filter { fields, statuses })
    }

    pub fn keeps(&self, e: &PresenceEntry, now_ms: u64) -> bool {
        if !self.statuses.is_empty()
            && !self.statuses.contains(&PresenceStatus::of_entry(e, now_ms))
        {
            return false;
        }
        self.fields.iter().all(|(field, pattern)| {
            let value = match field {
                Field::Host => &e.host,
                Field::Ip => &e.ip,
                Field::Mode => &e.mode,
                Field::Version => &e.version,
                Field::Platform => &e.platform,
                Field::Family => &e.device_family,
                Field::Model => &e.model_identifier,
                Field::Instance => &e.instance_id,
                Field::Reason => &e.reason,
                Field::Device => &e.device_id,
                Field::Label => &e.operator_label,
            };
            glob(
                pattern,
                &value.as_deref().unwrap_or_default().to_lowercase(),
            )
        })
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any text.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell_pattern() {
        assert!(glob("web-1", "web-1"));
        assert!(!glob("web-1", "web-10"));
        assert!(glob("web-*", "web-10"));
        assert!(glob("*-1", "web-1"));
        assert!(glob("w*b*1", "web-1"));
        assert!(!glob("w*x*1", "web-1"));
        assert!(glob("*", ""));
        assert!(
            !glob("ab*ba", "aba"),
            "the prefix and suffix may not overlap"
        );
    }

    #[test]
    fn filters_by_field_and_status() {
        let now = 1_000_000;
        let row = |host: &str, mode: &str, age: u64| PresenceEntry {
            host: Some(host.into()),
            mode: Some(mode.into()),
            ts: now - age,
            ..Default::default()
        };
        let f = Filter::parse(&["mode=NODE".into(), "host=web-*".into()], &[]).unwrap();
        assert!(f.keeps(&row("Web-1", "node", 0), now));
        assert!(!f.keeps(&row("db-1", "node", 0), now));
        assert!(!f.keeps(&row("web-1", "ui", 0), now));
        let f = Filter::parse(&[], &[StatusArg::Stale, StatusArg::Idle]).unwrap();
        assert!(!f.keeps(&row("a", "node", 0), now));
        assert!(f.keeps(&row("a", "node", 100_000), now));
        assert!(f.keeps(&row("a", "node", 900_000), now));
    }

    #[test]
    fn a_bad_filter_says_what_is_expected() {
        let e = Filter::parse(&["colour=red".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("expected one of host, ip"), "{e}");
        let e = Filter::parse(&["mode".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("expected FIELD=VALUE"), "{e}");
    }

    #[test]
    fn json_keeps_the_objects_as_sent() {
        let payload = serde_json::json!([
            {"host": "gw", "mode": "gateway", "ts": 5, "future": {"x": 1}},
            {"host": "n1", "mode": "node", "ts": 5}
        ]);
        let f = Filter::parse(&["mode=gateway".into()], &[]).unwrap();
        let list = Listed::parse(payload).unwrap().filtered(&f, 5);
        assert_eq!(
            list.raw,
            vec![serde_json::json!({"host": "gw", "mode": "gateway", "ts": 5, "future": {"x": 1}})]
        );
        assert!(Listed::parse(serde_json::json!({"a": 1})).is_err());
    }
}
