//! The gateway's state as one closed object (after mini-redis's `Db`): the
//! presence store, the live connections, the nodes' latest host stats and
//! the device registry (instance pins), behind private fields.
//!
//! Every operation that changes presence — [`Shared::register`],
//! [`Shared::unregister`], [`Shared::beacon`], [`Shared::tick`] — changes
//! the store *and* announces the change (bumps the presence version that
//! every presence reader watches) in one step, under one lock, so no caller
//! can change the list and forget to tell. Reads take `&self` and never
//! prune: only [`Shared::tick`] drops expired rows (a read skips them).
//! Critical sections never await.
//!
//! This is the seam a shared engine (several gateways on one presence, part
//! 11) goes behind: handlers and methods see only these operations.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use super::broadcast::{self, Outbound};
use super::log_summary::LogSummary;
use super::metrics::{Metrics, Snapshot as MetricsSnapshot};
use super::outgoing::Outgoing;
use super::pairing::{PendingRequests, PendingView, Requested};
use super::registry::{
    Change, Claim, ClaimCheck, ClaimToken, Device, DeviceRecord, DeviceRegistry, DeviceState,
    JoinToken, JoinTokenCreated, NewJoinToken, Pin, TokenChange, TokenRecord,
};
use super::GatewayConfig;
use crate::clock::now_ms;
use crate::presence::{ConnectionInfo, ListJson, PresenceKey, PresenceStore};
use crate::protocol::{Frame, HostStats, Role, SystemEventParams};

/// A connected node, for `node.list`.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub node_id: String,
    pub instance_id: Option<String>,
    pub display_name: Option<String>,
    pub platform: String,
    pub version: String,
    pub device_family: Option<String>,
    pub model_identifier: Option<String>,
    pub remote_ip: Option<IpAddr>,
    pub caps: Vec<String>,
    pub commands: Vec<String>,
    pub connected_at_ms: u64,
    pub host_stats: Option<(HostStats, u64)>,
}

/// What the broadcaster needs to reach one connection.
struct ConnHandle {
    tx: mpsc::Sender<Arc<Outbound>>,
    role: Role,
    /// Notified when the connection must close because its queue overflowed.
    kill: Arc<Notify>,
    /// Notified when a newer connection of its device or row replaced it.
    replaced: Arc<Notify>,
    /// Notified when its device was revoked, rejected or removed.
    revoked: Arc<Notify>,
    /// Notified when its device token was rotated or revoked.
    token_changed: Arc<Notify>,
    /// Its device and the key of its row, for the per-device bound.
    device_id: Option<String>,
    own_key: PresenceKey,
}

/// A connection that passed its handshake, to register: what its presence
/// row is made from, and what `node.list` shows of a node besides.
pub struct Registration<'a> {
    pub conn: ConnectionInfo<'a>,
    /// The key of the row it writes (`PresenceKey::for_connection`).
    pub own_key: &'a PresenceKey,
    pub caps: &'a [String],
    pub commands: &'a [String],
}

/// What a registered connection is sent through, and its hello-ok snapshot.
pub struct Registered {
    /// Its presence row (`None` for `mode: cli`).
    pub presence_key: Option<PresenceKey>,
    /// Queued events: `tick`, `shutdown`.
    pub events: mpsc::Receiver<Arc<Outbound>>,
    /// Notified when the event queue overflowed.
    pub kill: Arc<Notify>,
    /// Notified when a newer connection of the same device or row replaced
    /// this one (`max_connections_per_device`).
    pub replaced: Arc<Notify>,
    /// Notified when its device was revoked, rejected or removed.
    pub revoked: Arc<Notify>,
    /// Notified when its device token was rotated or revoked.
    pub token_changed: Arc<Notify>,
    /// Presence changes, for clients that read presence.
    pub presence: Option<watch::Receiver<u64>>,
    /// The presence list, in the store's pieces (`[]` for clients that do
    /// not read presence, as OpenClaw projects it).
    pub presence_json: ListJson,
    pub presence_version: u64,
}

