//! Logging setup. Everything logs through `tracing`; this picks the sink:
//!
//! - **journald**, natively, when systemd runs us (stderr is the journal
//!   stream named by `JOURNAL_STREAM`) or when asked: every event's fields
//!   become journal fields (`INSTANCE_ID`, `GATEWAY_URL`, `CONN_ID`,
//!   `ERROR_CODE`, …), so `journalctl -u clawnode CONN_ID=…` works;
//! - **text** on stderr otherwise (colour only on a terminal, never with
//!   `NO_COLOR`), or **JSON** lines with `--log-format json`.
//!
//! The level comes from `RUST_LOG` when set, else the configured filter,
//! else `info`.
//!
//! Whatever the sink, every field value (and message) is escaped before it
//! is written ([`escape::Escaping`]): a value a client sent cannot forge a
//! line or drive a terminal.

mod escape;

use std::io::IsTerminal as _;

use anyhow::{bail, Result};
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The journal when systemd runs us, else text.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object a line on stderr.
    Json,
    /// The systemd journal, with structured fields.
    Journald,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Auto => "auto",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        }
    }
}

/// What [`init`] needs.
#[derive(Debug, Default)]
pub struct LogOptions<'a> {
    /// A level or filter from the config (checked by [`validate_filter`]).
    pub filter: Option<&'a str>,
    pub format: LogFormat,
    /// Fields added to every journal entry (e.g. `INSTANCE_ID`).
    pub journal_fields: Vec<(&'static str, String)>,
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a configured log filter: a level (`info`) or comma-separated
/// `target=level` directives with at most one bare level
/// (`warn,clawnode::gateway=debug`). A bare word that is not a level is
/// refused (tracing would read it as a target and silence everything else).
pub fn validate_filter(filter: &str) -> Result<()> {
    let expected = "expected a level (error, warn, info, debug, trace) or a filter such as \"warn,clawnode::gateway=debug\"";
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => {
                bail!("invalid log level {filter:?}: empty target in {directive:?}; {expected}")
            }
            None => directive,
        };
        if !LEVELS.contains(&level.trim().to_ascii_lowercase().as_str()) {
            bail!("invalid log level {filter:?}: {directive:?} is not a level; {expected}");
        }
    }
    EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("invalid log level {filter:?}: {e}; {expected}"))
}

/// Whether stderr is the journal stream systemd gave us: `JOURNAL_STREAM`
/// is `<device>:<inode>` of it. Comparing (rather than only checking that
/// the variable is set) ignores a value inherited by a child whose stderr
/// was redirected, as `systemd.exec(5)` advises.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    // fstat(2) through a duplicate of fd 2 (which may be closed: then false).
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// `<device>:<inode>`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// tungstenite prints every frame it reads at trace level, and a `connect`
/// frame holds the gateway token: trace events from its targets are dropped
/// whatever the filter says, so no log level can leak a token.
fn is_frame_dump(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() == tracing::Level::TRACE
        && (meta.target().starts_with("tungstenite")
            || meta.target().starts_with("tokio_tungstenite"))
}

/// Installs the global subscriber. Returns a warning to log once logging
/// works (a fallback was taken), if any. Later calls change nothing.
pub fn init(options: LogOptions<'_>) -> Result<Option<String>> {
    let mut warning = None;
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(e) => {
            if std::env::var_os("RUST_LOG").is_some() {
                warning = Some(format!("ignoring RUST_LOG: {e}"));
            }
            EnvFilter::try_new(options.filter.unwrap_or("info"))
                .unwrap_or_else(|_| EnvFilter::new("info"))
        }
    };

    let want_journal = match options.format {
        LogFormat::Journald => true,
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };
    let journal = if want_journal {
        match journal_layer(&options.journal_fields) {
            Ok(layer) => Some(layer),
            Err(e) if options.format == LogFormat::Journald => {
                bail!("cannot log to the journal (/run/systemd/journal/socket): {e}")
            }
            Err(e) => {
                warning = Some(format!(
                    "cannot log to the journal ({e}); logging to stderr"
                ));
                None
            }
        }
    } else {
        None
    };
    let (text, json) = match (&journal, options.format) {
        (Some(_), _) => (None, None),
        (None, LogFormat::Json) => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
        (None, _) => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(
                        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
                    )
                    .with_target(false),
            ),
            None,
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(|meta| {
            !is_frame_dump(meta)
        }))
        .with(journal.map(escape::Escaping))
        .with(text.map(escape::Escaping))
        .with(json.map(escape::Escaping))
        .try_init();
    Ok(warning)
}

fn journal_layer(fields: &[(&'static str, String)]) -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        // Our field names are chosen to be journal fields as they are
        // (INSTANCE_ID, CONN_ID, …); none collides with a trusted field.
        .with_field_prefix(None)
        .with_syslog_identifier("clawnode".to_string())
        .with_priority_mappings(PriorityMappings {
            info: Priority::Informational,
            debug: Priority::Debug,
            ..PriorityMappings::new()
        })
        .with_custom_fields(fields.iter().map(|(k, v)| (*k, v.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_levels_or_directives() {
        for ok in [
            "info",
            "DEBUG",
            "warn,clawnode::gateway=debug",
            "clawnode=trace",
            "off",
        ] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "info,loud", "=debug", "x=lots", ""] {
            let e = format!("{:#}", validate_filter(bad).unwrap_err());
            assert!(e.contains("invalid log level"), "{bad}: {e}");
            assert!(e.contains("expected a level"), "{bad}: {e}");
        }
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        for bad in ["", "8", "8:", ":1", "a:1", "1:2:3"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad}");
        }
    }
}
