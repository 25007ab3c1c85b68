//! The presence store and its rules (`docs/presence-spec.md`): the self
//! entry, rows upserted on connect and merged from beacons, keys, TTL and
//! disconnect, the size cap and the newest-first list.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::protocol::connect::{ClientInfo, Role};
use crate::protocol::mode;
use crate::protocol::payloads::{PresenceEntry, SystemEventParams};

use super::json::{ListJson, Row, RowsJson};
use super::status::PresenceStatus;

/// Rows older than this (ms) are pruned: 5 minutes, as in OpenClaw.
pub const DEFAULT_TTL_MS: u64 = 300_000;
/// The most rows the list holds, the self entry included.
pub const DEFAULT_MAX_ENTRIES: usize = 200;

/// The `reason` of a row whose last connection closed (rule 6).
pub const DISCONNECT_REASON: &str = "disconnect";

/// The key the self entry gets when the gateway has no instanceId.
const FALLBACK_SELF_KEY: &str = "self";

/// How long rows live and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// A row not updated for longer than this (ms) is pruned (rule 6).
    pub ttl_ms: u64,
    /// The most rows the list holds, the self entry included (rule 7).
    pub max_entries: usize,
}

impl Default for PresenceLimits {
    /// 5 minutes and 200 rows, as in OpenClaw.
    fn default() -> Self {
        PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// A normalized presence key: trimmed and lower-cased, so case variants of
/// one instanceId name one row (rule 5). Built only by [`PresenceKey::normalize`]
/// and [`PresenceKey::for_connection`].
///
/// clawnode difference (issue 15, finding 7): the row of a client without
/// a device identity (the Instances page, an operator with the token only)
/// is *unclaimed*: its key is apart from every key a device can claim, even
/// with the same text, because nothing can be pinned to a client without a
/// key. So no node can take over or lock out such a row by claiming its
/// `instanceId`, and such a client cannot merge into a device's row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceKey {
    text: String,
    unclaimed: bool,
}

impl PresenceKey {
    /// Rule 5: the key for a connection. The client's `instanceId` when it has
    /// one (blank counts as absent), else the device id, else the connection
    /// id. A client that reconnects without a stable `instanceId` or device
    /// therefore gets a new key, and a duplicate row, as the spec says.
    /// Without a device the key is an unclaimed one (see the type's docs).
    pub fn for_connection(
        instance_id: Option<&str>,
        device_id: Option<&str>,
        conn_id: &str,
    ) -> PresenceKey {
        let instance = instance_id.and_then(PresenceKey::normalize);
        match device_id.and_then(PresenceKey::normalize) {
            Some(device) => instance.unwrap_or(device),
            None => PresenceKey {
                text: instance.map_or_else(|| conn_id.trim().to_lowercase(), |k| k.text),
                unclaimed: true,
            },
        }
    }

    /// The key for `raw`, trimmed and lower-cased; `None` when blank.
    pub fn normalize(raw: &str) -> Option<PresenceKey> {
        let trimmed = raw.trim();
        (!trimmed.is_empty()).then(|| PresenceKey::claimed(trimmed.to_lowercase()))
    }

    fn claimed(text: String) -> PresenceKey {
        PresenceKey {
            text,
            unclaimed: false,
        }
    }

    /// The normalized key text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a device can claim this key (pinned to the first that does):
    /// `false` for the rows of clients without a device.
    pub fn is_claimable(&self) -> bool {
        !self.unclaimed
    }
}

impl fmt::Display for PresenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the gateway knows about one successfully handshaken connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo<'a> {
    /// The gateway-assigned connection id (the last-resort key).
    pub conn_id: &'a str,
    /// `connect.params.client` as sent.
    pub client: &'a ClientInfo,
    /// The role granted.
    pub role: Role,
    /// The scopes granted.
    pub scopes: &'a [String],
    /// The verified device id, if the client proved one.
    pub device_id: Option<&'a str>,
    /// The socket's remote address; loopback is ignored (rule 8).
    pub remote_ip: Option<IpAddr>,
}

pub use crate::loopback::is_loopback;

/// The `ip` a remote address contributes to a row: `None` for loopback,
/// IPv4-mapped addresses in dotted IPv4 form.
fn reportable_ip(remote_ip: Option<IpAddr>) -> Option<String> {
    remote_ip
        .filter(|ip| !is_loopback(*ip))
        .map(|ip| ip.to_canonical().to_string())
}

