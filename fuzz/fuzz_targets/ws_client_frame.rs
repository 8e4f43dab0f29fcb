//! Decodes what a browser sends over the kernel WebSocket, in every framing.
//!
//! The first byte picks the decoder: 0 a legacy text frame (the rest must be UTF-8), 1 a
//! legacy binary frame (big-endian u32 offset table), anything else a v1 binary frame
//! (little-endian u64 offset table). Checked: decoding never panics; a decoded message
//! framed again by the gateway's own encoder (as if echoed to a client) decodes to the same
//! message.
#![no_main]

use protocol::wsframe::{self, Framing, OutFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (framing, decoded) = match mode {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            (Framing::Legacy, wsframe::decode_text(text))
        }
        1 => (Framing::Legacy, wsframe::decode_binary(Framing::Legacy, rest)),
        _ => (Framing::V1, wsframe::decode_binary(Framing::V1, rest)),
    };
    let Ok(m) = decoded else {
        return;
    };
    let frame = wsframe::encode(framing, m.channel, &m.msg).expect("decoded parts are JSON");
    let again = match frame {
        OutFrame::Text(t) => wsframe::decode_text(&t),
        OutFrame::Binary(b) => wsframe::decode_binary(framing, &b),
    }
    .expect("the encoder's frame decodes");
    assert_eq!(again, m);
});
