//! Feeds raw bytes to `signed::verify`, the launcher's check of signed comm-port requests,
//! and to `signed::open_payload`, the gateway's reading of a sealed launch payload.
//!
//! The first byte picks the secret's length (so the fuzzer can reach a valid signature
//! with a short, fixed secret); the rest is the request. Checked: nothing panics; a request
//! that verifies, signed again with the same secret, time and nonce, verifies to the same
//! request; the replay guard refuses it the second time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::signed::{self, ReplayGuard, SignedError};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let secret = &b"0123456789abcdef"[..usize::from(n) % 17];
    // The same bytes as a sealed launch payload: parse, and check a found seal.
    if let Some((tag, body)) = signed::open_payload(rest) {
        let _ = signed::payload_sealed_with(secret, body, &tag);
    }
    let Ok(v) = signed::verify(rest, secret) else {
        return;
    };
    let mut nonce = [0u8; 16];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = u8::from_str_radix(&v.nonce[2 * i..2 * i + 2], 16).expect("verified nonces are hex");
    }
    let again = signed::verify(&signed::sign(&v.request, secret, v.time, &nonce), secret)
        .expect("re-signed request verifies");
    assert_eq!(again.request, v.request);
    let mut guard = ReplayGuard::default();
    if guard.admit(&v, v.time).is_ok() {
        assert_eq!(guard.admit(&again, v.time), Err(SignedError::Replayed));
    }
});
