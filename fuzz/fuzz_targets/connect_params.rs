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
    let _ = params.role();
    let _ = params.token();
    if let Some(device) = &params.device {
        // The gateway's own construction (src/gateway/handler.rs).
        let expected = Expected::for_connect(&params, "fuzz-nonce", 1_760_000_000_000);
        let _ = device_auth::verify(device, &expected);
    }
});
