//! `Frame::parse` on arbitrary input, the round trip `to_text` -> `parse`,
//! and the connected-phase dispatcher (`methods::handle_text`, with
//! `Frame::request_id` for requests that do not parse) the gateway runs on
//! every text message after `connect`.
#![no_main]

use std::sync::OnceLock;

use clawnode::gateway::methods::{handle_text, ConnContext};
use clawnode::gateway::state::Shared;
use clawnode::gateway::GatewayConfig;
use clawnode::presence::PresenceKey;
use clawnode::protocol::{ClientInfo, Frame, PresenceEntry, Role};
use libfuzzer_sys::fuzz_target;

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let listen = "127.0.0.1:0".parse().expect("address");
        Shared::new(GatewayConfig::new(listen, None, PresenceEntry::default()))
    })
}

fn ctx(role: Role, scopes: &[&str]) -> ConnContext {
    ConnContext {
        conn_id: "conn-1".into(),
        role,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        client: ClientInfo {
            id: "node-host".into(),
            display_name: Some("n1".into()),
            version: "2026.9.6".into(),
            platform: "linux".into(),
            device_family: Some("Linux".into()),
            model_identifier: None,
            mode: "node".into(),
            instance_id: Some("i-1".into()),
        },
        device_id: (role == Role::Node).then(|| "dev-1".to_string()),
        own_key: PresenceKey::for_connection(Some("i-1"), None, "conn-1"),
        presence_key: None,
        remote_ip: None,
    }
}

fuzz_target!(|data: &[u8]| {
    // WebSocket text messages are UTF-8 (tungstenite checks); arbitrary
    // bytes are mapped to UTF-8 so every input reaches the parser.
    let text = String::from_utf8_lossy(data);
    let frame = match Frame::parse(&text) {
        Ok(frame) => frame,
        Err(_) => {
            // A request the gateway cannot read is answered when its id
            // can be found, with that id; otherwise it is ignored.
            let answer = handle_text(shared(), &ctx(Role::Node, &[]), &text);
            match (Frame::request_id(&text), answer) {
                (Some(id), Some(Frame::Res(res))) => {
                    assert_eq!(res.id, id);
                    assert!(!res.ok && res.error.is_some());
                }
                (None, None) => {}
                (id, answer) => panic!("id {id:?} but answer {answer:?}"),
            }
            return;
        }
    };
    // Round trip: what we send parses again, to the same frame.
    let sent = frame.to_text();
    let again = match Frame::parse(&sent) {
        Ok(f) => f,
        Err(e) => panic!("to_text output does not parse: {e}\n{sent}"),
    };
    assert_eq!(again, frame, "round trip changed the frame: {sent}");
    assert_eq!(again.to_text(), sent, "to_text is not stable");

    // The connected phase: a request gets exactly one answer with its id.
    if let Frame::Req(req) = &frame {
        for ctx in [
            ctx(Role::Node, &[]),
            ctx(Role::Operator, &["operator.admin"]),
        ] {
            match handle_text(shared(), &ctx, &text) {
                Some(Frame::Res(res)) => {
                    assert_eq!(res.id, req.id);
                    assert_eq!(res.ok, res.error.is_none());
                }
                other => panic!("request without an answer: {other:?}"),
            }
        }
    }
});
