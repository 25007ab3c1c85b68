//! The device pairing methods, with OpenClaw's request and response shapes
//! (`device.pair.list|approve|reject|remove`, `device.token.rotate|revoke`;
//! `openclaw devices ...` and `clawnode devices ...` speak them) and
//! clawnode's `clawnode.device.revoke`. Every one needs `operator.pairing`
//! (OpenClaw's scope; `operator.admin` implies it). Changes are stored
//! before the answer; reject, revoke and remove close the device's live
//! connections at once, a token's rotation or revocation those of its role.
//! Each change is logged at info with the device id, its last address and
//! who made it: one line per change (an authenticated operator's stored
//! action, not something a client can flood; what clients cause is summed
//! up, see `log_summary`).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

use super::auth::{grants, Credential};
use super::context::ConnContext;
use super::pairing::MAX_PENDING;
use super::registry::{token_digest, DeviceRecord, DeviceState, TokenChange};
use super::state::Shared;
use crate::protocol::{method, scope, ErrorCode, ErrorShape, Role};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestIdParams {
    request_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdParams {
    device_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenameParams {
    device_id: String,
    label: String,
}

/// `device.token.rotate { deviceId, role, scopes? }`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateParams {
    device_id: String,
    role: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// `device.token.revoke { deviceId, role }`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeTokenParams {
    device_id: String,
    role: String,
}

/// The longest operator label, in characters.
pub const MAX_LABEL_CHARS: usize = 128;

fn unavailable(e: anyhow::Error) -> ErrorShape {
    tracing::error!(error = %format!("{e:#}"), "cannot change the device registry");
    ErrorShape::new(
        ErrorCode::Unavailable,
        format!("the device registry was not changed: {e:#}"),
    )
}

fn non_empty<'a>(what: &str, method: &str, id: &'a str) -> Result<&'a str, ErrorShape> {
    let id = id.trim();
    if id.is_empty() {
        return Err(ErrorShape::invalid_request(format!(
            "invalid {method} params: {what} is empty"
        )));
    }
    Ok(id)
}

/// Who made a change, for `approvedBy`: the caller's device, else its name.
pub(super) fn caller(ctx: &ConnContext) -> String {
    ctx.device_id
        .clone()
        .or_else(|| ctx.client.display_name.clone())
        .unwrap_or_else(|| ctx.client.id.clone())
}

/// Where a device last connected from, for the log (`-`: never).
fn address(record: &DeviceRecord) -> &str {
    record.last_address.as_deref().unwrap_or("-")
}

/// A record as `paired` lists it: ours, plus OpenClaw's names for the
/// same facts (`createdAtMs`, `remoteIp`, `role`, `operatorLabel`).
pub fn paired_view(record: &DeviceRecord, connected: bool) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        let mut extra = Map::new();
        extra.insert("createdAtMs".into(), json!(record.first_seen_ms));
        extra.insert("lastSeenAtMs".into(), json!(record.last_seen_ms));
        if let Some(ip) = &record.last_address {
            extra.insert("remoteIp".into(), json!(ip));
        }
        if let Some(role) = record.roles.first() {
            extra.insert("role".into(), json!(role));
        }
        if let Some(label) = &record.label {
            extra.insert("operatorLabel".into(), json!(label));
        }
        extra.insert("connected".into(), json!(connected));
        map.extend(extra);
    }
    v
}

/// `device.pair.list`: `{ pending, paired }` as OpenClaw answers it, and
/// clawnode's `refused` (rejected and revoked devices).
pub fn list(shared: &Shared, ctx: &ConnContext) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let (pending, records) = shared.pairing_list().map_err(unavailable)?;
    let (paired, refused): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.state == DeviceState::Approved);
    let view = |r: &&DeviceRecord| paired_view(r, shared.is_device_connected(&r.device_id));
    Ok(json!({
        "pending": pending,
        "paired": paired.iter().map(view).collect::<Vec<_>>(),
        "refused": refused.iter().map(view).collect::<Vec<_>>(),
    }))
}

