//! Pending pairing requests (`[gateway] admission = "manual"`): a new node
//! device with a valid proof and token is refused with `PAIRING_REQUIRED`
//! and a request id until an operator approves it. Requests live in memory,
//! as OpenClaw's do: they expire after [`PENDING_TTL_MS`] (the device's
//! next attempt makes a new one) and are bounded ([`MAX_PENDING`]); past
//! the bound a new device is refused and nothing is stored.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use super::auth::{ConnectRequest, Rejection};
use super::registry::{Device, DeviceState};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::protocol::{ErrorCode, ErrorDetailCode, ErrorShape};

/// A request not renewed for this long is dropped (OpenClaw: 5 minutes).
pub const PENDING_TTL_MS: u64 = 5 * 60 * 1000;
/// At most this many requests wait at once.
pub const MAX_PENDING: usize = 1_000;
/// The `retryAfterMs` a pending device is told.
pub const PENDING_RETRY_AFTER_MS: u64 = 2_000;

/// One waiting device.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request_id: String,
    pub device: Device,
    pub created_ms: u64,
    /// Its last attempt; the request expires [`PENDING_TTL_MS`] after it.
    pub last_ms: u64,
}

/// A pending request as `device.pair.list` shows it (OpenClaw's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingView {
    pub request_id: String,
    pub device_id: String,
    pub public_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    /// When it was requested (ms since the Unix epoch).
    pub ts: u64,
    /// The created join token it asked with (clawnode's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token_id: Option<String>,
}

impl Pending {
    pub fn view(&self) -> PendingView {
        let role = self.device.role.map(|r| r.as_str().to_string());
        PendingView {
            request_id: self.request_id.clone(),
            device_id: self.device.id.clone(),
            public_key: self.device.public_key.clone(),
            display_name: self.device.display_name.clone(),
            roles: role.iter().cloned().collect(),
            role,
            remote_ip: self.device.address.map(|a| a.to_string()),
            ts: self.created_ms,
            join_token_id: self.device.join_token.clone(),
        }
    }
}

/// What a new device's attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// A new request (logged), or the device's waiting one (renewed).
    New(String),
    Waiting(String),
    /// [`MAX_PENDING`] requests wait already: refused, not stored.
    Full,
}

/// The waiting devices, keyed by device id.
#[derive(Debug, Default)]
pub struct PendingRequests {
    by_device: HashMap<String, Pending>,
}

impl PendingRequests {
    /// Records `device`'s attempt at `now`.
    pub fn request(&mut self, device: &Device, now: u64) -> Requested {
        self.expire(now);
        if let Some(pending) = self.by_device.get_mut(&device.id) {
            pending.last_ms = now;
            pending.device = device.clone();
            return Requested::Waiting(pending.request_id.clone());
        }
        if self.by_device.len() >= MAX_PENDING {
            return Requested::Full;
        }
        let request_id = uuid::Uuid::new_v4().to_string();
        self.by_device.insert(
            device.id.clone(),
            Pending {
                request_id: request_id.clone(),
                device: device.clone(),
                created_ms: now,
                last_ms: now,
            },
        );
        Requested::New(request_id)
    }

    /// Takes the request with this request id, or of this device id.
    pub fn take(&mut self, id: &str, now: u64) -> Option<Pending> {
        self.expire(now);
        let device_id = if self.by_device.contains_key(id) {
            id.to_string()
        } else {
            self.by_device
                .values()
                .find(|p| p.request_id == id)?
                .device
                .id
                .clone()
        };
        self.by_device.remove(&device_id)
    }

    /// The waiting requests, oldest first.
    pub fn list(&mut self, now: u64) -> Vec<PendingView> {
        self.expire(now);
        let mut all: Vec<&Pending> = self.by_device.values().collect();
        all.sort_by_key(|p| (p.created_ms, p.request_id.clone()));
        all.into_iter().map(Pending::view).collect()
    }

    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    fn expire(&mut self, now: u64) {
        self.by_device
            .retain(|_, p| now.saturating_sub(p.last_ms) < PENDING_TTL_MS);
    }
}