/// Mutable state behind [`Shared`]'s lock; private to this module.
struct State {
    presence: PresenceStore,
    presence_version: u64,
    /// The presence version, watched by every connection that reads
    /// presence.
    presence_changes: watch::Sender<u64>,
    connections: HashMap<String, ConnHandle>,
    /// Connection ids of each device, and of each row, oldest first: at
    /// most `max_connections_per_device` each.
    by_device: HashMap<String, VecDeque<String>>,
    by_key: HashMap<PresenceKey, VecDeque<String>>,
    /// Keyed by connection id.
    nodes: HashMap<String, NodeRecord>,
    /// Failed auth attempts per remote address: (window start ms, count).
    auth_failures: HashMap<IpAddr, (u64, u32)>,
    /// Whether live rows alone hold the list over its cap, as last logged.
    over_cap: bool,
    /// The operators' labels of devices (`device id → label`), as the
    /// registry holds them: loaded at start, changed with every rename and
    /// removal, so a row gets its device's label without a registry read
    /// (`operatorLabel` is in the row's cached JSON, not looked up per
    /// broadcast).
    labels: HashMap<String, String>,
}

/// The gateway's state, shared by the listener, every handler and the
/// ticker. See the module docs.
pub struct Shared {
    pub config: GatewayConfig,
    pub metrics: Metrics,
    /// Refusals and failures, summed up for the log.
    pub log_summary: LogSummary,
    started: Instant,
    /// When the gateway started, in ms since the Unix epoch.
    started_ms: u64,
    /// The devices seen and which presence key each owns (its own locks:
    /// never taken with the state lock held).
    registry: Arc<dyn DeviceRegistry>,
    /// New devices waiting for approval (`admission = "manual"`); its own
    /// lock, never taken with the state lock held.
    pending: Mutex<PendingRequests>,
    /// Bumped by every rejection, revocation and removal: a handshake that
    /// saw another value before it registered checks its device again (a
    /// revocation between its admission and its registration).
    revocations: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
}

/// What admission decided about a device that proved its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Approved before: go on.
    Approved,
    /// New, and approved now by the policy named (`token`: `admission =
    /// "token"`; `admission_cidrs`; `operator`: not a node under
    /// `manual`): go on.
    FirstUse(&'static str),
    /// Waiting for an operator: refuse with this request id.
    Pending { request_id: String, new: bool },
    /// Too many requests wait: refuse, nothing stored.
    QueueFull,
    /// Rejected or revoked by an operator: refuse.
    Refused(DeviceState),
}

/// Auth rate limit: this many failures per window per remote address.
pub const AUTH_FAILURE_LIMIT: u32 = 20;
pub const AUTH_FAILURE_WINDOW_MS: u64 = 60_000;

