//! The gateway's Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Counters are bumped where things happen (handshakes, auth failures,
//! beacons, refusals); gauges and the store's eviction counts are read from
//! the state when scraped, so nothing on the hot paths keeps them up to date.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::presence::PresenceStatus;
use crate::protocol::{ErrorDetailCode, Role};

type Label = [(&'static str, &'static str); 1];

/// How a connection's handshake ended (`clawnode_handshakes_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    Ok,
    /// Token or device signature refused.
    AuthFailed,
    /// Any other refusal: protocol, invalid connect, pinned instance id.
    Rejected,
    Timeout,
    /// The peer left (or the gateway stopped) before `connect`.
    Closed,
}

impl HandshakeResult {
    const ALL: [HandshakeResult; 5] = [
        HandshakeResult::Ok,
        HandshakeResult::AuthFailed,
        HandshakeResult::Rejected,
        HandshakeResult::Timeout,
        HandshakeResult::Closed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::AuthFailed => "auth_failed",
            HandshakeResult::Rejected => "rejected",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::Closed => "closed",
        }
    }
}

/// What the scrape reads from the state, under its lock.
pub struct Snapshot {
    /// Active, Idle, Stale, Left (see [`PresenceStatus`]).
    pub entries: [usize; 4],
    /// `presence_max_entries`, and how many live rows the list holds
    /// beyond it (the cap never evicts a live row).
    pub max_entries: usize,
    pub overshoot: usize,
    pub nodes: usize,
    pub operators: usize,
    pub evictions: crate::presence::Evictions,
    /// Devices pending, approved, rejected, revoked (`None`: the registry
    /// could not be read).
    pub devices: Option<[u64; 4]>,
}

/// The `decision` labels of `clawnode_admission_decisions_total`.
pub const ADMISSION_DECISIONS: [&str; 6] = [
    "pending",
    "queue_full",
    "rejected",
    "revoked",
    "approved",
    "removed",
];

/// The counters, bumped by the handler and listener.
pub struct Metrics {
    handshakes: Family<Label, Counter>,
    auth_failures: Family<Label, Counter>,
    beacons: Counter,
    refused: Family<Label, Counter>,
    replaced: Counter,
    admissions: Family<Label, Counter>,
}

impl Default for Metrics {
    /// Every known series starts at 0, so a rate is defined from the first
    /// scrape and dashboards show 0 rather than "no data".
    fn default() -> Self {
        let metrics = Metrics {
            handshakes: Family::default(),
            auth_failures: Family::default(),
            beacons: Counter::default(),
            refused: Family::default(),
            replaced: Counter::default(),
            admissions: Family::default(),
        };
        for decision in ADMISSION_DECISIONS {
            metrics
                .admissions
                .get_or_create(&[("decision", decision)])
                .inc_by(0);
        }
        for result in HandshakeResult::ALL {
            metrics
                .handshakes
                .get_or_create(&[("result", result.as_str())])
                .inc_by(0);
        }
        for code in ErrorDetailCode::ALL
            .into_iter()
            .filter(|c| c.is_auth_failure())
        {
            metrics
                .auth_failures
                .get_or_create(&[("code", code.as_str())])
                .inc_by(0);
        }
        for reason in [
            "connection_limit",
            "handshake_limit",
            "per_ip_limit",
            "foreign_host",
            "foreign_origin",
        ] {
            metrics
                .refused
                .get_or_create(&[("reason", reason)])
                .inc_by(0);
        }
        metrics
    }
}

impl Metrics {
    pub fn handshake(&self, result: HandshakeResult) {
        self.handshakes
            .get_or_create(&[("result", result.as_str())])
            .inc();
    }

    /// An auth refusal, by its error detail code (`AUTH_TOKEN_MISMATCH`, ...).
    pub fn auth_failure(&self, code: ErrorDetailCode) {
        self.auth_failures
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }

    pub fn beacon(&self) {
        self.beacons.inc();
    }

    /// Connections closed because a newer one of the same device or row
    /// went past `max_connections_per_device`.
    pub fn replaced(&self, n: u64) {
        self.replaced.inc_by(n);
    }

