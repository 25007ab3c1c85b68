//! Fan-out of server events. A payload is serialized once per change and
//! shared by every recipient; each handler wraps it with its own `seq`.
//! Delivery never waits: a connection whose bounded queue is full is dropped
//! instead of slowing the gateway or the other clients.

use std::sync::Arc;

use tracing::warn;

use super::state::{now_ms, State};
use crate::protocol::payloads::PresenceEvent;
use crate::protocol::{event, Role, TickEvent};

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
    /// Queues `out` to every connection `filter` selects; drops the ones
    /// whose queue is full.
    fn fan_out(&mut self, out: &Outbound, filter: impl Fn(Role) -> bool) {
        let mut overflowed = Vec::new();
        for (conn_id, handle) in &self.connections {
            if !filter(handle.role) {
                continue;
            }
            if handle.tx.try_send(out.clone()).is_err() {
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

    /// Sends the full presence list to operator connections.
    pub fn broadcast_presence(&mut self) {
        self.presence_version += 1;
        let list = self.presence.list(now_ms());
        let out = Outbound {
            event: event::PRESENCE,
            payload: json(PresenceEvent { presence: list }),
            state_version: Some(json(serde_json::json!({
                "presence": self.presence_version,
                "health": 1,
            }))),
        };
        self.fan_out(&out, |role| role == Role::Operator);
    }

    /// Sends `tick` to every connection.
    pub fn broadcast_tick(&mut self) {
        let out = Outbound {
            event: event::TICK,
            payload: json(TickEvent { ts: now_ms() }),
            state_version: None,
        };
        self.fan_out(&out, |_| true);
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
        self.fan_out(&out, |_| true);
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
