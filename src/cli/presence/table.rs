//! The presence list as a table a person reads at a glance: a status dot
//! and word, sorted gateway first, then by status and host, fitted to the
//! terminal's width.

use crate::presence::PresenceStatus;
use crate::protocol::PresenceEntry;

/// How the table is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Stdout is a terminal: a dot before the status word.
    pub dot: bool,
    /// ANSI colours (a terminal without `NO_COLOR`).
    pub color: bool,
    /// Full instance ids, nothing truncated.
    pub wide: bool,
    /// The width to fit, if any (a terminal's columns).
    pub width: Option<usize>,
}

impl Style {
    /// Plain text, as for a pipe.
    pub const PLAIN: Style = Style {
        dot: false,
        color: false,
        wide: false,
        width: None,
    };
}

const HEADER: [&str; 10] = [
    "STATUS",
    "HOST",
    "IP",
    "MODE",
    "VERSION",
    "PLATFORM",
    "MODEL",
    "LAST INPUT",
    "UPDATED",
    "INSTANCE",
];
const STATUS: usize = 0;
/// Columns given up first when the table is too wide, and the narrowest
/// each may become (PLATFORM, MODEL, HOST, VERSION).
const SHRINK: [(usize, usize); 4] = [(5, 8), (6, 8), (1, 10), (4, 7)];
/// The short instance id's length.
const SHORT_ID: usize = 8;

/// Whether the row's client has gone (its connection closed; the row stays
/// until the TTL takes it).
pub fn has_left(e: &PresenceEntry) -> bool {
    e.reason.as_deref() == Some("disconnect")
}

fn is_gateway(e: &PresenceEntry) -> bool {
    e.mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case(crate::protocol::mode::GATEWAY))
}

/// Gateway first, then Active, Idle, Stale, then by host (ignoring case),
/// then by instance id.
pub fn sort(entries: &mut [PresenceEntry], now_ms: u64) {
    let host = |e: &PresenceEntry| e.host.as_deref().unwrap_or_default().to_lowercase();
    entries.sort_by(|a, b| {
        is_gateway(b)
            .cmp(&is_gateway(a))
            .then_with(|| {
                (PresenceStatus::of(a.ts, now_ms) as u8)
                    .cmp(&(PresenceStatus::of(b.ts, now_ms) as u8))
            })
            .then_with(|| host(a).cmp(&host(b)))
            .then_with(|| a.instance_id.cmp(&b.instance_id))
    });
}

