//! The list as JSON text. Each client row's JSON is made once after it
//! changes and reused until it changes again, and so is the comma-joined
//! run of all of them, so a list costs a sort and a copy, not a
//! serialization of every row (docs/PERFORMANCE.md).

use std::collections::HashMap;

use crate::protocol::payloads::PresenceEntry;

use super::PresenceKey;

/// A client row and its JSON, made on first use and dropped whenever the
/// row changes: the entry is changed only through [`Row::entry_mut`].
#[derive(Debug, Clone, Default)]
pub(super) struct Row {
    entry: PresenceEntry,
    json: Option<Box<str>>,
}

impl Row {
    pub(super) fn entry(&self) -> &PresenceEntry {
        &self.entry
    }

    /// The entry, to change: its cached JSON is dropped.
    pub(super) fn entry_mut(&mut self) -> &mut PresenceEntry {
        self.json = None;
        &mut self.entry
    }
}

/// Every client row's JSON, newest first, comma-joined, and the newest `ts`
/// among them: the list without the self entry, made once after a change
/// and reused until the next (the store clears it on every change of the
/// rows: written, added, removed).
#[derive(Debug, Clone, Default)]
pub(super) struct RowsJson(Option<(String, u64)>);

impl RowsJson {
    /// The rows changed.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// Rule 9 as JSON text, appended to `out`: the self entry and `rows`
    /// newest first, ties to the self entry, then to the smaller key, as in
    /// [`PresenceStore::list`](super::PresenceStore::list). The self entry
    /// (its `ts` is now) is serialized on every call.
    pub(super) fn write_list(
        &mut self,
        out: &mut String,
        rows: &mut HashMap<PresenceKey, Row>,
        self_entry: &PresenceEntry,
        now_ms: u64,
    ) {
        let self_json = entry_json(self_entry);
        let (joined_rows, newest) = self.0.get_or_insert_with(|| {
            let order = sorted_rows(rows);
            let newest = order.first().map_or(0, |(ts, _, _)| *ts);
            let mut joined = String::with_capacity(320 * order.len());
            for (_, _, json) in order {
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(json);
            }
            (joined, newest)
        });
        if *newest > now_ms && !joined_rows.is_empty() {
            // The wall clock stepped back: rows newer than now come before
            // the self entry (ties go to the self entry, as in `list`).
            write_list_where(out, rows, |_, _| true, self_entry, now_ms);
            return;
        }
        // The usual case: the self entry (ts now) is the newest row.
        out.reserve(3 + self_json.len() + joined_rows.len());
        out.push('[');
        out.push_str(&self_json);
        if !joined_rows.is_empty() {
            out.push(',');
            out.push_str(joined_rows);
        }
        out.push(']');
    }
}

/// Rule 9 as JSON text with only the rows `shown(key, ts)` keeps (rows
/// that expired and wait for the next prune are left out): the slow path,
/// sorted and joined on every call.
pub(super) fn write_list_where(
    out: &mut String,
    rows: &mut HashMap<PresenceKey, Row>,
    shown: impl Fn(&PresenceKey, u64) -> bool,
    self_entry: &PresenceEntry,
    now_ms: u64,
) {
    let self_json = entry_json(self_entry);
    out.push('[');
    let mut self_pending = true;
    for (ts, key, json) in sorted_rows(rows) {
        if !shown(key, ts) {
            continue;
        }
        if self_pending && ts <= now_ms {
            out.push_str(&self_json);
            out.push(',');
            self_pending = false;
        }
        out.push_str(json);
        out.push(',');
    }
    if self_pending {
        out.push_str(&self_json);
    } else {
        out.pop();
    }
    out.push(']');
}

/// The client rows newest first, ties by key, each with its JSON (made
/// here for rows that changed since their last list).
fn sorted_rows(rows: &mut HashMap<PresenceKey, Row>) -> Vec<(u64, &PresenceKey, &str)> {
    let mut order: Vec<(u64, &PresenceKey, &str)> = rows
        .iter_mut()
        .map(|(key, row)| {
            let json = row
                .json
                .get_or_insert_with(|| entry_json(&row.entry).into());
            (row.entry.ts, key, &**json)
        })
        .collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    order
}

/// One row's JSON. A `PresenceEntry` is strings, numbers and string lists,
/// which always serialize.
fn entry_json(entry: &PresenceEntry) -> String {
    serde_json::to_string(entry).unwrap_or_else(|_| "{}".into())
}
