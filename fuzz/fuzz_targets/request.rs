//! Requests after the handshake, as `methods::handle_text` answers them for
//! an admin operator and for a node (the first byte picks which): every
//! method's params decoding and validation, and the presence store behind
//! them. The state is shared across inputs, as a gateway's is.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use clawnode::gateway::methods::{self, ConnContext};
use clawnode::gateway::registry::MemoryRegistry;
use clawnode::gateway::state::Shared;
use clawnode::gateway::GatewayConfig;
use clawnode::presence::PresenceKey;
use clawnode::protocol::{ClientInfo, PresenceEntry, Role};
use libfuzzer_sys::fuzz_target;

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap_or(([127, 0, 0, 1], 0).into());
        Shared::new(
            GatewayConfig::new(listen, None, PresenceEntry::default()),
            std::sync::Arc::new(MemoryRegistry::new()),
        )
    })
}

fn context(role: Role) -> ConnContext {
    let (mode, scopes, device) = match role {
        Role::Node => ("node", vec![], Some("ab".repeat(32))),
        Role::Operator => ("ui", vec!["operator.admin".to_string()], None),
    };
    let instance = format!("fuzz-{mode}");
    ConnContext {
        conn_id: format!("conn-{mode}"),
        role,
        scopes,
        client: ClientInfo {
            id: "fuzz".into(),
            display_name: Some("fuzz".into()),
            version: "1".into(),
            platform: "linux".into(),
            device_family: None,
            model_identifier: None,
            mode: mode.into(),
            instance_id: Some(instance.clone()),
        },
        credential: clawnode::gateway::auth::Credential::OperatorToken,
        own_key: PresenceKey::for_connection(Some(&instance), device.as_deref(), "conn"),
        presence_key: PresenceKey::normalize(&instance),
        device_id: device,
        remote_ip: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let role = if selector & 1 == 0 {
        Role::Operator
    } else {
        Role::Node
    };
    let ctx = context(role);
    let _ = methods::handle_text(shared(), &ctx, text);
});