impl Shared {
    pub fn new(config: GatewayConfig, registry: Arc<dyn DeviceRegistry>) -> Shared {
        let presence = PresenceStore::new(config.self_entry.clone(), config.settings.limits());
        // Display only: a registry that cannot list them costs the labels
        // until the next rename, not the gateway.
        let labels = registry.labels().unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "cannot read the devices' operator labels");
            HashMap::new()
        });
        Shared {
            config,
            metrics: Metrics::default(),
            log_summary: LogSummary::default(),
            started: Instant::now(),
            started_ms: now_ms(),
            registry,
            pending: Mutex::new(PendingRequests::default()),
            revocations: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(State {
                presence,
                presence_version: 1,
                presence_changes: watch::Sender::new(1),
                connections: HashMap::new(),
                by_device: HashMap::new(),
                by_key: HashMap::new(),
                nodes: HashMap::new(),
                auth_failures: HashMap::new(),
                over_cap: false,
                labels,
            }),
        }
    }

    /// Locks the state. A handler that panicked while holding the lock
    /// cannot leave it half-updated in a way that matters more than losing
    /// the whole gateway, so a poisoned lock is recovered.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    // --- operations that change presence, and announce it -------------------

    /// A connection passed its handshake: its presence row (rules 2, 4, 5,
    /// 8), its node record, its event queue; the change is announced, and
    /// the new connection's own presence snapshot and watch are taken in
    /// the same step, so it sees every later change and no earlier one twice.
    /// Past `max_connections_per_device` connections of its device, or of
    /// its row, the oldest is told to close (the newest wins, as a
    /// reconnect after a silent network loss must).
    pub fn register(&self, reg: Registration<'_>) -> Registered {
        let now = now_ms();
        let conn = &reg.conn;
        let reads_presence = super::auth::reads_presence(conn.role, conn.scopes);
        let (tx, events) = mpsc::channel(self.config.send_queue);
        let kill = Arc::new(Notify::new());
        let replaced = Arc::new(Notify::new());
        let revoked = Arc::new(Notify::new());
        let token_changed = Arc::new(Notify::new());
        let mut guard = self.lock();
        let state = &mut *guard;
        let presence_key = state.presence.connect(conn, now);
        if let Some(key) = &presence_key {
            let label = conn.device_id.and_then(|d| state.labels.get(d));
            state
                .presence
                .set_operator_label(key, label.map(String::as_str));
        }
        if conn.role == Role::Node {
            state
                .nodes
                .insert(conn.conn_id.to_string(), node_record(&reg, now));
        }
        state.connections.insert(
            conn.conn_id.to_string(),
            ConnHandle {
                tx,
                role: conn.role,
                kill: kill.clone(),
                replaced: replaced.clone(),
                revoked: revoked.clone(),
                token_changed: token_changed.clone(),
                device_id: conn.device_id.map(str::to_string),
                own_key: reg.own_key.clone(),
            },
        );
        let bound = self.config.settings.tuning.max_connections_per_device;
        let replaced_count =
            state.bound_connections(conn.conn_id, conn.device_id, reg.own_key, bound);
        if presence_key.is_some() {
            state.presence_changed();
        }
        let presence = reads_presence.then(|| state.presence_changes.subscribe());
        let presence_json = if reads_presence {
            state.presence.shared_list_json(now)
        } else {
            ListJson::empty()
        };
        let presence_version = state.presence_version;
        drop(guard);
        if replaced_count > 0 {
            self.metrics.replaced(replaced_count);
        }
        Registered {
            presence_key,
            events,
            kill,
            replaced,
            revoked,
            token_changed,
            presence,
            presence_json,
            presence_version,
        }
    }

    /// A connection ended: its row stays with reason `disconnect` until the
    /// TTL takes it (rule 6); its node record and queue go.
    pub fn unregister(&self, conn_id: &str, presence_key: Option<&PresenceKey>) {
        let mut state = self.lock();
        if let Some(handle) = state.connections.remove(conn_id) {
            state.forget_bound(conn_id, &handle);
        }
        state.nodes.remove(conn_id);
        if let Some(key) = presence_key {
            if state.presence.disconnect(key, now_ms()) {
                state.presence_changed();
            }
        }
    }

    /// A `system-event` beacon merged into the row at `key` (rule 3); the
    /// caller decided `key` and that the sender may write it.
    pub fn beacon(&self, key: &PresenceKey, params: &SystemEventParams, remote: Option<IpAddr>) {
        let mut state = self.lock();
        state.presence.beacon(key, params, remote, now_ms());
        state.presence_changed();
        drop(state);
        self.metrics.beacon();
    }

    /// A node's latest host stats; `false` when the connection is gone.
    pub fn host_stats(&self, conn_id: &str, stats: HostStats) -> bool {
        let mut state = self.lock();
        match state.nodes.get_mut(conn_id) {
            Some(node) => {
                node.host_stats = Some((stats, now_ms()));
                true
            }
            None => false,
        }
    }

    /// Every tick: connected rows are fresh again (rule 6) and expired ones
    /// go — either is a change live views must see, or a quiet but
    /// connected node would age to Idle there — and `tick` goes out.
    pub fn tick(&self) {
        let mut state = self.lock();
        let now = now_ms();
        let touched = state.presence.touch_connected(now);
        let pruned = state.presence.prune(now) > 0;
        if touched || pruned {
            state.presence_changed();
        }
        let out = broadcast::tick(now);
        state.fan_out(out);
    }

    /// Tells every connection the gateway is stopping (`shutdown` event).
    pub fn shutdown(&self, reason: &str) {
        let out = broadcast::shutdown(reason);
        self.lock().fan_out(out);
    }

    // --- device registry (instance pins) -------------------------------------

    /// Whether `device` may hold the presence key `key`: the first device
    /// that claims a key is pinned to it; a device's own id is its own.
    /// Keys of clients without a device are claimed by nobody: `Known`.
    /// The device is recorded as seen at `now_ms`, and issued `token` (a
    /// claimable key only) when admitted, in the same commit
    /// ([`Claim::token`]).
    pub fn claim(
        &self,
        key: &PresenceKey,
        device: Device,
        token: Option<ClaimToken>,
        now_ms: u64,
    ) -> impl Future<Output = anyhow::Result<ClaimCheck>> + Send + 'static {
        let claimed = key.is_claimable().then(|| {
            self.registry.claim(Claim {
                key: key.as_str().to_string(),
                device,
                now_ms,
                token,
            })
        });
        async move {
            match claimed {
                Some(claimed) => claimed.await,
                None => Ok(ClaimCheck::Known),
            }
        }
    }

    /// Drops an instance id's pin (a re-imaged host); stored before it
    /// returns.
    pub fn forget(&self, instance_id: &str) -> anyhow::Result<Option<Pin>> {
        match PresenceKey::normalize(instance_id) {
            Some(key) => self.registry.forget(key.as_str()),
            None => Ok(None),
        }
    }

    /// Whether `device_id` has proved its key to this gateway before (a
    /// device with a record in the registry).
    pub fn is_known_device(&self, device_id: &str) -> bool {
        self.registry.is_known_device(device_id)
    }

    // --- device tokens ------------------------------------------------------------

    /// `device_id`'s stored token for `role`: one primary-key read.
    pub fn device_token(&self, device_id: &str, role: Role) -> anyhow::Result<Option<TokenRecord>> {
        self.registry.device_token(device_id, role)
    }

    /// Issues a new device token to `device_id` for `role` granting
    /// `scopes`, replacing any: returns the token (the only copy: the
    /// registry keeps its SHA-256) and its record, once stored. `None`: the
    /// device has no record.
    pub fn issue_device_token(
        &self,
        device_id: &str,
        role: Role,
        scopes: &[String],
    ) -> impl Future<Output = anyhow::Result<Option<(String, TokenRecord)>>> + Send + 'static {
        let token = new_device_token();
        let stored = self.registry.change_token(TokenChange::Issue {
            device_id: device_id.to_string(),
            role,
            sha256: super::registry::token_digest(&token),
            scopes: scopes.to_vec(),
            now_ms: now_ms(),
        });
        async move { Ok(stored.await?.map(|record| (token, record))) }
    }

    /// Rotates or revokes a device token (an operator's change; blocks
    /// until stored), then closes the device's connections of that role,
    /// so they come back and are issued a new one. `None`: no such token.
    pub fn change_device_token(&self, change: TokenChange) -> anyhow::Result<Option<TokenRecord>> {
        let (device_id, role) = match &change {
            TokenChange::Issue {
                device_id, role, ..
            }
            | TokenChange::Rotate {
                device_id, role, ..
            }
            | TokenChange::Revoke {
                device_id, role, ..
            } => (device_id.clone(), *role),
        };
        let changed = self.registry.change_token(change);
        let record = super::registry::wait(changed)?;
        if record.is_some() {
            self.bump_revocations();
            self.close_device_role(&device_id, role);
        }
        Ok(record)
    }

    // --- admission and device records ------------------------------------------

    /// Whether `device` (a valid proof and token) may connect: its stored
    /// state; a device with no record is approved by the token policy, or
    /// waits for an operator (`admission = "manual"`, node devices only:
    /// operators are admitted by their credential).
    pub fn admit(&self, device: &Device) -> anyhow::Result<Admit> {
        match self.registry.device_state(&device.id)? {
            Some(DeviceState::Approved) => return Ok(Admit::Approved),
            Some(state @ (DeviceState::Rejected | DeviceState::Revoked)) => {
                return Ok(Admit::Refused(state))
            }
            Some(DeviceState::Pending) | None => {}
        }
        let settings = &self.config.settings;
        let manual = settings.tuning.admission == crate::config::Admission::Manual;
        let trusted = device
            .address
            .is_some_and(|ip| settings.admission_cidrs.iter().any(|c| c.contains(ip)));
        if !manual {
            return Ok(Admit::FirstUse("token"));
        }
        if trusted {
            return Ok(Admit::FirstUse("admission_cidrs"));
        }
        if device.role != Some(Role::Node) {
            return Ok(Admit::FirstUse("operator"));
        }
        let requested = self.pending_lock().request(device, now_ms());
        Ok(match requested {
            Requested::New(request_id) => Admit::Pending {
                request_id,
                new: true,
            },
            Requested::Waiting(request_id) => Admit::Pending {
                request_id,
                new: false,
            },
            Requested::Full => Admit::QueueFull,
        })
    }

    fn pending_lock(&self) -> MutexGuard<'_, PendingRequests> {
        // Every change is one map operation: a poisoned lock is usable.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pending requests, oldest first (`clawnode.device.pending`).
    pub fn pending_requests(&self) -> Vec<PendingView> {
        self.pending_lock().list(now_ms())
    }

    /// The pending requests and every device record (`device.pair.list`).
    pub fn pairing_list(&self) -> anyhow::Result<(Vec<PendingView>, Vec<DeviceRecord>)> {
        let pending = self.pending_lock().list(now_ms());
        Ok((pending, self.registry.devices()?))
    }

    /// Approves a pending request (by request id or device id) or a known
    /// device; stored before it returns. `None`: no such request or device.
    pub fn approve(&self, id: &str, by: &str) -> anyhow::Result<Option<(String, DeviceRecord)>> {
        let now = now_ms();
        let taken = self.pending_lock().take(id, now);
        let (request_id, device_id, device) = match taken {
            Some(p) => (p.request_id, p.device.id.clone(), Some(p.device)),
            None => (id.to_string(), id.to_string(), None),
        };
        let record = self.registry.change(Change::SetState {
            device_id,
            state: DeviceState::Approved,
            by: Some(by.to_string()),
            device,
            now_ms: now,
        })?;
        Ok(record.map(|r| (request_id, r)))
    }

    /// Rejects a pending request or revokes a known device (`state`), and
    /// closes the device's live connections. `None`: nothing with that id.
    pub fn refuse(
        &self,
        id: &str,
        state: DeviceState,
    ) -> anyhow::Result<Option<(String, DeviceRecord)>> {
        let now = now_ms();
        let taken = self.pending_lock().take(id, now);
        let (request_id, device_id, device) = match taken {
            Some(p) => (p.request_id, p.device.id.clone(), Some(p.device)),
            None => (id.to_string(), id.to_string(), None),
        };
        let record = self.registry.change(Change::SetState {
            device_id: device_id.clone(),
            state,
            by: None,
            device,
            now_ms: now,
        })?;
        if record.is_some() {
            self.bump_revocations();
            self.close_device(&device_id);
        }
        Ok(record.map(|r| (request_id, r)))
    }

    /// Deletes a device's record and pins (and any pending request), and
    /// closes its live connections. `None`: no such device.
    pub fn remove_device(&self, device_id: &str) -> anyhow::Result<Option<DeviceRecord>> {
        let pending = self.pending_lock().take(device_id, now_ms());
        let record = self.registry.change(Change::Remove {
            device_id: device_id.to_string(),
        })?;
        if let Some(record) = &record {
            self.relabel(&record.device_id, None);
        }
        self.bump_revocations();
        self.close_device(device_id);
        Ok(record.or_else(|| {
            pending.map(|p| DeviceRecord {
                device_id: p.device.id,
                public_key: Some(p.device.public_key),
                state: DeviceState::Pending,
                roles: Vec::new(),
                display_name: p.device.display_name,
                label: None,
                first_seen_ms: p.created_ms,
                last_seen_ms: p.last_ms,
                last_address: p.device.address.map(|a| a.to_string()),
                approved_by: None,
                approved_at_ms: None,
                instance_ids: Vec::new(),
                join_token_id: p.device.join_token,
                tokens: Vec::new(),
            })
        }))
    }

    fn bump_revocations(&self) {
        self.revocations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many rejections, revocations and removals there were.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether an operator rejected or revoked `device_id` (read again).
    pub fn is_refused(&self, device_id: &str) -> bool {
        matches!(
            self.registry.device_state(device_id),
            Ok(Some(DeviceState::Rejected | DeviceState::Revoked))
        )
    }

    /// Sets a device's operator label. `None`: no such device.
    pub fn rename_device(
        &self,
        device_id: &str,
        label: &str,
    ) -> anyhow::Result<Option<DeviceRecord>> {
        let record = self.registry.change(Change::Label {
            device_id: device_id.to_string(),
            label: label.to_string(),
        })?;
        if let Some(record) = &record {
            self.relabel(&record.device_id, record.label.as_deref());
        }
        Ok(record)
    }

    /// A device's label changed in the registry (`None`: its record is
    /// gone): kept for its next rows, shown on its rows now.
    fn relabel(&self, device_id: &str, label: Option<&str>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match label {
            Some(label) => state
                .labels
                .insert(device_id.to_string(), label.to_string()),
            None => state.labels.remove(device_id),
        };
        if state.presence.label_device(device_id, label) {
            state.presence_changed();
        }
    }

    // --- join tokens ------------------------------------------------------------

    /// The created join token whose secret has this SHA-256 (the handshake's
    /// lookup: one indexed read).
    pub fn join_token(&self, sha256: &[u8; 32]) -> anyhow::Result<Option<JoinToken>> {
        self.registry.join_token(sha256)
    }

    /// Stores a new join token (see [`DeviceRegistry::create_join_token`]).
    pub fn create_join_token(&self, new: NewJoinToken) -> anyhow::Result<JoinTokenCreated> {
        self.registry.create_join_token(new)
    }

    /// Every join token kept, newest first.
    pub fn join_tokens(&self) -> anyhow::Result<Vec<JoinToken>> {
        self.registry.join_tokens()
    }

    /// Revokes a join token: from now on it admits nobody. Devices that
    /// enrolled with it keep their records. `None`: no such token.
    pub fn revoke_join_token(&self, id: &str) -> anyhow::Result<Option<JoinToken>> {
        self.registry.revoke_join_token(id, now_ms())
    }

    /// Notes that join token `id` let a connection in (best effort).
    pub fn join_token_used(&self, id: &str) {
        self.registry.join_token_used(id, now_ms());
    }

    /// Tells every live connection of `device_id` to close; how many.
    pub fn close_device(&self, device_id: &str) -> usize {
        let state = self.lock();
        let Some(conns) = state.by_device.get(device_id) else {
            return 0;
        };
        let mut told = 0;
        for conn_id in conns {
            if let Some(handle) = state.connections.get(conn_id) {
                handle.revoked.notify_one();
                told += 1;
            }
        }
        told
    }

    /// Tells every live connection of `device_id` with `role` to close
    /// (its token changed); how many.
    pub fn close_device_role(&self, device_id: &str, role: Role) -> usize {
        let state = self.lock();
        let Some(conns) = state.by_device.get(device_id) else {
            return 0;
        };
        let mut told = 0;
        for conn_id in conns {
            if let Some(handle) = state.connections.get(conn_id).filter(|h| h.role == role) {
                handle.token_changed.notify_one();
                told += 1;
            }
        }
        told
    }

    /// Whether `device_id` has a live connection.
    pub fn is_device_connected(&self, device_id: &str) -> bool {
        self.lock().by_device.contains_key(device_id)
    }

    /// How many requests wait for approval.
    pub fn pending_count(&self) -> usize {
        self.pending_lock().len()
    }

    /// The registry's part of the shutdown: waits for `stop`, then stores
    /// what is still queued (last-seen times).
    pub fn pin_writer(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let registry = self.registry.clone();
        async move {
            let _ = stop.changed().await;
            let flushed = tokio::task::spawn_blocking(move || registry.flush()).await;
            if let Ok(Err(e)) = flushed {
                warn!(error = %e, "cannot store the device registry on shutdown");
            }
        }
    }

    // --- auth rate limit --------------------------------------------------------

    /// If `ip` is rate limited now, the ms until it may retry.
    pub fn auth_retry_after(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let mut state = self.lock();
        let (start, count) = *state.auth_failures.get(&ip)?;
        let end = start + AUTH_FAILURE_WINDOW_MS;
        if now >= end {
            state.auth_failures.remove(&ip);
            return None;
        }
        (count >= AUTH_FAILURE_LIMIT).then(|| end - now)
    }

    pub fn record_auth_failure(&self, ip: IpAddr, now: u64) {
        let mut state = self.lock();
        let failures = &mut state.auth_failures;
        let entry = failures.entry(ip).or_insert((now, 0));
        if now >= entry.0 + AUTH_FAILURE_WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 += 1;
        // Bound the table: forget expired windows when it grows.
        if failures.len() > 10_000 {
            failures.retain(|_, (start, _)| now < *start + AUTH_FAILURE_WINDOW_MS);
        }
    }

    // --- reads ----------------------------------------------------------------

    /// Rule 9: the whole `system-presence` response to request `id`, the
    /// list in the store's pieces (nothing copied until it is sent).
    pub fn presence_response(&self, id: &str) -> Outgoing {
        let list = self.lock().presence.shared_list_json(now_ms());
        let mut response = Outgoing::from(Frame::ok_text_head(id));
        response.push_list(list);
        response.push_text("}");
        response
    }

    /// The `presence` event as the list is now.
    pub fn presence_event(&self) -> Outbound {
        let mut state = self.lock();
        let list = state.presence.shared_list_json(now_ms());
        broadcast::presence(list, state.presence_version)
    }

    /// `health`: liveness and counts.
    pub fn health(&self) -> Value {
        let state = self.lock();
        let now = now_ms();
        json!({
            "ok": true,
            "ts": now,
            "uptimeMs": self.uptime_ms(),
            "version": super::SERVER_VERSION,
            "connections": state.connections.len(),
            "nodes": state.nodes.len(),
            "presence": {
                "entries": state.presence.count(now),
                "stateVersion": state.presence_version,
            },
        })
    }

    /// The connected nodes, for `node.list`.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.lock().nodes.values().cloned().collect()
    }

    /// (presence rows, connections), for the systemd status line.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.presence.count(now_ms()), state.connections.len())
    }

    /// Takes and releases the state lock: the watchdog's proof that no
    /// handler holds it forever.
    pub fn probe_lock(&self) {
        drop(self.lock());
    }

    /// `GET /readyz`: whether a client would find a free connection slot
    /// (the probe asking holds one; at the limit the listener itself
    /// answers 503).
    pub fn readiness(&self) -> Result<(), String> {
        let connections = self.lock().connections.len();
        if connections + 1 >= self.config.settings.tuning.max_connections {
            return Err(format!(
                "no free connection slot ({connections} connected, max_connections {})",
                self.config.settings.tuning.max_connections
            ));
        }
        Ok(())
    }

    /// `GET /metrics`: the counters plus gauges read under the lock.
    pub fn render_metrics(&self) -> String {
        let state = self.lock();
        let now = now_ms();
        let nodes = state
            .connections
            .values()
            .filter(|c| c.role == Role::Node)
            .count();
        let snapshot = MetricsSnapshot {
            entries: state.presence.status_counts(now),
            nodes,
            operators: state.connections.len() - nodes,
            evictions: state.presence.evictions(),
            max_entries: state.presence.limits().max_entries,
            overshoot: state.presence.cap_overshoot(),
            devices: None,
        };
        drop(state);
        // The registry's own lock, never under the state lock.
        let snapshot = MetricsSnapshot {
            devices: self.registry.counts().ok().map(|c| {
                [
                    self.pending_count() as u64,
                    c.approved,
                    c.rejected,
                    c.revoked,
                ]
            }),
            ..snapshot
        };
        self.metrics
            .render(&snapshot, self.started_ms as f64 / 1000.0)
    }
}

