//! The presence store: the gateway's in-memory list of who is around.
//!
//! It owns the rules of the presence spec (`docs/presence-spec.md`): the
//! gateway's self entry (rule 1), rows upserted on connect (rules 2 and 4),
//! beacons merged from `system-event` (rule 3), case-insensitive keys (rule
//! 5), TTL and disconnect (rule 6), the size cap (rule 7: never over a live
//! row, as clawnode changes it), the loopback caveat
//! (rule 8) and the newest-first list (rule 9). It also owns the consumer-side
//! Active/Idle/Stale status.
//!
//! The store is a plain struct: no sockets, no tasks, and no clock of its own.
//! Every method that depends on time takes `now_ms` (ms since the Unix epoch),
//! so the gateway passes the wall clock and tests pass plain numbers to walk
//! through TTLs and orderings deterministically.
//!
//! Who may write which row (authorization) is the gateway's job: the store
//! trusts the key it is given.
//!
//! [`PresenceStore::list_json`] is the list as JSON text, for the
//! `system-presence` answer, the hello-ok snapshot and `presence` events.
//! Each row's JSON is made once after it changes and reused until it changes
//! again, so a list costs a sort and a copy, not a serialization of every
//! row (docs/PERFORMANCE.md).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::protocol::connect::{ClientInfo, Role};
use crate::protocol::mode;
use crate::protocol::payloads::{PresenceEntry, SystemEventParams};

/// Rows older than this (ms) are pruned: 5 minutes, as in OpenClaw.
pub const DEFAULT_TTL_MS: u64 = 300_000;
/// The most rows the list holds, the self entry included.
pub const DEFAULT_MAX_ENTRIES: usize = 200;

/// Age (ms) up to which a row shows as Active.
pub const ACTIVE_MAX_AGE_MS: u64 = 90_000;
/// Age (ms) up to which a row shows as Idle; older is Stale.
pub const IDLE_MAX_AGE_MS: u64 = 180_000;

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PresenceKey(String);

impl PresenceKey {
    /// Rule 5: the key for a connection. The client's `instanceId` when it has
    /// one (blank counts as absent), else the device id, else the connection
    /// id. A client that reconnects without a stable `instanceId` or device
    /// therefore gets a new key, and a duplicate row, as the spec says.
    pub fn for_connection(
        instance_id: Option<&str>,
        device_id: Option<&str>,
        conn_id: &str,
    ) -> PresenceKey {
        instance_id
            .and_then(PresenceKey::normalize)
            .or_else(|| device_id.and_then(PresenceKey::normalize))
            .unwrap_or_else(|| PresenceKey(conn_id.trim().to_lowercase()))
    }

    /// The key for `raw`, trimmed and lower-cased; `None` when blank.
    pub fn normalize(raw: &str) -> Option<PresenceKey> {
        let trimmed = raw.trim();
        (!trimmed.is_empty()).then(|| PresenceKey(trimmed.to_lowercase()))
    }

    /// The normalized key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PresenceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

/// Rule 8: whether `ip` is a loopback address: 127.0.0.0/8, `::1`, or an
/// IPv4-mapped `::ffff:127.x.y.z`. Such a remote address says nothing about
/// where the client is (an SSH tunnel looks like this), so it never fills a
/// row's `ip`.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

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
    /// Every client row's JSON, newest first, comma-joined, and the newest
    /// `ts` among them: the list without the self entry, made once after a
    /// change and reused until the next (`None` after any change).
    rows_json: Option<(String, u64)>,
    /// Open connections per key. Every key here has a row: a live row is
    /// neither pruned (rule 6) nor evicted (rule 7).
    open_connections: HashMap<PresenceKey, usize>,
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
            .unwrap_or_else(|| PresenceKey(FALLBACK_SELF_KEY.to_string()));
        PresenceStore {
            limits,
            self_key,
            self_entry,
            rows: HashMap::new(),
            next_expiry_ms: u64::MAX,
            rows_json: None,
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
        for row in self.rows.values() {
            counts[PresenceStatus::of_entry(&row.entry, now_ms) as usize] += 1;
        }
        counts
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
                row.json = None;
                self.rows_json = None;
                row.entry.reason = Some(DISCONNECT_REASON.to_string());
                row.entry.ts = now_ms;
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

    /// Rule 6: a row whose connection is still open never expires. Sets `ts`
    /// to now on every row with an open connection; the gateway calls this on
    /// its tick. Returns whether any row changed.
    pub fn touch_connected(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        for (key, row) in &mut self.rows {
            if row.entry.ts != now_ms && self.open_connections.contains_key(key) {
                row.entry.ts = now_ms;
                row.json = None;
                changed = true;
            }
        }
        if changed {
            self.rows_json = None;
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
            let keep = now_ms.saturating_sub(row.entry.ts) <= ttl_ms;
            if keep {
                next = next.min(row.entry.ts.saturating_add(ttl_ms));
            }
            keep
        });
        self.next_expiry_ms = next;
        let removed = before - self.rows.len();
        if removed > 0 {
            self.rows_json = None;
            self.evictions.ttl += removed as u64;
        }
        removed
    }

