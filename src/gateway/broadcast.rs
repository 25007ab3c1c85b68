//! Server events as sent: the payloads, built once and shared by every
//! recipient, and each connection's frame around them. The fan-out itself
//! is the state's ([`super::state::Shared::tick`], `shutdown`).
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

/// The `presence` event for `list` (the list's JSON text) at `version`.
pub fn presence(list: &str, version: u64) -> Outbound {
    let mut payload = String::with_capacity(list.len() + 16);
    payload.push_str(r#"{"presence":"#);
    payload.push_str(list);
    payload.push('}');
    Outbound {
        event: event::PRESENCE,
        payload: payload.into(),
        state_version: Some(format!(r#"{{"presence":{version},"health":1}}"#).into()),
    }
}

/// The `tick` event at `now_ms`.
pub fn tick(now_ms: u64) -> Outbound {
    Outbound {
        event: event::TICK,
        payload: json(TickEvent { ts: now_ms }),
        state_version: None,
    }
}

/// The `shutdown` event.
pub fn shutdown(reason: &str) -> Outbound {
    Outbound {
        event: event::SHUTDOWN,
        payload: json(crate::protocol::ShutdownEvent {
            reason: reason.to_string(),
            restart_expected_ms: None,
        }),
        state_version: None,
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