impl State {
    /// Adds `conn_id` to its device's and its row's connections; past
    /// `bound`, the oldest of either is told it was replaced (and leaves
    /// both lists at once, so a flood never holds more than `bound`).
    /// Returns how many were told.
    fn bound_connections(
        &mut self,
        conn_id: &str,
        device_id: Option<&str>,
        own_key: &PresenceKey,
        bound: usize,
    ) -> u64 {
        let mut replaced = Vec::new();
        if let Some(device) = device_id {
            let conns = self.by_device.entry(device.to_string()).or_default();
            conns.push_back(conn_id.to_string());
            while conns.len() > bound {
                replaced.extend(conns.pop_front());
            }
        }
        let conns = self.by_key.entry(own_key.clone()).or_default();
        conns.push_back(conn_id.to_string());
        while conns.len() > bound {
            replaced.extend(conns.pop_front());
        }
        // One connection may be the oldest of both lists.
        replaced.sort();
        replaced.dedup();
        let mut told = 0;
        for old in replaced {
            if let Some(handle) = self.connections.get(&old) {
                let (device, key) = (handle.device_id.clone(), handle.own_key.clone());
                handle.replaced.notify_one();
                debug!(replaced = %old, by = %conn_id, "connection replaced by a newer one");
                self.forget_bound_of(&old, device.as_deref(), &key);
                told += 1;
            }
        }
        told
    }

