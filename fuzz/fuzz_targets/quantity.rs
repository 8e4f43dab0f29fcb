//! Parses resource quantities (`KERNEL_CPUS`, `KERNEL_MEMORY`, ...); what parses must display
//! and re-parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::quantity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = quantity::parse_millicpus(text) {
        let shown = quantity::Millicpus(m).to_string();
        assert_eq!(quantity::parse_millicpus(&shown), Ok(m));
    }
    if let Ok(b) = quantity::parse_bytes(text) {
        let shown = quantity::Bytes(b).to_string();
        assert_eq!(quantity::parse_bytes(&shown), Ok(b));
    }
    let _ = quantity::parse_count(text);
});