/// `value` trimmed, or `None` when blank: blank fields count as not given.
fn given(value: &str) -> Option<String> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Merge rule: a given (non-blank) `value` overrides `field`; absent keeps it.
fn set(field: &mut Option<String>, value: Option<&str>) {
    if let Some(v) = value.and_then(given) {
        *field = Some(v);
    }
}

/// `existing` followed by the new, not yet present, non-blank `items`;
/// `None` when the union is empty so the field is omitted.
fn union(existing: Option<Vec<String>>, items: &[String]) -> Option<Vec<String>> {
    let mut out = existing.unwrap_or_default();
    for item in items.iter().filter_map(|i| given(i)) {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The gateway's presence list: the self entry plus one row per key.
///
/// The self entry is held apart from the client rows, as OpenClaw holds it
/// under a private key. So a client whose key equals [`PresenceStore::self_key`]
/// (it claims the gateway's instanceId) gets an ordinary row of its own next
/// to the self entry: it can neither change nor evict the gateway's row, and
/// both are listed.
#[derive(Debug, Clone)]
pub struct PresenceStore {
    limits: PresenceLimits,
    self_key: PresenceKey,
    self_entry: PresenceEntry,
    rows: HashMap<PresenceKey, Row>,
    /// No row can expire before this (ms): prune skips its scan until then.
    next_expiry_ms: u64,
    /// The list's client rows as JSON, cleared on every change.
    rows_json: RowsJson,
    /// Open connections per key. Every key here has a row: a live row is
    /// neither pruned (rule 6) nor evicted (rule 7). (The tests read it.)
    pub(super) open_connections: HashMap<PresenceKey, usize>,
    /// Rows dropped so far, by why (for metrics).
    evictions: Evictions,
}

/// How many rows the store has dropped since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Rule 6: not updated within the TTL.
    pub ttl: u64,
    /// Rule 7: the oldest row when the list was over its cap.
    pub max: u64,
}

impl PresenceStore {
    /// Rule 1: a store holding only the gateway's self entry, built by the
    /// caller (mode `gateway`, reason `self`, ...). Its key is its normalized
    /// instanceId, or `self` without one. The self entry is never pruned nor
    /// evicted, and its `ts` is refreshed on every [`PresenceStore::list`].
    pub fn new(self_entry: PresenceEntry, limits: PresenceLimits) -> Self {
        let self_key = self_entry
            .instance_id
            .as_deref()
            .and_then(PresenceKey::normalize)
            .unwrap_or_else(|| PresenceKey::claimed(FALLBACK_SELF_KEY.to_string()));
        PresenceStore {
            limits,
            self_key,
            self_entry,
            rows: HashMap::new(),
            next_expiry_ms: u64::MAX,
            rows_json: RowsJson::default(),
            open_connections: HashMap::new(),
            evictions: Evictions::default(),
        }
    }

    /// Rows dropped so far by the TTL and by the cap.
    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    /// How many rows are Active, Idle, Stale and Left at `now_ms`, the self
    /// entry (always current) included.
    pub fn status_counts(&self, now_ms: u64) -> [usize; 4] {
        let mut counts = [1, 0, 0, 0];
        for (key, row) in &self.rows {
            if !self.expired(key, row.entry(), now_ms) {
                counts[PresenceStatus::of_entry(row.entry(), now_ms) as usize] += 1;
            }
        }
        counts
    }

    /// Whether the row at `key` has outlived the TTL (rule 6) and is only
    /// waiting for the next [`PresenceStore::prune`]: reads leave it out.
    fn expired(&self, key: &PresenceKey, entry: &PresenceEntry, now_ms: u64) -> bool {
        self.may_have_expired(now_ms)
            && outlived(
                key,
                entry.ts,
                now_ms,
                self.limits.ttl_ms,
                &self.open_connections,
            )
    }

    /// Whether some row may have expired since the last prune.
    fn may_have_expired(&self, now_ms: u64) -> bool {
        now_ms > self.next_expiry_ms
    }

    /// The rows a read shows now: every row but the expired ones, the self
    /// entry included (what [`PresenceStore::len`] is after a prune).
    pub fn count(&self, now_ms: u64) -> usize {
        if !self.may_have_expired(now_ms) {
            return self.len();
        }
        1 + self
            .rows
            .iter()
            .filter(|(key, row)| !self.expired(key, row.entry(), now_ms))
            .count()
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> PresenceLimits {
        self.limits
    }

    /// How many rows the list holds beyond `max_entries`: rows of open
    /// connections, which the cap never evicts (rule 7). 0 when within it.
    pub fn cap_overshoot(&self) -> usize {
        self.len().saturating_sub(self.limits.max_entries)
    }

    /// Rules 2, 4, 5 and 8: upserts the row of a handshaken connection and
    /// counts one more open connection for its key; then enforces the cap.
    ///
    /// A `cli`-mode client (trimmed, ASCII case-insensitive) gets no row and
    /// `None`. Otherwise the row is merged like OpenClaw's `upsertPresence`:
    /// what this connect gives (instanceId, host from `displayName`, version,
    /// platform, hardware hints, mode, deviceId, a non-loopback
    /// remote ip) overrides, the rest is kept; roles and scopes are unions;
    /// reason becomes `connect`, `ts` now, and `text` stays or defaults to
    /// `Node: {host} · mode {mode}`.
    pub fn connect(&mut self, conn: &ConnectionInfo<'_>, now_ms: u64) -> Option<PresenceKey> {
        let client = conn.client;
        if client.mode.trim().eq_ignore_ascii_case(mode::CLI) {
            return None;
        }
        let key = PresenceKey::for_connection(
            client.instance_id.as_deref(),
            conn.device_id,
            conn.conn_id,
        );
        let row = self.row_mut(&key);
        set(&mut row.instance_id, client.instance_id.as_deref());
        set(&mut row.host, client.display_name.as_deref());
        set(&mut row.version, Some(&client.version));
        set(&mut row.platform, Some(&client.platform));
        set(&mut row.device_family, client.device_family.as_deref());
        set(
            &mut row.model_identifier,
            client.model_identifier.as_deref(),
        );
        set(&mut row.mode, Some(&client.mode));
        set(&mut row.device_id, conn.device_id);
        if let Some(ip) = reportable_ip(conn.remote_ip) {
            row.ip = Some(ip);
        }
        row.roles = union(row.roles.take(), &[conn.role.as_str().to_string()]);
        row.scopes = union(row.scopes.take(), conn.scopes);
        row.reason = Some("connect".to_string());
        row.ts = now_ms;
        if row.text.is_none() {
            row.text = Some(format!(
                "Node: {} · mode {}",
                row.host.as_deref().unwrap_or("unknown"),
                row.mode.as_deref().unwrap_or("unknown"),
            ));
        }
        *self.open_connections.entry(key.clone()).or_default() += 1;
        self.enforce_cap();
        Some(key)
    }

    /// Rule 6: one connection for `key` closed. When it was the last one the
    /// row stays, with reason `disconnect` and `ts` now, until the TTL takes
    /// it. A key with no open connection is a no-op. Returns whether the list
    /// changed.
    pub fn disconnect(&mut self, key: &PresenceKey, now_ms: u64) -> bool {
        let Some(count) = self.open_connections.get_mut(key) else {
            return false;
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return false;
        }
        self.open_connections.remove(key);
        match self.rows.get_mut(key) {
            Some(row) => {
                self.rows_json.clear();
                let entry = row.entry_mut();
                entry.reason = Some(DISCONNECT_REASON.to_string());
                entry.ts = now_ms;
                self.may_expire(now_ms);
                // Over the cap only because of live rows: this one no longer
                // is, so the cap may take the oldest row that is not.
                self.enforce_cap();
                true
            }
            None => false,
        }
    }

    /// Rule 3: merges a `system-event` beacon into the row at `key`, creating
    /// it if absent; then enforces the cap. Given (non-blank) fields override,
    /// absent ones are kept; `text` is the beacon's; `ts` is now.
    ///
    /// `ip` (rule 8): the beacon's own `ip` wins; otherwise a non-loopback
    /// `remote_ip` fills it only when the row has none. The gateway decides
    /// `key` and whether the sender may write it.
    pub fn beacon(
        &mut self,
        key: &PresenceKey,
        params: &SystemEventParams,
        remote_ip: Option<IpAddr>,
        now_ms: u64,
    ) {
        let row = self.row_mut(key);
        set(&mut row.text, Some(&params.text));
        set(&mut row.instance_id, params.instance_id.as_deref());
        set(&mut row.host, params.host.as_deref());
        set(&mut row.version, params.version.as_deref());
        set(&mut row.platform, params.platform.as_deref());
        set(&mut row.device_family, params.device_family.as_deref());
        set(
            &mut row.model_identifier,
            params.model_identifier.as_deref(),
        );
        set(&mut row.mode, params.mode.as_deref());
        set(&mut row.reason, params.reason.as_deref());
        if let Some(seconds) = params.last_input_seconds {
            row.last_input_seconds = Some(seconds);
        }
        set(&mut row.ip, params.ip.as_deref());
        if row.ip.is_none() {
            row.ip = reportable_ip(remote_ip);
        }
        row.ts = now_ms;
        if !self.open_connections.contains_key(key) {
            self.may_expire(now_ms);
        }
        self.enforce_cap();
    }

    /// The operator's label of the device whose row is at `key` (the
    /// gateway's, from its device records; `None`: none), set after
    /// [`PresenceStore::connect`]. Returns whether the row changed.
    pub fn set_operator_label(&mut self, key: &PresenceKey, label: Option<&str>) -> bool {
        let Some(row) = self.rows.get_mut(key) else {
            return false;
        };
        if row.entry().operator_label.as_deref() == label {
            return false;
        }
        row.entry_mut().operator_label = label.map(str::to_string);
        self.rows_json.clear();
        true
    }

    /// A device's operator label changed (`None`: dropped): every row of
    /// that device shows it. One pass over the rows (an operator's rare
    /// action). Returns whether any row changed.
    pub fn label_device(&mut self, device_id: &str, label: Option<&str>) -> bool {
        let mut changed = false;
        for row in self.rows.values_mut() {
            let entry = row.entry();
            if entry.device_id.as_deref() == Some(device_id)
                && entry.operator_label.as_deref() != label
            {
                row.entry_mut().operator_label = label.map(str::to_string);
                changed = true;
            }
        }
        if changed {
            self.rows_json.clear();
        }
        changed
    }

    /// Rule 6: a row whose connection is still open never expires. Sets `ts`
    /// to now on every row with an open connection; the gateway calls this on
    /// its tick. Returns whether any row changed.
    pub fn touch_connected(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        for (key, row) in &mut self.rows {
            if row.entry().ts != now_ms && self.open_connections.contains_key(key) {
                row.entry_mut().ts = now_ms;
                changed = true;
            }
        }
        if changed {
            self.rows_json.clear();
        }
        changed
    }

    /// Rule 6: drops rows not updated for more than the TTL, except the self
    /// entry and rows with an open connection. Returns how many were dropped.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let ttl_ms = self.limits.ttl_ms;
        // A row expires once now > ts + ttl; none can before the earliest
        // such moment, so most calls skip the scan.
        if now_ms <= self.next_expiry_ms {
            return 0;
        }
        let before = self.rows.len();
        let open = &self.open_connections;
        let mut next = u64::MAX;
        self.rows.retain(|key, row| {
            if open.contains_key(key) {
                return true;
            }
            let ts = row.entry().ts;
            let keep = now_ms.saturating_sub(ts) <= ttl_ms;
            if keep {
                next = next.min(ts.saturating_add(ttl_ms));
            }
            keep
        });
        self.next_expiry_ms = next;
        let removed = before - self.rows.len();
        if removed > 0 {
            self.rows_json.clear();
            self.evictions.ttl += removed as u64;
        }
        removed
    }

    /// Rule 9: every row newest first, expired ones left out (reads never
    /// prune: only [`PresenceStore::prune`], on the gateway's tick, removes
    /// rows), the self entry's `ts` now. Ties go to the self entry, then to
    /// the smaller key, so the order is deterministic.
    ///
    /// The gateway answers with [`PresenceStore::list_json`]; this is the
    /// reference it is checked against (the tests) and measured against
    /// (`benches/hot_paths.rs`, which is why it is not test-only).
    pub fn list(&mut self, now_ms: u64) -> Vec<PresenceEntry> {
        self.self_entry.ts = now_ms;
        // `None` marks the self entry, which sorts before any key on a tie.
        let mut rows: Vec<(Option<&PresenceKey>, &PresenceEntry)> = self
            .rows
            .iter()
            .filter(|(key, row)| !self.expired(key, row.entry(), now_ms))
            .map(|(key, row)| (Some(key), row.entry()))
            .collect();
        rows.push((None, &self.self_entry));
        rows.sort_by(|(ka, a), (kb, b)| b.ts.cmp(&a.ts).then_with(|| ka.cmp(kb)));
        rows.into_iter().map(|(_, row)| row.clone()).collect()
    }

    /// Rule 9 as JSON text: what `serde_json::to_string(&self.list(now_ms))`
    /// gives, byte for byte, made from each row's cached JSON. The self entry
    /// (its `ts` is now) is serialized on every call.
    pub fn list_json(&mut self, now_ms: u64) -> String {
        self.shared_list_json(now_ms).to_text()
    }

    /// [`PresenceStore::list_json`], appended to `out` (so a response is
    /// built in one buffer).
    pub fn write_list_json(&mut self, out: &mut String, now_ms: u64) {
        self.shared_list_json(now_ms).write_to(out);
    }

    /// [`PresenceStore::list_json`] in pieces shared with the store (the
    /// rows' cached JSON) and with every list made since the rows last
    /// changed: what the gateway sends, without copying the rows for each
    /// client. `&mut` only for the cached JSON: no row is added or removed.
    pub fn shared_list_json(&mut self, now_ms: u64) -> ListJson {
        self.self_entry.ts = now_ms;
        if self.may_have_expired(now_ms) {
            // Rows outlived the TTL since the last tick: this list leaves
            // them out (the cached run of all rows would include them).
            let (ttl, open) = (self.limits.ttl_ms, &self.open_connections);
            let shown = |key: &PresenceKey, ts: u64| !outlived(key, ts, now_ms, ttl, open);
            if !self
                .rows
                .iter()
                .all(|(key, row)| shown(key, row.entry().ts))
            {
                return super::json::list_where(&mut self.rows, shown, &self.self_entry, now_ms);
            }
        }
        self.rows_json
            .list(&mut self.rows, &self.self_entry, now_ms)
    }

    /// The number of rows, the self entry included.
    pub fn len(&self) -> usize {
        self.rows.len() + 1
    }

    /// Always `false`: the self entry is always there. Kept for clippy's
    /// `len_without_is_empty` (a public `len` asks for it).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The row at `key`. For [`PresenceStore::self_key`] that is the self
    /// entry; a client row sharing the self key shows only in the list.
    pub fn get(&self, key: &PresenceKey) -> Option<&PresenceEntry> {
        if *key == self.self_key {
            Some(&self.self_entry)
        } else {
            self.rows.get(key).map(Row::entry)
        }
    }

    /// The self entry's key: its normalized instanceId, or `self`.
    pub fn self_key(&self) -> &PresenceKey {
        &self.self_key
    }

    /// Rule 7 as clawnode changes it: while there are more than
    /// `max_entries` rows (self included), drops the oldest client row that
    /// has no open connection, ties by smaller key. Never the self entry and
    /// never a live row: a host that is connected is never hidden, so when
    /// live rows alone exceed the cap they all stay (see
    /// [`PresenceStore::cap_overshoot`]).
    fn enforce_cap(&mut self) {
        let allowed = self.limits.max_entries.saturating_sub(1);
        if self.rows.len() <= allowed {
            return;
        }
        // Every open connection's key has a row (live rows are never
        // evicted nor pruned), so this is the number of evictable rows.
        let evictable = self.rows.len().saturating_sub(self.open_connections.len());
        let excess = (self.rows.len() - allowed).min(evictable);
        if excess == 0 {
            return;
        }
        let open = &self.open_connections;
        if excess == 1 {
            // One row over, the usual case: a linear scan, not a sort.
            let oldest = self
                .rows
                .iter()
                .filter(|(key, _)| !open.contains_key(*key))
                .map(|(key, row)| (row.entry().ts, key))
                .min()
                .map(|(_, key)| key.clone());
            if let Some(key) = oldest {
                self.rows.remove(&key);
                self.rows_json.clear();
                self.evictions.max += 1;
            }
            return;
        }
        let mut by_age: Vec<(u64, PresenceKey)> = self
            .rows
            .iter()
            .filter(|(key, _)| !open.contains_key(*key))
            .map(|(key, row)| (row.entry().ts, key.clone()))
            .collect();
        by_age.sort();
        for (_, key) in by_age.into_iter().take(excess) {
            self.rows.remove(&key);
        }
        self.rows_json.clear();
        self.evictions.max += excess as u64;
    }

    /// The row at `key` (created empty if absent), to change: its cached
    /// JSON is dropped.
    fn row_mut(&mut self, key: &PresenceKey) -> &mut PresenceEntry {
        self.rows_json.clear();
        self.rows.entry(key.clone()).or_default().entry_mut()
    }

    /// A row without an open connection was written at `ts_ms`: it can
    /// expire from `ts_ms + ttl`.
    fn may_expire(&mut self, ts_ms: u64) {
        self.next_expiry_ms = self
            .next_expiry_ms
            .min(ts_ms.saturating_add(self.limits.ttl_ms));
    }
}

/// Rule 6: a row last written at `ts` without an open connection is past
/// the TTL at `now_ms`.
fn outlived(
    key: &PresenceKey,
    ts: u64,
    now_ms: u64,
    ttl_ms: u64,
    open: &HashMap<PresenceKey, usize>,
) -> bool {
    now_ms.saturating_sub(ts) > ttl_ms && !open.contains_key(key)
}
