//! The ZMTP 3.x greeting: the first 64 bytes each side of a ZeroMQ TCP connection sends,
//! which name the security mechanism the socket was set up with.
//!
//! The launcher writes CurveZMQ keys into the kernel's connection file when a gateway asks for
//! transport encryption, but only a kernel that reads them (ipykernel >= 7.3) binds its sockets
//! as CURVE servers; an older kernel ignores them and stays on NULL. Reporting keys for a NULL
//! kernel would make the gateway's CURVE clients fail every handshake, so the launcher asks the
//! kernel instead: it connects to the heartbeat port, starts a greeting, reads the kernel's
//! mechanism field and hangs up before it has sent a mechanism of its own. This module is the sans-IO half: [`greeting`] builds our 64 bytes and
//! [`parse_greeting`] reads the peer's, totally (any bytes give a [`Greeting`] or a
//! [`GreetingError`]).
//!
//! Layout (ZeroMQ RFC 23, ZMTP 3.0; RFC 37, ZMTP 3.1, keeps it):
//!
//! ```text
//! offset  0      signature: 0xFF, 8 padding bytes, 0x7F
//!        10      version: major, minor
//!        12      mechanism: 20 bytes, ASCII name NUL-padded ("NULL", "PLAIN", "CURVE")
//!        32      as-server: 0 or 1
//!        33      filler: 31 bytes
//! ```
//!
//! Interop facts (libzmq 4.3.5 as bundled by pyzmq 27.3; ROUTER sockets as ipykernel binds
//! them, NULL and CURVE):
//! - libzmq announces version 3.1 and fills the signature's padding with a big-endian `u64`
//!   (its routing-id length + 1, so `00 .. 00 01`), not zeros: the padding is not checked here.
//! - libzmq sends its greeting in steps: the 10-byte signature at once, the major version once
//!   it has read the peer's signature, and the rest (minor version, mechanism, as-server,
//!   filler) once it has read the peer's major version. So the first [`PREFIX_LEN`] bytes of
//!   our greeting (signature and major version, the split ZMTP 3.0 itself describes for
//!   version detection) are enough to get the peer's whole greeting.
//! - Sending all 64 bytes instead does not work as a probe: as soon as libzmq has read a peer
//!   greeting whose mechanism differs from its own, it closes the connection, and in practice
//!   before the rest of its own greeting has left (a NULL server greeted with CURVE, or a CURVE
//!   server greeted with NULL, sent only its 10-byte signature, every time). Only a matching
//!   guess shows the mechanism, which is no probe at all.
//! - The as-server byte is no guide: a libzmq CURVE server greets with 0 there.
//! - A peer that hangs up after the 11 bytes is a handshake that never finished: libzmq drops
//!   it without a message, ipykernel logs nothing (it has no socket monitor), and the socket
//!   goes on serving other peers.
//! - ZMTP 1.0 and 2.0 peers send a different, shorter greeting; their version byte (offset 10)
//!   is below 3 and they give [`GreetingError::Version`].

/// Length of a ZMTP 3.x greeting.
pub const GREETING_LEN: usize = 64;
/// Length of the signature and major version at the start of a greeting: what a peer must
/// have seen before it sends the rest of its own (see the module notes).
pub const PREFIX_LEN: usize = 11;
/// Offset of the mechanism field.
const MECHANISM_AT: usize = 12;
/// Length of the mechanism field.
const MECHANISM_LEN: usize = 20;
/// Offset of the as-server flag.
const AS_SERVER_AT: usize = 32;

/// A security mechanism named in a greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// No security (plain text); Jupyter's default, messages HMAC-signed.
    Null,
    /// Clear-text user name and password.
    Plain,
    /// CurveZMQ: authenticated and encrypted.
    Curve,
    /// Any other well-formed mechanism name.
    Other(String),
}