    /// An admission decision other than a known device's plain approval:
    /// one of [`ADMISSION_DECISIONS`].
    pub fn admission(&self, decision: &'static str) {
        self.admissions
            .get_or_create(&[("decision", decision)])
            .inc();
    }

    /// A connection refused with HTTP 503 (`connection_limit`, ...), or a
    /// request refused for its `Host` (421, `foreign_host`) or an upgrade
    /// for its `Origin` (403, `foreign_origin`).
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// The whole exposition: these counters plus `snapshot`'s gauges.
    pub fn render(&self, snapshot: &Snapshot, start_time_secs: f64) -> String {
        let mut registry = Registry::with_prefix("clawnode");
        registry.register(
            "build",
            "The running clawnode's version",
            Info::new(vec![("version", crate::VERSION)]),
        );
        let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start.set(start_time_secs);
        registry.register(
            "start_time_seconds",
            "When the gateway started, in seconds since the Unix epoch",
            start,
        );
        let entries = Family::<Label, Gauge>::default();
        for status in PresenceStatus::ALL {
            entries
                .get_or_create(&[("status", status_label(status))])
                .set(snapshot.entries[status as usize] as i64);
        }
        registry.register(
            "presence_entries",
            "Presence rows by status (left: the client disconnected; else by the age of the last update: active <= 90 s, idle <= 180 s, stale older)",
            entries,
        );
        for (name, help, value) in [
            (
                "presence_max_entries",
                "The presence cap (presence_max_entries): rows without a live connection beyond it are evicted",
                snapshot.max_entries,
            ),
            (
                "presence_cap_overshoot",
                "Presence rows beyond presence_max_entries: rows of live connections, which are never evicted",
                snapshot.overshoot,
            ),
        ] {
            let gauge: Gauge = Gauge::default();
            gauge.set(value as i64);
            registry.register(name, help, gauge);
        }
        let connections = Family::<Label, Gauge>::default();
        for (role, n) in [
            (Role::Node, snapshot.nodes),
            (Role::Operator, snapshot.operators),
        ] {
            connections
                .get_or_create(&[("role", role.as_str())])
                .set(n as i64);
        }
        registry.register("connections", "Connected clients by role", connections);
        registry.register(
            "handshakes",
            "Handshakes by result",
            self.handshakes.clone(),
        );
        registry.register(
            "auth_failures",
            "Refused credentials by error code",
            self.auth_failures.clone(),
        );
        registry.register(
            "beacons",
            "system-event beacons received",
            self.beacons.clone(),
        );
        let evictions = Family::<Label, Counter>::default();
        for (reason, n) in [
            ("ttl", snapshot.evictions.ttl),
            ("max", snapshot.evictions.max),
        ] {
            evictions.get_or_create(&[("reason", reason)]).inc_by(n);
        }
        registry.register(
            "presence_evictions",
            "Presence rows dropped: ttl (not updated within the TTL) or max (over the entry cap; never a live row)",
            evictions,
        );
        registry.register(
            "connections_refused",
            "Connections refused by reason: HTTP 503 for the limits, 421 for a foreign Host, 403 for a foreign Origin",
            self.refused.clone(),
        );
        registry.register(
            "connections_replaced",
            "Connections closed because a newer one of the same device or presence row went past max_connections_per_device",
            self.replaced.clone(),
        );
        if let Some(devices) = snapshot.devices {
            let family = Family::<Label, Gauge>::default();
            for (state, n) in ["pending", "approved", "rejected", "revoked"]
                .into_iter()
                .zip(devices)
            {
                family.get_or_create(&[("state", state)]).set(n as i64);
            }
            registry.register(
                "devices",
                "Devices by state: pending (waiting for approval, in memory), approved, rejected, revoked (in the device registry)",
                family,
            );
        }
        registry.register(
            "admission_decisions",
            "Device admission decisions: pending (refused, waiting for approval), queue_full (refused, not stored), rejected and revoked (refused), approved and removed (by an operator)",
            self.admissions.clone(),
        );
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

fn status_label(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Active => "active",
        PresenceStatus::Idle => "idle",
        PresenceStatus::Stale => "stale",
        PresenceStatus::Left => "left",
    }
}
