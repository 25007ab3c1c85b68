//! Admission control before authentication: how many connections may be
//! in their handshake (TCP accepted, no hello-ok yet) at once, in total and
//! per source address. A flood of sockets that never speak (slow-loris) or
//! speak garbage from one address then costs that address its own slots, not
//! everyone's; the rest are refused at once with HTTP 503, before any
//! WebSocket or TLS work is done.
//!
//! A [`Ticket`] holds one slot and gives it back when dropped, so a handler
//! that ends in any way (rejection, timeout, panic) cannot leak it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::config::AdmissionLimits;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many handshakes in flight from this address.
    PerIp,
    /// Too many handshakes in flight altogether.
    Total,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerIp => "too many pending handshakes from this address",
            Refusal::Total => "too many pending handshakes",
        }
    }

    /// The `reason` label of `clawnode_connections_refused_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip_limit",
            Refusal::Total => "handshake_limit",
        }
    }
}

/// The counters, shared by the accept loop and every ticket.
#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                limits,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Takes a slot for a new connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refusal> {
        let mut counts = self.counts();
        let limits = self.inner.limits;
        let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.per_ip {
            return Err(Refusal::PerIp);
        }
        if counts.total >= limits.total {
            return Err(Refusal::Total);
        }
        counts.total += 1;
        counts.per_ip.insert(ip, from_ip + 1);
        Ok(Ticket {
            admission: self.clone(),
            ip,
        })
    }

    /// Handshakes in flight now.
    pub fn pending(&self) -> usize {
        self.counts().total
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counters are plain integers updated in one step each; a
        // poisoned lock cannot hold a half-made change.
        self.inner.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

/// One handshake slot; released on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

/// The answer to a refused connection: a complete HTTP response, so a
/// WebSocket client reports "503" instead of a reset. Written without
/// reading the request and without waiting.
pub const REFUSAL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Retry-After: 1\r\n\
Content-Type: text/plain\r\n\
Content-Length: 28\r\n\
Connection: close\r\n\
\r\n\
gateway busy; retry shortly\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_limit_refuses_only_that_address() {
        let a = Admission::new(AdmissionLimits {
            total: 10,
            per_ip: 2,
        });
        let t1 = a.admit(ip("192.0.2.1")).unwrap();
        let _t2 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.1")).unwrap_err(), Refusal::PerIp);
        let _other = a.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(a.pending(), 3);
        drop(t1);
        assert!(a.admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn total_limit_and_release_on_drop() {
        let a = Admission::new(AdmissionLimits {
            total: 2,
            per_ip: 5,
        });
        let t1 = a.admit(ip("192.0.2.1")).unwrap();
        let t2 = a.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.3")).unwrap_err(), Refusal::Total);
        drop((t1, t2));
        assert_eq!(a.pending(), 0);
        assert!(a.inner.counts.lock().unwrap().per_ip.is_empty());
        assert!(a.admit(ip("192.0.2.3")).is_ok());
    }

    #[test]
    fn refusal_response_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSAL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
