//! Decrypts peer payloads with a fixed RSA-1024 key.
//!
//! The key is generated once, from a fixed seed, so a crash input replays against the same
//! key. The first byte picks a mode, so the fuzzer also reaches the inner layers:
//! - `0`: the rest is the outer JSON; it is base64-encoded here before decryption;
//! - `1`: the rest is an inner report; it is encrypted here, then must decrypt to itself;
//! - anything else: the whole input is the payload as received from the network.
//!
//! Whatever decrypts is also parsed as a `LaunchReport`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protocol::payload::{self, LaunchReport, PrivateKey};
use protocol::testing::SeededRng;

fn key() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        PrivateKey::generate_with_rng(1024, &mut SeededRng::new(0x5eed)).expect("key generation")
    })
}

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    let mut rng = SeededRng::new(1);
    let decrypted = match data.split_first() {
        Some((0, outer)) => payload::decrypt_with_rng(key, b64(outer).as_bytes(), &mut rng),
        Some((1, inner)) => {
            let sealed = payload::encrypt_with_rng(&key.public_key(), inner, &mut rng)
                .expect("encryption with a valid key");
            let opened = payload::decrypt_with_rng(key, sealed.as_bytes(), &mut rng);
            assert_eq!(opened.as_deref(), Ok(inner));
            opened
        }
        _ => payload::decrypt_with_rng(key, data, &mut rng),
    };
    if let Ok(inner) = decrypted {
        let _ = LaunchReport::from_json(&inner);
    }
});
