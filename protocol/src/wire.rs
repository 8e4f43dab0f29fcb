//! Jupyter wire messages: splitting ZeroMQ frames and signing them.
//!
//! A Jupyter message on a ZeroMQ socket is a list of frames:
//! `[identities..., "<IDS|MSG>", signature, header, parent_header, metadata, content, buffers...]`
//! (jupyter_client, "Messaging in Jupyter", section "The Wire Protocol"). The signature is the
//! lowercase hex HMAC-SHA256, keyed with the connection file's `key`, of the four JSON parts
//! concatenated in that order. The buffers are *not* covered: jupyter_client and ipykernel
//! sign only the four parts (runtimed once signed the buffers too and had to fix it).
//!
//! [`WireMessage`] keeps the four JSON parts as raw bytes, so a relay can forward them byte for
//! byte (key order and number formatting survive) and parse only what it needs.
//!
//! Security notes:
//! - With a non-empty key, an empty or malformed signature is rejected, never treated as
//!   "unsigned".
//! - Verification decodes the hex and compares with `Mac::verify_slice`, in constant time; it
//!   never compares hex strings with `==`.
//! - [`split`] checks lengths before it touches a frame, so a short or delimiter-less message is
//!   an error value (runtimed's `from_multipart` panicked on such input).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The frame that separates routing identities from the message.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// One Jupyter message, split into its frames.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireMessage {
    /// ZeroMQ routing identities (frames before the delimiter); often empty.
    pub identities: Vec<Vec<u8>>,
    /// Lowercase hex HMAC-SHA256, or empty when the session is unsigned.
    pub signature: Vec<u8>,
    /// The header, as JSON bytes.
    pub header: Vec<u8>,
    /// The parent header, as JSON bytes (`{}` when there is none).
    pub parent_header: Vec<u8>,
    /// The metadata, as JSON bytes.
    pub metadata: Vec<u8>,
    /// The content, as JSON bytes.
    pub content: Vec<u8>,
    /// Extra binary buffers (not covered by the signature).
    pub buffers: Vec<Vec<u8>>,
}

impl WireMessage {
    /// Bytes of its four JSON parts and its buffers (what a relay holds for it).
    pub fn byte_len(&self) -> usize {
        [
            &self.header,
            &self.parent_header,
            &self.metadata,
            &self.content,
        ]
        .iter()
        .map(|p| p.len())
        .chain(self.buffers.iter().map(Vec::len))
        .sum()
    }
}

/// Why a wire message was rejected. Every variant is the fault of the peer that sent it (or
/// of a peer that holds a different key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// No frame equals `<IDS|MSG>`.
    #[error("no <IDS|MSG> delimiter frame in a message of {frames} frames")]
    MissingDelimiter {
        /// Number of frames received.
        frames: usize,
    },
    /// Fewer than five frames (signature and four JSON parts) follow the delimiter.
    #[error("{found} frames after <IDS|MSG>, expected at least 5")]
    TooFewFrames {
        /// Number of frames found after the delimiter.
        found: usize,
    },
    /// The session is signed but the message carries no signature.
    #[error("message is not signed but the session has a key")]
    MissingSignature,
    /// The signature is not 64 lowercase hexadecimal digits.
    #[error("signature is not 64 lowercase hexadecimal digits")]
    MalformedSignature,
    /// The signature does not match the message (tampered, or signed with another key).
    #[error("signature does not match the message")]
    BadSignature,
}

/// The kernel channels a client talks on (the heartbeat channel carries no messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Requests and replies.
    Shell,
    /// Like shell, on a separate queue (interrupt, shutdown, debug).
    Control,
    /// Input requests from the kernel, replies from the client.
    Stdin,
    /// Broadcast output.
    Iopub,
}

impl Channel {
    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::Control => "control",
            Channel::Stdin => "stdin",
            Channel::Iopub => "iopub",
        }
    }

    /// Parses a protocol name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "shell" => Channel::Shell,
            "control" => Channel::Control,
            "stdin" => Channel::Stdin,
            "iopub" => Channel::Iopub,
            _ => return None,
        })
    }
}

/// The `msg_type` and `msg_id` of a header, if it is a JSON object that has a string
/// `msg_type` (`msg_id` defaults to empty).
pub fn header_fields(header: &[u8]) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct H {
        msg_type: String,
        #[serde(default)]
        msg_id: String,
    }
    let h: H = serde_json::from_slice(header).ok()?;
    Some((h.msg_type, h.msg_id))
}

