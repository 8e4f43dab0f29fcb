//! Feeds arbitrary bytes to `frame_guard::FrameGuard` (a kernel's ZMTP stream as gateway-lite's
//! relay sees it), cut into chunks where the input says: never panics, and the verdict does
//! not depend on the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::frame_guard::{FrameGuard, FrameLimits};

const LIMITS: FrameLimits = FrameLimits {
    max_message_bytes: 4096,
    max_parts: 16,
};

fuzz_target!(|data: &[u8]| {
    // Byte 0 is the chunk length (1..=256); the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let whole = FrameGuard::new(LIMITS).check(stream);
    let mut g = FrameGuard::new(LIMITS);
    let mut verdict = Ok(());
    for c in stream.chunks(usize::from(chunk) + 1) {
        verdict = g.check(c);
        if verdict.is_err() {
            break;
        }
    }
    assert_eq!(verdict, whole);
});
