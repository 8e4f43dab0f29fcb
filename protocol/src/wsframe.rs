//! WebSocket framing of kernel messages: the legacy JSON protocol and
//! `v1.kernel.websocket.jupyter.org`.
//!
//! Browsers and Jupyter Server talk to a kernel over one WebSocket that carries all channels.
//! Two framings exist (Jupyter Server `services/kernels/connection/base.py`):
//!
//! - **legacy** (no subprotocol; Jupyter Server's gateway client always uses it): a text
//!   frame holding one JSON object with `header`, `parent_header`, `metadata`, `content`,
//!   `channel` (plus `msg_id`, `msg_type`, `buffers` on the way out). With binary buffers the
//!   frame is binary: a big-endian u32 count `n`, `n` big-endian u32 offsets, then the JSON
//!   (without `buffers`) and the buffers at those offsets.
//! - **v1**: a binary frame: a little-endian u64 count `n`, `n` little-endian u64 offsets,
//!   then the channel name, header, parent header, metadata, content and buffers, each
//!   running from its offset to the next (the last offset is the end).
//!
//! Toward the client the four JSON parts are spliced in byte for byte (after checking each is
//! JSON), so key order and number formatting survive. Every decoder checks lengths and
//! offsets before slicing: a bad frame is an error value, never a panic.
//!
//! This lives in `protocol`, not in the gateway, because browsers are peers too: every byte a
//! peer sends is parsed here, by pure functions the fuzz targets reach without sockets.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::wire::{Channel, WireMessage, header_fields};

/// Most parts one frame may have (the channel, four JSON parts and buffers): a frame of
/// millions of empty parts would cost millions of allocations.
pub const MAX_PARTS: usize = 1029;

/// The v1 subprotocol name.
pub const V1_PROTOCOL: &str = "v1.kernel.websocket.jupyter.org";

/// The framing a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// JSON text frames (binary with buffers).
    Legacy,
    /// `v1.kernel.websocket.jupyter.org`.
    V1,
}

/// A message from a client, split into parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// Target channel.
    pub channel: Channel,
    /// The message; identities and signature are empty.
    pub msg: WireMessage,
}

/// A frame to send to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// Why a client frame was not understood. All are the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not the expected JSON.
    #[error("invalid message JSON: {0}")]
    Json(String),
    /// The header is not a JSON object.
    #[error("header is not a JSON object")]
    Header,
    /// Unknown or missing channel.
    #[error("unknown channel {0:?}")]
    Channel(String),
    /// The offset table is truncated or inconsistent.
    #[error("bad offset table: {0}")]
    Offsets(&'static str),
}

/// A message from the kernel could not be framed (a JSON part is not JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a JSON part of the kernel's message is not valid JSON")]
pub struct NotJson;

/// Whether `bytes` is one JSON value in UTF-8.
///
/// The UTF-8 check is separate because serde_json does not validate the inside of strings it
/// skips, and both framings hand these bytes to a browser's UTF-8 decoder unchanged (the
/// legacy one through a `String`, which would otherwise replace them).
fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| serde_json::from_str::<IgnoredAny>(s).is_ok())
}

fn object_or_empty(raw: Option<&RawValue>) -> Vec<u8> {
    match raw {
        Some(r) if r.get() != "null" => r.get().as_bytes().to_vec(),
        _ => b"{}".to_vec(),
    }
}

fn channel_of(name: &str) -> Result<Channel, FrameError> {
    match Channel::parse(name) {
        Some(Channel::Iopub) | None => Err(FrameError::Channel(name.to_owned())),
        Some(c) => Ok(c),
    }
}

#[derive(Deserialize)]
struct LegacyIn<'a> {
    #[serde(borrow)]
    header: &'a RawValue,
    #[serde(borrow, default)]
    parent_header: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    channel: Option<String>,
}

fn decode_legacy_json(json: &[u8], buffers: Vec<Vec<u8>>) -> Result<ClientMessage, FrameError> {
    let m: LegacyIn<'_> =
        serde_json::from_slice(json).map_err(|e| FrameError::Json(e.to_string()))?;
    if !m.header.get().trim_start().starts_with('{') {
        return Err(FrameError::Header);
    }
    let channel = channel_of(m.channel.as_deref().unwrap_or(""))?;
    Ok(ClientMessage {
        channel,
        msg: WireMessage {
            identities: Vec::new(),
            signature: Vec::new(),
            header: m.header.get().as_bytes().to_vec(),
            parent_header: object_or_empty(m.parent_header),
            metadata: object_or_empty(m.metadata),
            content: object_or_empty(m.content),
            buffers,
        },
    })
}

/// Decodes a legacy text frame.
pub fn decode_text(text: &str) -> Result<ClientMessage, FrameError> {
    decode_legacy_json(text.as_bytes(), Vec::new())
}