/// The refusal of a device waiting for approval, in OpenClaw's shape:
/// `NOT_PAIRED`, `details.code` `PAIRING_REQUIRED` with the request id,
/// and `retryAfterMs`.
pub fn pairing_required(req: &ConnectRequest, device_id: &str, request_id: &str) -> Rejection {
    let mut error = ErrorShape::new(
        ErrorCode::NotPaired,
        format!(
            "pairing required: device approval is required; on the gateway host run \
             `clawnode devices approve {request_id}`"
        ),
    )
    .with_retry_after(PENDING_RETRY_AFTER_MS);
    error.details = Some(json!({
        "code": ErrorDetailCode::PairingRequired.as_str(),
        "reason": "not-paired",
        "requestId": request_id,
        "deviceId": device_id,
        "recommendedNextStep": "wait_then_retry",
        "pauseReconnect": false,
        "retryable": true,
    }));
    Rejection::reply(&req.id, error, CloseCode::Policy)
}

/// The refusal of a device an operator rejected or revoked.
pub fn device_refused(req: &ConnectRequest, device_id: &str, state: DeviceState) -> Rejection {
    let detail = match state {
        DeviceState::Rejected => ErrorDetailCode::DeviceRejected,
        _ => ErrorDetailCode::DeviceRevoked,
    };
    let mut error = ErrorShape::new(
        ErrorCode::NotPaired,
        format!(
            "device {} was {} by an operator; it connects again once approved \
             (`clawnode devices approve <deviceId>`)",
            crate::safe_text::escape(device_id),
            state.as_str()
        ),
    )
    .with_retry_after(PENDING_RETRY_AFTER_MS);
    error.details = Some(json!({ "code": detail.as_str(), "deviceId": device_id }));
    Rejection::reply(&req.id, error, CloseCode::Policy)
}

/// The refusal of a new device when [`MAX_PENDING`] requests wait.
pub fn queue_full(req: &ConnectRequest) -> Rejection {
    Rejection::reply(
        &req.id,
        ErrorShape::new(
            ErrorCode::Unavailable,
            format!(
                "{MAX_PENDING} pairing requests are waiting already; approve or reject some \
                 (`clawnode devices list`), or retry later"
            ),
        )
        .with_detail(ErrorDetailCode::PairingQueueFull)
        .with_retry_after(60_000),
        CloseCode::Again,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Role;

    fn device(id: &str) -> Device {
        Device {
            id: id.to_string(),
            public_key: format!("pk-{id}"),
            role: Some(Role::Node),
            address: None,
            display_name: None,
            join_token: None,
        }
    }

    #[test]
    fn requests_are_renewed_expire_and_are_bounded() {
        let mut pending = PendingRequests::default();
        let Requested::New(id) = pending.request(&device("a"), 0) else {
            panic!("first attempt makes a request");
        };
        assert_eq!(
            pending.request(&device("a"), 1_000),
            Requested::Waiting(id.clone())
        );
        // Renewed at 1 s: still there just before 1 s + TTL.
        assert_eq!(pending.list(PENDING_TTL_MS + 999).len(), 1);
        assert!(pending.list(PENDING_TTL_MS + 1_000).is_empty());
        for n in 0..MAX_PENDING {
            assert!(matches!(
                pending.request(&device(&format!("d{n}")), 0),
                Requested::New(_)
            ));
        }
        assert_eq!(pending.request(&device("over"), 0), Requested::Full);
        assert_eq!(pending.len(), MAX_PENDING);
        // Taken by device id or by request id.
        assert!(pending.take("d0", 0).is_some());
        let Requested::New(id) = pending.request(&device("z"), 0) else {
            panic!("a freed slot takes a new request");
        };
        assert_eq!(pending.take(&id, 0).map(|p| p.device.id), Some("z".into()));
    }
}