    /// Removes a closed connection from the per-device and per-row lists.
    fn forget_bound(&mut self, conn_id: &str, handle: &ConnHandle) {
        self.forget_bound_of(conn_id, handle.device_id.as_deref(), &handle.own_key);
    }

    fn forget_bound_of(&mut self, conn_id: &str, device_id: Option<&str>, own_key: &PresenceKey) {
        if let Some(device) = device_id {
            if let Some(conns) = self.by_device.get_mut(device) {
                conns.retain(|c| c != conn_id);
                if conns.is_empty() {
                    self.by_device.remove(device);
                }
            }
        }
        if let Some(conns) = self.by_key.get_mut(own_key) {
            conns.retain(|c| c != conn_id);
            if conns.is_empty() {
                self.by_key.remove(own_key);
            }
        }
    }

    /// The presence list changed: wakes the connections that read it, and
    /// logs once when live rows first hold the list over its cap (live rows
    /// are never evicted) and once when it is back within it.
    fn presence_changed(&mut self) {
        self.presence_version += 1;
        self.presence_changes.send_replace(self.presence_version);
        let overshoot = self.presence.cap_overshoot();
        if (overshoot > 0) != self.over_cap {
            self.over_cap = overshoot > 0;
            let max_entries = self.presence.limits().max_entries;
            let rows = self.presence.len();
            if self.over_cap {
                warn!(
                    rows,
                    max_entries,
                    "presence list over presence_max_entries: live hosts are never evicted, \
                     so every connected host stays listed; rows without a connection are \
                     evicted first (see clawnode_presence_cap_overshoot)"
                );
            } else {
                info!(
                    rows,
                    max_entries, "presence list back within presence_max_entries"
                );
            }
        }
    }

