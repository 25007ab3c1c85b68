//! Error shapes and codes, as OpenClaw sends them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Top-level `error.code`. Unknown codes from a newer peer are kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ErrorCode {
    InvalidRequest,
    Forbidden,
    Unavailable,
    NotPaired,
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotPaired => "NOT_PAIRED",
            ErrorCode::Other(s) => s,
        }
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "INVALID_REQUEST" => ErrorCode::InvalidRequest,
            "FORBIDDEN" => ErrorCode::Forbidden,
            "UNAVAILABLE" => ErrorCode::Unavailable,
            "NOT_PAIRED" => ErrorCode::NotPaired,
            _ => ErrorCode::Other(s),
        }
    }
}

impl From<ErrorCode> for String {
    fn from(c: ErrorCode) -> String {
        c.as_str().to_string()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error.details.code`: the precise reason a connect (or call) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDetailCode {
    AuthTokenMissing,
    AuthTokenMismatch,
    AuthRateLimited,
    /// A valid credential that does not cover the role asked for (the
    /// join token asking for role operator).
    AuthScopeMismatch,
    /// A device token that is not this device's current token for the
    /// role asked for (rotated, revoked, another device's, or never issued).
    AuthDeviceTokenMismatch,
    ProtocolMismatch,
    DeviceIdentityRequired,
    DeviceAuthSignatureInvalid,
    DeviceAuthDeviceIdMismatch,
    DeviceAuthNonceRequired,
    DeviceAuthNonceMismatch,
    DeviceAuthSignatureExpired,
    DeviceAuthPublicKeyInvalid,
    PairingRequired,
    PairingChanged,
    /// clawnode's own: the instance id is pinned to another device key.
    InstanceIdPinned,
    /// clawnode's own: an operator revoked this device.
    DeviceRevoked,
    /// clawnode's own: an operator rejected this device's pairing request.
    DeviceRejected,
    /// clawnode's own: too many pairing requests wait; not stored.
    PairingQueueFull,
}

impl ErrorDetailCode {
    pub const ALL: [ErrorDetailCode; 19] = [
        ErrorDetailCode::AuthTokenMissing,
        ErrorDetailCode::AuthTokenMismatch,
        ErrorDetailCode::AuthRateLimited,
        ErrorDetailCode::AuthScopeMismatch,
        ErrorDetailCode::AuthDeviceTokenMismatch,
        ErrorDetailCode::ProtocolMismatch,
        ErrorDetailCode::DeviceIdentityRequired,
        ErrorDetailCode::DeviceAuthSignatureInvalid,
        ErrorDetailCode::DeviceAuthDeviceIdMismatch,
        ErrorDetailCode::DeviceAuthNonceRequired,
        ErrorDetailCode::DeviceAuthNonceMismatch,
        ErrorDetailCode::DeviceAuthSignatureExpired,
        ErrorDetailCode::DeviceAuthPublicKeyInvalid,
        ErrorDetailCode::PairingRequired,
        ErrorDetailCode::PairingChanged,
        ErrorDetailCode::InstanceIdPinned,
        ErrorDetailCode::DeviceRevoked,
        ErrorDetailCode::DeviceRejected,
        ErrorDetailCode::PairingQueueFull,
    ];

    /// A refused credential: the shared token, or the device's identity
    /// and signature (`AUTH_*`, `DEVICE_*`).
    pub fn is_auth_failure(self) -> bool {
        matches!(
            self,
            ErrorDetailCode::AuthTokenMissing
                | ErrorDetailCode::AuthTokenMismatch
                | ErrorDetailCode::AuthRateLimited
                | ErrorDetailCode::AuthScopeMismatch
                | ErrorDetailCode::AuthDeviceTokenMismatch
                | ErrorDetailCode::DeviceIdentityRequired
                | ErrorDetailCode::DeviceAuthSignatureInvalid
                | ErrorDetailCode::DeviceAuthDeviceIdMismatch
                | ErrorDetailCode::DeviceAuthNonceRequired
                | ErrorDetailCode::DeviceAuthNonceMismatch
                | ErrorDetailCode::DeviceAuthSignatureExpired
                | ErrorDetailCode::DeviceAuthPublicKeyInvalid
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorDetailCode::AuthTokenMissing => "AUTH_TOKEN_MISSING",
            ErrorDetailCode::AuthTokenMismatch => "AUTH_TOKEN_MISMATCH",
            ErrorDetailCode::AuthRateLimited => "AUTH_RATE_LIMITED",
            ErrorDetailCode::AuthScopeMismatch => "AUTH_SCOPE_MISMATCH",
            ErrorDetailCode::AuthDeviceTokenMismatch => "AUTH_DEVICE_TOKEN_MISMATCH",
            ErrorDetailCode::ProtocolMismatch => "PROTOCOL_MISMATCH",
            ErrorDetailCode::DeviceIdentityRequired => "DEVICE_IDENTITY_REQUIRED",
            ErrorDetailCode::DeviceAuthSignatureInvalid => "DEVICE_AUTH_SIGNATURE_INVALID",
            ErrorDetailCode::DeviceAuthDeviceIdMismatch => "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            ErrorDetailCode::DeviceAuthNonceRequired => "DEVICE_AUTH_NONCE_REQUIRED",
            ErrorDetailCode::DeviceAuthNonceMismatch => "DEVICE_AUTH_NONCE_MISMATCH",
            ErrorDetailCode::DeviceAuthSignatureExpired => "DEVICE_AUTH_SIGNATURE_EXPIRED",
            ErrorDetailCode::DeviceAuthPublicKeyInvalid => "DEVICE_AUTH_PUBLIC_KEY_INVALID",
            ErrorDetailCode::PairingRequired => "PAIRING_REQUIRED",
            ErrorDetailCode::PairingChanged => "PAIRING_CHANGED",
            ErrorDetailCode::InstanceIdPinned => "INSTANCE_ID_PINNED",
            ErrorDetailCode::DeviceRevoked => "DEVICE_REVOKED",
            ErrorDetailCode::DeviceRejected => "DEVICE_REJECTED",
            ErrorDetailCode::PairingQueueFull => "PAIRING_QUEUE_FULL",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorDetailCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// `{code, message, details?, retryable?, retryAfterMs?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorShape {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorShape {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorShape {
            code,
            message: message.into(),
            details: None,
            retryable: None,
            retry_after_ms: None,
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// Sets `details.code`.
    pub fn with_detail(mut self, detail: ErrorDetailCode) -> Self {
        self.details = Some(json!({ "code": detail.as_str() }));
        self
    }

    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retryable = Some(true);
        self.retry_after_ms = Some(ms);
        self
    }

    /// `details.code` as a known code, if present and known.
    pub fn detail_code(&self) -> Option<ErrorDetailCode> {
        self.detail_code_str().and_then(ErrorDetailCode::parse)
    }

    /// `details.code` verbatim.
    pub fn detail_code_str(&self) -> Option<&str> {
        self.details.as_ref()?.get("code")?.as_str()
    }
}

impl std::fmt::Display for ErrorShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(d) = self.detail_code_str() {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_vectors::wire;
    use crate::protocol::Frame;

    #[test]
    fn captured_errors_parse_with_their_codes() {
        let all: Value = serde_json::from_str(&wire("09-errors.json")).unwrap();
        let expect = [
            (
                "node connect without device identity",
                ErrorCode::NotPaired,
                Some(ErrorDetailCode::DeviceIdentityRequired),
            ),
            (
                "system-event sent by a role node connection",
                ErrorCode::InvalidRequest,
                None,
            ),
            (
                "node.event right after first pairing (retry later)",
                ErrorCode::Unavailable,
                Some(ErrorDetailCode::PairingChanged),
            ),
        ];
        for (key, code, detail) in expect {
            let frame: Frame = serde_json::from_value(all[key].clone()).unwrap();
            let Frame::Res(res) = frame else {
                panic!("{key}: not a response")
            };
            let err = res.error.expect("error");
            assert_eq!(err.code, code, "{key}");
            assert_eq!(err.detail_code(), detail, "{key}");
        }
    }

    #[test]
    fn unknown_codes_survive_a_round_trip() {
        let e: ErrorShape =
            serde_json::from_str(r#"{"code":"SOMETHING_NEW","message":"m"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Other("SOMETHING_NEW".into()));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"SOMETHING_NEW","message":"m"}"#
        );
    }

    #[test]
    fn detail_codes_round_trip() {
        for c in ErrorDetailCode::ALL {
            assert_eq!(ErrorDetailCode::parse(c.as_str()), Some(c));
        }
        let e = ErrorShape::new(ErrorCode::Forbidden, "x")
            .with_detail(ErrorDetailCode::AuthTokenMismatch);
        assert_eq!(e.to_string(), "FORBIDDEN: x (AUTH_TOKEN_MISMATCH)");
    }
}
