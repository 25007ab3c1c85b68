//! Request handling after the handshake: one function per method, each
//! checking the caller's role and scopes before touching state.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::state::{now_ms, Shared};
use crate::presence::PresenceKey;
use crate::protocol::{
    event, method, scope, ClientInfo, ErrorCode, ErrorShape, Frame, HostStats, NodeEventParams,
    Request, Role, SystemEventParams,
};

/// Methods this gateway answers (advertised in `hello-ok.features.methods`).
pub const METHODS: &[&str] = &[
    method::HEALTH,
    method::SYSTEM_PRESENCE,
    method::SYSTEM_EVENT,
    method::NODE_EVENT,
    method::NODE_LIST,
];

/// Who is asking: fixed for the life of a connection.
#[derive(Debug, Clone)]
pub struct ConnContext {
    pub conn_id: String,
    pub role: Role,
    pub scopes: Vec<String>,
    pub client: ClientInfo,
    pub device_id: Option<String>,
    /// The key this connection's own row has, or would have.
    pub own_key: PresenceKey,
    /// The row the connection created (`None` for `mode: cli`).
    pub presence_key: Option<PresenceKey>,
    /// The remote address, unless loopback.
    pub remote_ip: Option<IpAddr>,
}

impl ConnContext {
    /// `operator.admin` implies every scope; `operator.write` implies read.
    fn has_scope(&self, needed: &str) -> bool {
        let has = |s: &str| self.scopes.iter().any(|x| x == s);
        has(scope::OPERATOR_ADMIN)
            || has(needed)
            || (needed == scope::OPERATOR_READ && has(scope::OPERATOR_WRITE))
    }

    fn require_operator_scope(&self, needed: &str) -> Result<(), ErrorShape> {
        if self.role == Role::Operator && self.has_scope(needed) {
            Ok(())
        } else {
            Err(forbidden(format!("missing scope: {needed}")))
        }
    }
}

fn forbidden(message: impl Into<String>) -> ErrorShape {
    ErrorShape::new(ErrorCode::Forbidden, message)
}

fn parse_params<T: DeserializeOwned>(req: &Request) -> Result<T, ErrorShape> {
    let params = if req.params.is_null() {
        json!({})
    } else {
        req.params.clone()
    };
    serde_json::from_value(params)
        .map_err(|e| ErrorShape::invalid_request(format!("invalid {} params: {e}", req.method)))
}

/// Answers one text message from a connected client. Returns `None` for
/// frames that need no answer (events, responses, unparseable text).
pub fn handle_text(shared: &Shared, ctx: &ConnContext, text: &str) -> Option<Frame> {
    let req = match Frame::parse(text) {
        Ok(Frame::Req(req)) => req,
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring unparseable frame");
            return None;
        }
    };
    Some(match handle(shared, ctx, &req) {
        Ok(payload) => Frame::ok(&req.id, payload),
        Err(error) => Frame::err(&req.id, error),
    })
}

/// Dispatches a request by method name.
pub fn handle(shared: &Shared, ctx: &ConnContext, req: &Request) -> Result<Value, ErrorShape> {
    match req.method.as_str() {
        method::SYSTEM_PRESENCE => system_presence(shared, ctx),
        method::SYSTEM_EVENT => system_event(shared, ctx, parse_params(req)?),
        method::NODE_EVENT => node_event(shared, ctx, parse_params(req)?),
        method::NODE_LIST => node_list(shared, ctx),
        method::HEALTH => Ok(health(shared)),
        method::CONNECT => Err(ErrorShape::invalid_request("already connected")),
        other => Err(ErrorShape::invalid_request(format!(
            "unknown method: {other}"
        ))),
    }
}

/// Rule 9: the list, newest first. Nodes and `operator.read`.
fn system_presence(shared: &Shared, ctx: &ConnContext) -> Result<Value, ErrorShape> {
    if ctx.role != Role::Node {
        ctx.require_operator_scope(scope::OPERATOR_READ)?;
    }
    let list = shared.lock().presence.list(now_ms());
    Ok(serde_json::to_value(list).unwrap_or(Value::Null))
}