impl Mechanism {
    /// The name as it appears on the wire.
    pub fn name(&self) -> &str {
        match self {
            Mechanism::Null => "NULL",
            Mechanism::Plain => "PLAIN",
            Mechanism::Curve => "CURVE",
            Mechanism::Other(name) => name,
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A peer's parsed greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// ZMTP major version (3 for every peer this parser accepts).
    pub major: u8,
    /// ZMTP minor version (0 or 1 today).
    pub minor: u8,
    /// The security mechanism the peer's socket uses.
    pub mechanism: Mechanism,
    /// Whether the peer says it is the server for the mechanism.
    pub as_server: bool,
}

/// Why bytes are not a ZMTP 3.x greeting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GreetingError {
    /// Fewer than 64 bytes, and nothing wrong in those that came.
    #[error("the ZMTP greeting is {GREETING_LEN} bytes; the peer sent {0} and closed")]
    Truncated(usize),
    /// The first or tenth byte is not the ZMTP signature's (0xFF, 0x7F).
    #[error("not a ZeroMQ peer: the ZMTP signature (0xFF ... 0x7F) is missing")]
    Signature,
    /// A ZMTP version below 3 (no mechanism field).
    #[error("ZMTP {major}.{minor} is not supported; 3.0 or later is needed")]
    Version {
        /// Major version byte.
        major: u8,
        /// Minor version byte (0 when the peer did not send one).
        minor: u8,
    },
    /// The mechanism field is empty, not ASCII name characters, or not NUL-padded.
    #[error("the ZMTP greeting's mechanism field is malformed")]
    Mechanism,
    /// The as-server byte is neither 0 nor 1.
    #[error("the ZMTP greeting's as-server byte is {0:#04x}, not 0 or 1")]
    AsServer(u8),
}

/// Our greeting: ZMTP 3.0 with `mechanism` (a name of at most 20 characters; longer names
/// are cut) and the as-server flag.
pub fn greeting(mechanism: &Mechanism, as_server: bool) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xFF;
    g[9] = 0x7F;
    g[10] = 3;
    g[11] = 0;
    let name = mechanism.name().as_bytes();
    let n = name.len().min(MECHANISM_LEN);
    g[MECHANISM_AT..MECHANISM_AT + n].copy_from_slice(&name[..n]);
    g[AS_SERVER_AT] = u8::from(as_server);
    g
}

