//! The node agent: a loop of sessions. Each turn reads the join token and
//! the stored device token ([`run`] says which it presents), gathers host
//! facts, runs one session until it ends, then waits out a backoff chosen
//! from how it ended — forever, until shutdown.

pub mod backoff;
pub mod device_token;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::TokenSource;
use crate::host::{HostFacts, HostStatsSampler};
use crate::identity::DeviceIdentity;
use crate::protocol::{ErrorCode, ErrorDetailCode, ErrorShape, Role};
use crate::service::ServiceNotifier;
use crate::shutdown::Shutdown;
use backoff::Backoff;
use device_token::DeviceTokenStore;
use session::{Credentials, SessionEnd, SessionInputs, SessionMemory};

/// A connection that stayed up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What the agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub url: String,
    /// Certificate pin and plaintext policy for `url`.
    pub tls: crate::tls::ClientTls,
    pub token: TokenSource,
    pub display_name: Option<String>,
    /// Beacon and stats intervals, the cap of the reconnect backoff.
    pub tuning: crate::config::AgentTuning,
    /// Disk statistics are reported for the filesystem holding this path.
    pub disk_path: PathBuf,
    /// Where the device token issued by the gateway is kept.
    pub state_dir: PathBuf,
}

/// What to do after a session ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Retry {
    pub delay: Duration,
    pub reason: String,
}

/// Chooses the wait after a rejected `connect`: credentials and pairing
/// problems wait the maximum (a fix needs an operator, not a fast retry),
/// rate limits wait as told, anything else backs off normally.
pub fn retry_after_rejection(
    error: &ErrorShape,
    backoff: &mut Backoff,
    memory: &mut SessionMemory,
    device_id: &str,
) -> Retry {
    let hinted = error.retry_after_ms.map(Duration::from_millis);
    let reason = error.to_string();
    let detail = error.detail_code();
    let error_code = error.detail_code_str().unwrap_or(error.code.as_str());
    let pairing = detail == Some(ErrorDetailCode::PairingRequired)
        || (error.code == ErrorCode::NotPaired
            && detail != Some(ErrorDetailCode::DeviceIdentityRequired));
    let delay = if matches!(
        detail,
        Some(ErrorDetailCode::AuthTokenMissing | ErrorDetailCode::AuthTokenMismatch)
    ) {
        error!(error = %error, error_code, "the gateway rejected our token: fix the token file or environment variable; retrying every {}s", backoff.max().as_secs());
        backoff.max()
    } else if detail == Some(ErrorDetailCode::AuthDeviceTokenMismatch) {
        error!(error = %error, error_code, device_id, "the gateway refused our device token: an operator rotated or revoked it, or removed this device; it is dropped. To be issued a new one, give this host the join token (its token file) for one connect; retrying every {}s", backoff.max().as_secs());
        backoff.max()
    } else if detail == Some(ErrorDetailCode::InstanceIdPinned) {
        error!(error = %error, error_code, device_id, "the gateway knows our instance id with another device key (a restored or copied state directory?); if this host was re-imaged, run `clawnode forget <instanceId>` on the gateway host; retrying every {}s", backoff.max().as_secs());
        backoff.max()
    } else if pairing {
        let delay = hinted.unwrap_or(backoff.max());
        // A string field: escaped by every log format.
        let request_id = error
            .details
            .as_ref()
            .and_then(|d| d.get("requestId"))
            .and_then(|r| r.as_str())
            .unwrap_or("-");
        if !memory.pairing_logged {
            memory.pairing_logged = true;
            if matches!(
                detail,
                Some(ErrorDetailCode::DeviceRevoked | ErrorDetailCode::DeviceRejected)
            ) {
                warn!(error = %error, error_code, device_id, "the gateway's operator refused this device: it is let in again once approved (`clawnode devices approve <deviceId>` on the gateway host); retrying every {}s", delay.as_secs().max(1));
            } else {
                warn!(error = %error, error_code, device_id, request_id, "this device is waiting for pairing approval: on the gateway host run `clawnode devices approve <requestId>` (an OpenClaw gateway: `openclaw devices list`, then `openclaw devices approve <requestId>`); retrying every {}s", delay.as_secs().max(1));
            }
        } else {
            debug!(error = %error, "still waiting for pairing approval");
        }
        hinted.unwrap_or(backoff.max())
    } else if detail == Some(ErrorDetailCode::AuthRateLimited) {
        warn!(error = %error, error_code, "rate limited by the gateway");
        hinted.unwrap_or(backoff.max())
    } else {
        error!(error = %error, error_code, "the gateway rejected the connection");
        backoff.next_delay().max(hinted.unwrap_or_default())
    };
    Retry {
        delay: delay.max(Duration::from_secs(1)),
        reason,
    }
}