/// "12s", "5m", "3h", "2d".
pub fn human_secs(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// One row's cells, before fitting: the status cell's text is the bare word
/// (the dot and colour are added when drawn).
fn cells(e: &PresenceEntry, now_ms: u64, wide: bool) -> [String; 10] {
    let dash = || "-".to_string();
    let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty()).unwrap_or_else(dash);
    let age = human_secs(now_ms.saturating_sub(e.ts) / 1000);
    [
        PresenceStatus::of(e.ts, now_ms).as_str().to_string(),
        text(&e.host),
        text(&e.ip),
        text(&e.mode),
        text(&e.version),
        text(&e.platform),
        text(&e.model_identifier),
        e.last_input_seconds.map(human_secs).unwrap_or_else(dash),
        if has_left(e) {
            format!("left {age} ago")
        } else {
            format!("{age} ago")
        },
        match &e.instance_id {
            Some(id) if !wide => id.chars().take(SHORT_ID).collect(),
            Some(id) => id.clone(),
            None => dash(),
        },
    ]
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` characters, the last one an ellipsis when cut.
fn fit(s: &str, width: usize) -> String {
    if width_of(s) <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Renders the table (header first; entries in the order given).
pub fn render(entries: &[PresenceEntry], now_ms: u64, style: Style) -> String {
    let rows: Vec<([String; 10], &PresenceEntry)> = entries
        .iter()
        .map(|e| (cells(e, now_ms, style.wide), e))
        .collect();
    let status_extra = if style.dot { 2 } else { 0 };
    let mut widths = HEADER.map(width_of);
    for (row, _) in &rows {
        for (i, cell) in row.iter().enumerate() {
            let w = width_of(cell) + if i == STATUS { status_extra } else { 0 };
            widths[i] = widths[i].max(w);
        }
    }
    if let (Some(limit), false) = (style.width, style.wide) {
        let total = |w: &[usize; 10]| w.iter().sum::<usize>() + 2 * (w.len() - 1);
        for (col, min) in SHRINK {
            let over = total(&widths).saturating_sub(limit);
            if over == 0 {
                break;
            }
            let floor = min.max(width_of(HEADER[col]));
            widths[col] = widths[col].saturating_sub(over).max(floor);
        }
    }

    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<(String, usize)>| {
        let mut text = String::new();
        let last = cells.len() - 1;
        for (i, (cell, visible)) in cells.into_iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&cell);
            if i < last {
                text.push_str(&" ".repeat(widths[i].saturating_sub(visible)));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let header = HEADER
        .iter()
        .map(|h| {
            let h = h.to_string();
            let w = width_of(&h);
            if style.color {
                (format!("\x1b[1m{h}\x1b[0m"), w)
            } else {
                (h, w)
            }
        })
        .collect();
    line(&mut out, header);
    for (row, entry) in rows {
        let left = has_left(entry);
        let cells = row
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == STATUS {
                    return status_cell(&cell, entry, now_ms, left, style);
                }
                let cell = if style.wide {
                    cell
                } else {
                    fit(&cell, widths[i])
                };
                let w = width_of(&cell);
                if style.color && left {
                    (format!("\x1b[2m{cell}\x1b[0m"), w)
                } else {
                    (cell, w)
                }
            })
            .collect();
        line(&mut out, cells);
    }
    out
}

/// "● Active" (coloured on a colour terminal; a hollow dot when the client
/// left), or the bare word without a terminal.
fn status_cell(
    word: &str,
    entry: &PresenceEntry,
    now_ms: u64,
    left: bool,
    style: Style,
) -> (String, usize) {
    if !style.dot {
        return (word.to_string(), width_of(word));
    }
    let dot = if left { '○' } else { '●' };
    let visible = width_of(word) + 2;
    if !style.color {
        return (format!("{dot} {word}"), visible);
    }
    let colour = match PresenceStatus::of(entry.ts, now_ms) {
        PresenceStatus::Active => "32",
        PresenceStatus::Idle => "33",
        PresenceStatus::Stale => "31",
    };
    (format!("\x1b[{colour}m{dot}\x1b[0m {word}"), visible)
}

/// Counts per status: (Active, Idle, Stale).
pub fn counts(entries: &[PresenceEntry], now_ms: u64) -> [usize; 3] {
    let mut n = [0; 3];
    for e in entries {
        n[PresenceStatus::of(e.ts, now_ms) as usize] += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn entry(host: &str, mode: &str, age_s: u64) -> PresenceEntry {
        PresenceEntry {
            host: Some(host.into()),
            mode: Some(mode.into()),
            instance_id: Some(format!("{host}-0123456789abcdef")),
            ts: NOW - age_s * 1000,
            ..Default::default()
        }
    }

    fn fleet() -> Vec<PresenceEntry> {
        let mut left = entry("db-1", "node", 5);
        left.reason = Some("disconnect".into());
        let mut list = vec![
            entry("web-2", "node", 100),
            entry("Web-1", "node", 3),
            left,
            entry("old", "node", 400),
            entry("gw", "gateway", 0),
        ];
        sort(&mut list, NOW);
        list
    }

    #[test]
    fn gateway_first_then_status_then_host_ignoring_case() {
        let hosts: Vec<_> = fleet().iter().map(|e| e.host.clone().unwrap()).collect();
        assert_eq!(hosts, ["gw", "db-1", "Web-1", "web-2", "old"]);
    }

    #[test]
    fn a_pipe_gets_plain_words_and_every_column() {
        let t = render(&fleet(), NOW, Style::PLAIN);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "STATUS  HOST   IP  MODE     VERSION  PLATFORM  MODEL  LAST INPUT  UPDATED      INSTANCE"
        );
        assert!(lines[1].starts_with("Active  gw "), "{t}");
        assert!(
            lines[2].contains("left 5s ago") && lines[2].contains("db-1-012"),
            "{t}"
        );
        assert!(lines[4].starts_with("Idle    web-2"), "{t}");
        assert!(
            lines[5].starts_with("Stale   old") && lines[5].contains("6m ago"),
            "{t}"
        );
        assert!(!t.contains('\x1b') && !t.contains('●'), "{t}");
    }

    #[test]
    fn a_terminal_gets_dots_and_colour_unless_no_color() {
        let style = Style {
            dot: true,
            color: true,
            wide: false,
            width: None,
        };
        let t = render(&fleet(), NOW, style);
        assert!(t.contains("\x1b[32m●\x1b[0m Active  gw"), "{t}");
        assert!(
            t.contains("\x1b[32m○\x1b[0m Active"),
            "a left row has a hollow dot: {t}"
        );
        assert!(t.contains("\x1b[33m●\x1b[0m Idle"), "{t}");
        assert!(t.contains("\x1b[31m●\x1b[0m Stale"), "{t}");
        let plain = render(
            &fleet(),
            NOW,
            Style {
                color: false,
                ..style
            },
        );
        assert!(
            plain.contains("● Active  gw") && !plain.contains('\x1b'),
            "{plain}"
        );
    }

    #[test]
    fn the_table_fits_the_width_and_wide_shows_everything() {
        let mut list = fleet();
        list[1].platform = Some("linux 6.18.44-some-very-long-kernel-release-name".into());
        list[1].model_identifier = Some("PowerEdge R760xd2 with a long name".into());
        let narrow = Style {
            width: Some(100),
            ..Style::PLAIN
        };
        let t = render(&list, NOW, narrow);
        for l in t.lines() {
            assert!(width_of(l) <= 100, "{} > 100: {l}", width_of(l));
        }
        assert!(t.contains('…'), "{t}");
        let wide = render(
            &list,
            NOW,
            Style {
                wide: true,
                ..narrow
            },
        );
        assert!(
            wide.contains("some-very-long-kernel-release-name"),
            "{wide}"
        );
        assert!(wide.contains("db-1-0123456789abcdef"), "full ids: {wide}");
    }

    #[test]
    fn counts_per_status() {
        assert_eq!(counts(&fleet(), NOW), [3, 1, 1]);
    }
}
