//! Server events as sent: the payloads, built once and shared by every
//! recipient, and each connection's frame around them. The fan-out itself
//! is the state's ([`super::state::Shared::tick`], `shutdown`).
//!
//! `tick` and `shutdown` are queued to every connection: the payload is
//! serialized once and shared, each handler wraps it with its own `seq`
//! ([`event_message`]: the frame's head and tail around the shared payload,
//! nothing copied), and delivery never waits: a connection whose bounded
//! queue is full is dropped instead of slowing the gateway or the other
//! clients.
//!
//! `presence` is not queued. A change bumps the presence version on a watch
//! channel; each connection that reads presence wakes, takes the list as it
//! is then (the store's cached row JSON, shared: [`ListJson`]) and sends
//! it, at most one event per [`PRESENCE_EVENT_MIN_GAP`]. Changes that come
//! faster than a client reads are coalesced into the latest list, so a
//! burst (a reconnect storm, a slow reader) costs one list per client,
//! never a queue of stale ones; and the list a client is sent is the
//! store's pieces, so a client stuck on it costs pointers, not a copy.

use std::sync::Arc;

use super::outgoing::Outgoing;
use crate::presence::ListJson;
use crate::protocol::{event, TickEvent};

/// The shortest gap between two `presence` events to one client.
pub const PRESENCE_EVENT_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(100);

/// One server event.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub event: &'static str,
    /// The payload's JSON text, shared by all recipients (for `presence`,
    /// the list's pieces are the store's).
    pub payload: Outgoing,
    /// `stateVersion` JSON text, when the event carries one.
    pub state_version: Option<Arc<str>>,
}

/// An event frame with the connection's own sequence number: the shared
/// payload between the frame's head and its tail, nothing copied.
pub fn event_message(out: &Outbound, seq: u64) -> Outgoing {
    let mut message = Outgoing::default();
    message.push_text(format!(
        r#"{{"type":"event","event":"{}","payload":"#,
        out.event
    ));
    message.push_all(&out.payload);
    let mut tail = format!(r#","seq":{seq}"#);
    if let Some(sv) = &out.state_version {
        tail.push_str(r#","stateVersion":"#);
        tail.push_str(sv);
    }
    tail.push('}');
    message.push_text(tail);
    message
}

fn json(v: impl serde::Serialize) -> Outgoing {
    Outgoing::from(serde_json::to_string(&v).unwrap_or_else(|_| "null".into()))
}

/// The `presence` event for `list` at `version`.
pub fn presence(list: ListJson, version: u64) -> Outbound {
    let mut payload = Outgoing::default();
    payload.push_text(r#"{"presence":"#);
    payload.push_list(list);
    payload.push_text("}");
    Outbound {
        event: event::PRESENCE,
        payload,
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
    fn an_event_message_is_a_valid_event_frame() {
        let out = presence(ListJson::empty(), 3);
        let Frame::Event(e) = Frame::parse(&event_message(&out, 7).to_text()).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.event, "presence");
        assert_eq!(e.seq, Some(7));
        assert_eq!(e.payload["presence"], serde_json::json!([]));
        assert_eq!(e.state_version.unwrap()["presence"], 3);
    }
}
