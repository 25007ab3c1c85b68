//! Accepts connections, spawns one handler each, runs the ticker, and shuts
//! everything down in order: `shutdown` event, close 1012, wait for handlers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::admission::{Admission, REFUSAL_RESPONSE};
use super::auth::canonical_ip;
use super::handler;
use super::state::Shared;
use crate::service::ServiceNotifier;

/// How long handlers get to say goodbye on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How often the systemd status line is refreshed (when it changed).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Refused connections are summed up in one log line at most this often,
/// so a flood does not become a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    notifier: ServiceNotifier,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(
        shared.config.settings.tuning.max_connections,
    ));
    let admission = Admission::new(shared.config.settings.admission());
    let mut refusals = RefusalLog::default();
    let mut handlers = JoinSet::new();
    let ticker = tokio::spawn(tick_loop(shared.clone(), stop_rx.clone()));
    let pin_writer = tokio::spawn(shared.pin_writer(stop_rx.clone()));
    let mut watchdog = notifier.watchdog_timer();
    let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // The ping proves this loop runs and the state lock is free.
            _ = watchdog.tick() => {
                shared.probe_lock();
                notifier.watchdog();
            }
            _ = status_timer.tick(), if notifier.is_enabled() => {
                let status = status_line(&shared);
                if status != last_status {
                    notifier.status(&status);
                    last_status = status;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = match limit.clone().try_acquire_owned() {
                        Err(_) => Err(("connection limit reached", "connection_limit")),
                        Ok(permit) => match admission.admit(canonical_ip(peer.ip())) {
                            Ok(ticket) => Ok((permit, ticket)),
                            Err(refusal) => Err((refusal.as_str(), refusal.metric_label())),
                        },
                    };
                    match admitted {
                        Ok((permit, ticket)) => {
                            let _ = stream.set_nodelay(true);
                            // A peer gone without a FIN (power loss, partition)
                            // stops acknowledging the pings the handler sends
                            // every tick: the kernel then fails the socket.
                            let _ = socket2::SockRef::from(&stream)
                                .set_tcp_user_timeout(Some(shared.config.settings.tuning.tick_interval * 2));
                            handlers.spawn(handler::run(stream, peer, shared.clone(), stop_rx.clone(), permit, ticket));
                        }
                        Err((why, label)) => {
                            // Best effort, never waits: the socket is new, so
                            // its send buffer has room for these few bytes.
                            let _ = stream.try_write(REFUSAL_RESPONSE);
                            shared.metrics.refused(label);
                            refusals.count(why, &shared, admission.pending());
                        }
                    }
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }

    info!(connections = handlers.len(), "gateway shutting down");
    shared.shutdown("gateway stopping");
    let _ = stop_tx.send(true);
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while handlers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = handlers.len(),
            "handlers did not finish in time; aborting them"
        );
        handlers.abort_all();
    }
    ticker.abort();
    let _ = pin_writer.await;
    Ok(())
}

/// Sums up refused connections for the log.
#[derive(Default)]
struct RefusalLog {
    since: Option<std::time::Instant>,
    counts: Vec<(&'static str, u64)>,
}

impl RefusalLog {
    fn count(&mut self, why: &'static str, shared: &Shared, pending: usize) {
        match self.counts.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((why, 1)),
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        let first = self.counts.len() == 1 && self.counts[0].1 == 1;
        if first || since.elapsed() >= REFUSAL_LOG_INTERVAL {
            let summary = self
                .counts
                .iter()
                .map(|(w, n)| format!("{n} × {w}"))
                .collect::<Vec<_>>()
                .join(", ");
            warn!(
                refused = %summary,
                pending_handshakes = pending,
                limits = ?shared.config.settings.admission(),
                max_connections = shared.config.settings.tuning.max_connections,
                "refusing connections (HTTP 503)"
            );
            self.counts.clear();
            self.since = Some(std::time::Instant::now());
        }
    }
}

/// `gateway: 143 entries, 140 connections`.
fn status_line(shared: &Shared) -> String {
    let (entries, connections) = shared.counts();
    format!(
        "gateway: {entries} {}, {connections} {}",
        if entries == 1 { "entry" } else { "entries" },
        if connections == 1 {
            "connection"
        } else {
            "connections"
        }
    )
}

/// Every tick: [`Shared::tick`] (connected rows fresh, expired ones gone,
/// `tick` sent).
async fn tick_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let period = shared.config.settings.tuning.tick_interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        shared.tick();
    }
}
