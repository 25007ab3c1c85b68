//! Who is asking: the context of a connection after its handshake, which
//! every method handler checks (role, scopes) before touching state. Its
//! own module so that `methods` and the handler families it dispatches to
//! (`pairing_methods`) both use it without importing each other.

use std::net::IpAddr;

use super::auth::{grants, Credential};
use crate::presence::PresenceKey;
use crate::protocol::{ClientInfo, ErrorCode, ErrorShape, Role};

/// Who is asking: fixed for the life of a connection.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub conn_id: String,
    pub role: Role,
    pub scopes: Vec<String>,
    pub client: ClientInfo,
    pub device_id: Option<String>,
    /// The credential it connected with.
    pub credential: Credential,
    /// The key this connection's own row has, or would have.
    pub own_key: PresenceKey,
    /// The row the connection created (`None` for `mode: cli`).
    pub presence_key: Option<PresenceKey>,
    /// The remote address, unless loopback.
    pub remote_ip: Option<IpAddr>,
}

impl ConnContext {
    /// `operator.admin` implies every scope; `operator.write` implies read.
    pub(super) fn has_scope(&self, needed: &str) -> bool {
        grants(&self.scopes, needed)
    }

    /// Whether this client sees the presence list: in its hello-ok snapshot
    /// and as `presence` events (operators with `operator.read`, as OpenClaw
    /// projects it; nodes get an empty snapshot and no events).
    pub fn reads_presence(&self) -> bool {
        super::auth::reads_presence(self.role, &self.scopes)
    }

    pub(crate) fn require_operator_scope(&self, needed: &str) -> Result<(), ErrorShape> {
        if self.role == Role::Operator && self.has_scope(needed) {
            Ok(())
        } else {
            Err(forbidden(format!("missing scope: {needed}")))
        }
    }

    /// Methods a node calls about itself are not for operators.
    pub(super) fn require_node(&self, method: &str) -> Result<(), ErrorShape> {
        if self.role == Role::Node {
            Ok(())
        } else {
            Err(forbidden(format!("{method} requires role node")))
        }
    }

    /// The id a node is known by (`node.list`'s `nodeId`): its device id.
    pub(super) fn node_id(&self) -> &str {
        self.device_id.as_deref().unwrap_or(&self.conn_id)
    }
}

pub(super) fn forbidden(message: impl Into<String>) -> ErrorShape {
    ErrorShape::new(ErrorCode::Forbidden, message)
}
