//! Z85, the ZeroMQ base-85 text form of binary data (ZeroMQ RFC 32), used for CurveZMQ keys.
//!
//! gateway_provisioners 0.5.0 asks a launcher for a CurveZMQ key pair and expects both keys as
//! Z85 text in the connection file and the launch report, exactly as libzmq's
//! `zmq_curve_keypair` and pyzmq's `zmq.curve_keypair()` print them: 32 bytes become 40
//! characters. This module is the codec, written here rather than taken from a crate because it
//! is a page of code with one test vector in the RFC, and every other Z85 crate is either
//! unmaintained or pulls in a general base-N framework.
//!
//! Rules (RFC 32): binary input is a multiple of 4 bytes, each 4-byte group read as a big-endian
//! `u32` and written as 5 digits, most significant first, from the alphabet [`ALPHABET`]; text
//! input is a multiple of 5 characters and a 5-digit group must not exceed `u32::MAX`. Both
//! directions are total: bad input is a [`Z85Error`], never a panic.

/// The 85 Z85 digits, in value order.
pub const ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Length of a CurveZMQ key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a Z85-encoded CurveZMQ key in characters.
pub const KEY_TEXT_LEN: usize = 40;

/// Why text or bytes cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Z85Error {
    /// Binary input must be a multiple of 4 bytes.
    #[error("Z85 encodes a multiple of 4 bytes; got {0}")]
    BinaryLength(usize),
    /// Text input must be a multiple of 5 characters.
    #[error("Z85 text is a multiple of 5 characters; got {0}")]
    TextLength(usize),
    /// A character outside the Z85 alphabet.
    #[error("byte {byte:#04x} at offset {offset} is not a Z85 digit")]
    Digit {
        /// The offending byte.
        byte: u8,
        /// Its offset in the text.
        offset: usize,
    },
    /// A 5-digit group whose value exceeds 32 bits.
    #[error("the Z85 group at offset {0} exceeds 32 bits")]
    Overflow(usize),
    /// Decoded data of the wrong length for a CurveZMQ key.
    #[error(
        "a CurveZMQ key is {KEY_TEXT_LEN} Z85 characters ({KEY_LEN} bytes); got {0} characters"
    )]
    KeyLength(usize),
}

/// Value of each byte as a Z85 digit; 0xFF for bytes outside the alphabet.
const DECODE: [u8; 256] = {
    let mut table = [0xFF_u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Encodes `data` (a multiple of 4 bytes).
pub fn encode(data: &[u8]) -> Result<String, Z85Error> {
    if !data.len().is_multiple_of(4) {
        return Err(Z85Error::BinaryLength(data.len()));
    }
    let mut out = String::with_capacity(data.len() / 4 * 5);
    for chunk in data.chunks_exact(4) {
        let mut value = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.extend(digits.iter().map(|&b| char::from(b)));
    }
    Ok(out)
}

/// Decodes Z85 `text` (a multiple of 5 characters).
pub fn decode(text: &str) -> Result<Vec<u8>, Z85Error> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(5) {
        return Err(Z85Error::TextLength(bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / 5 * 4);
    for (group, chunk) in bytes.chunks_exact(5).enumerate() {
        let mut value: u64 = 0;
        for (i, &b) in chunk.iter().enumerate() {
            let digit = DECODE[usize::from(b)];
            if digit == 0xFF {
                return Err(Z85Error::Digit {
                    byte: b,
                    offset: group * 5 + i,
                });
            }
            value = value * 85 + u64::from(digit);
        }
        let value = u32::try_from(value).map_err(|_| Z85Error::Overflow(group * 5))?;
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

/// Encodes a 32-byte CurveZMQ key as its 40 Z85 characters.
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    let mut out = String::with_capacity(KEY_TEXT_LEN);
    for chunk in key.chunks_exact(4) {
        // A 4-byte chunk always encodes.
        out.push_str(&encode(chunk).unwrap_or_default());
    }
    out
}

/// Decodes a 40-character Z85 CurveZMQ key.
pub fn decode_key(text: &str) -> Result<[u8; KEY_LEN], Z85Error> {
    if text.len() != KEY_TEXT_LEN {
        return Err(Z85Error::KeyLength(text.len()));
    }
    let bytes = decode(text)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| Z85Error::KeyLength(text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_32_test_vector() {
        let data = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B];
        assert_eq!(encode(&data).unwrap(), "HelloWorld");
        assert_eq!(decode("HelloWorld").unwrap(), data);
    }

    #[test]
    fn extremes() {
        assert_eq!(encode(&[0; 4]).unwrap(), "00000");
        assert_eq!(encode(&[0xFF; 4]).unwrap(), "%nSc0");
        assert_eq!(decode("%nSc0").unwrap(), [0xFF; 4]);
        assert_eq!(encode(&[]).unwrap(), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(encode(&[1, 2, 3]), Err(Z85Error::BinaryLength(3)));
        assert_eq!(decode("Hell"), Err(Z85Error::TextLength(4)));
        assert_eq!(
            decode("Hell\"World"),
            Err(Z85Error::Digit {
                byte: b'"',
                offset: 4
            })
        );
        // One past u32::MAX.
        assert_eq!(decode("%nSc1"), Err(Z85Error::Overflow(0)));
        assert_eq!(decode("#####"), Err(Z85Error::Overflow(0)));
        assert_eq!(
            decode("é123"),
            Err(Z85Error::Digit {
                byte: 0xC3,
                offset: 0
            })
        );
    }

    #[test]
    fn keys() {
        // The example key pair in libzmq's zmq_curve(7) manual.
        let public = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
        let key = decode_key(public).unwrap();
        assert_eq!(encode_key(&key), public);
        assert_eq!(decode_key("HelloWorld"), Err(Z85Error::KeyLength(10)));
        assert!(matches!(
            decode_key("Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hI~"),
            Err(Z85Error::Digit { offset: 39, .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(words in proptest::collection::vec(any::<[u8; 4]>(), 0..32)) {
            let data: Vec<u8> = words.concat();
            let text = encode(&data).unwrap();
            prop_assert_eq!(text.len(), data.len() / 4 * 5);
            prop_assert!(text.bytes().all(|b| ALPHABET.contains(&b)));
            prop_assert_eq!(decode(&text).unwrap(), data);
        }

        #[test]
        fn key_round_trip(key in any::<[u8; 32]>()) {
            let text = encode_key(&key);
            prop_assert_eq!(text.len(), KEY_TEXT_LEN);
            prop_assert_eq!(decode_key(&text).unwrap(), key);
        }

        #[test]
        fn decode_is_total_and_canonical(text in "\\PC{0,30}") {
            if let Ok(data) = decode(&text) {
                prop_assert_eq!(encode(&data).unwrap(), text);
            }
        }

        #[test]
        fn alphabet_text_decodes_canonically(text in "[0-9a-zA-Z.:+=^!/*?&<>()\\[\\]{}@%$#-]{0,30}") {
            match decode(&text) {
                Ok(data) => prop_assert_eq!(encode(&data).unwrap(), text),
                Err(e) => prop_assert!(
                    matches!(e, Z85Error::TextLength(_) | Z85Error::Overflow(_)),
                    "{e}"
                ),
            }
        }
    }
}