    /// Rule 9: prunes, refreshes the self entry's `ts`, and returns every row
    /// newest first. Ties go to the self entry, then to the smaller key, so
    /// the order is deterministic.
    pub fn list(&mut self, now_ms: u64) -> Vec<PresenceEntry> {
        self.prune(now_ms);
        self.self_entry.ts = now_ms;
        // `None` marks the self entry, which sorts before any key on a tie.
        let mut rows: Vec<(Option<&PresenceKey>, &PresenceEntry)> = self
            .rows
            .iter()
            .map(|(key, row)| (Some(key), &row.entry))
            .collect();
        rows.push((None, &self.self_entry));
        rows.sort_by(|(ka, a), (kb, b)| b.ts.cmp(&a.ts).then_with(|| ka.cmp(kb)));
        rows.into_iter().map(|(_, row)| row.clone()).collect()
    }

    /// Rule 9 as JSON text: what `serde_json::to_string(&self.list(now_ms))`
    /// gives, byte for byte, made from each row's cached JSON. The self entry
    /// (its `ts` is now) is serialized on every call.
    pub fn list_json(&mut self, now_ms: u64) -> String {
        let mut out = String::new();
        self.write_list_json(&mut out, now_ms);
        out
    }

    /// [`PresenceStore::list_json`], appended to `out` (so a response is
    /// built in one buffer).
    pub fn write_list_json(&mut self, out: &mut String, now_ms: u64) {
        self.prune(now_ms);
        self.self_entry.ts = now_ms;
        let self_json = entry_json(&self.self_entry);
        let (rows, newest) = self.rows_json.get_or_insert_with(|| {
            let order = sorted_rows(&mut self.rows);
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
        out.reserve(3 + self_json.len() + rows.len());
        out.push('[');
        if *newest <= now_ms || rows.is_empty() {
            // The usual case: the self entry (ts now) is the newest row.
            out.push_str(&self_json);
            if !rows.is_empty() {
                out.push(',');
                out.push_str(rows);
            }
            out.push(']');
            return;
        }
        // The wall clock stepped back: rows newer than now come before the
        // self entry (ties go to the self entry, as in `list`).
        let mut self_pending = true;
        for (ts, _, json) in sorted_rows(&mut self.rows) {
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

    /// The number of rows, the self entry included.
    pub fn len(&self) -> usize {
        self.rows.len() + 1
    }

    /// Always `false`: the self entry is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The row at `key`. For [`PresenceStore::self_key`] that is the self
    /// entry; a client row sharing the self key shows only in the list.
    pub fn get(&self, key: &PresenceKey) -> Option<&PresenceEntry> {
        if *key == self.self_key {
            Some(&self.self_entry)
        } else {
            self.rows.get(key).map(|row| &row.entry)
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
                .map(|(key, row)| (row.entry.ts, key))
                .min()
                .map(|(_, key)| key.clone());
            if let Some(key) = oldest {
                self.rows.remove(&key);
                self.rows_json = None;
                self.evictions.max += 1;
            }
            return;
        }
        let mut by_age: Vec<(u64, PresenceKey)> = self
            .rows
            .iter()
            .filter(|(key, _)| !open.contains_key(*key))
            .map(|(key, row)| (row.entry.ts, key.clone()))
            .collect();
        by_age.sort();
        for (_, key) in by_age.into_iter().take(excess) {
            self.rows.remove(&key);
        }
        self.rows_json = None;
        self.evictions.max += excess as u64;
    }

    /// The row at `key` (created empty if absent), to change: its cached
    /// JSON is dropped.
    fn row_mut(&mut self, key: &PresenceKey) -> &mut PresenceEntry {
        self.rows_json = None;
        let row = self.rows.entry(key.clone()).or_default();
        row.json = None;
        &mut row.entry
    }

    /// A row without an open connection was written at `ts_ms`: it can
    /// expire from `ts_ms + ttl`.
    fn may_expire(&mut self, ts_ms: u64) {
        self.next_expiry_ms = self
            .next_expiry_ms
            .min(ts_ms.saturating_add(self.limits.ttl_ms));
    }
}

/// A client row and its JSON, made on first use and dropped whenever the
/// row changes (every change goes through [`PresenceStore::row_mut`] or
/// clears it).
#[derive(Debug, Clone, Default)]
struct Row {
    entry: PresenceEntry,
    json: Option<Box<str>>,
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

/// The status indicator a consumer shows for a row, from the age of its `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceStatus {
    /// Updated within the last 90 s.
    Active = 0,
    /// Updated within the last 180 s.
    Idle = 1,
    /// Older than that.
    Stale = 2,
    /// The client disconnected (`reason: "disconnect"`); the row stays until
    /// the TTL takes it, but the host is not there.
    Left = 3,
}

impl PresenceStatus {
    /// The status of a row as an operator should read it: [`Left`] once its
    /// client has disconnected, whatever its age; else by the age of `ts`.
    ///
    /// [`Left`]: PresenceStatus::Left
    pub fn of_entry(entry: &PresenceEntry, now_ms: u64) -> Self {
        if entry.reason.as_deref() == Some(DISCONNECT_REASON) {
            PresenceStatus::Left
        } else {
            PresenceStatus::of(entry.ts, now_ms)
        }
    }

    /// The status of a row last updated at `entry_ts_ms`, seen at `now_ms`.
    /// A `ts` in the future counts as age 0.
    pub fn of(entry_ts_ms: u64, now_ms: u64) -> Self {
        match now_ms.saturating_sub(entry_ts_ms) {
            age if age <= ACTIVE_MAX_AGE_MS => PresenceStatus::Active,
            age if age <= IDLE_MAX_AGE_MS => PresenceStatus::Idle,
            _ => PresenceStatus::Stale,
        }
    }

    pub const ALL: [PresenceStatus; 4] = [
        PresenceStatus::Active,
        PresenceStatus::Idle,
        PresenceStatus::Stale,
        PresenceStatus::Left,
    ];

    /// "Active", "Idle", "Stale" or "Left".
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Active => "Active",
            PresenceStatus::Idle => "Idle",
            PresenceStatus::Stale => "Stale",
            PresenceStatus::Left => "Left",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const T0: u64 = 1_795_377_600_000;
    const GW_INSTANCE: &str = "93a077e9-64cb-46c5-91e4-b191ec6452bb";

    fn self_entry() -> PresenceEntry {
        PresenceEntry {
            instance_id: Some(GW_INSTANCE.to_string()),
            host: Some("vm".into()),
            ip: Some("192.0.2.2".into()),
            mode: Some(mode::GATEWAY.into()),
            reason: Some("self".into()),
            text: Some("Gateway: vm (192.0.2.2) · app 1 · mode gateway · reason self".into()),
            ts: T0,
            ..PresenceEntry::default()
        }
    }

    fn store() -> PresenceStore {
        PresenceStore::new(self_entry(), PresenceLimits::default())
    }

    fn store_with(limits: PresenceLimits) -> PresenceStore {
        PresenceStore::new(self_entry(), limits)
    }

    fn client(mode: &str, instance_id: Option<&str>) -> ClientInfo {
        ClientInfo {
            id: "openclaw-macos".into(),
            display_name: Some("Mac Studio".into()),
            version: "2026.9.6".into(),
            platform: "macos 15.4".into(),
            device_family: Some("Mac".into()),
            model_identifier: Some("Mac14,13".into()),
            mode: mode.into(),
            instance_id: instance_id.map(str::to_string),
        }
    }

    fn conn<'a>(
        conn_id: &'a str,
        client: &'a ClientInfo,
        scopes: &'a [String],
    ) -> ConnectionInfo<'a> {
        ConnectionInfo {
            conn_id,
            client,
            role: Role::Operator,
            scopes,
            device_id: None,
            remote_ip: None,
        }
    }

    /// A beacon that carries only its text.
    fn text_beacon(text: &str) -> SystemEventParams {
        SystemEventParams {
            text: text.into(),
            ..Default::default()
        }
    }

    fn key(raw: &str) -> PresenceKey {
        PresenceKey::normalize(raw).unwrap()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// Connects a `ui` client with this instanceId at `now`.
    fn connect_ui(store: &mut PresenceStore, instance_id: &str, now: u64) -> PresenceKey {
        let c = client("ui", Some(instance_id));
        store.connect(&conn(instance_id, &c, &[]), now).unwrap()
    }

    #[test]
    fn default_limits_are_five_minutes_and_200_rows() {
        let limits = PresenceLimits::default();
        assert_eq!(limits.ttl_ms, 300_000);
        assert_eq!(limits.max_entries, 200);
        assert_eq!(store().limits(), limits);
    }

    #[test]
    fn rule1_self_entry_is_seeded_and_listed_with_a_fresh_ts() {
        let mut s = store();
        assert_eq!(s.len(), 1);
        assert!(!s.is_empty());
        assert_eq!(s.self_key().as_str(), GW_INSTANCE);
        assert_eq!(s.get(&key(GW_INSTANCE)), Some(&self_entry()));
        let list = s.list(T0 + 5_000);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason.as_deref(), Some("self"));
        assert_eq!(list[0].ts, T0 + 5_000);
    }

    #[test]
    fn rule1_self_entry_without_instance_id_gets_the_self_key() {
        let entry = PresenceEntry {
            instance_id: None,
            ..self_entry()
        };
        let s = PresenceStore::new(entry, PresenceLimits::default());
        assert_eq!(s.self_key().as_str(), "self");
    }

    #[test]
    fn rule1_self_entry_is_never_pruned() {
        let mut s = store();
        assert_eq!(s.prune(T0 + 10 * DEFAULT_TTL_MS), 0);
        let list = s.list(T0 + 10 * DEFAULT_TTL_MS);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason.as_deref(), Some("self"));
    }

    #[test]
    fn rule1_a_client_claiming_the_gateway_instance_id_gets_its_own_row() {
        let mut s = store();
        let k = connect_ui(&mut s, &GW_INSTANCE.to_uppercase(), T0 + 1);
        assert_eq!(&k, s.self_key());
        let beacon = SystemEventParams {
            text: "impostor".into(),
            host: Some("elsewhere".into()),
            ..SystemEventParams::default()
        };
        s.beacon(&k, &beacon, None, T0 + 2);
        // The self entry is untouched ...
        assert_eq!(s.get(s.self_key()).unwrap().host.as_deref(), Some("vm"));
        // ... and the client's row is listed beside it.
        let list = s.list(T0 + 3);
        assert_eq!(list.len(), 2);
        assert_eq!(
            list.iter()
                .filter(|e| e.reason.as_deref() == Some("self"))
                .count(),
            1
        );
        assert!(list.iter().any(|e| e.host.as_deref() == Some("elsewhere")));
        // A disconnect of that client never turns the self entry into "disconnect".
        assert!(s.disconnect(&k, T0 + 4));
        assert_eq!(s.get(s.self_key()).unwrap().reason.as_deref(), Some("self"));
    }

    #[test]
    fn rule2_connect_upserts_the_row_with_its_fields_and_reason_connect() {
        let mut s = store();
        let c = client("ui", Some("  Desk-1 "));
        let scopes = vec!["operator.read".to_string()];
        let k = s
            .connect(
                &ConnectionInfo {
                    device_id: Some("dev-1"),
                    remote_ip: Some(v4(192, 0, 2, 10)),
                    ..conn("c1", &c, &scopes)
                },
                T0 + 10,
            )
            .unwrap();
        assert_eq!(k.as_str(), "desk-1");
        let row = s.get(&k).unwrap();
        assert_eq!(
            row,
            &PresenceEntry {
                instance_id: Some("Desk-1".into()),
                host: Some("Mac Studio".into()),
                ip: Some("192.0.2.10".into()),
                version: Some("2026.9.6".into()),
                platform: Some("macos 15.4".into()),
                device_family: Some("Mac".into()),
                model_identifier: Some("Mac14,13".into()),
                mode: Some("ui".into()),
                last_input_seconds: None,
                reason: Some("connect".into()),
                ts: T0 + 10,
                device_id: Some("dev-1".into()),
                roles: Some(vec!["operator".into()]),
                scopes: Some(scopes.clone()),
                text: Some("Node: Mac Studio · mode ui".into()),
            }
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn rule2_reconnect_merges_roles_scopes_and_keeps_fields_it_does_not_give() {
        let mut s = store();
        let k = key("desk-1");
        s.beacon(
            &k,
            &SystemEventParams {
                text: "Node: desk · reason periodic".into(),
                last_input_seconds: Some(7),
                ..SystemEventParams::default()
            },
            None,
            T0,
        );
        let read = vec!["operator.read".to_string()];
        let write = vec!["operator.write".to_string(), "operator.read".to_string()];
        let mut c = client("ui", Some("desk-1"));
        s.connect(&conn("c1", &c, &read), T0 + 1);
        c.display_name = None;
        c.device_family = None;
        s.connect(
            &ConnectionInfo {
                role: Role::Node,
                ..conn("c2", &c, &write)
            },
            T0 + 2,
        );
        let row = s.get(&k).unwrap();
        assert_eq!(row.roles, Some(vec!["operator".into(), "node".into()]));
        assert_eq!(
            row.scopes,
            Some(vec!["operator.read".into(), "operator.write".into()])
        );
        assert_eq!(row.host.as_deref(), Some("Mac Studio"), "kept");
        assert_eq!(row.device_family.as_deref(), Some("Mac"), "kept");
        assert_eq!(row.last_input_seconds, Some(7), "kept");
        assert_eq!(
            row.text.as_deref(),
            Some("Node: desk · reason periodic"),
            "kept"
        );
        assert_eq!(row.reason.as_deref(), Some("connect"));
        assert_eq!(row.ts, T0 + 2);
    }

    #[test]
    fn rule2_connect_without_scopes_omits_them_and_defaults_the_text() {
        let mut s = store();
        let mut c = client("webchat", Some("w-1"));
        c.display_name = None;
        let k = s.connect(&conn("c1", &c, &[]), T0).unwrap();
        let row = s.get(&k).unwrap();
        assert_eq!(row.scopes, None);
        assert_eq!(row.host, None);
        assert_eq!(row.text.as_deref(), Some("Node: unknown · mode webchat"));
    }

    #[test]
    fn rule2_cli_mode_never_becomes_an_entry() {
        let mut s = store();
        for mode in ["cli", " CLI ", "Cli"] {
            let c = client(mode, Some("cli-instance"));
            assert_eq!(s.connect(&conn("c1", &c, &[]), T0), None, "{mode:?}");
        }
        assert_eq!(s.len(), 1);
        assert_eq!(s.list(T0).len(), 1);
        // Nothing was counted either: a later disconnect is a no-op.
        assert!(!s.disconnect(&key("cli-instance"), T0 + 1));
    }

    #[test]
    fn rule3_beacon_merges_fields_refreshes_ts_and_sets_last_input_seconds() {
        let mut s = store();
        let k = connect_ui(&mut s, "desk-1", T0);
        s.beacon(
            &k,
            &SystemEventParams {
                text: "Node: desk (192.0.2.10) · app 1 · last input 42s ago · mode ui · reason periodic"
                    .into(),
                host: Some("desk".into()),
                ip: Some("192.0.2.10".into()),
                version: Some("1".into()),
                last_input_seconds: Some(42),
                reason: Some("periodic".into()),
                ..SystemEventParams::default()
            },
            None,
            T0 + 30_000,
        );
        let row = s.get(&k).unwrap();
        assert_eq!(row.host.as_deref(), Some("desk"));
        assert_eq!(row.ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(row.version.as_deref(), Some("1"));
        assert_eq!(row.last_input_seconds, Some(42));
        assert_eq!(row.reason.as_deref(), Some("periodic"));
        assert!(row
            .text
            .as_deref()
            .unwrap()
            .starts_with("Node: desk (192.0.2.10)"));
        assert_eq!(row.ts, T0 + 30_000);
        // Connect-only fields are kept.
        assert_eq!(row.roles, Some(vec!["operator".into()]));
    }

    #[test]
    fn rule3_beacon_keeps_absent_fields() {
        let mut s = store();
        let k = connect_ui(&mut s, "desk-1", T0);
        let full = SystemEventParams {
            text: "first".into(),
            ip: Some("192.0.2.10".into()),
            last_input_seconds: Some(42),
            reason: Some("periodic".into()),
            mode: Some("ui".into()),
            ..SystemEventParams::default()
        };
        s.beacon(&k, &full, None, T0 + 1);
        let sparse = SystemEventParams {
            text: "again".into(),
            last_input_seconds: Some(3),
            host: Some("  ".into()),
            ..SystemEventParams::default()
        };
        s.beacon(&k, &sparse, None, T0 + 2);
        let row = s.get(&k).unwrap();
        assert_eq!(row.text.as_deref(), Some("again"));
        assert_eq!(row.last_input_seconds, Some(3));
        assert_eq!(row.ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(row.reason.as_deref(), Some("periodic"));
        assert_eq!(
            row.host.as_deref(),
            Some("Mac Studio"),
            "blank counts as absent"
        );
        assert_eq!(row.ts, T0 + 2);
    }

    #[test]
    fn rule3_beacon_creates_a_missing_row_with_its_instance_id_as_sent() {
        let mut s = store();
        let k = key("Someone-Else");
        s.beacon(
            &k,
            &SystemEventParams {
                text: "x".into(),
                instance_id: Some("Someone-Else".into()),
                host: Some("far".into()),
                ..SystemEventParams::default()
            },
            None,
            T0,
        );
        let row = s.get(&key("someone-else")).unwrap();
        assert_eq!(row.instance_id.as_deref(), Some("Someone-Else"));
        assert_eq!(row.host.as_deref(), Some("far"));
        assert_eq!(row.text.as_deref(), Some("x"));
        // Not connected: the TTL takes it.
        assert_eq!(s.prune(T0 + DEFAULT_TTL_MS + 1), 1);
    }

    #[test]
    fn rule4_node_connect_upserts_a_node_row() {
        let mut s = store();
        let mut c = client("node", Some("3d85e384"));
        c.id = "node-host".into();
        c.display_name = Some("capnode".into());
        let k = s
            .connect(
                &ConnectionInfo {
                    role: Role::Node,
                    device_id: Some("3d85e384"),
                    ..conn("c1", &c, &[])
                },
                T0,
            )
            .unwrap();
        let row = s.get(&k).unwrap();
        assert_eq!(row.mode.as_deref(), Some("node"));
        assert_eq!(row.roles, Some(vec!["node".into()]));
        assert_eq!(row.scopes, None);
        assert_eq!(row.device_id.as_deref(), Some("3d85e384"));
        assert_eq!(row.text.as_deref(), Some("Node: capnode · mode node"));
    }

    #[test]
    fn rule5_keys_are_case_insensitive_and_trimmed() {
        assert_eq!(key("  Mac-Studio-1 ").as_str(), "mac-studio-1");
        assert_eq!(PresenceKey::normalize("   "), None);
        assert_eq!(PresenceKey::normalize(""), None);
        assert_eq!(key("AbC").to_string(), "abc");
        let mut s = store();
        let a = connect_ui(&mut s, "Mac-Studio-1", T0);
        let b = connect_ui(&mut s, "  mac-studio-1 ", T0 + 1);
        assert_eq!(a, b);
        assert_eq!(s.list(T0 + 2).len(), 2, "self + one row");
    }

    #[test]
    fn rule5_key_falls_back_to_device_id_then_connection_id() {
        assert_eq!(
            PresenceKey::for_connection(Some("Inst"), Some("dev"), "conn").as_str(),
            "inst"
        );
        assert_eq!(
            PresenceKey::for_connection(Some("  "), Some("Dev"), "conn").as_str(),
            "dev"
        );
        assert_eq!(
            PresenceKey::for_connection(None, None, "Conn-1").as_str(),
            "conn-1"
        );
        assert_eq!(
            PresenceKey::for_connection(Some(""), Some(" "), "conn-2").as_str(),
            "conn-2"
        );
    }

    #[test]
    fn rule5_reconnect_without_instance_id_gives_a_duplicate_row() {
        let mut s = store();
        let c = client("ui", None);
        let first = s.connect(&conn("conn-1", &c, &[]), T0).unwrap();
        s.disconnect(&first, T0 + 1);
        let second = s.connect(&conn("conn-2", &c, &[]), T0 + 2).unwrap();
        assert_ne!(first, second);
        let list = s.list(T0 + 3);
        assert_eq!(
            list.iter()
                .filter(|e| e.host.as_deref() == Some("Mac Studio"))
                .count(),
            2
        );
    }

    #[test]
    fn rule6_ttl_prunes_after_the_ttl_not_before() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: 1_000,
            max_entries: 10,
        });
        let k = key("beacon-only");
        s.beacon(&k, &text_beacon("x"), None, T0);
        assert_eq!(s.prune(T0 + 1_000), 0, "exactly the ttl is kept");
        assert!(s.get(&k).is_some());
        assert_eq!(s.list(T0 + 1_001).len(), 1, "list prunes too");
        assert!(s.get(&k).is_none());
    }

    #[test]
    fn rule6_an_open_connection_never_expires_and_touch_refreshes_it() {
        let mut s = store();
        let k = connect_ui(&mut s, "stayer", T0);
        let much_later = T0 + 10 * DEFAULT_TTL_MS;
        assert_eq!(s.prune(much_later), 0);
        assert_eq!(s.get(&k).unwrap().ts, T0, "prune does not touch");
        assert!(s.touch_connected(much_later));
        assert_eq!(s.get(&k).unwrap().ts, much_later);
        assert!(!s.touch_connected(much_later), "nothing new to touch");
        assert_eq!(s.get(&k).unwrap().reason.as_deref(), Some("connect"));
    }

    #[test]
    fn rule6_touch_leaves_disconnected_rows_alone() {
        let mut s = store();
        let k = connect_ui(&mut s, "leaver", T0);
        s.disconnect(&k, T0 + 1);
        assert!(!s.touch_connected(T0 + 2));
        assert_eq!(s.get(&k).unwrap().ts, T0 + 1);
    }

    #[test]
    fn rule6_disconnect_leaves_reason_disconnect_until_the_ttl() {
        let mut s = store();
        let k = connect_ui(&mut s, "leaver", T0);
        assert!(s.disconnect(&k, T0 + 100));
        let row = s.get(&k).unwrap();
        assert_eq!(row.reason.as_deref(), Some("disconnect"));
        assert_eq!(row.ts, T0 + 100);
        assert_eq!(s.prune(T0 + 100 + DEFAULT_TTL_MS), 0);
        assert_eq!(s.prune(T0 + 101 + DEFAULT_TTL_MS), 1);
        assert!(s.get(&k).is_none());
        assert!(!s.disconnect(&k, T0 + 200), "already closed: no-op");
    }

    #[test]
    fn rule6_disconnect_of_an_unknown_key_is_a_noop() {
        let mut s = store();
        assert!(!s.disconnect(&key("nobody"), T0));
        let k = key("beacon-only");
        s.beacon(&k, &text_beacon("x"), None, T0);
        assert!(!s.disconnect(&k, T0 + 1), "no open connection for it");
        assert_eq!(s.get(&k).unwrap().reason, None);
    }

    #[test]
    fn rule6_two_connections_sharing_a_key_stay_connected_until_both_close() {
        let mut s = store();
        let k = connect_ui(&mut s, "shared", T0);
        assert_eq!(connect_ui(&mut s, "SHARED", T0 + 1), k);
        assert!(!s.disconnect(&k, T0 + 2), "one still open");
        assert_eq!(s.get(&k).unwrap().reason.as_deref(), Some("connect"));
        let later = T0 + 10 * DEFAULT_TTL_MS;
        assert_eq!(s.prune(later), 0, "still connected");
        assert!(s.disconnect(&k, later));
        assert_eq!(s.get(&k).unwrap().reason.as_deref(), Some("disconnect"));
    }

    /// Connects `id` as a `ui` client and disconnects it at once: a row the
    /// cap may evict.
    fn left_row(store: &mut PresenceStore, id: &str, now: u64) -> PresenceKey {
        let k = connect_ui(store, id, now);
        assert!(store.disconnect(&k, now));
        k
    }

    #[test]
    fn rule7_cap_drops_the_oldest_ts_first_never_self() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 3,
        });
        // The self entry is the oldest of all and still survives.
        for i in 0..4u64 {
            left_row(&mut s, &format!("inst-{i}"), T0 + 1_000 + i);
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&key("inst-0")).is_none());
        assert!(s.get(&key("inst-1")).is_none());
        assert!(s.get(&key("inst-2")).is_some());
        assert!(s.get(&key("inst-3")).is_some());
        let list = s.list(T0 + 2_000);
        assert_eq!(list.len(), 3);
        assert!(list.iter().any(|e| e.reason.as_deref() == Some("self")));
        // A beacon refreshing an old row makes it the newest.
        s.beacon(&key("inst-2"), &text_beacon("x"), None, T0 + 3_000);
        left_row(&mut s, "inst-4", T0 + 3_001);
        assert!(s.get(&key("inst-3")).is_none());
        assert!(s.get(&key("inst-2")).is_some());
        assert_eq!(s.cap_overshoot(), 0);
    }

    #[test]
    fn rule7_cap_ties_are_broken_by_key() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 2,
        });
        // Rows without a connection (written by beacons), equally old.
        s.beacon(&key("b"), &text_beacon("b"), None, T0);
        s.beacon(&key("a"), &text_beacon("a"), None, T0);
        assert_eq!(s.len(), 2);
        assert!(s.get(&key("a")).is_none());
        assert!(s.get(&key("b")).is_some());
    }

    #[test]
    fn rule7_a_live_row_is_never_evicted_the_oldest_left_row_goes_instead() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 3,
        });
        // The oldest row is live; a newer one has left.
        let live = connect_ui(&mut s, "live-old", T0);
        let gone = left_row(&mut s, "left-newer", T0 + 10);
        connect_ui(&mut s, "newest", T0 + 20);
        assert_eq!(s.len(), 3, "self + live-old + newest");
        assert!(s.get(&live).is_some(), "the oldest, but connected");
        assert!(s.get(&gone).is_none(), "the only row without a connection");
        assert_eq!(s.evictions().max, 1);
        assert_eq!(s.cap_overshoot(), 0);
    }

    #[test]
    fn rule7_live_rows_alone_over_the_cap_all_stay_and_show_as_overshoot() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 3,
        });
        let keys: Vec<PresenceKey> = (0..5u64)
            .map(|i| connect_ui(&mut s, &format!("n{i}"), T0 + i))
            .collect();
        assert_eq!(s.len(), 6, "self + 5 live rows, cap 3");
        assert_eq!(s.cap_overshoot(), 3);
        assert_eq!(s.evictions().max, 0);
        assert_eq!(s.list(T0 + 10).len(), 6, "every live host is listed");
        // A beacon (a live node's own) changes nothing about that.
        s.beacon(&keys[0], &text_beacon("still here"), None, T0 + 11);
        assert_eq!(s.len(), 6);
        // A live row that leaves is the only evictable one: the cap takes it
        // at once, since the list is over the cap.
        assert!(s.disconnect(&keys[2], T0 + 12));
        assert!(s.get(&keys[2]).is_none());
        assert_eq!(s.evictions().max, 1);
        assert_eq!(s.cap_overshoot(), 2);
        // Down to the cap: a row that leaves now stays, as `disconnect`.
        for k in &keys[3..] {
            assert!(s.disconnect(k, T0 + 13));
        }
        assert_eq!(s.cap_overshoot(), 0);
        assert!(s.disconnect(&keys[1], T0 + 14));
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.get(&keys[1]).and_then(|e| e.reason.as_deref()),
            Some("disconnect")
        );
    }

    #[test]
    fn rule7_a_beacon_row_without_a_connection_is_evictable_a_live_one_is_not() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 2,
        });
        let live = connect_ui(&mut s, "live", T0);
        // An operator's beacon for a key nobody is connected as.
        s.beacon(&key("orphan"), &text_beacon("x"), None, T0 + 5);
        assert!(s.get(&key("orphan")).is_none(), "over the cap, not live");
        assert!(s.get(&live).is_some());
        assert_eq!(s.evictions().max, 1);
    }

    #[test]
    fn evictions_are_counted_by_reason_and_statuses_by_age() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 4,
        });
        left_row(&mut s, "a", T0);
        left_row(&mut s, "b", T0 + 1);
        // c: a row only a beacon wrote (no connection, not departed).
        s.beacon(&key("c"), &text_beacon("c"), None, T0 + 2);
        connect_ui(&mut s, "d", T0 + 3);
        // Five rows, cap 4: the cap took a, the oldest row without a
        // connection.
        assert_eq!(s.evictions(), Evictions { ttl: 0, max: 1 }, "a, the oldest");
        assert!(s.get(&key("a")).is_none());
        // At +90.003 s: b has left (whatever its age); c (ts +2 ms) is just
        // past 90 s: Idle; d (ts +3 ms, live) is exactly 90 s old: Active.
        assert_eq!(s.status_counts(T0 + 90_003), [2, 1, 0, 1]);
        assert_eq!(
            s.status_counts(T0 + 200_000),
            [1, 0, 2, 1],
            "the self entry is current"
        );
        assert_eq!(s.prune(T0 + DEFAULT_TTL_MS + 10), 2, "b and c; d is live");
        assert_eq!(s.evictions(), Evictions { ttl: 2, max: 1 });
    }

    #[test]
    fn left_is_the_status_of_a_disconnected_row_whatever_its_age() {
        let mut s = store();
        let k = connect_ui(&mut s, "x", T0);
        let live = s.get(&k).cloned().unwrap();
        assert_eq!(
            PresenceStatus::of_entry(&live, T0 + 1),
            PresenceStatus::Active
        );
        s.disconnect(&k, T0 + 1);
        let gone = s.get(&k).cloned().unwrap();
        assert_eq!(
            PresenceStatus::of_entry(&gone, T0 + 1),
            PresenceStatus::Left
        );
        assert_eq!(PresenceStatus::of(gone.ts, T0 + 1), PresenceStatus::Active);
    }

    #[test]
    fn rule7_a_cap_of_one_keeps_self_and_live_rows_only() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: DEFAULT_TTL_MS,
            max_entries: 1,
        });
        let k = connect_ui(&mut s, "x", T0);
        assert_eq!(s.len(), 2, "live: kept over the cap");
        assert!(s.disconnect(&k, T0 + 1), "the row was there to leave");
        assert_eq!(s.len(), 1, "left: evicted at once");
        assert!(s.get(&k).is_none());
    }

    #[test]
    fn rule8_loopback_is_127_8_v6_localhost_and_mapped_127() {
        assert!(is_loopback(v4(127, 0, 0, 1)));
        assert!(is_loopback(v4(127, 255, 3, 4)));
        assert!(is_loopback(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.9.9.9".parse().unwrap()));
        assert!(!is_loopback(v4(192, 0, 2, 1)));
        assert!(!is_loopback(v4(128, 0, 0, 1)));
        assert!(!is_loopback("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!is_loopback("2001:db8::1".parse().unwrap()));
        assert!(!is_loopback(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }

    #[test]
    fn rule8_loopback_remote_is_ignored_and_never_overwrites_a_reported_ip() {
        let mut s = store();
        let c = client("ui", Some("desk-1"));
        let over_loopback = |ip: IpAddr| ConnectionInfo {
            remote_ip: Some(ip),
            ..conn("c1", &c, &[])
        };
        let k = s.connect(&over_loopback(v4(127, 0, 0, 1)), T0).unwrap();
        assert_eq!(s.get(&k).unwrap().ip, None, "loopback does not fill ip");
        let reported = SystemEventParams {
            text: "x".into(),
            ip: Some("192.0.2.10".into()),
            ..SystemEventParams::default()
        };
        s.beacon(&k, &reported, Some(v4(127, 0, 0, 1)), T0 + 1);
        assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.10"));
        for ip in [
            v4(127, 0, 0, 1),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            "::ffff:127.0.0.1".parse().unwrap(),
        ] {
            s.disconnect(&k, T0 + 2);
            s.connect(&over_loopback(ip), T0 + 3).unwrap();
            let bare = SystemEventParams {
                text: "y".into(),
                ..SystemEventParams::default()
            };
            s.beacon(&k, &bare, Some(ip), T0 + 4);
            assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.10"), "{ip}");
        }
    }

    #[test]
    fn rule8_non_loopback_remote_fills_ip_mapped_in_dotted_form() {
        let mut s = store();
        let c = client("ui", Some("desk-1"));
        let k = s
            .connect(
                &ConnectionInfo {
                    remote_ip: Some("::ffff:192.0.2.7".parse().unwrap()),
                    ..conn("c1", &c, &[])
                },
                T0,
            )
            .unwrap();
        assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.7"));

        // A beacon's remote fills ip only when the row has none.
        let bare = SystemEventParams {
            text: "x".into(),
            ..SystemEventParams::default()
        };
        s.beacon(&k, &bare, Some(v4(198, 51, 100, 1)), T0 + 1);
        assert_eq!(s.get(&k).unwrap().ip.as_deref(), Some("192.0.2.7"));
        let other = key("fresh");
        s.beacon(&other, &bare, Some("2001:db8::5".parse().unwrap()), T0 + 2);
        assert_eq!(s.get(&other).unwrap().ip.as_deref(), Some("2001:db8::5"));
    }

    #[test]
    fn rule9_list_is_newest_first_with_deterministic_ties() {
        let mut s = store();
        connect_ui(&mut s, "old", T0 + 10);
        connect_ui(&mut s, "new", T0 + 30);
        connect_ui(&mut s, "mid-b", T0 + 20);
        connect_ui(&mut s, "mid-a", T0 + 20);
        let now = T0 + 25;
        let list = s.list(now);
        let order: Vec<&str> = list
            .iter()
            .map(|e| e.instance_id.as_deref().unwrap())
            .collect();
        assert_eq!(order, ["new", GW_INSTANCE, "mid-a", "mid-b", "old"]);
        // The self entry is first among equals.
        connect_ui(&mut s, "same-time", now + 5);
        assert_eq!(s.list(now + 5)[0].instance_id.as_deref(), Some(GW_INSTANCE));
    }

    #[test]
    fn status_boundaries_are_90_and_180_seconds() {
        let of = |age: u64| PresenceStatus::of(T0, T0 + age);
        assert_eq!(of(0), PresenceStatus::Active);
        assert_eq!(of(90_000), PresenceStatus::Active);
        assert_eq!(of(90_001), PresenceStatus::Idle);
        assert_eq!(of(180_000), PresenceStatus::Idle);
        assert_eq!(of(180_001), PresenceStatus::Stale);
        assert_eq!(
            PresenceStatus::of(T0 + 5_000, T0),
            PresenceStatus::Active,
            "future ts"
        );
        assert_eq!(PresenceStatus::Active.as_str(), "Active");
        assert_eq!(PresenceStatus::Idle.as_str(), "Idle");
        assert_eq!(PresenceStatus::Stale.as_str(), "Stale");
    }

    #[test]
    fn serialized_entries_have_no_nulls() {
        let mut s = store();
        let mut c = client("ui", Some("sparse"));
        c.display_name = None;
        c.device_family = None;
        c.model_identifier = None;
        s.connect(&conn("c1", &c, &[]), T0);
        s.beacon(&key("beacon-only"), &text_beacon("x"), None, T0);
        let text = serde_json::to_string(&s.list(T0 + 1)).unwrap();
        assert!(!text.contains("null"), "{text}");
        assert!(!text.contains("lastInputSeconds"), "{text}");
        assert!(!text.contains("scopes"), "{text}");
    }

    /// `list_json` is the serialized `list`, byte for byte, through a long
    /// random mix of every operation (so no write path misses dropping a
    /// row's cached JSON), with a small cap so eviction is exercised.
    #[test]
    fn list_json_matches_the_serialized_list_through_random_operations() {
        let mut s = store_with(PresenceLimits {
            ttl_ms: 5_000,
            max_entries: 12,
        });
        // A fixed xorshift sequence: repeatable, no extra crate.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut now = T0;
        let mut open: Vec<PresenceKey> = Vec::new();
        for step in 0..5_000 {
            now += next(700);
            if next(50) == 0 {
                // The wall clock stepped back: rows are newer than now.
                now -= 2_000;
            }
            let id = format!("Node-{}", next(20));
            match next(6) {
                0 => open.push(connect_ui(&mut s, &id, now)),
                1 if !open.is_empty() => {
                    let k = open.swap_remove(next(open.len() as u64) as usize);
                    s.disconnect(&k, now);
                }
                2 => {
                    let mut b = text_beacon(&format!("beacon {step}"));
                    b.host = Some(format!("h{step}"));
                    b.last_input_seconds = Some(next(100));
                    s.beacon(&key(&id), &b, Some(v4(10, 0, 0, 1)), now);
                }
                3 => {
                    s.touch_connected(now);
                }
                4 => {
                    s.prune(now);
                }
                _ => {}
            }
            let json = s.list_json(now);
            let expected = serde_json::to_string(&s.list(now)).unwrap();
            assert_eq!(json, expected, "step {step}");
            // Rule 7: no live row is ever gone, and the list is over the cap
            // only by live rows.
            assert!(open.iter().all(|k| s.get(k).is_some()), "step {step}");
            let live = s.open_connections.len();
            assert!(s.len() <= 12 || s.len() == live + 1, "step {step}");
        }
    }
}
