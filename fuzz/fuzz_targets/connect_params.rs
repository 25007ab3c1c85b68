//! The `connect` handshake's decoding, as `gateway::handler::handshake` does
//! it: the frame, `ConnectParams::from_value` on the request's params (shape
//! checks, then `serde_json::from_value`), `client.validate()`, and the device proof
//! checked by `device_auth::verify` against a fixed challenge. The input is
//! also tried as bare params (`serde_json::from_str`).
#![no_main]

use clawnode::protocol::device_auth::{self, Expected};
use clawnode::protocol::{ConnectParams, Frame};
use libfuzzer_sys::fuzz_target;

/// The challenge nonce and clock of the captured node-host connect
/// (tests/vectors/openclaw-wire/02-node-host.connect.req.json), so its real
/// signature verifies and mutations of it reach the signature check.
const NONCE: &str = "f01f5813-ef3b-4df3-b605-b213653e7b9f";
const NOW_MS: u64 = 1_795_377_499_047 + 1_000;

fn check(params: &ConnectParams) {
    if params.client.validate().is_err() {
        return;
    }
    let Some(device) = &params.device else {
        return;
    };
    let role = params.role();
    let expected = Expected {
        nonce: NONCE,
        now_ms: NOW_MS,
        client_id: &params.client.id,
        client_mode: &params.client.mode,
        role: role.as_str(),
        scopes: &params.scopes,
        token: params.token(),
        platform: Some(&params.client.platform),
        device_family: params.client.device_family.as_deref(),
    };
    let _ = device_auth::verify(device, &expected);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(Frame::Req(req)) = Frame::parse(&text) {
        if let Ok(params) = ConnectParams::from_value(req.params) {
            check(&params);
        }
    }
    if let Ok(params) = serde_json::from_str::<ConnectParams>(&text) {
        check(&params);
    }
});
