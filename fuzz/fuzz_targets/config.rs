//! The config-file parser on arbitrary text: never panics, and an error is
//! one line.
#![no_main]

use clawnode::config::FileConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // `FileConfig::load` reads with `read_to_string`: never non-UTF-8.
        return;
    };
    if let Err(e) = FileConfig::parse(text) {
        assert!(!e.contains('\n'), "multi-line error: {e:?}");
    }
});
