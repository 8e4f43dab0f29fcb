//! Frames what a kernel sends for the browser: ZeroMQ frames → `wire::split` and
//! `Signer::verify` (what the gateway does with every kernel message) → `wsframe::encode`, in
//! both framings.
//!
//! The input is cut into ZeroMQ frames at `\n`; the first byte places the `<IDS|MSG>`
//! delimiter (top bit set: none), as in `wire_split`. The key is empty, so signatures are not
//! checked and the fuzzer reaches the framing code. Checked: nothing panics; the header
//! helper accepts or refuses without panicking; a framed message decodes back (with the
//! gateway's client-side decoder, on the shell channel) to the same parts and buffers (for
//! legacy, the same JSON values), and a legacy text frame is JSON naming the channel.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::wire::{self, Channel, DELIMITER, Signer};
use protocol::wsframe::{self, Framing, OutFrame};
use serde::de::IgnoredAny;

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
    if Signer::new(b"").verify(&msg).is_err() {
        return;
    }
    let _ = wire::header_fields(&msg.header);
    let _ = wire::msg_id(&msg.parent_header);
    for framing in [Framing::Legacy, Framing::V1] {
        let Ok(frame) = wsframe::encode(framing, Channel::Shell, &msg) else {
            continue;
        };
        if let OutFrame::Text(t) = &frame {
            // IgnoredAny, not Value: a number like 1e999 is valid JSON (browsers read it as
            // Infinity) but out of serde_json's Value range.
            serde_json::from_str::<IgnoredAny>(t).expect("legacy frame is JSON");
            assert!(t.ends_with(r#","channel":"shell"}"#), "{t}");
        }
        let header_is_object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
            &msg.header,
        )
        .is_ok();
        let back = match &frame {
            OutFrame::Text(t) => wsframe::decode_text(t),
            OutFrame::Binary(b) => wsframe::decode_binary(framing, b),
        };
        // The client-side decoder insists on an object header; the encoder only on JSON.
        let Ok(back) = back else {
            assert!(!header_is_object, "{framing:?} frame does not decode: {back:?}");
            continue;
        };
        assert_eq!(back.channel, Channel::Shell);
        if framing == Framing::V1 {
            assert_eq!(back.msg.header, msg.header);
            assert_eq!(back.msg.content, msg.content);
        } else {
            // Legacy parts sit inside one JSON document: the reader sees each value without
            // its surrounding whitespace, and the gateway's decoder reads a null content as {}.
            assert_eq!(back.msg.header, json_value(&msg.header));
            let content = json_value(&msg.content);
            let content = if content == b"null" { b"{}" } else { content };
            assert_eq!(back.msg.content, content);
        }
        assert_eq!(back.msg.buffers, msg.buffers);
    }
});

/// A JSON text without the whitespace around its value.
fn json_value(part: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = part.iter().position(|b| !ws(b)).unwrap_or(part.len());
    let end = part.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &part[start..end]
}
