//! Parses port ranges with a fuzzed minimum size; accepted ranges must pick inside themselves
//! and survive `Display` then `parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ports::PortRange;

fuzz_target!(|data: &[u8]| {
    let Some((head, text)) = data.split_first_chunk::<8>() else {
        return;
    };
    let [m0, m1, m2, m3, r0, r1, r2, r3] = *head;
    let min_size = u32::from_le_bytes([m0, m1, m2, m3]);
    let random = u32::from_le_bytes([r0, r1, r2, r3]);
    let text = String::from_utf8_lossy(text);
    let Ok(range) = PortRange::parse(&text, min_size) else {
        return;
    };
    match (range, range.pick(random)) {
        (PortRange::Unrestricted, None) => assert_eq!(range.len(), None),
        (PortRange::Bounded { lower, upper }, Some(port)) => {
            assert!(lower >= 1024 && lower < upper);
            assert!(range.contains(port));
            assert_eq!(range.len(), Some(u32::from(upper - lower) + 1));
        }
        other => panic!("inconsistent pick: {other:?}"),
    }
    assert_eq!(PortRange::parse(&range.to_string(), min_size), Ok(range));
});