/// Runs the agent until `shutdown`. `notifier` hears readiness (first
/// hello-ok), status lines and watchdog pings from this loop.
///
/// **Credentials.** Each attempt reads the join token again (a fixed file
/// takes effect at the next retry) and presents the device token the
/// gateway issued, if one is stored for this gateway, device and role:
///
/// - join token and device token: both (`auth.token`, `auth.deviceToken`);
///   the gateway lets the agent in with either, keeps a still-valid device
///   token and issues a new one otherwise. (OpenClaw's own clients send the
///   stored device token along with a shared token only for one retry
///   after `AUTH_TOKEN_MISMATCH`, on loopback or a pinned `wss://`; sending
///   it every time makes that retry needless and tells a clawnode gateway
///   not to replace a token the agent holds. An endpoint that gets it gets
///   the join token too, which is worth more.)
/// - no join token (no token file configured, or the file is missing or
///   empty: a fleet that stopped distributing it after enrolment), a device
///   token stored: the device token alone (said once, at info).
/// - neither: nothing to connect with; said at error, retried slowly.
///
/// A device token the gateway refuses (`AUTH_DEVICE_TOKEN_MISMATCH`:
/// rotated, revoked, or the device removed) is dropped from the store and
/// the refusal logged at error with what to do; the agent retries at the
/// backoff's maximum, never in a tight loop.
pub async fn run(
    config: AgentConfig,
    identity: DeviceIdentity,
    notifier: ServiceNotifier,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut watchdog = notifier.watchdog_timer();
    let mut backoff = Backoff::reconnect(config.tuning.reconnect_max);
    let mut memory = SessionMemory::default();
    let mut sampler = HostStatsSampler::new(config.disk_path.clone());
    let device_tokens = DeviceTokenStore::new(&config.state_dir);
    let role = Role::Node.as_str();
    let stored_token = || device_tokens.get(&config.url, identity.device_id(), role);
    info!(
        gateway_url = %config.url,
        instance_id = identity.instance_id(),
        device_id = identity.device_id(),
        token = %config.token.describe(),
        device_token = if stored_token().is_some() { "stored" } else { "none yet" },
        "agent starting"
    );
    notifier.status(&format!("connecting to {}", config.url));
    // Whether "no join token; using the device token" was said already.
    let mut without_join_token_logged = false;

    while !shutdown.is_triggered() {
        let stored = stored_token();
        let shared = match config.token.read() {
            Ok(shared) => Ok(shared),
            Err(e) if stored.is_some() => {
                if !without_join_token_logged {
                    without_join_token_logged = true;
                    info!(reason = %format!("{e:#}"), "no join token; connecting with the device token this gateway issued");
                }
                Ok(None)
            }
            Err(e) => Err(e),
        };
        let retry = match shared {
            Err(e) => {
                error!("{e:#}; and no device token is stored for {}: this host needs the join token once to enrol; retrying in {}s", config.url, backoff.max().as_secs());
                Retry {
                    delay: backoff.max(),
                    reason: format!("{e:#}"),
                }
            }
            Ok(shared) => {
                if shared.is_some() {
                    without_join_token_logged = false;
                }
                let presented_device_token = stored.is_some();
                let credentials = Credentials {
                    device_token: stored,
                    shared,
                };
                let facts = tokio::task::spawn_blocking(HostFacts::collect).await?;
                let started = Instant::now();
                let end = session::run(
                    SessionInputs {
                        config: &config,
                        identity: &identity,
                        facts: &facts,
                        credentials: &credentials,
                        device_tokens: &device_tokens,
                        sampler: &mut sampler,
                        memory: &mut memory,
                        notifier: &notifier,
                        watchdog: &mut watchdog,
                    },
                    &mut shutdown,
                )
                .await;
                match end {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Rejected(e) => {
                        if presented_device_token
                            && e.detail_code() == Some(ErrorDetailCode::AuthDeviceTokenMismatch)
                        {
                            device_tokens.forget(&config.url, identity.device_id(), role);
                        }
                        retry_after_rejection(&e, &mut backoff, &mut memory, identity.device_id())
                    }
                    SessionEnd::Lost {
                        reason,
                        after_hello,
                    } => {
                        if after_hello {
                            memory.pairing_logged = false;
                            if started.elapsed() >= STABLE_AFTER {
                                backoff.reset();
                            }
                        }
                        Retry {
                            delay: backoff.next_delay(),
                            reason,
                        }
                    }
                }
            }
        };
        info!(
            "reconnecting in {:.1}s: {}",
            retry.delay.as_secs_f64(),
            retry.reason
        );
        notifier.status(&format!(
            "reconnecting in {}s: {}",
            retry.delay.as_secs_f64().round() as u64,
            retry.reason
        ));
        let wake = Instant::now() + retry.delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                _ = watchdog.tick() => notifier.watchdog(),
                _ = shutdown.wait() => break,
            }
        }
    }
    info!("agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30), || 0.5)
    }

    /// What `f` returns, and what it logs at any level, one line per event
    /// (`LEVEL target: message fields`).
    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .without_time()
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    /// The level of each logged line.
    fn levels(log: &str) -> Vec<&str> {
        log.lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect()
    }

    #[test]
    fn pairing_is_told_once() {
        let e = ErrorShape::new(ErrorCode::NotPaired, "pairing required")
            .with_detail(ErrorDetailCode::PairingRequired);
        let mut memory = SessionMemory::default();
        let mut backoff = fixed();
        let (first, told) = logs_of(|| retry_after_rejection(&e, &mut backoff, &mut memory, "d"));
        assert!(memory.pairing_logged);
        assert_eq!(levels(&told), ["WARN"], "{told}");
        assert!(
            told.contains("waiting for pairing approval")
                && told.contains("openclaw devices approve"),
            "{told}"
        );
        // The next rejection is quiet: a debug line, no warning.
        let (second, quiet) = logs_of(|| retry_after_rejection(&e, &mut backoff, &mut memory, "d"));
        assert_eq!(levels(&quiet), ["DEBUG"], "{quiet}");
        assert!(
            quiet.contains("still waiting for pairing approval"),
            "{quiet}"
        );
        assert!(memory.pairing_logged);
        assert_eq!(second, first, "it keeps waiting as long");
    }

    #[test]
    fn bad_token_waits_the_maximum() {
        for detail in [
            ErrorDetailCode::AuthTokenMismatch,
            ErrorDetailCode::AuthTokenMissing,
        ] {
            let e = ErrorShape::invalid_request("unauthorized").with_detail(detail);
            assert_eq!(
                retry_after_rejection(&e, &mut fixed(), &mut SessionMemory::default(), "d").delay,
                Duration::from_secs(30)
            );
        }
    }

    #[test]
    fn pairing_waits_slowly_or_as_hinted() {
        let e = ErrorShape::new(ErrorCode::NotPaired, "pairing required")
            .with_detail(ErrorDetailCode::PairingRequired);
        assert_eq!(
            retry_after_rejection(&e, &mut fixed(), &mut SessionMemory::default(), "d").delay,
            Duration::from_secs(30)
        );
        let e = e.with_retry_after(5_000);
        assert_eq!(
            retry_after_rejection(&e, &mut fixed(), &mut SessionMemory::default(), "d").delay,
            Duration::from_secs(5)
        );
        let e = ErrorShape::new(ErrorCode::NotPaired, "not paired");
        assert_eq!(
            retry_after_rejection(&e, &mut fixed(), &mut SessionMemory::default(), "d").delay,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn rate_limit_waits_as_told_and_others_back_off() {
        let e = ErrorShape::invalid_request("slow down")
            .with_detail(ErrorDetailCode::AuthRateLimited)
            .with_retry_after(2_000);
        assert_eq!(
            retry_after_rejection(&e, &mut fixed(), &mut SessionMemory::default(), "d").delay,
            Duration::from_secs(2)
        );
        let e = ErrorShape::invalid_request("protocol mismatch")
            .with_detail(ErrorDetailCode::ProtocolMismatch);
        let mut b = fixed();
        // Jittered exponential steps (3/4 of 1, 2, 4 s with this random
        // source), never below one second for a rejection.
        assert_eq!(
            retry_after_rejection(&e, &mut b, &mut SessionMemory::default(), "d").delay,
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_after_rejection(&e, &mut b, &mut SessionMemory::default(), "d").delay,
            Duration::from_millis(1500)
        );
        assert_eq!(
            retry_after_rejection(&e, &mut b, &mut SessionMemory::default(), "d").delay,
            Duration::from_secs(3)
        );
    }
}
