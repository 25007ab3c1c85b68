//! The device pairing methods, with OpenClaw's request and response shapes
//! (`device.pair.list|approve|reject|remove`; `openclaw devices ...` and
//! `clawnode devices ...` speak them) and clawnode's `clawnode.device.revoke`.
//! Every one needs `operator.pairing` (OpenClaw's scope; `operator.admin`
//! implies it). Changes are stored before the answer; reject, revoke and
//! remove close the device's live connections at once. Each change is
//! logged at info with the device id, its last address and who made it:
//! one line per change (an authenticated operator's stored action, not
//! something a client can flood; what clients cause is summed up, see
//! `log_summary`).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tracing::info;

use super::methods::ConnContext;
use super::pairing::MAX_PENDING;
use super::registry::{DeviceRecord, DeviceState};
use super::state::Shared;
use crate::protocol::{method, scope, ErrorCode, ErrorShape};

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
