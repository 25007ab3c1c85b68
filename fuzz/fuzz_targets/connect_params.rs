//! The `connect` params decoding of the gateway's handshake: JSON to
//! `ConnectParams`, client validation, and the device proof check against a
//! fixed challenge (every branch up to the signature check).
#![no_main]

use clawnode::protocol::device_auth::{self, Expected};
use clawnode::protocol::ConnectParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(params) = ConnectParams::from_value(value) else {
        return;
    };
    if params.client.validate().is_err() {
        return;
    }
    let role = params.role();
    let _ = params.token();
    if let Some(device) = &params.device {
        let expected = Expected {
            nonce: "fuzz-nonce",
            now_ms: 1_760_000_000_000,
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
});
