//! Request handling after the handshake: one function per method, each
//! checking the caller's role and scopes before touching state.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::context::forbidden;
pub use super::context::ConnContext;
use super::join_token_methods;
use super::outgoing::Outgoing;
use super::pairing_methods;
use super::state::Shared;
use crate::clock::now_ms;
use crate::presence::PresenceKey;
use crate::protocol::{
    event, method, scope, ErrorCode, ErrorShape, Frame, HostStats, NodeEventParams, Request,
    Response, Role, SystemEventParams,
};

/// Methods this gateway answers (advertised in `hello-ok.features.methods`).
pub const METHODS: &[&str] = &[
    method::HEALTH,
    method::SYSTEM_PRESENCE,
    method::SYSTEM_EVENT,
    method::NODE_EVENT,
    method::NODE_LIST,
    method::NODE_SKILLS_UPDATE,
    method::NODE_PLUGIN_TOOLS_UPDATE,
    method::NODE_RUNNER_INVENTORY_UPDATE,
    method::INSTANCE_FORGET,
    method::DEVICE_PAIR_LIST,
    method::DEVICE_PAIR_APPROVE,
    method::DEVICE_PAIR_REJECT,
    method::DEVICE_PAIR_REMOVE,
    method::DEVICE_PAIR_RENAME,
    method::DEVICE_REVOKE,
    method::JOIN_TOKEN_CREATE,
    method::JOIN_TOKEN_LIST,
    method::JOIN_TOKEN_REVOKE,
    method::DEVICE_PENDING,
    method::DEVICE_TOKEN_ROTATE,
    method::DEVICE_TOKEN_REVOKE,
];

fn parse_params<T: DeserializeOwned>(req: &Request) -> Result<T, ErrorShape> {
    let invalid = |e: &dyn std::fmt::Display| {
        ErrorShape::invalid_request(format!("invalid {} params: {e}", req.method))
    };
    let params = match &req.params {
        Value::Null => json!({}),
        // serde would also read a struct from an array (fields by position).
        Value::Object(_) => req.params.clone(),
        _ => return Err(invalid(&"params must be an object")),
    };
    serde_json::from_value(params).map_err(|e| invalid(&e))
}

/// Answers one text message from a connected client. Anything that is not
/// a valid request gets `INVALID_REQUEST`, tied to the frame's `id` when it
/// has a string one, else to `"invalid"` (as OpenClaw answers). Every answer
/// is logged at debug level (`request answered` / `request refused` with the
/// method, and `took_us`: parse to response text), which is how unknown
/// methods a peer calls show up and how the server side of a request is
/// timed under load (docs/PERFORMANCE.md).
pub fn handle_text(shared: &Shared, ctx: &ConnContext, text: &str) -> Outgoing {
    let started = std::time::Instant::now();
    let bad = |id: Option<&str>, why: &str| {
        tracing::debug!(error = ?why, "invalid request frame");
        let error = ErrorShape::invalid_request(format!("invalid request frame: {why}"));
        Outgoing::from(Frame::err(id.unwrap_or("invalid"), error).to_text())
    };
    let req = match Request::parse(text) {
        Ok(req) if req.method.is_empty() => return bad(Some(&req.id), "method must not be empty"),
        Ok(req) => req,
        Err(e) => return bad(e.any_id.as_deref(), &e.why),
    };
    // The method name is the peer's text: quoted and escaped (`?`).
    match handle(shared, ctx, &req) {
        Ok(answer) => {
            let text = answer.response_text(&req.id);
            let took_us = started.elapsed().as_micros() as u64;
            tracing::debug!(method = ?req.method, took_us, "request answered");
            text
        }
        Err(e) => {
            tracing::debug!(
                method = ?req.method,
                code = e.code.as_str(),
                error = ?e.message,
                "request refused"
            );
            Outgoing::from(Frame::err(&req.id, e).to_text())
        }
    }
}

/// What a method answers with.
#[derive(Debug)]
pub enum Answer {
    /// A payload built as a JSON value.
    Value(Value),
    /// The whole response, already made: the presence list in the
    /// store's pieces around the response's own text.
    Response(Outgoing),
}

