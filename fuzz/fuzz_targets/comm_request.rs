//! Parses comm-port requests; what parses must render and re-parse to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::comm;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = comm::parse(data) {
        if let Some(signum) = request.signum {
            assert!((0..=comm::MAX_SIGNUM).contains(&signum));
        }
        assert_eq!(comm::parse(&request.to_json()), Ok(request));
    }
});