/// Rule 3: a beacon. A node may only update its own row; an operator needs
/// `operator.write` for its own row and `operator.admin` for any other.
fn system_event(
    shared: &Shared,
    ctx: &ConnContext,
    params: SystemEventParams,
) -> Result<Value, ErrorShape> {
    params
        .validate()
        .map_err(|e| ErrorShape::invalid_request(format!("invalid system-event params: {e}")))?;
    let own_device = ctx.device_id.as_deref().and_then(PresenceKey::normalize);
    let target = match params
        .instance_id
        .as_deref()
        .and_then(PresenceKey::normalize)
    {
        None => ctx.own_key.clone(),
        Some(k) if k == ctx.own_key || Some(&k) == own_device.as_ref() => ctx.own_key.clone(),
        Some(k) => k,
    };
    let own = target == ctx.own_key;
    match ctx.role {
        Role::Node if !own => {
            return Err(forbidden("a node may only update its own presence entry"))
        }
        Role::Node => {}
        Role::Operator if own => ctx.require_operator_scope(scope::OPERATOR_WRITE)?,
        Role::Operator => ctx.require_operator_scope(scope::OPERATOR_ADMIN)?,
    }
    let mut state = shared.lock();
    let remote = if own { ctx.remote_ip } else { None };
    state.presence.beacon(&target, &params, remote, now_ms());
    state.broadcast_presence();
    Ok(json!({ "ok": true }))
}

/// `node.event`: keeps the latest `node.host.stats` per node.
fn node_event(
    shared: &Shared,
    ctx: &ConnContext,
    params: NodeEventParams,
) -> Result<Value, ErrorShape> {
    if ctx.role != Role::Node {
        return Err(forbidden("node.event requires role node"));
    }
    if params.event != event::NODE_HOST_STATS {
        return Ok(json!({
            "ok": true, "event": params.event, "handled": false, "reason": "unsupported_event"
        }));
    }
    let invalid =
        |e: String| ErrorShape::invalid_request(format!("invalid node.host.stats payload: {e}"));
    let payload = params
        .decoded_payload()
        .map_err(|e| invalid(e.to_string()))?;
    let stats: HostStats = serde_json::from_value(payload).map_err(|e| invalid(e.to_string()))?;
    stats.validate().map_err(invalid)?;
    let mut state = shared.lock();
    let Some(node) = state.nodes.get_mut(&ctx.conn_id) else {
        return Ok(json!({
            "ok": true, "event": params.event, "handled": false, "reason": "stale_connection"
        }));
    };
    node.host_stats = Some((stats, now_ms()));
    Ok(json!({ "ok": true, "event": params.event, "handled": true, "reason": "updated" }))
}

/// `node.list`: connected nodes with their latest host stats.
fn node_list(shared: &Shared, ctx: &ConnContext) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_READ)?;
    let state = shared.lock();
    let mut nodes: Vec<Value> = state
        .nodes
        .values()
        .map(|n| {
            let mut v = json!({
                "nodeId": n.node_id,
                "displayName": n.display_name,
                "platform": n.platform,
                "version": n.version,
                "deviceFamily": n.device_family,
                "modelIdentifier": n.model_identifier,
                "instanceId": n.instance_id,
                "remoteIp": n.remote_ip.map(|ip| ip.to_string()),
                "caps": n.caps,
                "commands": n.commands,
                "paired": true,
                "connected": true,
                "connectedAtMs": n.connected_at_ms,
            });
            if let (Some((stats, at)), Some(obj)) = (&n.host_stats, v.as_object_mut()) {
                let mut s = serde_json::to_value(stats).unwrap_or(Value::Null);
                if let Some(so) = s.as_object_mut() {
                    so.insert("updatedAtMs".into(), json!(at));
                }
                obj.insert("hostStats".into(), s);
            }
            strip_nulls(v)
        })
        .collect();
    nodes.sort_by(|a, b| a["nodeId"].as_str().cmp(&b["nodeId"].as_str()));
    Ok(json!({ "ts": now_ms(), "nodes": nodes }))
}

/// Omits absent fields instead of sending `null`.
fn strip_nulls(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|_, x| !x.is_null());
    }
    v
}

/// `health`: liveness and counts.
fn health(shared: &Shared) -> Value {
    let mut state = shared.lock();
    let now = now_ms();
    let entries = state.presence.list(now).len();
    json!({
        "ok": true,
        "ts": now,
        "uptimeMs": shared.uptime_ms(),
        "version": super::SERVER_VERSION,
        "connections": state.connections.len(),
        "nodes": state.nodes.len(),
        "presence": { "entries": entries, "stateVersion": state.presence_version },
    })
}
