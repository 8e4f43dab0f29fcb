//! Parses a peer's ZMTP greeting from arbitrary bytes: never panics, and a greeting it accepts
//! names a mechanism that our own greeting writes back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::zmtp::{greeting, parse_greeting};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = parse_greeting(data) {
        assert!(g.major >= 3);
        let ours = parse_greeting(&greeting(&g.mechanism, g.as_server)).unwrap();
        assert_eq!(ours.mechanism, g.mechanism);
        assert_eq!(ours.as_server, g.as_server);
    }
});