/// Decodes a binary frame of `framing`.
pub fn decode_binary(framing: Framing, bytes: &[u8]) -> Result<ClientMessage, FrameError> {
    match framing {
        Framing::Legacy => {
            let mut parts = split_table(bytes, 4, false)?;
            if parts.is_empty() {
                return Err(FrameError::Offsets("no message part"));
            }
            let json = parts.remove(0);
            decode_legacy_json(&json, parts)
        }
        Framing::V1 => {
            let parts = split_table(bytes, 8, true)?;
            let [channel, header, parent, metadata, content, buffers @ ..] = parts.as_slice()
            else {
                return Err(FrameError::Offsets("fewer than five parts"));
            };
            let channel = std::str::from_utf8(channel)
                .map_err(|_| FrameError::Channel("<not UTF-8>".into()))?;
            let channel = channel_of(channel)?;
            let object = |p: &[u8]| {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(p).is_ok()
            };
            if !object(header) {
                return Err(FrameError::Header);
            }
            for part in [parent, metadata, content] {
                if !is_json(part) {
                    return Err(FrameError::Json(
                        "parent_header, metadata or content".into(),
                    ));
                }
            }
            Ok(ClientMessage {
                channel,
                msg: WireMessage {
                    identities: Vec::new(),
                    signature: Vec::new(),
                    header: header.clone(),
                    parent_header: parent.clone(),
                    metadata: metadata.clone(),
                    content: content.clone(),
                    buffers: buffers.to_vec(),
                },
            })
        }
    }
}

/// Reads an offset table: a count, that many offsets (`width` bytes each; big-endian for
/// legacy, little-endian for v1), then the parts. In v1 the last offset is the end of the
/// last part; in legacy the last part runs to the end of the frame.
fn split_table(bytes: &[u8], width: usize, v1: bool) -> Result<Vec<Vec<u8>>, FrameError> {
    let read = |at: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(width)?)?;
        Some(if v1 {
            u64::from_le_bytes(b.try_into().ok()?)
        } else {
            u64::from(u32::from_be_bytes(b.try_into().ok()?))
        })
    };
    let n = read(0).ok_or(FrameError::Offsets("truncated count"))?;
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_PARTS)
        .ok_or(FrameError::Offsets(
            "more parts than a message has buffers for",
        ))?;
    let table_end = n
        .checked_add(1)
        .and_then(|k| k.checked_mul(width))
        .filter(|end| *end <= bytes.len())
        .ok_or(FrameError::Offsets("count larger than the frame"))?;
    let mut offsets = Vec::with_capacity(n + 1);
    for i in 0..n {
        let off = read((i + 1) * width).ok_or(FrameError::Offsets("truncated table"))?;
        let off = usize::try_from(off).map_err(|_| FrameError::Offsets("offset too large"))?;
        offsets.push(off);
    }
    if !v1 {
        offsets.push(bytes.len());
    }
    if offsets.first().is_some_and(|o| *o < table_end) {
        return Err(FrameError::Offsets("first part overlaps the table"));
    }
    if offsets.windows(2).any(|w| w[0] > w[1]) || offsets.last().is_some_and(|o| *o > bytes.len()) {
        return Err(FrameError::Offsets("offsets decrease or pass the end"));
    }
    Ok(offsets
        .windows(2)
        .map(|w| bytes.get(w[0]..w[1]).unwrap_or_default().to_vec())
        .collect())
}

