//! Fan-out of server events.
//!
//! `tick` and `shutdown` are queued to every connection: the payload is
//! serialized once and shared, each handler wraps it with its own `seq`, and
//! delivery never waits: a connection whose bounded queue is full is dropped
//! instead of slowing the gateway or the other clients.
//!
//! `presence` is not queued. A change bumps the presence version on a watch
//! channel; each connection that reads presence wakes, takes the list as it
//! is then (the store's cached row JSON) and sends it, at most one event per
//! [`PRESENCE_EVENT_MIN_GAP`]. Changes that come faster than a client
//! reads are coalesced into the latest list, so a burst (a reconnect storm,
//! a slow reader) costs one list per client, never a queue of stale ones.

use std::sync::Arc;

use tracing::{info, warn};

use super::state::{now_ms, State};
use crate::protocol::{event, TickEvent};

/// The shortest gap between two `presence` events to one client.
pub const PRESENCE_EVENT_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// One queued server event.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub event: &'static str,
    /// The payload's JSON text, shared by all recipients.
    pub payload: Arc<str>,
    /// `stateVersion` JSON text, when the event carries one.
    pub state_version: Option<Arc<str>>,
}

/// Builds an event frame's text with the connection's own sequence number.
pub fn event_text(out: &Outbound, seq: u64) -> String {
    let mut text = format!(
        r#"{{"type":"event","event":"{}","payload":{},"seq":{seq}"#,
        out.event, out.payload
    );
    if let Some(sv) = &out.state_version {
        text.push_str(r#","stateVersion":"#);
        text.push_str(sv);
    }
    text.push('}');
    text
}

fn json(v: impl serde::Serialize) -> Arc<str> {
    serde_json::to_string(&v)
        .unwrap_or_else(|_| "null".into())
        .into()
}

impl State {
    /// Queues `out` to every connection; drops the ones whose queue is full.
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
            }
        }
    }

    /// The presence list changed: wakes the connections that read it, and
    /// logs once when live rows first hold the list over its cap (live rows
    /// are never evicted) and once when it is back within it.
    pub fn presence_changed(&mut self) {
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

    /// The `presence` event payload and `stateVersion` as they are now.
    pub fn presence_event(&mut self) -> Outbound {
        let list = self.presence.list_json(now_ms());
        let mut payload = String::with_capacity(list.len() + 16);
        payload.push_str(r#"{"presence":"#);
        payload.push_str(&list);
        payload.push('}');
        Outbound {
            event: event::PRESENCE,
            payload: payload.into(),
            state_version: Some(
                format!(r#"{{"presence":{},"health":1}}"#, self.presence_version).into(),
            ),
        }
    }

    /// Sends `tick` to every connection.
    pub fn broadcast_tick(&mut self) {
        let out = Outbound {
            event: event::TICK,
            payload: json(TickEvent { ts: now_ms() }),
            state_version: None,
        };
        self.fan_out(out);
    }

    /// Sends `shutdown` to every connection.
    pub fn broadcast_shutdown(&mut self, reason: &str) {
        let out = Outbound {
            event: event::SHUTDOWN,
            payload: json(crate::protocol::ShutdownEvent {
                reason: reason.to_string(),
                restart_expected_ms: None,
            }),
            state_version: None,
        };
        self.fan_out(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    #[test]
    fn event_text_is_a_valid_event_frame() {
        let out = Outbound {
            event: "presence",
            payload: r#"{"presence":[]}"#.into(),
            state_version: Some(r#"{"presence":3,"health":1}"#.into()),
        };
        let Frame::Event(e) = Frame::parse(&event_text(&out, 7)).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.event, "presence");
        assert_eq!(e.seq, Some(7));
        assert_eq!(e.payload["presence"], serde_json::json!([]));
        assert_eq!(e.state_version.unwrap()["presence"], 3);
    }
}
