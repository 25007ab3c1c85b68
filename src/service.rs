//! Telling systemd how we are doing (`sd_notify`): `READY=1` once the agent
//! has its first hello-ok or the gateway listens, human `STATUS=` lines,
//! `WATCHDOG=1` pings from the main loops, and `STOPPING=1` on shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the
//! agent and gateway call these unconditionally.

use std::future::pending;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{Interval, MissedTickBehavior};

/// A handle to the service manager. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ServiceNotifier {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Half of `WATCHDOG_USEC`, when systemd watches us.
    watchdog_period: Option<Duration>,
    /// A failed send is logged once, not on every ping.
    failure_logged: AtomicBool,
    /// `STOPPING=1` is sent once, whoever notices the shutdown first.
    stopping_sent: AtomicBool,
}

impl ServiceNotifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    pub fn from_env() -> ServiceNotifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none_or(|s| s.is_empty()) {
            return ServiceNotifier::disabled();
        }
        ServiceNotifier {
            inner: Some(Arc::new(Inner {
                watchdog_period: sd_notify::watchdog_enabled()
                    .filter(|d| !d.is_zero())
                    .map(|d| d / 2),
                failure_logged: AtomicBool::new(false),
                stopping_sent: AtomicBool::new(false),
            })),
        }
    }

    /// A notifier that does nothing (not under systemd; tests).
    pub fn disabled() -> ServiceNotifier {
        ServiceNotifier { inner: None }
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// `READY=1` with a status line. Repeating it is harmless.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1`, once: later calls do nothing.
    pub fn stopping(&self) {
        let Some(inner) = &self.inner else { return };
        if inner.stopping_sent.swap(true, Ordering::Relaxed) {
            return;
        }
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `WATCHDOG=1`: the caller's loop is alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Half of systemd's watchdog timeout, when it watches us.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|i| i.watchdog_period)
    }

    /// A timer for a main loop's `select!`: fires every
    /// [`Self::watchdog_period`], never when there is no watchdog.
    pub fn watchdog_timer(&self) -> WatchdogTimer {
        WatchdogTimer(self.watchdog_period().map(|period| {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        }))
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(inner) = &self.inner else { return };
        if let Err(e) = sd_notify::notify(states) {
            if !inner.failure_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
            }
        }
    }
}

/// See [`ServiceNotifier::watchdog_timer`].
#[derive(Debug)]
pub struct WatchdogTimer(Option<Interval>);

impl WatchdogTimer {
    /// Resolves at the next ping time; pends forever without a watchdog.
    pub async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn disabled_notifier_is_silent_and_its_timer_never_fires() {
        let n = ServiceNotifier::disabled();
        assert!(!n.is_enabled());
        n.ready("x");
        n.status("x");
        n.watchdog();
        n.stopping();
        assert_eq!(n.watchdog_period(), None);
        let mut timer = n.watchdog_timer();
        let fired = tokio::time::timeout(Duration::from_millis(20), timer.tick()).await;
        assert!(fired.is_err());
    }
}
