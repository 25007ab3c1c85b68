//! Accepts connections, spawns one handler each, runs the ticker, and shuts
//! everything down in order: `shutdown` event, close 1012, wait for handlers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::admission::{Admission, Refusal, REFUSAL_RESPONSE};
use super::auth::canonical_ip;
use super::handler;
use super::log_summary::Kind;
use super::state::Shared;
use crate::config::GatewaySettings;
use crate::service::ServiceNotifier;

/// How long handlers get to say goodbye on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How often the systemd status line is refreshed (when it changed).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the log summaries of refusals and failures are looked at
/// (each is written once its 10 s interval is over).
const SUMMARY_CHECK: Duration = Duration::from_secs(1);

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
    let mut handlers = JoinSet::new();
    let ticker = tokio::spawn(tick_loop(shared.clone(), stop_rx.clone()));
    let pin_writer = tokio::spawn(shared.pin_writer(stop_rx.clone()));
    let mut watchdog = notifier.watchdog_timer();
    let mut status_timer = tokio::time::interval(STATUS_INTERVAL);
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut summary_timer = tokio::time::interval(SUMMARY_CHECK);
    summary_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // The ping proves this loop runs and the state lock is free.
            _ = watchdog.tick() => {
                shared.probe_lock();
                notifier.watchdog();
            }
            _ = summary_timer.tick() => shared.log_summary.flush(),
            _ = status_timer.tick(), if notifier.is_enabled() => {
                let status = status_line(&shared);
                if status != last_status {
                    notifier.status(&status);
                    last_status = status;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let source = canonical_ip(peer.ip());
                    let admitted = match limit.clone().try_acquire_owned() {
                        Err(_) => Err((None, "connection_limit")),
                        Ok(permit) => match admission.admit(source) {
                            Ok(ticket) => Ok((permit, ticket)),
                            Err(refusal) => Err((Some(refusal), refusal.metric_label())),
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
                        Err((refusal, label)) => {
                            // Best effort, never waits: the socket is new, so
                            // its send buffer has room for these few bytes.
                            let _ = stream.try_write(REFUSAL_RESPONSE);
                            shared.metrics.refused(label);
                            let why = refusal_reason(refusal, &shared.config.settings);
                            debug!(peer = %peer, reason = %why, pending_handshakes = admission.pending(), "refused (HTTP 503)");
                            shared.log_summary.record(Kind::Refused, why, source);
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
    shared.log_summary.flush_all();
    Ok(())
}

/// Why a connection was refused with 503, naming the setting that was
/// reached (`None`: `max_connections`).
fn refusal_reason(refusal: Option<Refusal>, settings: &GatewaySettings) -> String {
    let tuning = &settings.tuning;
    match refusal {
        None => format!(
            "connection limit reached (max_connections = {})",
            tuning.max_connections
        ),
        Some(refusal @ Refusal::PerIp) => format!(
            "{} (max_pending_handshakes_per_ip = {})",
            refusal.as_str(),
            tuning.max_pending_handshakes_per_ip
        ),
        Some(refusal @ Refusal::Total) => format!(
            "{} (max_pending_handshakes = {})",
            refusal.as_str(),
            tuning.max_pending_handshakes
        ),
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
