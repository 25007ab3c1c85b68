//! Refusals and failures under attack, summed up for the log. Each
//! connection refused or failed before (or outside) a session is logged at
//! debug level where it happens; at info/warn the gateway writes at most
//! one line per reason per [`INTERVAL`]: the first event of a reason at
//! once (so a lone misconfigured client is seen without delay), then every
//! interval in which more came, one summary with their count and the
//! addresses they came from most. A flood costs the journal a line every
//! 10 s per reason, not one per connection; the metrics still count every
//! event.
//!
//! Admission decisions about devices (approved on first use, pending,
//! refused) are logged one by one by their caller — device id and address
//! on the line — while [`LogSummary::decision`] allows it: at most
//! [`DECISION_LINES`] per decision per interval. Past that they are counted,
//! and one line per interval says how many, from which addresses and which
//! devices most. A steady trickle of new devices is logged device by
//! device; a flood of 10,000 is a few dozen lines.
//!
//! Memory is bounded whatever the attacker does: at most [`MAX_REASONS`]
//! reasons (the rest are summed up as `other`), and per reason the
//! [`TRACKED_SOURCES`] heaviest addresses and devices (the Space-Saving
//! algorithm: exact while no more than that are seen in an interval, else
//! the heavy hitters are still found and their counts are upper bounds).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// At most one line per reason this often.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Source addresses counted per reason and interval.
pub const TRACKED_SOURCES: usize = 16;
/// Distinct reasons summed up at once; more fall under `other`.
pub const MAX_REASONS: usize = 64;
/// Addresses (and devices) named in a line.
const SHOWN_SOURCES: usize = 3;
/// Admission decisions of one kind logged one by one per interval; the
/// rest are summed up.
pub const DECISION_LINES: u32 = 10;

/// What went wrong, which sets the line's message and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Refused with HTTP 503 before any handshake work (admission caps).
    Refused,
    /// The HTTP request head was refused with an error status, or did not
    /// come in time. (A peer that closes without a request, or fails its
    /// TLS handshake — port scanners, TCP health checks — stays at debug.)
    BadRequest,
    /// The WebSocket handshake ended without a session: refused `connect`
    /// (wrong token, rate limited, invalid), timeout, peer gone.
    Handshake,
    /// A connected client broke the protocol and was closed.
    Protocol,
    /// Admission decisions about devices past [`DECISION_LINES`] an
    /// interval (the reason is the decision: [`Decision::as_str`]).
    Admission,
}

/// An admission decision about a device that proved its key, as its log
/// line and summary name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// A new device approved by the admission policy.
    FirstUse,
    /// A new device waiting for an operator (a new pending request).
    Pending,
    /// A new device refused: too many requests wait.
    QueueFull,
    /// A device an operator rejected, refused.
    Rejected,
    /// A device an operator revoked, refused.
    Revoked,
    /// An approved device's new instance id pinned to it (not an admission
    /// decision, but as many as a client makes: bounded the same way).
    Pinned,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::FirstUse => "approved_on_first_use",
            Decision::Pending => "pending",
            Decision::QueueFull => "refused_queue_full",
            Decision::Rejected => "refused_rejected",
            Decision::Revoked => "refused_revoked",
            Decision::Pinned => "instance_pinned",
        }
    }
}

impl Kind {
    fn message(self) -> &'static str {
        match self {
            Kind::Refused => "refusing connections (HTTP 503)",
            Kind::BadRequest => "bad HTTP requests",
            Kind::Handshake => "handshakes rejected",
            Kind::Protocol => "connections closed for breaking the protocol",
            Kind::Admission => "admission decisions summed up",
        }
    }
}

/// One line to log: `count` events of `kind` for `reason` over the last
/// `secs` seconds (0: the first one, logged at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub kind: Kind,
    pub reason: Cow<'static, str>,
    pub count: u64,
    /// The heaviest sources, `addr ×n`, heaviest first.
    pub top: String,
    /// Events from addresses not named in `top`.
    pub others: u64,
    pub secs: u64,
    /// For [`Kind::Admission`]: the devices most decided about, `id ×n`.
    pub devices: String,
}