/// Frames a message from the kernel (or the gateway) for a client.
pub fn encode(framing: Framing, channel: Channel, msg: &WireMessage) -> Result<OutFrame, NotJson> {
    let parts = [&msg.header, &msg.parent_header, &msg.metadata, &msg.content];
    if !parts.iter().all(|p| is_json(p)) {
        return Err(NotJson);
    }
    match framing {
        Framing::V1 => {
            let channel = channel.as_str().as_bytes();
            let mut pieces: Vec<&[u8]> = vec![channel];
            pieces.extend(parts.iter().map(|p| p.as_slice()));
            pieces.extend(msg.buffers.iter().map(Vec::as_slice));
            let count = pieces.len() + 1;
            let mut offset = 8 * (count + 1);
            let total: usize = offset + pieces.iter().map(|p| p.len()).sum::<usize>();
            let mut out = Vec::with_capacity(total);
            out.extend_from_slice(&(count as u64).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            for p in &pieces {
                offset += p.len();
                out.extend_from_slice(&(offset as u64).to_le_bytes());
            }
            for p in pieces {
                out.extend_from_slice(p);
            }
            Ok(OutFrame::Binary(out))
        }
        Framing::Legacy => {
            let (msg_type, msg_id) = header_fields(&msg.header).unwrap_or_default();
            let text = |buffers: bool| {
                let mut s = String::with_capacity(msg.header.len() + msg.content.len() + 200);
                s.push_str("{\"header\":");
                s.push_str(&String::from_utf8_lossy(&msg.header));
                s.push_str(",\"msg_id\":");
                s.push_str(&serde_json::Value::from(msg_id.as_str()).to_string());
                s.push_str(",\"msg_type\":");
                s.push_str(&serde_json::Value::from(msg_type.as_str()).to_string());
                s.push_str(",\"parent_header\":");
                s.push_str(&String::from_utf8_lossy(&msg.parent_header));
                s.push_str(",\"metadata\":");
                s.push_str(&String::from_utf8_lossy(&msg.metadata));
                s.push_str(",\"content\":");
                s.push_str(&String::from_utf8_lossy(&msg.content));
                if buffers {
                    s.push_str(",\"buffers\":[]");
                }
                s.push_str(",\"channel\":\"");
                s.push_str(channel.as_str());
                s.push_str("\"}");
                s
            };
            if msg.buffers.is_empty() {
                return Ok(OutFrame::Text(text(true)));
            }
            let json = text(false).into_bytes();
            let mut pieces: Vec<&[u8]> = vec![&json];
            pieces.extend(msg.buffers.iter().map(Vec::as_slice));
            let n = pieces.len();
            let mut offset = 4 * (n + 1);
            let mut out = Vec::new();
            out.extend_from_slice(&(n as u32).to_be_bytes());
            for p in &pieces {
                out.extend_from_slice(&(offset as u32).to_be_bytes());
                offset += p.len();
            }
            for p in pieces {
                out.extend_from_slice(p);
            }
            Ok(OutFrame::Binary(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(buffers: Vec<Vec<u8>>) -> WireMessage {
        WireMessage {
            identities: Vec::new(),
            signature: Vec::new(),
            header: br#"{"msg_id":"m1","msg_type":"execute_request","b":1.50,"a":2}"#.to_vec(),
            parent_header: b"{}".to_vec(),
            metadata: b"{}".to_vec(),
            content: br#"{"code":"1+1"}"#.to_vec(),
            buffers,
        }
    }

    #[test]
    fn v1_round_trip() {
        for buffers in [vec![], vec![b"\x00\x01".to_vec(), Vec::new()]] {
            let m = msg(buffers);
            let OutFrame::Binary(b) = encode(Framing::V1, Channel::Shell, &m).unwrap() else {
                panic!("binary expected")
            };
            let back = decode_binary(Framing::V1, &b).unwrap();
            assert_eq!(back.channel, Channel::Shell);
            assert_eq!(back.msg, m);
        }
    }

    #[test]
    fn legacy_text_keeps_json_bytes() {
        let OutFrame::Text(t) = encode(Framing::Legacy, Channel::Shell, &msg(vec![])).unwrap()
        else {
            panic!("text expected")
        };
        assert!(t.contains(r#""b":1.50,"a":2"#), "{t}");
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["msg_type"], "execute_request");
        assert_eq!(v["channel"], "shell");
        let back = decode_text(&t).unwrap();
        assert_eq!(back.msg, msg(vec![]));
    }

    #[test]
    fn legacy_binary_round_trip() {
        let m = msg(vec![b"buf1".to_vec(), b"buffer two".to_vec()]);
        let OutFrame::Binary(b) = encode(Framing::Legacy, Channel::Shell, &m).unwrap() else {
            panic!("binary expected")
        };
        let back = decode_binary(Framing::Legacy, &b).unwrap();
        assert_eq!(back.msg, m);
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(decode_text("not json").is_err());
        assert!(decode_text(r#"{"header":1,"channel":"shell"}"#).is_err());
        assert!(decode_text(r#"{"header":{},"channel":"iopub"}"#).is_err());
        assert!(decode_text(r#"{"header":{},"channel":"nope"}"#).is_err());
        assert!(decode_text(r#"{"header":{},"channel":"shell"}"#).is_ok());
        for bytes in [
            &b""[..],
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x01\x00\x00\x00\x00",
            &[9u8; 7],
        ] {
            assert!(decode_binary(Framing::Legacy, bytes).is_err());
            assert!(decode_binary(Framing::V1, bytes).is_err());
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_binary(Framing::V1, &huge).is_err());
        // A frame of many empty parts is refused by its count, before anything is made.
        let n = MAX_PARTS + 1;
        let mut many = (n as u64).to_le_bytes().to_vec();
        let end = (8 * (n + 1)) as u64;
        for _ in 0..n {
            many.extend_from_slice(&end.to_le_bytes());
        }
        assert_eq!(
            decode_binary(Framing::V1, &many),
            Err(FrameError::Offsets(
                "more parts than a message has buffers for"
            ))
        );
    }

    #[test]
    fn kernel_parts_must_be_json() {
        let mut m = msg(vec![]);
        m.content = b"{".to_vec();
        assert_eq!(encode(Framing::Legacy, Channel::Iopub, &m), Err(NotJson));
        // Invalid UTF-8 inside a string is not JSON either.
        m.content = b"{\"a\":\"\xff\"}".to_vec();
        assert_eq!(encode(Framing::Legacy, Channel::Iopub, &m), Err(NotJson));
        assert_eq!(encode(Framing::V1, Channel::Iopub, &m), Err(NotJson));
    }
}
