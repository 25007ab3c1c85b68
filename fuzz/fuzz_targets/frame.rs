//! Any text a peer sends is parsed as a frame the way the gateway and the
//! agent do; a frame that parses serializes back to the same frame.
#![no_main]

use clawnode::protocol::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = Frame::parse(text) {
        let again = Frame::parse(&frame.to_text()).expect("our own output parses");
        assert_eq!(frame, again, "round trip changed the frame");
    }
});