/// `clawnode.device.pending`: `{ pending, max, ts }` — the pending requests
/// as `device.pair.list` shows them, oldest first, from the gateway's memory
/// (at most `max`, [`MAX_PENDING`]), and the gateway's clock (`ts`, for
/// their ages). No registry read: the Instances page polls it.
pub fn pending(shared: &Shared, ctx: &ConnContext) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    Ok(json!({
        "pending": shared.pending_requests(),
        "max": MAX_PENDING,
        "ts": crate::clock::now_ms(),
    }))
}

/// `device.pair.approve { requestId }`: a pending request (its request id
/// or device id), or a rejected or revoked device by its id.
pub fn approve(
    shared: &Shared,
    ctx: &ConnContext,
    params: RequestIdParams,
) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let id = non_empty("requestId", method::DEVICE_PAIR_APPROVE, &params.request_id)?;
    let by = caller(ctx);
    let Some((request_id, record)) = shared.approve(id, &by).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request("unknown requestId"));
    };
    shared.metrics.admission("approved");
    info!(
        device_id = record.device_id.as_str(),
        address = address(&record),
        request_id = request_id.as_str(),
        approved_by = by.as_str(),
        "device approved by an operator"
    );
    Ok(json!({ "requestId": request_id, "device": paired_view(&record, false) }))
}

/// `device.pair.reject { requestId }`: the device is refused until
/// approved again; its connections close.
pub fn reject(
    shared: &Shared,
    ctx: &ConnContext,
    params: RequestIdParams,
) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let id = non_empty("requestId", method::DEVICE_PAIR_REJECT, &params.request_id)?;
    refuse(shared, ctx, id, DeviceState::Rejected).map(
        |(request_id, record)| json!({ "requestId": request_id, "deviceId": record.device_id }),
    )
}

/// `clawnode.device.revoke { deviceId }`: as reject, for an approved device.
pub fn revoke(
    shared: &Shared,
    ctx: &ConnContext,
    params: DeviceIdParams,
) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let id = non_empty("deviceId", method::DEVICE_REVOKE, &params.device_id)?;
    refuse(shared, ctx, id, DeviceState::Revoked).map(
        |(_, record)| json!({ "deviceId": record.device_id, "device": paired_view(&record, false) }),
    )
}

fn refuse(
    shared: &Shared,
    ctx: &ConnContext,
    id: &str,
    state: DeviceState,
) -> Result<(String, DeviceRecord), ErrorShape> {
    let Some((request_id, record)) = shared.refuse(id, state).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request(match state {
            DeviceState::Rejected => "unknown requestId",
            _ => "unknown deviceId",
        }));
    };
    shared.metrics.admission(state.as_str());
    info!(
        device_id = record.device_id.as_str(),
        address = address(&record),
        state = state.as_str(),
        by = caller(ctx).as_str(),
        "device {} by an operator; its connections are closed",
        state.as_str()
    );
    Ok((request_id, record))
}

/// `device.pair.remove { deviceId }`: the record and its pins go; its
/// connections close. Under `admission = "token"` it may join again.
pub fn remove(
    shared: &Shared,
    ctx: &ConnContext,
    params: DeviceIdParams,
) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let id = non_empty("deviceId", method::DEVICE_PAIR_REMOVE, &params.device_id)?;
    let Some(record) = shared.remove_device(id).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request("unknown deviceId"));
    };
    shared.metrics.admission("removed");
    info!(
        device_id = record.device_id.as_str(),
        address = address(&record),
        by = caller(ctx).as_str(),
        "device removed by an operator; its connections are closed"
    );
    Ok(json!({ "deviceId": record.device_id, "removedAtMs": crate::clock::now_ms() }))
}

