//! Counters and latencies of a run, and its one-line JSON report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Default)]
pub struct Stats {
    handshakes_ok: AtomicU64,
    connected: AtomicUsize,
    peak_connected: AtomicUsize,
    beacons_sent: AtomicU64,
    beacons_failed: AtomicU64,
    stats_sent: AtomicU64,
    stats_failed: AtomicU64,
    presence_rows: AtomicUsize,
    /// Handshake latencies (µs).
    handshake_us: Mutex<Vec<u64>>,
    /// `system-presence` round trips (µs).
    presence_us: Mutex<Vec<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    storm: Mutex<Storm>,
}

#[derive(Default)]
struct Storm {
    /// When the first connection was lost.
    first_loss: Option<Instant>,
    /// When the last lost node was back.
    all_back: Option<Instant>,
    losses: u64,
    reconnects: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// p50/p90/p99/max of `samples` (µs), in `unit` (µs divided by `div`).
fn percentiles(samples: &mut [u64], div: f64) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        (samples[i] as f64 / div * 1000.0).round() / 1000.0
    };
    json!({ "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0), "n": samples.len() })
}

impl Stats {
    pub fn handshake(&self, took: Duration) {
        self.handshakes_ok.fetch_add(1, Relaxed);
        lock(&self.handshake_us).push(took.as_micros() as u64);
    }

    /// A node connected; `again`: after a loss (storm).
    pub fn connected(&self, again: bool) {
        let now = self.connected.fetch_add(1, Relaxed) + 1;
        self.peak_connected.fetch_max(now, Relaxed);
        if again {
            let mut storm = lock(&self.storm);
            storm.reconnects += 1;
        }
    }

    pub fn disconnected(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }

    /// A connection was lost and will be retried (storm).
    pub fn lost(&self) {
        let mut storm = lock(&self.storm);
        storm.losses += 1;
        storm.first_loss.get_or_insert_with(Instant::now);
        storm.all_back = None;
    }

    pub fn error(&self, kind: &str) {
        *lock(&self.errors).entry(kind.to_string()).or_default() += 1;
    }

    pub fn beacon_sent(&self) {
        self.beacons_sent.fetch_add(1, Relaxed);
    }

    pub fn beacon_failed(&self, kind: &str) {
        self.beacons_failed.fetch_add(1, Relaxed);
        self.error(&format!("beacon_{kind}"));
    }

    pub fn stats_sent(&self) {
        self.stats_sent.fetch_add(1, Relaxed);
    }

    pub fn stats_failed(&self, kind: &str) {
        self.stats_failed.fetch_add(1, Relaxed);
        self.error(&format!("stats_{kind}"));
    }

    pub fn presence_call(&self, took: Duration, rows: usize) {
        lock(&self.presence_us).push(took.as_micros() as u64);
        self.presence_rows.store(rows, Relaxed);
    }

    pub fn peak_connected(&self) -> usize {
        self.peak_connected.load(Relaxed)
    }

    /// Errors, not counting `refused`/`reset` while a storm's gateway was
    /// down (those are the storm).
    pub fn error_count(&self) -> u64 {
        let storm = lock(&self.storm).losses > 0;
        lock(&self.errors)
            .iter()
            .filter(|(k, _)| !(storm && (k.as_str() == "refused" || k.as_str() == "reset")))
            .map(|(_, n)| n)
            .sum()
    }

    /// Waits until `n` nodes are connected, or `limit`.
    pub async fn wait_connected(&self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.connected.load(Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Storm: waits for the first loss, then until all `n` are back, or
    /// `limit` after the loss.
    pub async fn wait_storm(&self, n: usize, limit: Duration) {
        loop {
            let first = lock(&self.storm).first_loss;
            match first {
                Some(_) if self.connected.load(Relaxed) >= n => {
                    lock(&self.storm).all_back = Some(Instant::now());
                    return;
                }
                Some(t) if t.elapsed() > limit => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub fn progress(&self) -> String {
        format!(
            "connected {} (peak {}), handshakes {}, beacons {}, errors {:?}",
            self.connected.load(Relaxed),
            self.peak_connected(),
            self.handshakes_ok.load(Relaxed),
            self.beacons_sent.load(Relaxed),
            lock(&self.errors)
        )
    }

    /// The one-line report.
    pub fn report(&self, args: &Value, elapsed: Duration, ramp: Option<Duration>) -> Value {
        let handshakes = self.handshakes_ok.load(Relaxed);
        let storm = lock(&self.storm);
        let storm_json = storm.first_loss.map(|first| {
            json!({
                "losses": storm.losses,
                "reconnects": storm.reconnects,
                "all_back_s": storm.all_back.map(|t| (t - first).as_secs_f64()),
            })
        });
        drop(storm);
        let mut report = json!({
            "args": args,
            "elapsed_s": elapsed.as_secs_f64(),
            "ramp_s": ramp.map(|r| r.as_secs_f64()),
            "peak_connected": self.peak_connected(),
            "handshakes_ok": handshakes,
            "handshakes_per_sec": handshakes as f64 / elapsed.as_secs_f64().max(1e-9),
            "handshake_latency_ms": percentiles(&mut lock(&self.handshake_us), 1000.0),
            "errors": *lock(&self.errors),
            "beacons_sent": self.beacons_sent.load(Relaxed),
            "beacons_failed": self.beacons_failed.load(Relaxed),
            "stats_sent": self.stats_sent.load(Relaxed),
            "stats_failed": self.stats_failed.load(Relaxed),
            "presence_latency_us": percentiles(&mut lock(&self.presence_us), 1.0),
            "presence_rows": self.presence_rows.load(Relaxed),
        });
        if let Some(storm) = storm_json {
            report["storm"] = storm;
        }
        report
    }
}