    /// Queues `out` to every connection; drops the ones whose queue is full
    /// (a slow client is closed, never waited for).
    fn fan_out(&mut self, out: Outbound) {
        // One allocation shared by every queue: a queue slot is a pointer.
        let out = Arc::new(out);
        let mut overflowed = Vec::new();
        for (conn_id, handle) in &self.connections {
            if handle.tx.try_send(Arc::clone(&out)).is_err() {
                overflowed.push(conn_id.clone());
            }
        }
        for conn_id in overflowed {
            if let Some(handle) = self.connections.remove(&conn_id) {
                warn!(conn_id = %conn_id, "dropping slow client: send queue full");
                handle.kill.notify_one();
                self.forget_bound(&conn_id, &handle);
            }
        }
    }
}

fn node_record(reg: &Registration<'_>, now: u64) -> NodeRecord {
    let conn = &reg.conn;
    let client = conn.client;
    NodeRecord {
        node_id: conn.device_id.unwrap_or(conn.conn_id).to_string(),
        instance_id: client.instance_id.clone(),
        display_name: client.display_name.clone(),
        platform: client.platform.clone(),
        version: client.version.clone(),
        device_family: client.device_family.clone(),
        model_identifier: client.model_identifier.clone(),
        remote_ip: conn
            .remote_ip
            .filter(|ip| !crate::loopback::is_loopback(*ip)),
        caps: reg.caps.to_vec(),
        commands: reg.commands.to_vec(),
        connected_at_ms: now,
        host_stats: None,
    }
}

/// A new device token: 32 random bytes, base64url (43 characters, as
/// OpenClaw's).
pub(crate) fn new_device_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}