/// Reads a peer's greeting from the first bytes it sent (more than 64 are ignored).
///
/// A mistake already visible in a short input (a wrong signature or version) is reported as
/// such rather than as [`GreetingError::Truncated`], so a non-ZeroMQ peer that sends a few
/// bytes and closes is named for what it is.
pub fn parse_greeting(bytes: &[u8]) -> Result<Greeting, GreetingError> {
    let got = bytes.len();
    if bytes.first().is_some_and(|&b| b != 0xFF) || bytes.get(9).is_some_and(|&b| b != 0x7F) {
        return Err(GreetingError::Signature);
    }
    if let Some(&major) = bytes.get(10)
        && major < 3
    {
        return Err(GreetingError::Version {
            major,
            minor: bytes.get(11).copied().unwrap_or(0),
        });
    }
    let Some(g) = bytes.first_chunk::<GREETING_LEN>() else {
        return Err(GreetingError::Truncated(got));
    };
    let field = &g[MECHANISM_AT..MECHANISM_AT + MECHANISM_LEN];
    let len = field.iter().position(|&b| b == 0).unwrap_or(MECHANISM_LEN);
    let (name, padding) = field.split_at(len);
    let name_ok = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.+".contains(b));
    if !name_ok || padding.iter().any(|&b| b != 0) {
        return Err(GreetingError::Mechanism);
    }
    let mechanism = match name {
        b"NULL" => Mechanism::Null,
        b"PLAIN" => Mechanism::Plain,
        b"CURVE" => Mechanism::Curve,
        // Checked above: ASCII only.
        other => Mechanism::Other(String::from_utf8_lossy(other).into_owned()),
    };
    let as_server = match g[AS_SERVER_AT] {
        0 => false,
        1 => true,
        other => return Err(GreetingError::AsServer(other)),
    };
    Ok(Greeting {
        major: g[10],
        minor: g[11],
        mechanism,
        as_server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A greeting as libzmq 4.3 sends it: version 3.1, padding holding routing-id length + 1.
    fn libzmq(mechanism: &[u8]) -> [u8; GREETING_LEN] {
        let mut g = [0u8; GREETING_LEN];
        g[0] = 0xFF;
        g[1..9].copy_from_slice(&1u64.to_be_bytes());
        g[9] = 0x7F;
        g[10] = 3;
        g[11] = 1;
        g[12..12 + mechanism.len()].copy_from_slice(mechanism);
        g
    }

    #[test]
    fn ours_is_zmtp_3_0() {
        let g = greeting(&Mechanism::Curve, false);
        assert_eq!(&g[..12], &[0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0]);
        assert_eq!(&g[12..17], b"CURVE");
        assert!(g[17..].iter().all(|&b| b == 0));
        assert_eq!(
            parse_greeting(&g),
            Ok(Greeting {
                major: 3,
                minor: 0,
                mechanism: Mechanism::Curve,
                as_server: false
            })
        );
        assert!(
            parse_greeting(&greeting(&Mechanism::Null, true))
                .unwrap()
                .as_server
        );
    }

    #[test]
    fn libzmq_greetings() {
        for (name, mech) in [
            (&b"NULL"[..], Mechanism::Null),
            (b"CURVE", Mechanism::Curve),
            (b"PLAIN", Mechanism::Plain),
            (b"GSSAPI", Mechanism::Other("GSSAPI".into())),
        ] {
            let g = parse_greeting(&libzmq(name)).unwrap();
            assert_eq!((g.major, g.minor, &g.mechanism), (3, 1, &mech));
            assert_eq!(g.mechanism.to_string(), String::from_utf8_lossy(name));
        }
        // Bytes after the greeting (the peer's first command) are not ours to read.
        let mut more = libzmq(b"NULL").to_vec();
        more.extend_from_slice(b"\x04\x19\x05READY");
        assert_eq!(parse_greeting(&more).unwrap().mechanism, Mechanism::Null);
    }

    #[test]
    fn truncated() {
        let g = libzmq(b"CURVE");
        for n in [0, 1, 10, 11, 12, 32, 63] {
            assert_eq!(
                parse_greeting(&g[..n]),
                Err(GreetingError::Truncated(n)),
                "{n}"
            );
        }
    }

    #[test]
    fn garbage() {
        assert_eq!(
            parse_greeting(b"HTTP/1.1 400 Bad"),
            Err(GreetingError::Signature)
        );
        assert_eq!(
            parse_greeting(&[0xFF, 0, 0]),
            Err(GreetingError::Truncated(3))
        );
        let mut g = libzmq(b"NULL");
        g[9] = 0x01;
        assert_eq!(parse_greeting(&g), Err(GreetingError::Signature));
        let mut g = libzmq(b"NULL");
        g[10] = 1;
        assert_eq!(
            parse_greeting(&g[..11]),
            Err(GreetingError::Version { major: 1, minor: 0 })
        );
        assert_eq!(
            parse_greeting(&g),
            Err(GreetingError::Version { major: 1, minor: 1 })
        );
        assert_eq!(parse_greeting(&libzmq(b"")), Err(GreetingError::Mechanism));
        assert_eq!(
            parse_greeting(&libzmq(b"curve")),
            Err(GreetingError::Mechanism)
        );
        assert_eq!(
            parse_greeting(&libzmq(b"NULL\0X")),
            Err(GreetingError::Mechanism)
        );
        assert_eq!(
            parse_greeting(&libzmq(b"ABCDEFGHIJKLMNOPQRST"))
                .unwrap()
                .mechanism,
            Mechanism::Other("ABCDEFGHIJKLMNOPQRST".into())
        );
        let mut g = libzmq(b"NULL");
        g[32] = 7;
        assert_eq!(parse_greeting(&g), Err(GreetingError::AsServer(7)));
    }

    proptest! {
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_greeting(&bytes);
        }

        #[test]
        fn well_formed_greetings_parse(
            name in "[A-Z0-9._+-]{1,20}",
            minor in any::<u8>(),
            as_server in any::<bool>(),
            padding in any::<[u8; 8]>(),
            filler in any::<[u8; 31]>(),
        ) {
            let mut g = greeting(&Mechanism::Other(name.clone()), as_server);
            g[1..9].copy_from_slice(&padding);
            g[11] = minor;
            g[33..].copy_from_slice(&filler);
            let parsed = parse_greeting(&g).unwrap();
            prop_assert_eq!(parsed.mechanism.name(), name.as_str());
            prop_assert_eq!(parsed.minor, minor);
            prop_assert_eq!(parsed.as_server, as_server);
        }
    }
}