/// `device.pair.rename { deviceId, label }`: the operator's label, shown
/// before the host name; `{ deviceId, label }` as OpenClaw answers.
pub fn rename(
    shared: &Shared,
    ctx: &ConnContext,
    params: RenameParams,
) -> Result<Value, ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let id = non_empty("deviceId", method::DEVICE_PAIR_RENAME, &params.device_id)?;
    let label = params.label.trim();
    if label.is_empty() {
        return Err(ErrorShape::invalid_request("label required"));
    }
    if label.chars().count() > MAX_LABEL_CHARS || label.chars().any(crate::safe_text::is_unsafe) {
        return Err(ErrorShape::invalid_request(format!(
            "invalid label: at most {MAX_LABEL_CHARS} characters, no control or bidi characters"
        )));
    }
    let Some(record) = shared.rename_device(id, label).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request("unknown deviceId"));
    };
    info!(
        device_id = record.device_id.as_str(),
        label,
        by = caller(ctx).as_str(),
        "device renamed by an operator"
    );
    Ok(json!({ "deviceId": record.device_id, "label": label }))
}

/// The target of a token change, checked as OpenClaw checks it: the caller
/// needs `operator.pairing`; a node (any non-operator) token needs
/// `operator.admin`; a caller let in by its own device token manages only
/// its own device unless it has `operator.admin`. Refused with `denied`
/// (OpenClaw's message), the reason in the gateway's log.
fn token_target(
    ctx: &ConnContext,
    method: &str,
    device_id: &str,
    role: &str,
    denied: &str,
) -> Result<(String, Role), ErrorShape> {
    ctx.require_operator_scope(scope::OPERATOR_PAIRING)?;
    let device_id = non_empty("deviceId", method, device_id)?;
    let role_name = non_empty("role", method, role)?;
    let Some(role) = Role::parse(role_name) else {
        return Err(ErrorShape::invalid_request(format!(
            "invalid {method} params: unknown role (node or operator)"
        )));
    };
    let admin = grants(&ctx.scopes, scope::OPERATOR_ADMIN);
    let deny = |reason: &str| {
        tracing::warn!(device_id, role = role.as_str(), reason, "{denied}");
        Err(ErrorShape::invalid_request(denied))
    };
    let own_device = ctx.device_id.as_deref() == Some(device_id);
    if ctx.credential == Credential::DeviceToken && !own_device && !admin {
        return deny("device-ownership-mismatch");
    }
    if role != Role::Operator && !admin {
        return deny("role-management-requires-admin");
    }
    Ok((device_id.to_string(), role))
}

/// A non-admin caller cannot rotate or revoke a broader operator token
/// than it holds: the first scope of `scopes` the caller lacks.
fn missing_caller_scope<'a>(
    ctx: &ConnContext,
    role: Role,
    scopes: &'a [String],
) -> Option<&'a str> {
    if role != Role::Operator {
        return None;
    }
    scopes
        .iter()
        .find(|s| !grants(&ctx.scopes, s))
        .map(String::as_str)
}

