//! The presence list as a table a person reads at a glance: a status dot
//! and word, sorted gateway first, then by status and host, fitted to the
//! terminal's width.

use crate::presence::PresenceStatus;
use crate::protocol::PresenceEntry;
use crate::safe_text::escape;

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

/// How many columns the table has (LABEL is shown only when a row has one).
const COLUMNS: usize = 11;
const HEADER: [&str; COLUMNS] = [
    "STATUS",
    "HOST",
    "LABEL",
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
const HOST: usize = 1;
/// The operator's label of the row's device (`operatorLabel`).
const LABEL: usize = 2;
const UPDATED: usize = 9;
/// Columns that may be narrowed (with `…`) when the table is too wide, in
/// this order, and the narrowest each may become (PLATFORM, MODEL, HOST,
/// LABEL, VERSION).
const SHRINK: [(usize, usize); 5] = [(6, 8), (7, 8), (1, 10), (2, 10), (5, 7)];
/// Columns hidden, in this order, while even their narrowest widths do not
/// fit: MODEL, LAST INPUT, VERSION, PLATFORM, INSTANCE, MODE, IP, LABEL.
/// STATUS, HOST and UPDATED always stay.
const DROP: [usize; 8] = [7, 8, 5, 6, 10, 4, 3, 2];
/// The short instance id's length.
const SHORT_ID: usize = 8;

/// Whether the row's client has gone (its connection closed; the row stays
/// until the TTL takes it).
pub fn has_left(e: &PresenceEntry) -> bool {
    PresenceStatus::of_entry(e, 0) == PresenceStatus::Left
}

fn is_gateway(e: &PresenceEntry) -> bool {
    e.mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case(crate::protocol::mode::GATEWAY))
}

