//! Splits peer frames into a wire message and verifies it with a fixed key.
//!
//! The input is cut into frames at `\n`. The first byte decides where a `<IDS|MSG>` delimiter
//! frame is inserted (or, with its top bit set, that none is), so the fuzzer reaches the
//! interesting paths without having to guess the delimiter. Checked: `split` never panics;
//! what it accepts joins back to the same frames; a message signed here verifies, and the
//! received signature verifies only if it equals the computed one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::wire::{self, DELIMITER, Signer};

const KEY: &[u8] = b"6a4c3b52-1d1e-4c55-9d0c-0b0e8a3f7d11";

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut frames: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    if control & 0x80 == 0 {
        let at = usize::from(control) % (frames.len() + 1);
        frames.insert(at, DELIMITER);
    }
    let Ok(msg) = wire::split(&frames) else {
        return;
    };
    let joined = wire::join(&msg);
    assert_eq!(joined.len(), frames.len());
    assert!(joined.iter().zip(&frames).all(|(a, b)| a.as_slice() == *b));

    let signer = Signer::new(KEY);
    let expected = signer.sign(&msg.header, &msg.parent_header, &msg.metadata, &msg.content);
    let verdict = signer.verify(&msg);
    assert_eq!(verdict.is_ok(), msg.signature == expected.as_bytes());

    let mut signed = msg.clone();
    signer.sign_message(&mut signed);
    assert!(signer.verify(&signed).is_ok());
    assert!(Signer::new(b"").verify(&msg).is_ok());
});
