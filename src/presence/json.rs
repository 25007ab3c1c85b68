//! The list as JSON text, in shared pieces. Each client row's JSON is made
//! once after it changes and reused until it changes again, and so is the
//! newest-first run of all of them, so a list costs a sort and pointer
//! copies, not a serialization of every row (docs/PERFORMANCE.md). A list
//! handed out ([`ListJson`]) shares those pieces instead of copying them: a
//! hundred lists waiting in the sockets of clients that do not read cost one
//! copy of the rows and a few pointers each (docs/RELIABILITY.md).

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::payloads::PresenceEntry;

use super::PresenceKey;

/// A client row and its JSON, made on first use and dropped whenever the
/// row changes: the entry is changed only through [`Row::entry_mut`].
#[derive(Debug, Clone, Default)]
pub(super) struct Row {
    entry: PresenceEntry,
    json: Option<Arc<str>>,
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

/// Every client row's JSON and `ts`, newest first: the list without the
/// self entry, made once after a change and reused until the next (the
/// store clears it on every change of the rows: written, added, removed).
#[derive(Debug, Clone, Default)]
pub(super) struct RowsJson(Option<Sorted>);

#[derive(Debug, Clone)]
struct Sorted {
    json: Arc<[Arc<str>]>,
    /// Each row's `ts`, in the same order.
    ts: Vec<u64>,
}

impl RowsJson {
    /// The rows changed.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// Rule 9: the self entry and `rows` newest first, ties to the self
    /// entry, then to the smaller key, as in
    /// [`PresenceStore::list`](super::PresenceStore::list). The self entry
    /// (its `ts` is now) is serialized on every call.
    pub(super) fn list(
        &mut self,
        rows: &mut HashMap<PresenceKey, Row>,
        self_entry: &PresenceEntry,
        now_ms: u64,
    ) -> ListJson {
        let sorted = self.0.get_or_insert_with(|| {
            let order = sorted_rows(rows);
            Sorted {
                json: order.iter().map(|(_, _, json)| Arc::clone(json)).collect(),
                ts: order.iter().map(|(ts, _, _)| *ts).collect(),
            }
        });
        // Usually 0; more when the wall clock stepped back and rows are
        // newer than now.
        let self_at = sorted.ts.partition_point(|&ts| ts > now_ms);
        ListJson::new(entry_json(self_entry), self_at, Arc::clone(&sorted.json))
    }
}

/// Rule 9 with only the rows `shown(key, ts)` keeps (rows that expired and
/// wait for the next prune are left out): the slow path, sorted on every
/// call.
pub(super) fn list_where(
    rows: &mut HashMap<PresenceKey, Row>,
    shown: impl Fn(&PresenceKey, u64) -> bool,
    self_entry: &PresenceEntry,
    now_ms: u64,
) -> ListJson {
    let mut kept = Vec::new();
    let mut self_at = 0;
    for (ts, key, json) in sorted_rows(rows) {
        if shown(key, ts) {
            self_at += usize::from(ts > now_ms);
            kept.push(Arc::clone(json));
        }
    }
    ListJson::new(entry_json(self_entry), self_at, kept.into())
}

/// The presence list as JSON text in pieces: `[`, the entries joined by
/// `,`, `]`. The entries are the self entry's JSON, made for this list,
/// at its place among the client rows' cached JSON, which every list made
/// since the rows last changed shares with the store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ListJson {
    self_json: Option<Arc<str>>,
    self_at: usize,
    rows: Arc<[Arc<str>]>,
    /// The whole text's length in bytes.
    len: usize,
}

impl ListJson {
    fn new(self_json: String, self_at: usize, rows: Arc<[Arc<str>]>) -> ListJson {
        let entries = rows.len() + 1;
        let len = 2 + (entries - 1) + self_json.len() + rows.iter().map(|r| r.len()).sum::<usize>();
        ListJson {
            self_json: Some(self_json.into()),
            self_at,
            rows,
            len,
        }
    }