/// Gateway first, then Active, Idle, Stale, Left, then by host (ignoring
/// case), then by instance id.
pub fn sort(entries: &mut [PresenceEntry], now_ms: u64) {
    let host = |e: &PresenceEntry| e.host.as_deref().unwrap_or_default().to_lowercase();
    entries.sort_by(|a, b| {
        is_gateway(b)
            .cmp(&is_gateway(a))
            .then_with(|| {
                (PresenceStatus::of_entry(a, now_ms) as u8)
                    .cmp(&(PresenceStatus::of_entry(b, now_ms) as u8))
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
fn cells(e: &PresenceEntry, now_ms: u64, wide: bool) -> [String; COLUMNS] {
    let dash = || "-".to_string();
    // Every cell is the gateway's data: shown, never obeyed (an OSC 52 or
    // clear-screen sequence in a row is printed as `\u{1b}]52;…`).
    let text = |v: &Option<String>| {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map_or_else(dash, |s| escape(s).into_owned())
    };
    let age = human_secs(now_ms.saturating_sub(e.ts) / 1000);
    [
        PresenceStatus::of_entry(e, now_ms).as_str().to_string(),
        text(&e.host),
        text(&e.operator_label),
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
        match e.instance_id.as_deref().map(escape) {
            Some(id) if !wide => id.chars().take(SHORT_ID).collect(),
            Some(id) => id.into_owned(),
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
    let rows: Vec<([String; COLUMNS], &PresenceEntry)> = entries
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
    let mut shown = [true; COLUMNS];
    // No label anywhere: no LABEL column (the table as before labels).
    shown[LABEL] = entries.iter().any(|e| e.operator_label.is_some());
    if let (Some(limit), false) = (style.width, style.wide) {
        fit_columns(&mut widths, &mut shown, limit);
    }

    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<(String, usize)>| {
        let mut text = String::new();
        let columns: Vec<(usize, (String, usize))> = cells
            .into_iter()
            .enumerate()
            .filter(|(i, _)| shown[*i])
            .collect();
        let last = columns.len().saturating_sub(1);
        for (n, (i, (cell, visible))) in columns.into_iter().enumerate() {
            if n > 0 {
                text.push_str("  ");
            }
            text.push_str(&cell);
            if n < last {
                text.push_str(&" ".repeat(widths[i].saturating_sub(visible)));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let header = HEADER
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if style.wide {
                h.to_string()
            } else {
                fit(h, widths[i])
            };
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
                    return status_cell(&cell, entry, now_ms, style);
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

/// Fits the table into `limit` columns: hides columns (in [`DROP`] order)
/// while even their narrowest widths are too wide, then narrows the
/// [`SHRINK`] columns. On a terminal too narrow even for STATUS, HOST and
/// UPDATED, HOST and UPDATED go down to 4 characters.
fn fit_columns(widths: &mut [usize; COLUMNS], shown: &mut [bool; COLUMNS], limit: usize) {
    let total = |w: &[usize; COLUMNS], shown: &[bool; COLUMNS]| {
        let cols = shown.iter().filter(|s| **s).count();
        (0..COLUMNS)
            .filter(|i| shown[*i])
            .map(|i| w[i])
            .sum::<usize>()
            + 2 * cols.saturating_sub(1)
    };
    let mut floors = *widths;
    for (col, min) in SHRINK {
        floors[col] = widths[col].min(min.max(width_of(HEADER[col])));
    }
    for col in DROP {
        if total(&floors, shown) <= limit {
            break;
        }
        shown[col] = false;
    }
    for (col, _) in SHRINK {
        let over = total(widths, shown).saturating_sub(limit);
        if over == 0 {
            return;
        }
        if shown[col] {
            widths[col] = widths[col].saturating_sub(over).max(floors[col]);
        }
    }
    for col in [HOST, UPDATED] {
        let over = total(widths, shown).saturating_sub(limit);
        widths[col] = widths[col].saturating_sub(over).max(4);
    }
}

/// "● Active" (coloured on a colour terminal; a hollow dot and "Left" when
/// the client left), or the bare word without a terminal.
fn status_cell(word: &str, entry: &PresenceEntry, now_ms: u64, style: Style) -> (String, usize) {
    if !style.dot {
        return (word.to_string(), width_of(word));
    }
    let status = PresenceStatus::of_entry(entry, now_ms);
    let dot = if status == PresenceStatus::Left {
        '○'
    } else {
        '●'
    };
    let visible = width_of(word) + 2;
    if !style.color {
        return (format!("{dot} {word}"), visible);
    }
    let colour = match status {
        PresenceStatus::Active => "32",
        PresenceStatus::Idle => "33",
        PresenceStatus::Stale => "31",
        PresenceStatus::Left => "90",
    };
    (format!("\x1b[{colour}m{dot}\x1b[0m {word}"), visible)
}

/// Counts per status: (Active, Idle, Stale, Left).
pub fn counts(entries: &[PresenceEntry], now_ms: u64) -> [usize; 4] {
    let mut n = [0; 4];
    for e in entries {
        n[PresenceStatus::of_entry(e, now_ms) as usize] += 1;
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
        assert_eq!(hosts, ["gw", "Web-1", "web-2", "old", "db-1"]);
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
        assert!(lines[2].starts_with("Active  Web-1"), "{t}");
        assert!(lines[3].starts_with("Idle    web-2"), "{t}");
        assert!(
            lines[4].starts_with("Stale   old") && lines[4].contains("6m ago"),
            "{t}"
        );
        assert!(
            lines[5].starts_with("Left    db-1")
                && lines[5].contains("left 5s ago")
                && lines[5].contains("db-1-012"),
            "a departed client is Left, never Active, and sorts last: {t}"
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
            t.contains("\x1b[90m○\x1b[0m Left"),
            "a left row has a grey hollow dot and says Left: {t}"
        );
        assert!(!t.contains("○\x1b[0m Active"), "{t}");
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

    /// The operator's label has its column only when a row has one, and
    /// is shown escaped (it is the gateway's data).
    #[test]
    fn a_labelled_row_shows_its_label_in_its_own_column() {
        let mut list = fleet();
        list[1].operator_label = Some("rack 4 \u{1b}[2J".into());
        let t = render(&list, NOW, Style::PLAIN);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("STATUS  HOST   LABEL"),
            "LABEL follows HOST: {t}"
        );
        assert!(lines[2].contains("rack 4 \\u{1b}[2J"), "{t}");
        assert!(!t.contains('\x1b'), "{t}");
        assert!(lines[1].starts_with("Active  gw     -"), "{t}");
        // Narrow terminals keep the label longer than IP and MODE.
        let narrow = render(
            &list,
            NOW,
            Style {
                width: Some(50),
                ..Style::PLAIN
            },
        );
        let header = narrow.lines().next().unwrap_or_default();
        assert!(
            header.contains("LABEL") && !header.contains("MODEL"),
            "{narrow}"
        );
        assert!(!render(&fleet(), NOW, Style::PLAIN).contains("LABEL"));
    }

    #[test]
    fn counts_per_status_a_left_row_is_not_active() {
        assert_eq!(counts(&fleet(), NOW), [2, 1, 1, 1]);
    }

    /// A fleet with long names, in every width a terminal may have: no line
    /// is ever wider than the terminal, the status, host and age always
    /// show, and wider terminals show more columns.
    #[test]
    fn no_line_is_wider_than_the_terminal_at_any_width() {
        let mut list = fleet();
        for e in &mut list {
            e.host = Some(format!(
                "{}.rack-42.eu-west-1.compute.internal",
                e.host.as_deref().unwrap_or_default()
            ));
            e.ip = Some("192.168.100.123".into());
            e.version = Some("2026.11.30-beta.7".into());
            e.platform = Some("linux 6.18.44-some-very-long-kernel-release-name".into());
            e.model_identifier = Some("PowerEdge R760xd2 with a long name".into());
            e.last_input_seconds = Some(86_400 * 3);
            e.operator_label = Some("kitchen rack 4, shelf 2".into());
        }
        let mut columns_before = 0;
        for width in [24, 40, 60, 80, 100, 120, 160, 250] {
            for dot in [false, true] {
                let style = Style {
                    dot,
                    color: false,
                    wide: false,
                    width: Some(width),
                };
                let t = render(&list, NOW, style);
                for l in t.lines() {
                    assert!(width_of(l) <= width, "{} > {width}: {l}\n{t}", width_of(l));
                }
                let header = t.lines().next().unwrap_or_default();
                if width >= 40 {
                    for col in ["STATUS", "HOST", "UPDATED"] {
                        assert!(header.contains(col), "{width}: {header}");
                    }
                    assert!(t.contains("Left"), "{width}: {t}");
                }
                if !dot {
                    let columns = header.split("  ").filter(|c| !c.is_empty()).count();
                    assert!(columns >= columns_before, "{width}: {header}");
                    columns_before = columns;
                }
            }
        }
        let at_80 = render(
            &list,
            NOW,
            Style {
                width: Some(80),
                ..Style::PLAIN
            },
        );
        let header = at_80.lines().next().unwrap_or_default();
        assert!(
            header.contains("IP") && header.contains("INSTANCE"),
            "{header}"
        );
        let at_250 = render(
            &list,
            NOW,
            Style {
                width: Some(250),
                ..Style::PLAIN
            },
        );
        assert!(
            at_250.lines().next().unwrap_or_default().contains("MODEL"),
            "{at_250}"
        );
    }
}