impl Summary {
    fn log(&self) {
        let (reason, count, top, others, interval_secs) = (
            self.reason.as_ref(),
            self.count,
            self.top.as_str(),
            self.others,
            self.secs,
        );
        let message = self.kind.message();
        match self.kind {
            Kind::Refused | Kind::Protocol => {
                warn!(reason, count, top, others, interval_secs, "{message}")
            }
            Kind::BadRequest => info!(reason, count, top, others, interval_secs, "{message}"),
            // The reason is the error code answered: the field every other
            // line about it has (`journalctl ERROR_CODE=...`).
            Kind::Handshake => {
                info!(
                    error_code = reason,
                    count, top, others, interval_secs, "{message}"
                )
            }
            // Device ids are the clients' (verified key fingerprints): the
            // log escapes them as every value.
            Kind::Admission => {
                let devices = self.devices.as_str();
                info!(
                    decision = reason,
                    count, top, devices, others, interval_secs, "{message}"
                )
            }
        }
    }
}

/// The summaries, shared by the listener and every handler.
#[derive(Debug, Default)]
pub struct LogSummary {
    windows: Mutex<HashMap<(Kind, Cow<'static, str>), Window>>,
}

/// One reason's current interval.
#[derive(Debug)]
struct Window {
    started: Instant,
    /// Events since the line that started the interval (not logged one
    /// by one).
    count: u64,
    sources: TopSources<IpAddr>,
    /// Decisions logged one by one in this interval ([`Kind::Admission`]).
    logged: u32,
    devices: TopSources<String>,
}

impl Window {
    fn new(started: Instant) -> Window {
        Window {
            started,
            count: 0,
            sources: TopSources::default(),
            logged: 0,
            devices: TopSources::default(),
        }
    }
}

impl LogSummary {
    /// One event from `source`: logs the first line of a quiet reason at
    /// once, else counts it for the interval's summary.
    pub fn record(&self, kind: Kind, reason: impl Into<Cow<'static, str>>, source: IpAddr) {
        if let Some(first) = self.count(kind, reason.into(), source, Instant::now()) {
            first.log();
        }
    }

    /// An admission decision about `device_id` from `source`: `true` when
    /// the caller logs it on a line of its own (device id, address) — fewer
    /// than [`DECISION_LINES`] of this decision in the interval — else it
    /// is counted for the interval's summary.
    pub fn decision(&self, decision: Decision, device_id: &str, source: IpAddr) -> bool {
        self.decide(decision, device_id, source, Instant::now())
    }

    fn decide(&self, decision: Decision, device_id: &str, source: IpAddr, now: Instant) -> bool {
        let mut windows = self.lock();
        let key = (Kind::Admission, Cow::Borrowed(decision.as_str()));
        // A handful of decisions: they never crowd out other reasons.
        let window = windows.entry(key).or_insert_with(|| Window::new(now));
        if window.logged < DECISION_LINES {
            window.logged += 1;
            return true;
        }
        window.count += 1;
        window.sources.add(source);
        window.devices.add_with(device_id, str::to_string);
        false
    }

    /// Logs the summaries of the intervals that ended (called every second
    /// or so by the listener).
    pub fn flush(&self) {
        for summary in self.due(Instant::now(), false) {
            summary.log();
        }
    }