impl Answer {
    /// The success response for request `id`.
    pub fn response_text(self, id: &str) -> Outgoing {
        match self {
            Answer::Value(payload) => Outgoing::from(
                Frame::Res(Response {
                    id: id.to_string(),
                    ok: true,
                    payload: Some(payload),
                    error: None,
                })
                .to_text(),
            ),
            Answer::Response(message) => message,
        }
    }

    /// The payload as a JSON value.
    pub fn into_value(self) -> Value {
        match self {
            Answer::Value(v) => v,
            Answer::Response(message) => match Frame::parse(&message.to_text()) {
                Ok(Frame::Res(res)) => res.payload.unwrap_or(Value::Null),
                _ => Value::Null,
            },
        }
    }
}

/// Dispatches a request by method name.
pub fn handle(shared: &Shared, ctx: &ConnContext, req: &Request) -> Result<Answer, ErrorShape> {
    if req.method == method::SYSTEM_PRESENCE {
        return system_presence(shared, ctx, &req.id).map(Answer::Response);
    }
    handle_value(shared, ctx, req).map(Answer::Value)
}

/// The methods whose payload is built as a JSON value.
fn handle_value(shared: &Shared, ctx: &ConnContext, req: &Request) -> Result<Value, ErrorShape> {
    match req.method.as_str() {
        method::SYSTEM_EVENT => system_event(shared, ctx, parse_params(req)?),
        method::NODE_EVENT => {
            ctx.require_node(method::NODE_EVENT)?;
            node_event(shared, ctx, parse_params(req)?)
        }
        method::NODE_LIST => node_list(shared, ctx),
        method::HEALTH => Ok(shared.health()),
        method::NODE_SKILLS_UPDATE => {
            ctx.require_node(method::NODE_SKILLS_UPDATE)?;
            Ok(skills_update(ctx.node_id(), parse_params(req)?))
        }
        method::NODE_PLUGIN_TOOLS_UPDATE => {
            ctx.require_node(method::NODE_PLUGIN_TOOLS_UPDATE)?;
            Ok(plugin_tools_update(ctx.node_id(), parse_params(req)?))
        }
        method::NODE_RUNNER_INVENTORY_UPDATE => {
            ctx.require_node(method::NODE_RUNNER_INVENTORY_UPDATE)?;
            runner_inventory_update(ctx.node_id(), &req.params)
        }
        method::INSTANCE_FORGET => instance_forget(shared, ctx, parse_params(req)?),
        method::DEVICE_PAIR_LIST => pairing_methods::list(shared, ctx),
        method::DEVICE_PAIR_APPROVE => pairing_methods::approve(shared, ctx, parse_params(req)?),
        method::DEVICE_PAIR_REJECT => pairing_methods::reject(shared, ctx, parse_params(req)?),
        method::DEVICE_PAIR_REMOVE => pairing_methods::remove(shared, ctx, parse_params(req)?),
        method::DEVICE_REVOKE => pairing_methods::revoke(shared, ctx, parse_params(req)?),
        method::DEVICE_PENDING => pairing_methods::pending(shared, ctx),
        method::DEVICE_PAIR_RENAME => pairing_methods::rename(shared, ctx, parse_params(req)?),
        method::JOIN_TOKEN_CREATE | method::JOIN_TOKEN_LIST | method::JOIN_TOKEN_REVOKE => {
            // Who may approve devices may make what admits them.
            ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
            let by = pairing_methods::caller(ctx);
            match req.method.as_str() {
                method::JOIN_TOKEN_CREATE => {
                    join_token_methods::create(shared, &by, parse_params(req)?)
                }
                method::JOIN_TOKEN_REVOKE => {
                    join_token_methods::revoke(shared, &by, parse_params(req)?)
                }
                _ => join_token_methods::list(shared),
            }
        }
        method::DEVICE_TOKEN_ROTATE => {
            pairing_methods::rotate_token(shared, ctx, parse_params(req)?)
        }
        method::DEVICE_TOKEN_REVOKE => {
            pairing_methods::revoke_token(shared, ctx, parse_params(req)?)
        }
        method::CONNECT => Err(ErrorShape::invalid_request("already connected")),
        other => Err(ErrorShape::invalid_request(format!(
            "unknown method: {other}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ForgetParams {
    instance_id: String,
}

/// `clawnode.instance.forget` (operator.admin): drops an instance id's pin
/// so the next key that claims it is accepted (a re-imaged host). The
/// registry stores the change before answering (a rare, small write).
fn instance_forget(
    shared: &Shared,
    ctx: &ConnContext,
    params: ForgetParams,
) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_ADMIN)?;
    let id = params.instance_id.trim();
    if id.is_empty() {
        return Err(ErrorShape::invalid_request(
            "invalid clawnode.instance.forget params: instanceId is empty",
        ));
    }
    let removed = shared.forget(id).map_err(|e| {
        tracing::error!(error = %e, "cannot save instance pins");
        ErrorShape::new(
            ErrorCode::Unavailable,
            format!("the pin was not removed: {e:#}"),
        )
    })?;
    tracing::info!(
        instance_id = id,
        forgotten = removed.is_some(),
        "instance pin forgotten by an operator"
    );
    Ok(json!({ "instanceId": id, "forgotten": removed.is_some(), "pin": removed }))
}

/// Rule 9: the list, newest first: the whole response to request `id`.
/// Nodes and `operator.read`.
fn system_presence(shared: &Shared, ctx: &ConnContext, id: &str) -> Result<Outgoing, ErrorShape> {
    if ctx.role != Role::Node {
        ctx.require_operator_scope(scope::OPERATOR_READ)?;
    }
    Ok(shared.presence_response(id))
}

/// Rule 3: a beacon. A node may only update its own row; an operator needs
/// `operator.write` for its own row and `operator.admin` for any other.
fn system_event(
    shared: &Shared,
    ctx: &ConnContext,
    params: SystemEventParams,
) -> Result<Value, ErrorShape> {
    let params = params
        .normalized()
        .map_err(|e| ErrorShape::invalid_request(format!("invalid system-event params: {e}")))?;
    let own_device = ctx.device_id.as_deref().and_then(PresenceKey::normalize);
    // The connection's own instance id names its own row, also when that
    // row is an unclaimed one (a client without a device).
    let own_instance = ctx
        .client
        .instance_id
        .as_deref()
        .and_then(PresenceKey::normalize);
    let target = match params
        .instance_id
        .as_deref()
        .and_then(PresenceKey::normalize)
    {
        None => ctx.own_key.clone(),
        Some(k)
            if k == ctx.own_key
                || Some(&k) == own_device.as_ref()
                || Some(&k) == own_instance.as_ref() =>
        {
            ctx.own_key.clone()
        }
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
    let remote = if own { ctx.remote_ip } else { None };
    shared.beacon(&target, &params, remote);
    Ok(json!({ "ok": true }))
}

/// `node.event`: keeps the latest `node.host.stats` per node.
fn node_event(
    shared: &Shared,
    ctx: &ConnContext,
    params: NodeEventParams,
) -> Result<Value, ErrorShape> {
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
    if !shared.host_stats(&ctx.conn_id, stats) {
        return Ok(json!({
            "ok": true, "event": params.event, "handled": false, "reason": "stale_connection"
        }));
    }
    Ok(json!({ "ok": true, "event": params.event, "handled": true, "reason": "updated" }))
}

/// `node.skills.update` parameters. The descriptors are not looked at.
#[derive(Debug, Deserialize)]
struct SkillsUpdateParams {
    skills: Vec<Value>,
}

/// `node.pluginTools.update` parameters. The descriptors are not looked at.
#[derive(Debug, Deserialize)]
struct PluginToolsUpdateParams {
    tools: Vec<Value>,
}

/// `node.skills.update`: accepted, none kept. OpenClaw answers with the
/// skills it admitted for the node (none when `gateway.nodes.allowSkills`
/// is off); this gateway admits none.
fn skills_update(node_id: &str, params: SkillsUpdateParams) -> Value {
    tracing::debug!(
        count = params.skills.len(),
        "node skills published; not used"
    );
    json!({ "nodeId": node_id, "skills": [] })
}

/// `node.pluginTools.update`: accepted, none kept. OpenClaw answers with
/// the tools it admitted; this gateway admits none.
fn plugin_tools_update(node_id: &str, params: PluginToolsUpdateParams) -> Value {
    tracing::debug!(
        count = params.tools.len(),
        "node plugin tools published; not used"
    );
    json!({ "nodeId": node_id, "tools": [] })
}

/// `node.runnerInventory.update`: accepted and ignored (this gateway runs
/// no worker sessions). Only the shape OpenClaw requires of every
/// declaration is checked: an object whose `protocolFeatures` is an array
/// of strings. OpenClaw answers `{nodeId}`, and `invalid node runner
/// inventory` to a malformed declaration (ours then says what is wrong).
fn runner_inventory_update(node_id: &str, params: &Value) -> Result<Value, ErrorShape> {
    let features = params
        .get("protocolFeatures")
        .and_then(Value::as_array)
        .filter(|f| f.iter().all(Value::is_string))
        .ok_or_else(|| {
            ErrorShape::invalid_request(
                "invalid node runner inventory: protocolFeatures must be an array of strings",
            )
        })?;
    let features: Vec<&str> = features.iter().filter_map(Value::as_str).collect();
    tracing::debug!(
        features = %features.join(","),
        "node runner inventory published; not used"
    );
    Ok(json!({ "nodeId": node_id }))
}

/// `node.list`: connected nodes with their latest host stats.
fn node_list(shared: &Shared, ctx: &ConnContext) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_READ)?;
    let mut nodes: Vec<Value> = shared
        .nodes()
        .iter()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::auth::Credential;
    use crate::gateway::GatewayConfig;
    use crate::protocol::ClientInfo;
    use crate::protocol::PresenceEntry;

    fn shared() -> Shared {
        let listen = "127.0.0.1:0".parse().expect("address");
        Shared::new(
            GatewayConfig::new(listen, None, PresenceEntry::default()),
            std::sync::Arc::new(crate::gateway::registry::MemoryRegistry::new()),
        )
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
            credential: Credential::OperatorToken,
            own_key: PresenceKey::for_connection(Some("i-1"), None, "conn-1"),
            presence_key: None,
            remote_ip: None,
        }
    }

    fn call(ctx: &ConnContext, method: &str, params: Value) -> Result<Value, ErrorShape> {
        let req = Request {
            id: "1".into(),
            method: method.into(),
            params,
        };
        handle(&shared(), ctx, &req).map(Answer::into_value)
    }

    const PUBLICATIONS: [&str; 3] = [
        method::NODE_SKILLS_UPDATE,
        method::NODE_PLUGIN_TOOLS_UPDATE,
        method::NODE_RUNNER_INVENTORY_UPDATE,
    ];

    #[test]
    fn publications_are_advertised_once() {
        for m in PUBLICATIONS {
            assert_eq!(METHODS.iter().filter(|x| **x == m).count(), 1, "{m}");
        }
        let mut sorted = METHODS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), METHODS.len(), "duplicate in METHODS");
    }

    #[test]
    fn node_publications_are_accepted_like_openclaw_answers_them() {
        let node = ctx(Role::Node, &[]);
        // The node host's first publications, as captured from 2026.9.6.
        assert_eq!(
            call(&node, "node.skills.update", json!({ "skills": [] })).unwrap(),
            json!({ "nodeId": "dev-1", "skills": [] })
        );
        let skill = json!({ "name": "s", "description": "d", "content": "c" });
        assert_eq!(
            call(&node, "node.skills.update", json!({ "skills": [skill] })).unwrap(),
            json!({ "nodeId": "dev-1", "skills": [] })
        );
        assert_eq!(
            call(&node, "node.pluginTools.update", json!({ "tools": [] })).unwrap(),
            json!({ "nodeId": "dev-1", "tools": [] })
        );
        let inventory = json!({
            "protocolFeatures": ["node-worker-supervisor-v6"],
            "workerHost": { "enabled": false }
        });
        assert_eq!(
            call(&node, "node.runnerInventory.update", inventory).unwrap(),
            json!({ "nodeId": "dev-1" })
        );
        // An empty declaration (an older node) is fine too.
        let empty = json!({ "protocolFeatures": [] });
        assert_eq!(
            call(&node, "node.runnerInventory.update", empty).unwrap(),
            json!({ "nodeId": "dev-1" })
        );
    }

    #[test]
    fn malformed_publications_are_invalid_requests() {
        let node = ctx(Role::Node, &[]);
        for (method, params) in [
            ("node.skills.update", Value::Null),
            ("node.skills.update", json!({ "skills": "x" })),
            ("node.pluginTools.update", json!({})),
            ("node.pluginTools.update", json!([1])),
            // serde alone reads a struct from an array: `{tools: []}`.
            ("node.pluginTools.update", json!([[]])),
            ("node.skills.update", json!([[{ "name": "s" }]])),
            ("node.runnerInventory.update", Value::Null),
            ("node.runnerInventory.update", json!({})),
            (
                "node.runnerInventory.update",
                json!({ "protocolFeatures": "v6" }),
            ),
            (
                "node.runnerInventory.update",
                json!({ "protocolFeatures": [6] }),
            ),
        ] {
            let e = call(&node, method, params.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{method} {params}");
            assert!(
                e.message.starts_with(&format!("invalid {method} params: "))
                    || e.message.starts_with("invalid node runner inventory: "),
                "{method} {params}: {}",
                e.message
            );
        }
    }

    #[test]
    fn node_methods_are_forbidden_for_operators() {
        let admin = ctx(Role::Operator, &[scope::OPERATOR_ADMIN]);
        for m in PUBLICATIONS.into_iter().chain([method::NODE_EVENT]) {
            // Checked before the params, so even a valid-looking call is refused.
            let e = call(
                &admin,
                m,
                json!({ "skills": [], "tools": [], "event": "x" }),
            )
            .unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{m}");
            assert_eq!(e.message, format!("{m} requires role node"));
            let e = call(&admin, m, Value::Null).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{m} without params");
        }
    }

    #[test]
    fn pairing_methods_need_operator_pairing() {
        let node = ctx(Role::Node, &[]);
        let reader = ctx(
            Role::Operator,
            &[scope::OPERATOR_READ, scope::OPERATOR_WRITE],
        );
        let calls = [
            (method::DEVICE_PAIR_LIST, json!({})),
            (method::DEVICE_PAIR_APPROVE, json!({ "requestId": "r" })),
            (method::DEVICE_PAIR_REJECT, json!({ "requestId": "r" })),
            (method::DEVICE_PAIR_REMOVE, json!({ "deviceId": "d" })),
            (
                method::DEVICE_PAIR_RENAME,
                json!({ "deviceId": "d", "label": "l" }),
            ),
            (method::DEVICE_REVOKE, json!({ "deviceId": "d" })),
        ];
        for (m, params) in &calls {
            for who in [&node, &reader] {
                let e = call(who, m, params.clone()).unwrap_err();
                assert_eq!(e.code, ErrorCode::Forbidden, "{m} by {:?}", who.role);
                assert_eq!(e.message, "missing scope: operator.pairing");
            }
        }
        for scopes in [[scope::OPERATOR_PAIRING], [scope::OPERATOR_ADMIN]] {
            let op = ctx(Role::Operator, &scopes);
            let list = call(&op, method::DEVICE_PAIR_LIST, json!({})).unwrap();
            assert_eq!(list, json!({ "pending": [], "paired": [], "refused": [] }));
            // Unknown ids are OpenClaw's errors.
            for (m, params) in &calls[1..] {
                let e = call(&op, m, params.clone()).unwrap_err();
                assert_eq!(e.code, ErrorCode::InvalidRequest, "{m}");
                assert!(e.message.starts_with("unknown "), "{m}: {}", e.message);
            }
        }
    }

    /// Part 6: the join token methods need `operator.pairing` (or admin);
    /// `create` answers the secret once, `list` never shows it, `revoke`
    /// of an unknown id is an error.
    #[test]
    fn join_token_methods_need_operator_pairing() {
        let shared = shared();
        let call = |ctx: &ConnContext, method: &str, params: Value| {
            let req = Request {
                id: "1".into(),
                method: method.into(),
                params,
            };
            handle(&shared, ctx, &req).map(Answer::into_value)
        };
        let node = ctx(Role::Node, &[]);
        let reader = ctx(
            Role::Operator,
            &[scope::OPERATOR_READ, scope::OPERATOR_WRITE],
        );
        let calls = [
            (method::JOIN_TOKEN_CREATE, json!({})),
            (method::JOIN_TOKEN_LIST, json!({})),
            (method::JOIN_TOKEN_REVOKE, json!({ "id": "x" })),
        ];
        for (m, params) in &calls {
            assert_eq!(METHODS.iter().filter(|x| *x == m).count(), 1, "{m}");
            for who in [&node, &reader] {
                let e = call(who, m, params.clone()).unwrap_err();
                assert_eq!(e.code, ErrorCode::Forbidden, "{m} by {:?}", who.role);
                assert_eq!(e.message, "missing scope: operator.pairing");
            }
        }
        let op = ctx(Role::Operator, &[scope::OPERATOR_PAIRING]);
        let created = call(&op, method::JOIN_TOKEN_CREATE, json!({ "uses": 2 })).unwrap();
        let secret = created["token"].as_str().expect("the secret").to_string();
        assert!(
            secret.starts_with("cnjoin_") && secret.len() > 40,
            "{secret}"
        );
        let id = created["joinToken"]["id"]
            .as_str()
            .expect("an id")
            .to_string();
        assert_eq!(id.len(), 12);
        assert_eq!(created["joinToken"]["state"], "active");
        assert_eq!(created["joinToken"]["uses"], 2);
        let e = call(&op, method::JOIN_TOKEN_CREATE, json!({ "ttl": 5 })).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let admin = ctx(Role::Operator, &[scope::OPERATOR_ADMIN]);
        let list = call(&admin, method::JOIN_TOKEN_LIST, json!({})).unwrap();
        assert_eq!(list["joinTokens"][0]["id"], id.as_str());
        assert!(!list.to_string().contains(&secret), "{list}");
        let revoked = call(&op, method::JOIN_TOKEN_REVOKE, json!({ "id": id })).unwrap();
        assert_eq!(revoked["joinToken"]["state"], "revoked");
        let e = call(&op, method::JOIN_TOKEN_REVOKE, json!({ "id": "nope" })).unwrap_err();
        assert_eq!(e.message, "unknown join token id");
    }

    #[test]
    fn other_node_methods_stay_unknown() {
        let node = ctx(Role::Node, &[]);
        for m in [
            "node.pending.pull",
            "node.invoke.result",
            "skills.bins",
            "node.skills",
        ] {
            let e = call(&node, m, json!({})).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert_eq!(e.message, format!("unknown method: {m}"));
        }
    }

    #[test]
    fn invalid_requests_with_an_id_are_answered() {
        let node = ctx(Role::Node, &[]);
        for (text, id) in [
            (r#"{"type":"req","id":"m1","method":7}"#, "m1"),
            (r#"{"type":"req","id":"m2"}"#, "m2"),
            (
                r#"{"type":"req","id":"m3","method":"health","params":1e400}"#,
                "m3",
            ),
            (
                r#"{"id":"m4","method":"health","params":{"x":"\udc00"}}"#,
                "m4",
            ),
        ] {
            match Frame::parse(&handle_text(&shared(), &node, text).to_text()).ok() {
                Some(Frame::Res(r)) => {
                    assert_eq!(r.id, id, "{text}");
                    assert!(!r.ok, "{text}");
                    let e = r.error.expect("error");
                    assert_eq!(e.code, ErrorCode::InvalidRequest, "{text}");
                    assert!(e.message.starts_with("invalid request frame: "), "{text}");
                }
                other => panic!("{text}: unexpected answer: {other:?}"),
            }
        }
        // Without an id to tie it to, the answer goes to "invalid" (as
        // OpenClaw answers); an array is never read as a frame.
        for text in [
            "{nope",
            r#"{"type":"req","id":5,"method":"health"}"#,
            "[]",
            r#"["req","a1","health",{}]"#,
        ] {
            match Frame::parse(&handle_text(&shared(), &node, text).to_text()).ok() {
                Some(Frame::Res(r)) => {
                    assert_eq!(r.id, "invalid", "{text}");
                    assert!(!r.ok, "{text}");
                }
                other => panic!("{text}: unexpected answer: {other:?}"),
            }
        }
    }

    #[test]
    fn answers_keep_the_request_id() {
        let node = ctx(Role::Node, &[]);
        let text =
            r#"{"type":"req","id":"7","method":"node.pluginTools.update","params":{"tools":[]}}"#;
        match Frame::parse(&handle_text(&shared(), &node, text).to_text()).ok() {
            Some(Frame::Res(r)) => {
                assert_eq!(r.id, "7");
                assert!(r.ok);
                assert_eq!(r.payload, Some(json!({ "nodeId": "dev-1", "tools": [] })));
            }
            other => panic!("unexpected answer: {other:?}"),
        }
    }

    /// `clawnode.device.pending` (the Instances page's poll): the waiting
    /// requests from memory, with what the page shows, for
    /// `operator.pairing` only.
    #[test]
    fn pending_requests_are_listed_for_operators_with_the_pairing_scope() {
        let listen = "127.0.0.1:0".parse().expect("address");
        let mut config = GatewayConfig::new(listen, None, PresenceEntry::default());
        config.settings.tuning.admission = crate::config::Admission::Manual;
        let shared = Shared::new(
            config,
            std::sync::Arc::new(crate::gateway::registry::MemoryRegistry::new()),
        );
        let device = crate::gateway::registry::Device {
            id: "ab".repeat(32),
            public_key: "pk".into(),
            role: Some(Role::Node),
            address: Some("192.0.2.7".parse().expect("address")),
            display_name: Some("web-<b>1</b>".into()),
            join_token: None,
        };
        let admitted = shared.admit(&device).expect("admit");
        let crate::gateway::state::Admit::Pending { request_id, .. } = admitted else {
            panic!("a new node under manual admission waits: {admitted:?}");
        };
        let req = Request {
            id: "1".into(),
            method: method::DEVICE_PENDING.into(),
            params: Value::Null,
        };
        let page = ctx(Role::Operator, &["operator.read", "operator.pairing"]);
        let answer = handle(&shared, &page, &req)
            .map(Answer::into_value)
            .unwrap();
        assert_eq!(answer["max"], 1000);
        assert!(answer["ts"].as_u64().is_some(), "{answer}");
        let pending = answer["pending"].as_array().expect("pending");
        assert_eq!(pending.len(), 1, "{answer}");
        let p = &pending[0];
        assert_eq!(p["requestId"], request_id.as_str());
        assert_eq!(p["deviceId"], device.id.as_str());
        assert_eq!(
            p["displayName"], "web-<b>1</b>",
            "as sent: the page escapes"
        );
        assert_eq!(p["remoteIp"], "192.0.2.7");
        assert!(p["ts"].as_u64().is_some(), "{p}");
        for who in [
            ctx(Role::Operator, &["operator.read"]),
            ctx(Role::Node, &[]),
        ] {
            let refused = handle(&shared, &who, &req).map(Answer::into_value);
            assert_eq!(refused.unwrap_err().code, ErrorCode::Forbidden);
        }
        let admin = ctx(Role::Operator, &["operator.admin"]);
        assert!(handle(&shared, &admin, &req).is_ok());
    }
}