    /// `[]`: what a client that does not read presence is shown.
    pub fn empty() -> ListJson {
        ListJson {
            self_json: None,
            self_at: 0,
            rows: Arc::new([]),
            len: 2,
        }
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: even `[]` has two bytes (clippy's
    /// `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn entries(&self) -> usize {
        self.rows.len() + usize::from(self.self_json.is_some())
    }

    fn entry(&self, i: usize) -> &str {
        match (&self.self_json, i.cmp(&self.self_at)) {
            (Some(_), std::cmp::Ordering::Less) | (None, _) => &self.rows[i],
            (Some(own), std::cmp::Ordering::Equal) => own,
            (Some(_), std::cmp::Ordering::Greater) => &self.rows[i - 1],
        }
    }

    /// How many pieces [`ListJson::piece`] has: `[`, entries with commas
    /// between, `]`.
    pub fn pieces(&self) -> usize {
        match self.entries() {
            0 => 2,
            n => 2 * n + 1,
        }
    }

    /// Piece `i` of the text (`""` past the end).
    pub fn piece(&self, i: usize) -> &str {
        let last = self.pieces() - 1;
        match i {
            0 => "[",
            i if i == last => "]",
            i if i > last => "",
            i if i % 2 == 0 => ",",
            i => self.entry(i / 2),
        }
    }

    /// The whole text appended to `out`.
    pub fn write_to(&self, out: &mut String) {
        out.reserve(self.len);
        for i in 0..self.pieces() {
            out.push_str(self.piece(i));
        }
    }

    /// The whole text.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.len);
        self.write_to(&mut out);
        out
    }
}

/// The client rows newest first, ties by key, each with its JSON (made
/// here for rows that changed since their last list).
fn sorted_rows(rows: &mut HashMap<PresenceKey, Row>) -> Vec<(u64, &PresenceKey, &Arc<str>)> {
    let mut order: Vec<(u64, &PresenceKey, &Arc<str>)> = rows
        .iter_mut()
        .map(|(key, row)| {
            let json = row
                .json
                .get_or_insert_with(|| entry_json(&row.entry).into());
            (row.entry.ts, key, &*json)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, ts: u64) -> PresenceEntry {
        PresenceEntry {
            host: Some(host.into()),
            ts,
            ..PresenceEntry::default()
        }
    }

    fn rows(entries: &[(&str, u64)]) -> HashMap<PresenceKey, Row> {
        entries
            .iter()
            .map(|(host, ts)| {
                let mut row = Row::default();
                *row.entry_mut() = entry(host, *ts);
                (PresenceKey::normalize(host).unwrap(), row)
            })
            .collect()
    }

    fn text(list: &ListJson) -> String {
        let text = list.to_text();
        assert_eq!(text.len(), list.len(), "{text}");
        let pieces: String = (0..list.pieces()).map(|i| list.piece(i)).collect();
        assert_eq!(pieces, text);
        text
    }

    #[test]
    fn the_pieces_are_the_list_and_the_self_entry_goes_by_its_ts() {
        assert_eq!(text(&ListJson::empty()), "[]");
        let me = entry("gw", 100);
        let mut cache = RowsJson::default();
        let mut none = rows(&[]);
        let only_self = cache.list(&mut none, &me, 100);
        assert_eq!(text(&only_self), format!("[{}]", entry_json(&me)));
        // Rows newer than now (the clock stepped back) come first.
        let mut some = rows(&[("a", 50), ("b", 150)]);
        let mut cache = RowsJson::default();
        let list: Vec<PresenceEntry> =
            serde_json::from_str(&text(&cache.list(&mut some, &me, 100))).unwrap();
        let hosts: Vec<_> = list.iter().map(|e| e.host.as_deref().unwrap()).collect();
        assert_eq!(hosts, ["b", "gw", "a"]);
    }

    #[test]
    fn lists_share_the_rows_until_they_change() {
        let me = entry("gw", 100);
        let mut some = rows(&[("a", 50), ("b", 60)]);
        let mut cache = RowsJson::default();
        let first = cache.list(&mut some, &me, 100);
        let second = cache.list(&mut some, &me, 200);
        assert!(Arc::ptr_eq(&first.rows, &second.rows));
        cache.clear();
        let third = cache.list(&mut some, &me, 300);
        assert!(!Arc::ptr_eq(&first.rows, &third.rows));
        // The rows' own JSON is still shared.
        assert!(Arc::ptr_eq(&first.rows[0], &third.rows[0]));
    }
}