/// The `msg_id` of a header or parent header, if it is a JSON object with a string `msg_id`.
pub fn msg_id(header: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct H {
        msg_id: String,
    }
    serde_json::from_slice::<H>(header).ok().map(|h| h.msg_id)
}

/// Splits ZeroMQ frames into a [`WireMessage`].
///
/// The first frame equal to `<IDS|MSG>` is the delimiter, as in jupyter_client.
pub fn split(frames: &[impl AsRef<[u8]>]) -> Result<WireMessage, WireError> {
    let Some(pos) = frames.iter().position(|f| f.as_ref() == DELIMITER) else {
        return Err(WireError::MissingDelimiter {
            frames: frames.len(),
        });
    };
    let (identities, rest) = frames.split_at(pos);
    // `rest` starts with the delimiter itself.
    let after = rest.get(1..).unwrap_or_default();
    let [
        signature,
        header,
        parent_header,
        metadata,
        content,
        buffers @ ..,
    ] = after
    else {
        return Err(WireError::TooFewFrames { found: after.len() });
    };
    let owned = |f: &dyn AsRef<[u8]>| f.as_ref().to_vec();
    Ok(WireMessage {
        identities: identities.iter().map(|f| owned(f)).collect(),
        signature: owned(signature),
        header: owned(header),
        parent_header: owned(parent_header),
        metadata: owned(metadata),
        content: owned(content),
        buffers: buffers.iter().map(|f| owned(f)).collect(),
    })
}

/// Joins a [`WireMessage`] back into ZeroMQ frames; the inverse of [`split`].
pub fn join(msg: &WireMessage) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(msg.identities.len() + 6 + msg.buffers.len());
    frames.extend(msg.identities.iter().cloned());
    frames.push(DELIMITER.to_vec());
    frames.push(msg.signature.clone());
    frames.push(msg.header.clone());
    frames.push(msg.parent_header.clone());
    frames.push(msg.metadata.clone());
    frames.push(msg.content.clone());
    frames.extend(msg.buffers.iter().cloned());
    frames
}