/// `device.token.rotate { deviceId, role, scopes? }`: the device's token
/// for `role` stops working at once and its connections of that role
/// close. A caller rotating its own token with that token gets the new one
/// in the answer (`tokenDelivery: "in-band"`); anyone else does not
/// (`"withheld-cross-device"`): the device is issued a new token on its
/// next connect with the join (or operator) token, as OpenClaw's retired
/// token cannot authenticate that reconnect either. `scopes` (operator
/// tokens) narrows the grant within what was approved.
pub fn rotate_token(
    shared: &Shared,
    ctx: &ConnContext,
    params: RotateParams,
) -> Result<Value, ErrorShape> {
    const DENIED: &str = "device token rotation denied";
    let m = method::DEVICE_TOKEN_ROTATE;
    let (device_id, role) = token_target(ctx, m, &params.device_id, &params.role, DENIED)?;
    let Some(current) = shared.device_token(&device_id, role).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request("unknown deviceId/role"));
    };
    let scopes = params.scopes.map(|mut s| {
        s.iter_mut().for_each(|x| *x = x.trim().to_string());
        s.retain(|x| !x.is_empty());
        s.sort();
        s.dedup();
        s
    });
    if let Some(scopes) = &scopes {
        if role == Role::Node && !scopes.is_empty() {
            return Err(ErrorShape::invalid_request(format!(
                "invalid {m} params: a node token grants no scopes"
            )));
        }
        if let Some(beyond) = scopes.iter().find(|s| !grants(&current.scopes, s)) {
            tracing::warn!(
                device_id,
                scope = beyond.as_str(),
                "{DENIED}: scope-outside-approved-baseline"
            );
            return Err(ErrorShape::invalid_request(DENIED));
        }
    }
    let target_scopes = scopes.clone().unwrap_or_else(|| current.scopes.clone());
    if let Some(missing) = missing_caller_scope(ctx, role, &target_scopes) {
        tracing::warn!(device_id, scope = missing, "{DENIED}: caller-missing-scope");
        return Err(ErrorShape::invalid_request(DENIED));
    }
    // In band only to the device itself, let in by this very token.
    let in_band = ctx.credential == Credential::DeviceToken
        && ctx.device_id.as_deref() == Some(device_id.as_str())
        && ctx.role == role;
    let token = in_band.then(super::state::new_device_token);
    let Some(record) = shared
        .change_device_token(TokenChange::Rotate {
            device_id: device_id.clone(),
            role,
            sha256: token.as_deref().map(token_digest),
            scopes,
            now_ms: crate::clock::now_ms(),
        })
        .map_err(unavailable)?
    else {
        return Err(ErrorShape::invalid_request("unknown deviceId/role"));
    };
    info!(
        device_id = device_id.as_str(),
        role = role.as_str(),
        in_band,
        "device token rotated by an operator; the device's connections of that role are closed"
    );
    let mut answer = json!({
        "deviceId": device_id,
        "role": role.as_str(),
        "scopes": record.scopes,
        "rotatedAtMs": record.rotated_at_ms.unwrap_or(record.issued_at_ms),
        "tokenDelivery": if in_band { "in-band" } else { "withheld-cross-device" },
    });
    if let Some(token) = token {
        answer["token"] = json!(token);
    }
    Ok(answer)
}

/// `device.token.revoke { deviceId, role }`: the device's token for `role`
/// stops working at once and its connections of that role close; it is
/// issued a new one on its next connect with the join (or operator) token.
/// To keep a device out altogether, revoke the device
/// (`clawnode.device.revoke`).
pub fn revoke_token(
    shared: &Shared,
    ctx: &ConnContext,
    params: RevokeTokenParams,
) -> Result<Value, ErrorShape> {
    const DENIED: &str = "device token revocation denied";
    let m = method::DEVICE_TOKEN_REVOKE;
    let (device_id, role) = token_target(ctx, m, &params.device_id, &params.role, DENIED)?;
    let Some(current) = shared.device_token(&device_id, role).map_err(unavailable)? else {
        return Err(ErrorShape::invalid_request("unknown deviceId/role"));
    };
    if let Some(missing) = missing_caller_scope(ctx, role, &current.scopes) {
        tracing::warn!(device_id, scope = missing, "{DENIED}: caller-missing-scope");
        return Err(ErrorShape::invalid_request(DENIED));
    }
    let now = crate::clock::now_ms();
    let Some(record) = shared
        .change_device_token(TokenChange::Revoke {
            device_id: device_id.clone(),
            role,
            now_ms: now,
        })
        .map_err(unavailable)?
    else {
        return Err(ErrorShape::invalid_request("unknown deviceId/role"));
    };
    info!(
        device_id = device_id.as_str(),
        role = role.as_str(),
        "device token revoked by an operator; the device's connections of that role are closed"
    );
    Ok(json!({
        "deviceId": device_id,
        "role": role.as_str(),
        "revokedAtMs": record.revoked_at_ms.unwrap_or(now),
    }))
}
