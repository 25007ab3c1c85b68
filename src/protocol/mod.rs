//! The OpenClaw gateway wire protocol (v3/v4): the one definition of every
//! frame, parameter and payload that agent, gateway, CLI and tests exchange.
//!
//! Frames are JSON text messages over WebSocket. Parsing is lenient where the
//! real OpenClaw sends more than we use (unknown fields are ignored) and strict
//! where a wrong value would change meaning (types of required fields).

pub mod connect;
pub mod device_auth;
pub mod errors;
pub mod frame;
pub mod join_token;
pub mod payloads;

pub use connect::{ClientInfo, ConnectAuth, ConnectParams, DeviceProof, HelloOk, Role};
pub use errors::{ErrorCode, ErrorDetailCode, ErrorShape};
pub use frame::{BadRequest, EventFrame, Frame, FrameError, Request, Response};
pub use payloads::{
    ConnectChallenge, HostStats, NodeEventParams, PresenceEntry, PresenceEvent, ShutdownEvent,
    SystemEventParams, TickEvent,
};

/// The read buffer of every WebSocket we open or accept. tungstenite's
/// default, 128 KiB, is zero-filled on each read and so stays resident for
/// the connection's life: 128 KiB per connection, where our frames are a few
/// hundred bytes. A larger frame grows the buffer as far as it needs.
pub const WS_READ_BUFFER: usize = 2048;

/// The WebSocket settings of every connection we open or accept: the read
/// buffer above, and messages and frames up to `max_payload` (tungstenite's
/// defaults when `None`).
pub fn ws_config(
    max_payload: Option<usize>,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER);
    match max_payload {
        Some(max) => config.max_message_size(Some(max)).max_frame_size(Some(max)),
        None => config,
    }
}

/// The newest protocol version we speak; negotiated when the peer allows it.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest protocol version we accept, and only for `role: node`.
pub const MIN_NODE_PROTOCOL_VERSION: u32 = 3;

/// Method names, shared by both ends so a typo cannot split them.
pub mod method {
    pub const CONNECT: &str = "connect";
    pub const SYSTEM_PRESENCE: &str = "system-presence";
    pub const SYSTEM_EVENT: &str = "system-event";
    pub const NODE_EVENT: &str = "node.event";
    pub const NODE_LIST: &str = "node.list";
    pub const HEALTH: &str = "health";
    /// Publications OpenClaw's node host sends right after `hello-ok`.
    pub const NODE_SKILLS_UPDATE: &str = "node.skills.update";
    pub const NODE_PLUGIN_TOOLS_UPDATE: &str = "node.pluginTools.update";
    pub const NODE_RUNNER_INVENTORY_UPDATE: &str = "node.runnerInventory.update";
    /// clawnode's own: drop an instance id's pin (`clawnode forget`).
    pub const INSTANCE_FORGET: &str = "clawnode.instance.forget";
    /// Device pairing, with OpenClaw's shapes (`openclaw devices ...`).
    pub const DEVICE_PAIR_LIST: &str = "device.pair.list";
    pub const DEVICE_PAIR_APPROVE: &str = "device.pair.approve";
    pub const DEVICE_PAIR_REJECT: &str = "device.pair.reject";
    pub const DEVICE_PAIR_REMOVE: &str = "device.pair.remove";
    pub const DEVICE_PAIR_RENAME: &str = "device.pair.rename";
    /// clawnode's own: mark an approved device revoked (`clawnode devices
    /// revoke`): its connections close, it is refused until approved again.
    pub const DEVICE_REVOKE: &str = "clawnode.device.revoke";
    /// clawnode's own: join tokens for enrolment (`clawnode join-token`).
    pub const JOIN_TOKEN_CREATE: &str = "clawnode.joinToken.create";
    pub const JOIN_TOKEN_LIST: &str = "clawnode.joinToken.list";
    pub const JOIN_TOKEN_REVOKE: &str = "clawnode.joinToken.revoke";
    /// clawnode's own: the pending pairing requests alone, from memory (what
    /// the Instances page polls; `device.pair.list` also reads every record).
    pub const DEVICE_PENDING: &str = "clawnode.device.pending";
    /// Device tokens, with OpenClaw's shapes (`openclaw devices
    /// rotate|revoke`, `clawnode devices rotate`).
    pub const DEVICE_TOKEN_ROTATE: &str = "device.token.rotate";
    pub const DEVICE_TOKEN_REVOKE: &str = "device.token.revoke";
}

/// Event names.
pub mod event {
    pub const CONNECT_CHALLENGE: &str = "connect.challenge";
    pub const PRESENCE: &str = "presence";
    pub const TICK: &str = "tick";
    pub const SHUTDOWN: &str = "shutdown";
    /// The `node.event` sub-event carrying host statistics.
    pub const NODE_HOST_STATS: &str = "node.host.stats";
}

/// Scope names.
pub mod scope {
    pub const OPERATOR_READ: &str = "operator.read";
    pub const OPERATOR_WRITE: &str = "operator.write";
    pub const OPERATOR_ADMIN: &str = "operator.admin";
    /// Device pairing (`device.pair.*`), as OpenClaw scopes it.
    pub const OPERATOR_PAIRING: &str = "operator.pairing";
}

/// Client modes with special meaning.
pub mod mode {
    pub const CLI: &str = "cli";
    pub const NODE: &str = "node";
    pub const GATEWAY: &str = "gateway";
}

/// The `client.id` our agent connects with, as OpenClaw's own node host does.
pub const NODE_CLIENT_ID: &str = "node-host";
/// The `client.id` our one-shot CLI connects with.
pub const CLI_CLIENT_ID: &str = "cli";

/// The frames captured from OpenClaw 2026.9.6, vendored under
/// `tests/vectors/openclaw-wire/` so tests run from a bare clone.
#[cfg(test)]
pub(crate) mod test_vectors {
    pub fn wire(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/openclaw-wire")
            .join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("test vector {}: {e}", path.display()))
    }
}