/// Signs and verifies messages with a session key.
///
/// Built once per connection: the keyed HMAC state is computed here and cloned per message.
#[derive(Clone)]
pub struct Signer {
    /// `None` when the key is empty: the session is unsigned.
    mac: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Signer")
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl Signer {
    /// A signer for `key` (the connection file's `key`, as bytes). An empty key means the
    /// session is unsigned.
    pub fn new(key: &[u8]) -> Self {
        if key.is_empty() {
            return Signer { mac: None };
        }
        // HMAC takes keys of any length (RFC 2104 §2: longer keys are hashed first), so
        // `new_from_slice` cannot fail for `Hmac`; the key is local configuration, not peer data.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of every length");
        Signer { mac: Some(mac) }
    }

    /// Whether messages are signed (the key is non-empty).
    pub fn is_signing(&self) -> bool {
        self.mac.is_some()
    }

    fn mac_of(mac: &Hmac<Sha256>, parts: [&[u8]; 4]) -> Hmac<Sha256> {
        let mut mac = mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The signature of the four JSON parts: lowercase hex, or `""` when unsigned.
    pub fn sign(&self, header: &[u8], parent: &[u8], metadata: &[u8], content: &[u8]) -> String {
        let Some(mac) = &self.mac else {
            return String::new();
        };
        let tag = Self::mac_of(mac, [header, parent, metadata, content])
            .finalize()
            .into_bytes();
        hex_lower(&tag)
    }

    /// Sets `msg.signature` to the signature of its JSON parts.
    pub fn sign_message(&self, msg: &mut WireMessage) {
        msg.signature = self
            .sign(&msg.header, &msg.parent_header, &msg.metadata, &msg.content)
            .into_bytes();
    }

    /// Checks `msg.signature` in constant time.
    ///
    /// Unsigned sessions accept any signature, as jupyter_client does. With a key, an empty,
    /// non-hex (lowercase only), wrong-length or wrong signature is an error.
    pub fn verify(&self, msg: &WireMessage) -> Result<(), WireError> {
        let Some(mac) = &self.mac else {
            return Ok(());
        };
        if msg.signature.is_empty() {
            return Err(WireError::MissingSignature);
        }
        let tag = hex_decode_32(&msg.signature).ok_or(WireError::MalformedSignature)?;
        Self::mac_of(
            mac,
            [&msg.header, &msg.parent_header, &msg.metadata, &msg.content],
        )
        .verify_slice(&tag)
        .map_err(|_| WireError::BadSignature)
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes exactly 64 lowercase hex digits into 32 bytes.
///
/// Upper case is refused: jupyter_client compares lowercase `hexdigest()` strings, so no
/// conforming peer sends it, and refusing it means any single-bit change is detected.
fn hex_decode_32(text: &[u8]) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let [hi, lo] = pair else { return None };
        *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> WireMessage {
        WireMessage {
            identities: vec![b"client-1".to_vec()],
            signature: Vec::new(),
            header: br#"{"msg_id":"1","msg_type":"kernel_info_request","username":"u","session":"s","date":"2024-01-01T00:00:00Z","version":"5.3"}"#.to_vec(),
            parent_header: b"{}".to_vec(),
            metadata: b"{}".to_vec(),
            content: b"{}".to_vec(),
            buffers: vec![b"\x00\x01binary".to_vec()],
        }
    }

    #[test]
    fn channels_and_header_fields() {
        for c in [
            Channel::Shell,
            Channel::Control,
            Channel::Stdin,
            Channel::Iopub,
        ] {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        assert_eq!(Channel::parse("hb"), None);
        assert_eq!(
            header_fields(br#"{"msg_type":"status","msg_id":"1","x":2}"#),
            Some(("status".into(), "1".into()))
        );
        assert_eq!(
            header_fields(br#"{"msg_type":"status"}"#),
            Some(("status".into(), String::new()))
        );
        assert_eq!(header_fields(b"[]"), None);
        assert_eq!(header_fields(b"\xff"), None);
        assert_eq!(msg_id(br#"{"msg_id":"a"}"#).as_deref(), Some("a"));
        assert_eq!(msg_id(br#"{"msg_id":1}"#), None);
        assert_eq!(msg_id(b"{}"), None);
    }

    /// RFC 4231 test case 2: HMAC-SHA256 with key "Jefe".
    #[test]
    fn hmac_matches_rfc_4231() {
        let signer = Signer::new(b"Jefe");
        let sig = signer.sign(b"what do ya want ", b"for ", b"nothing?", b"");
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn split_recognises_layout() {
        let frames: Vec<&[u8]> = vec![
            b"id1", b"id2", DELIMITER, b"sig", b"h", b"p", b"m", b"c", b"b1",
        ];
        let msg = split(&frames).unwrap();
        assert_eq!(msg.identities, vec![b"id1".to_vec(), b"id2".to_vec()]);
        assert_eq!(msg.signature, b"sig");
        assert_eq!(msg.header, b"h");
        assert_eq!(msg.parent_header, b"p");
        assert_eq!(msg.metadata, b"m");
        assert_eq!(msg.content, b"c");
        assert_eq!(msg.buffers, vec![b"b1".to_vec()]);
        assert_eq!(
            join(&msg),
            frames.iter().map(|f| f.to_vec()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn split_rejects_short_messages() {
        let none: [&[u8]; 0] = [];
        assert_eq!(split(&none), Err(WireError::MissingDelimiter { frames: 0 }));
        assert_eq!(
            split(&[b"a".as_slice(), b"b"]),
            Err(WireError::MissingDelimiter { frames: 2 })
        );
        assert_eq!(
            split(&[DELIMITER]),
            Err(WireError::TooFewFrames { found: 0 })
        );
        assert_eq!(
            split(&[b"id".as_slice(), DELIMITER, b"s", b"h", b"p", b"m"]),
            Err(WireError::TooFewFrames { found: 4 })
        );
    }

    #[test]
    fn first_delimiter_wins() {
        let frames: Vec<&[u8]> = vec![DELIMITER, b"s", b"h", b"p", b"m", b"c", DELIMITER];
        let msg = split(&frames).unwrap();
        assert!(msg.identities.is_empty());
        assert_eq!(msg.buffers, vec![DELIMITER.to_vec()]);
    }

    #[test]
    fn sign_then_verify() {
        let signer = Signer::new(b"6a4c3b52-1d1e-4c55-9d0c-0b0e8a3f7d11");
        let mut msg = sample();
        signer.sign_message(&mut msg);
        assert_eq!(msg.signature.len(), 64);
        assert!(
            msg.signature
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        );
        assert_eq!(signer.verify(&msg), Ok(()));

        // jupyter_client compares lowercase hex digests, so upper case is malformed here too;
        // that also makes every single-bit change of a valid signature an error.
        let mut upper = msg.clone();
        upper.signature.make_ascii_uppercase();
        if upper.signature != msg.signature {
            assert_eq!(signer.verify(&upper), Err(WireError::MalformedSignature));
        }
    }

    #[test]
    fn buffers_are_not_signed() {
        let signer = Signer::new(b"key");
        let mut msg = sample();
        signer.sign_message(&mut msg);
        msg.buffers.push(b"extra".to_vec());
        msg.buffers[0].clear();
        assert_eq!(signer.verify(&msg), Ok(()));
    }

    #[test]
    fn signed_session_rejects_missing_malformed_and_wrong_signatures() {
        let signer = Signer::new(b"key");
        let mut msg = sample();
        assert_eq!(signer.verify(&msg), Err(WireError::MissingSignature));
        msg.signature = b"zz".repeat(32);
        assert_eq!(signer.verify(&msg), Err(WireError::MalformedSignature));
        msg.signature = b"00".repeat(31);
        assert_eq!(signer.verify(&msg), Err(WireError::MalformedSignature));
        msg.signature = b"00".repeat(32);
        assert_eq!(signer.verify(&msg), Err(WireError::BadSignature));
        msg.signature = Signer::new(b"other key")
            .sign(&msg.header, &msg.parent_header, &msg.metadata, &msg.content)
            .into_bytes();
        assert_eq!(signer.verify(&msg), Err(WireError::BadSignature));
    }

    #[test]
    fn part_boundaries_matter_only_through_concatenation() {
        // The HMAC covers the concatenation, as in jupyter_client; moving bytes between
        // adjacent parts keeps the signature. Receivers parse each part as JSON, so such a
        // shifted message does not parse as the same message.
        let signer = Signer::new(b"key");
        assert_eq!(
            signer.sign(b"ab", b"c", b"", b""),
            signer.sign(b"a", b"bc", b"", b"")
        );
    }

    #[test]
    fn unsigned_session() {
        let signer = Signer::new(b"");
        assert!(!signer.is_signing());
        assert_eq!(signer.sign(b"h", b"p", b"m", b"c"), "");
        let mut msg = sample();
        assert_eq!(signer.verify(&msg), Ok(()));
        msg.signature = b"anything".to_vec();
        assert_eq!(signer.verify(&msg), Ok(()));
        assert!(!format!("{:?}", Signer::new(b"secret")).contains("secret"));
    }

    fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..48)
            .prop_filter("not the delimiter", |f| f.as_slice() != DELIMITER)
    }

    fn arb_message() -> impl Strategy<Value = WireMessage> {
        (
            proptest::collection::vec(arb_frame(), 0..4),
            proptest::array::uniform5(arb_frame()),
            proptest::collection::vec(any::<Vec<u8>>(), 0..4),
        )
            .prop_map(
                |(identities, [signature, header, parent_header, metadata, content], buffers)| {
                    WireMessage {
                        identities,
                        signature,
                        header,
                        parent_header,
                        metadata,
                        content,
                        buffers,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn split_join_round_trip(msg in arb_message()) {
            let frames = join(&msg);
            prop_assert_eq!(split(&frames), Ok(msg));
        }

        #[test]
        fn split_never_panics(frames in proptest::collection::vec(
            prop_oneof![Just(DELIMITER.to_vec()), any::<Vec<u8>>()], 0..10)) {
            if let Ok(msg) = split(&frames) {
                prop_assert_eq!(join(&msg), frames);
            }
        }

        #[test]
        fn any_bit_flip_in_signed_parts_is_rejected(
            key in proptest::collection::vec(any::<u8>(), 1..80),
            msg in arb_message(),
            part in 0usize..5,
            bit in any::<prop::sample::Index>(),
        ) {
            let signer = Signer::new(&key);
            let mut msg = msg;
            signer.sign_message(&mut msg);
            prop_assert_eq!(signer.verify(&msg), Ok(()));
            let target = match part {
                0 => &mut msg.signature,
                1 => &mut msg.header,
                2 => &mut msg.parent_header,
                3 => &mut msg.metadata,
                _ => &mut msg.content,
            };
            if target.is_empty() {
                target.push(0);
            } else {
                let i = bit.index(target.len() * 8);
                target[i / 8] ^= 1 << (i % 8);
            }
            prop_assert!(signer.verify(&msg).is_err());
        }

        #[test]
        fn verify_never_panics(key in any::<Vec<u8>>(), signature in any::<Vec<u8>>()) {
            let mut msg = sample();
            msg.signature = signature;
            let _ = Signer::new(&key).verify(&msg);
        }
    }
}
