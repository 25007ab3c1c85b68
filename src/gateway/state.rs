//! The gateway's shared state: the presence store, the live connections and
//! the nodes' latest host stats, behind one lock so a change and the
//! broadcast it causes are consistent. Critical sections never await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, watch, Notify};

use super::broadcast::Outbound;
use super::metrics::{Metrics, Snapshot as MetricsSnapshot};
use super::pins::PinStore;
use super::GatewayConfig;
use crate::presence::PresenceStore;
use crate::protocol::{HostStats, Role};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the broadcaster needs to reach one connection.
pub struct ConnHandle {
    pub role: Role,
    pub tx: mpsc::Sender<Arc<Outbound>>,
    /// Notified when the connection must close because its queue overflowed.
    pub kill: Arc<Notify>,
}

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

/// Mutable state behind [`Shared::lock`].
pub struct State {
    pub presence: PresenceStore,
    pub presence_version: u64,
    /// The presence version, watched by every connection that reads
    /// presence (see [`State::presence_changed`]).
    pub presence_changes: watch::Sender<u64>,
    pub connections: HashMap<String, ConnHandle>,
    /// Keyed by connection id.
    pub nodes: HashMap<String, NodeRecord>,
    /// Failed auth attempts per remote address: (window start ms, count).
    pub auth_failures: HashMap<IpAddr, (u64, u32)>,
    /// Whether live rows alone hold the list over its cap, as last logged
    /// (see [`State::presence_changed`]).
    pub over_cap: bool,
}

/// State shared by the listener, every handler and the ticker.
pub struct Shared {
    pub config: GatewayConfig,
    pub started: Instant,
    /// When the gateway started, in ms since the Unix epoch.
    pub started_ms: u64,
    pub metrics: Metrics,
    /// Which device key owns which instance id (its own lock: never held
    /// with the state lock).
    pub pins: Arc<PinStore>,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(config: GatewayConfig, pins: PinStore) -> Shared {
        let presence = PresenceStore::new(config.self_entry.clone(), config.limits);
        Shared {
            config,
            started: Instant::now(),
            started_ms: now_ms(),
            metrics: Metrics::default(),
            pins: Arc::new(pins),
            state: Mutex::new(State {
                presence,
                presence_version: 1,
                presence_changes: watch::Sender::new(1),
                connections: HashMap::new(),
                nodes: HashMap::new(),
                auth_failures: HashMap::new(),
                over_cap: false,
            }),
        }
    }

    /// Locks the state. A handler that panicked while holding the lock
    /// cannot leave it half-updated in a way that matters more than losing
    /// the whole gateway, so a poisoned lock is recovered.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `GET /readyz`: whether a client would find a free connection slot
    /// (the probe asking holds one; at the limit the listener itself
    /// answers 503).
    pub fn readiness(&self) -> Result<(), String> {
        let connections = self.lock().connections.len();
        if connections + 1 >= self.config.max_connections {
            return Err(format!(
                "no free connection slot ({connections} connected, max_connections {})",
                self.config.max_connections
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
        };
        drop(state);
        self.metrics
            .render(&snapshot, self.started_ms as f64 / 1000.0)
    }
}

/// Auth rate limit: this many failures per window per remote address.
pub const AUTH_FAILURE_LIMIT: u32 = 20;
pub const AUTH_FAILURE_WINDOW_MS: u64 = 60_000;

impl State {
    /// If `ip` is rate limited now, the ms until it may retry.
    pub fn auth_retry_after(&mut self, ip: IpAddr, now: u64) -> Option<u64> {
        let (start, count) = *self.auth_failures.get(&ip)?;
        let end = start + AUTH_FAILURE_WINDOW_MS;
        if now >= end {
            self.auth_failures.remove(&ip);
            return None;
        }
        (count >= AUTH_FAILURE_LIMIT).then(|| end - now)
    }

    pub fn record_auth_failure(&mut self, ip: IpAddr, now: u64) {
        let entry = self.auth_failures.entry(ip).or_insert((now, 0));
        if now >= entry.0 + AUTH_FAILURE_WINDOW_MS {
            *entry = (now, 0);
        }
        entry.1 += 1;
        // Bound the table: forget expired windows when it grows.
        if self.auth_failures.len() > 10_000 {
            self.auth_failures
                .retain(|_, (start, _)| now < *start + AUTH_FAILURE_WINDOW_MS);
        }
    }
}