    /// Logs every pending count (on shutdown).
    pub fn flush_all(&self) {
        for summary in self.due(Instant::now(), true) {
            summary.log();
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(Kind, Cow<'static, str>), Window>> {
        // Counters updated in one step each; a poisoned lock holds no
        // half-made change.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(
        &self,
        kind: Kind,
        reason: Cow<'static, str>,
        source: IpAddr,
        now: Instant,
    ) -> Option<Summary> {
        let mut windows = self.lock();
        let mut key = (kind, reason);
        if windows.len() >= MAX_REASONS && !windows.contains_key(&key) {
            key.1 = Cow::Borrowed("other");
        }
        if let Some(window) = windows.get_mut(&key) {
            window.count += 1;
            window.sources.add(source);
            return None;
        }
        windows.insert(key.clone(), Window::new(now));
        Some(Summary {
            kind,
            reason: key.1,
            count: 1,
            top: format!("{source} ×1"),
            others: 0,
            secs: 0,
            devices: String::new(),
        })
    }

    /// The summaries of intervals that ended by `now` (every pending one
    /// with `all`). A reason with nothing new in its interval goes quiet:
    /// its next event is logged at once again.
    fn due(&self, now: Instant, all: bool) -> Vec<Summary> {
        let mut due = Vec::new();
        self.lock().retain(|(kind, reason), window| {
            let elapsed = now.saturating_duration_since(window.started);
            if !all && elapsed < INTERVAL {
                return true;
            }
            if window.count == 0 {
                return false;
            }
            let (top, named) = window.sources.describe(SHOWN_SOURCES);
            let (devices, _) = window.devices.describe(SHOWN_SOURCES);
            due.push(Summary {
                kind: *kind,
                reason: reason.clone(),
                count: window.count,
                top,
                others: window.count.saturating_sub(named),
                secs: elapsed.as_secs(),
                devices,
            });
            // Still busy: the next interval's decisions are summed up from
            // the start (one line each interval while a flood lasts).
            *window = Window::new(now);
            window.logged = DECISION_LINES;
            true
        });
        due.sort_by(|a, b| (a.kind as u8, &a.reason).cmp(&(b.kind as u8, &b.reason)));
        due
    }
}

/// The heaviest sources (addresses, devices) of an interval, in bounded
/// memory (Space-Saving: a new one when the table is full takes the place
/// of the lightest, inheriting its count).
#[derive(Debug)]
struct TopSources<K> {
    counts: Vec<(K, u64)>,
}

impl<K> Default for TopSources<K> {
    fn default() -> Self {
        TopSources { counts: Vec::new() }
    }
}

impl TopSources<IpAddr> {
    fn add(&mut self, source: IpAddr) {
        self.add_with(&source, |s| *s);
    }
}

impl<K: Ord + std::fmt::Display> TopSources<K> {
    /// Counts `source`, made into a key (`own`) only when it is new.
    fn add_with<Q>(&mut self, source: &Q, own: impl FnOnce(&Q) -> K)
    where
        K: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        if let Some((_, n)) = self.counts.iter_mut().find(|(a, _)| a.borrow() == source) {
            *n += 1;
        } else if self.counts.len() < TRACKED_SOURCES {
            self.counts.push((own(source), 1));
        } else if let Some(lightest) = self.counts.iter_mut().min_by_key(|(_, n)| *n) {
            *lightest = (own(source), lightest.1 + 1);
        }
    }

    /// `addr ×n, ...` for the `shown` heaviest, and the events they hold.
    fn describe(&mut self, shown: usize) -> (String, u64) {
        self.counts
            .sort_by(|(a, x), (b, y)| y.cmp(x).then_with(|| a.cmp(b)));
        let mut text = String::new();
        let mut named = 0;
        for (addr, n) in self.counts.iter().take(shown) {
            if !text.is_empty() {
                text.push_str(", ");
            }
            let _ = write!(text, "{addr} ×{n}");
            named += n;
        }
        (text, named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_event_is_logged_at_once_the_rest_once_an_interval() {
        let log = LogSummary::default();
        let t0 = Instant::now();
        let first = log
            .count(Kind::Refused, "per_ip_limit".into(), ip("127.0.0.2"), t0)
            .expect("the first is logged at once");
        assert_eq!((first.count, first.top.as_str()), (1, "127.0.0.2 ×1"));
        for i in 0..4_999u32 {
            let from = if i % 100 == 0 {
                "127.0.0.9"
            } else {
                "127.0.0.2"
            };
            let at = t0 + Duration::from_millis(u64::from(i));
            assert_eq!(
                log.count(Kind::Refused, "per_ip_limit".into(), ip(from), at),
                None
            );
        }
        assert!(log.due(t0 + Duration::from_secs(9), false).is_empty());
        let due = log.due(t0 + INTERVAL, false);
        assert_eq!(due.len(), 1, "{due:?}");
        let s = &due[0];
        assert_eq!(s.count, 4_999);
        assert_eq!(s.top, "127.0.0.2 ×4949, 127.0.0.9 ×50");
        assert_eq!((s.others, s.secs), (0, 10));
        // A quiet interval: nothing to say, and the reason goes quiet.
        assert!(log.due(t0 + 2 * INTERVAL, false).is_empty());
        assert!(log
            .count(
                Kind::Refused,
                "per_ip_limit".into(),
                ip("127.0.0.2"),
                t0 + 2 * INTERVAL
            )
            .is_some());
    }

    #[test]
    fn reasons_and_kinds_are_summed_apart_and_flushed_on_shutdown() {
        let log = LogSummary::default();
        let t0 = Instant::now();
        for code in ["AUTH_TOKEN_MISMATCH", "AUTH_RATE_LIMITED"] {
            for _ in 0..3 {
                log.count(Kind::Handshake, code.into(), ip("127.0.0.3"), t0);
            }
        }
        log.count(Kind::Refused, "AUTH_RATE_LIMITED".into(), ip("::1"), t0);
        let all = log.due(t0, true);
        let seen: Vec<_> = all
            .iter()
            .map(|s| (s.kind, s.reason.as_ref(), s.count))
            .collect();
        assert_eq!(
            seen,
            [
                (Kind::Handshake, "AUTH_RATE_LIMITED", 2),
                (Kind::Handshake, "AUTH_TOKEN_MISMATCH", 2)
            ]
        );
    }

    #[test]
    fn memory_is_bounded_and_the_heavy_hitter_still_found() {
        let log = LogSummary::default();
        let t0 = Instant::now();
        // 100,000 events from 50,000 addresses, one of them heavy.
        for i in 0..100_000u32 {
            let from = if i % 2 == 0 {
                ip("10.9.9.9")
            } else {
                IpAddr::from([10, 0, (i >> 8) as u8, i as u8])
            };
            log.count(Kind::Handshake, "AUTH_RATE_LIMITED".into(), from, t0);
        }
        // Reasons beyond the cap share one line.
        for i in 0..1_000 {
            log.count(
                Kind::BadRequest,
                format!("HTTP {i}").into(),
                ip("10.1.1.1"),
                t0,
            );
        }
        {
            let windows = log.lock();
            assert!(windows.len() <= MAX_REASONS + 1);
            assert!(windows
                .values()
                .all(|w| w.sources.counts.len() <= TRACKED_SOURCES));
        }
        let all = log.due(t0 + INTERVAL, false);
        let heavy = all
            .iter()
            .find(|s| s.reason == "AUTH_RATE_LIMITED")
            .expect("the flood's line");
        assert_eq!(heavy.count, 99_999);
        assert!(heavy.top.starts_with("10.9.9.9 ×"), "{heavy:?}");
        let other = all.iter().find(|s| s.reason == "other").expect("other");
        assert_eq!(other.count, 1_000 - MAX_REASONS as u64);
    }

    #[test]
    fn decisions_are_logged_one_by_one_up_to_a_limit_then_summed_up() {
        let log = LogSummary::default();
        let t0 = Instant::now();
        let device = |i: u32| format!("{i:064x}");
        // A flood of 10,000 new devices from two addresses.
        let mut one_by_one = 0;
        for i in 0..10_000u32 {
            let from = if i % 10 == 0 { "10.0.0.2" } else { "10.0.0.1" };
            let at = t0 + Duration::from_micros(u64::from(i));
            if log.decide(Decision::Pending, &device(i), ip(from), at) {
                one_by_one += 1;
            }
        }
        assert_eq!(one_by_one, DECISION_LINES);
        // Other decisions have their own allowance.
        assert!(log.decide(Decision::Revoked, &device(1), ip("10.0.0.3"), t0));
        let due = log.due(t0 + INTERVAL, false);
        assert_eq!(due.len(), 1, "{due:?}");
        let s = &due[0];
        assert_eq!((s.kind, s.reason.as_ref()), (Kind::Admission, "pending"));
        assert_eq!(s.count, 10_000 - u64::from(DECISION_LINES));
        assert!(s.top.starts_with("10.0.0.1 ×"), "{s:?}");
        assert_eq!(s.devices.matches(" ×").count(), SHOWN_SOURCES, "{s:?}");
        // The flood goes on: the next interval is summed up from the start.
        assert!(!log.decide(Decision::Pending, &device(1), ip("10.0.0.1"), t0 + INTERVAL));
        let due = log.due(t0 + 2 * INTERVAL, false);
        assert_eq!(due.iter().map(|s| s.count).collect::<Vec<_>>(), [1]);
        // A quiet interval: one by one again.
        assert!(log.due(t0 + 3 * INTERVAL, false).is_empty());
        assert!(log.decide(
            Decision::Pending,
            &device(2),
            ip("10.0.0.1"),
            t0 + 3 * INTERVAL
        ));
        // Bounded: a handful of windows, 16 addresses and devices each.
        let windows = log.lock();
        assert!(windows.len() <= 2, "{windows:?}");
        assert!(windows
            .values()
            .all(|w| w.devices.counts.len() <= TRACKED_SOURCES));
    }
}
