//! Device identity proofs: the signed payloads (v2, v3), signing and
//! verification, exactly as OpenClaw builds them.
//!
//! `device.id` is the lowercase hex SHA-256 of the raw 32-byte Ed25519 public
//! key; keys and signatures travel as unpadded base64url.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::connect::{ConnectParams, DeviceProof};
use super::errors::ErrorDetailCode;

/// How far `signedAt` may be from the verifier's clock (OpenClaw: 2 min).
pub const MAX_SIGNATURE_SKEW_MS: u64 = 120_000;

/// Everything a device signature covers.
#[derive(Debug, Clone)]
pub struct DeviceAuthPayload<'a> {
    pub device_id: &'a str,
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub role: &'a str,
    pub scopes: &'a [String],
    pub signed_at_ms: u64,
    pub token: Option<&'a str>,
    pub nonce: &'a str,
    pub platform: Option<&'a str>,
    pub device_family: Option<&'a str>,
}

/// Trims and ASCII-lowercases platform metadata, as OpenClaw does.
fn normalize_metadata(value: Option<&str>) -> String {
    value
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

impl DeviceAuthPayload<'_> {
    /// `v3|deviceId|clientId|clientMode|role|scopes|signedAt|token|nonce|platform|deviceFamily`
    pub fn v3(&self) -> String {
        format!(
            "{}|{}|{}",
            self.v2_fields("v3"),
            normalize_metadata(self.platform),
            normalize_metadata(self.device_family)
        )
    }

    /// `v2|deviceId|clientId|clientMode|role|scopes|signedAt|token|nonce`
    pub fn v2(&self) -> String {
        self.v2_fields("v2")
    }

    fn v2_fields(&self, version: &str) -> String {
        [
            version,
            self.device_id,
            self.client_id,
            self.client_mode,
            self.role,
            &self.scopes.join(","),
            &self.signed_at_ms.to_string(),
            self.token.unwrap_or(""),
            self.nonce,
        ]
        .join("|")
    }
}

/// Lowercase hex SHA-256 of a raw public key: the device id.
pub fn device_id_for(public_key: &VerifyingKey) -> String {
    let digest = Sha256::digest(public_key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpadded base64url of the raw public key.
pub fn encode_public_key(public_key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(public_key.as_bytes())
}

/// Signs `payload` (UTF-8) and returns the unpadded base64url signature.
pub fn sign(key: &SigningKey, payload: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes())
}

/// Decodes a base64url public key, tolerating padding and standard base64
/// (OpenClaw normalizes both).
pub fn decode_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes = decode_b64(text)?;
    let raw: [u8; 32] = bytes.try_into().ok()?;
    VerifyingKey::from_bytes(&raw).ok()
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    let cleaned: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(cleaned).ok()
}

/// What the verifier knows independently of the proof.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub nonce: &'a str,
    pub now_ms: u64,
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub role: &'a str,
    pub scopes: &'a [String],
    pub token: Option<&'a str>,
    pub platform: Option<&'a str>,
    pub device_family: Option<&'a str>,
}

impl<'a> Expected<'a> {
    /// What the gateway checks the device proof of `params` against: the
    /// challenge's `nonce`, its clock `now_ms`, and the fields the proof
    /// must cover as `params` states them (client id and mode, role,
    /// scopes, shared token, platform metadata).
    pub fn for_connect(params: &'a ConnectParams, nonce: &'a str, now_ms: u64) -> Expected<'a> {
        Expected {
            nonce,
            now_ms,
            client_id: &params.client.id,
            client_mode: &params.client.mode,
            role: params.role().as_str(),
            scopes: &params.scopes,
            token: params.signature_token(),
            platform: Some(&params.client.platform),
            device_family: params.client.device_family.as_deref(),
        }
    }
}

/// Which payload version a valid signature covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadVersion {
    V2,
    V3,
}

/// A failed device proof: its OpenClaw detail code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeviceAuthError {
    pub code: ErrorDetailCode,
    pub message: &'static str,
}

fn fail(code: ErrorDetailCode, message: &'static str) -> DeviceAuthError {
    DeviceAuthError { code, message }
}

/// Verifies a device proof in OpenClaw's order: id = fingerprint of the key,
/// `signedAt` within the skew, nonce = the challenge, then the signature over
/// the v3 payload (or, for older clients, v2).
pub fn verify(
    proof: &DeviceProof,
    expected: &Expected<'_>,
) -> Result<PayloadVersion, DeviceAuthError> {
    let key = decode_public_key(&proof.public_key).ok_or(fail(
        ErrorDetailCode::DeviceAuthPublicKeyInvalid,
        "device public key invalid",
    ))?;
    if device_id_for(&key) != proof.id {
        return Err(fail(
            ErrorDetailCode::DeviceAuthDeviceIdMismatch,
            "device identity mismatch",
        ));
    }
    if proof.signed_at.abs_diff(expected.now_ms) > MAX_SIGNATURE_SKEW_MS {
        return Err(fail(
            ErrorDetailCode::DeviceAuthSignatureExpired,
            "device signature expired",
        ));
    }
    let nonce = proof.nonce.trim();
    if nonce.is_empty() {
        return Err(fail(
            ErrorDetailCode::DeviceAuthNonceRequired,
            "device nonce required",
        ));
    }
    if nonce != expected.nonce {
        return Err(fail(
            ErrorDetailCode::DeviceAuthNonceMismatch,
            "device nonce mismatch",
        ));
    }
    let invalid = || {
        fail(
            ErrorDetailCode::DeviceAuthSignatureInvalid,
            "device signature invalid",
        )
    };
    let raw: [u8; 64] = decode_b64(&proof.signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(invalid)?;
    let signature = Signature::from_bytes(&raw);
    let payload = DeviceAuthPayload {
        device_id: &proof.id,
        client_id: expected.client_id,
        client_mode: expected.client_mode,
        role: expected.role,
        scopes: expected.scopes,
        signed_at_ms: proof.signed_at,
        token: expected.token,
        nonce,
        platform: expected.platform,
        device_family: expected.device_family,
    };
    if key
        .verify_strict(payload.v3().as_bytes(), &signature)
        .is_ok()
    {
        return Ok(PayloadVersion::V3);
    }
    if key
        .verify_strict(payload.v2().as_bytes(), &signature)
        .is_ok()
    {
        return Ok(PayloadVersion::V2);
    }
    Err(invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_vectors::wire;
    use crate::protocol::Frame;

    fn captured_node_connect() -> ConnectParams {
        let Frame::Req(req) = Frame::parse(&wire("02-node-host.connect.req.json")).unwrap() else {
            panic!("not a request")
        };
        serde_json::from_value(req.params).unwrap()
    }

    #[test]
    fn real_node_host_signature_verifies_as_v3() {
        let p = captured_node_connect();
        let device = p.device.clone().unwrap();
        let key = decode_public_key(&device.public_key).unwrap();
        assert_eq!(device_id_for(&key), device.id);
        let expected = Expected::for_connect(&p, &device.nonce, device.signed_at + 1_000);
        let v = verify(&device, &expected).unwrap();
        assert_eq!(v, PayloadVersion::V3);
    }

    #[test]
    fn real_payload_text_is_what_we_build() {
        let p = captured_node_connect();
        let d = p.device.as_ref().unwrap();
        let payload = DeviceAuthPayload {
            device_id: &d.id,
            client_id: "node-host",
            client_mode: "node",
            role: "node",
            scopes: &[],
            signed_at_ms: d.signed_at,
            token: Some("testtoken123"),
            nonce: &d.nonce,
            platform: Some(" Linux "),
            device_family: Some("Linux"),
        };
        assert_eq!(
            payload.v3(),
            format!(
                "v3|{}|node-host|node|node||1795377499047|testtoken123|{}|linux|linux",
                d.id, d.nonce
            )
        );
        assert_eq!(
            payload.v2(),
            format!(
                "v2|{}|node-host|node|node||1795377499047|testtoken123|{}",
                d.id, d.nonce
            )
        );
    }

    fn fresh_proof(
        payload_of: impl Fn(&DeviceAuthPayload) -> String,
    ) -> (DeviceProof, Vec<String>) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let id = device_id_for(&key.verifying_key());
        let scopes = vec!["operator.read".to_string(), "operator.admin".to_string()];
        let payload = DeviceAuthPayload {
            device_id: &id,
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            signed_at_ms: 1_000_000,
            token: None,
            nonce: "n1",
            platform: Some("linux"),
            device_family: None,
        };
        let signature = sign(&key, &payload_of(&payload));
        let proof = DeviceProof {
            id: id.clone(),
            public_key: encode_public_key(&key.verifying_key()),
            signature,
            signed_at: 1_000_000,
            nonce: "n1".into(),
        };
        (proof, scopes)
    }

    fn expected<'a>(scopes: &'a [String]) -> Expected<'a> {
        Expected {
            nonce: "n1",
            now_ms: 1_000_500,
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes,
            token: None,
            platform: Some("linux"),
            device_family: None,
        }
    }

    #[test]
    fn v2_signatures_verify_too() {
        let (proof, scopes) = fresh_proof(|p| p.v2());
        assert_eq!(verify(&proof, &expected(&scopes)), Ok(PayloadVersion::V2));
        let (proof, scopes) = fresh_proof(|p| p.v3());
        assert_eq!(verify(&proof, &expected(&scopes)), Ok(PayloadVersion::V3));
    }

    #[test]
    fn each_failure_has_its_code() {
        let (proof, scopes) = fresh_proof(|p| p.v3());
        let code = |proof: &DeviceProof, exp: &Expected| verify(proof, exp).unwrap_err().code;

        let mut bad = proof.clone();
        bad.id = "00".repeat(32);
        assert_eq!(
            code(&bad, &expected(&scopes)),
            ErrorDetailCode::DeviceAuthDeviceIdMismatch
        );

        let mut exp = expected(&scopes);
        exp.now_ms = proof.signed_at + MAX_SIGNATURE_SKEW_MS + 1;
        assert_eq!(
            code(&proof, &exp),
            ErrorDetailCode::DeviceAuthSignatureExpired
        );

        let mut exp = expected(&scopes);
        exp.nonce = "other";
        assert_eq!(code(&proof, &exp), ErrorDetailCode::DeviceAuthNonceMismatch);

        let mut bad = proof.clone();
        bad.nonce = " ".into();
        assert_eq!(
            code(&bad, &expected(&scopes)),
            ErrorDetailCode::DeviceAuthNonceRequired
        );

        // A signature over different fields (another role) does not verify.
        let mut exp = expected(&scopes);
        exp.role = "node";
        assert_eq!(
            code(&proof, &exp),
            ErrorDetailCode::DeviceAuthSignatureInvalid
        );

        let mut bad = proof.clone();
        bad.signature = "not base64!".into();
        assert_eq!(
            code(&bad, &expected(&scopes)),
            ErrorDetailCode::DeviceAuthSignatureInvalid
        );

        let mut bad = proof;
        bad.public_key = "AAAA".into();
        assert_eq!(
            code(&bad, &expected(&scopes)),
            ErrorDetailCode::DeviceAuthPublicKeyInvalid
        );
    }
}
