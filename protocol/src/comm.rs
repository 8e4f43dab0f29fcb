//! Requests on the launcher's communication port ("comm port").
//!
//! Enterprise Gateway cannot signal a kernel in a remote container directly, so the launcher
//! listens on an extra TCP port and the gateway writes one small JSON object per connection:
//! `{"signum": N}` to deliver signal N (0 is a liveness probe, 2 an interrupt, 9/15 kill), and
//! `{"shutdown": 1}` to stop the listener. Both keys may come together; the signal is handled
//! first. The gateway sends no length prefix and no newline, then closes (or half-closes) the
//! connection; the launcher never replies. That is what the listener in EG's own
//! `launch_ipykernel.py` implements and what EG's `docs/source/developers/kernel-launcher.md`
//! describes.
//!
//! This module only parses and renders those objects. The reader must stop after
//! [`MAX_REQUEST_LEN`] bytes: a longer request is an error, never an unbounded buffer.
//!
//! Interop notes:
//! - EG's Python listener crashes on an empty connection (a port scan or health check) and EG
//!   then believes the kernel died. Here an empty request is the distinct, harmless
//!   [`CommError::Empty`], so the listener can ignore it.
//! - `shutdown` is tested with Python's `bool()`, as the Python launcher does: `1`, `true`,
//!   non-zero numbers, non-empty strings, arrays and objects are true; `0`, `false`, `null`,
//!   `""`, `[]` and `{}` are false. (Toree accepts only the number 1; EG always sends 1.)
//! - A `"signum": null` is treated as absent, as Python's `request.get("signum") is not None`.
//! - Unknown keys are ignored, as every existing listener does.
//! - gateway-lite's extension: a launcher that takes a `shutdown` writes [`SHUTDOWN_ACK`] back
//!   before it closes the connection, promising to end the kernel within its grace period.
//!   gateway-lite answers a DELETE on it; Enterprise Gateway closes its end right after the
//!   write and never reads it, and a launcher that does not acknowledge is simply waited for.

use serde_json::Value;

/// Longest request accepted, in bytes. Real requests are under 40 bytes.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// What a launcher writes back on the connection of a `shutdown` it took (see the module
/// notes). A gateway reads at most [`SHUTDOWN_ACK_MAX`] bytes of an answer.
pub const SHUTDOWN_ACK: &[u8] = b"{\"shutdown\": \"acknowledged\"}\n";

/// The longest answer a gateway reads from a comm port.
pub const SHUTDOWN_ACK_MAX: usize = 256;

/// Highest signal number accepted (Linux real-time signals end at 64).
pub const MAX_SIGNUM: i32 = 64;

/// One request on the comm port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommRequest {
    /// Signal to deliver to the kernel, `0..=64`; 0 only checks that the kernel is alive.
    pub signum: Option<i32>,
    /// Stop the comm-port listener (after delivering `signum`, if any).
    pub shutdown: bool,
}

/// Why a comm-port request was rejected. Every variant is the fault of the peer that
/// connected to the comm port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommError {
    /// The peer connected and closed without sending anything (port scan, health check).
    #[error("empty comm-port request")]
    Empty,
    /// The peer sent more than [`MAX_REQUEST_LEN`] bytes.
    #[error("comm-port request is longer than {max} bytes")]
    TooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// The bytes are not JSON.
    #[error("comm-port request is not valid JSON: {0}")]
    InvalidJson(String),
    /// The JSON value is not an object.
    #[error(
        "comm-port request must be a JSON object such as {{\"signum\": 2}} or {{\"shutdown\": 1}}"
    )]
    NotAnObject,
    /// The object has neither `signum` nor `shutdown`.
    #[error("comm-port request has neither \"signum\" nor \"shutdown\"")]
    NoCommand,
    /// `signum` is present but not an integer.
    #[error("\"signum\" must be an integer, got {0}")]
    SignumNotInteger(String),
    /// `signum` is an integer outside `0..=64`.
    #[error("\"signum\" must be between 0 and {MAX_SIGNUM}, got {0}")]
    SignumOutOfRange(String),
}

/// Parses one request: the whole byte content of one comm-port connection.
pub fn parse(bytes: &[u8]) -> Result<CommRequest, CommError> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(CommError::TooLong {
            max: MAX_REQUEST_LEN,
        });
    }
    if bytes.trim_ascii().is_empty() {
        return Err(CommError::Empty);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CommError::InvalidJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(CommError::NotAnObject);
    };
    let signum = match object.get("signum") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match (n.as_i64(), n.is_u64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(s) if (0..=MAX_SIGNUM).contains(&s) => Some(s),
                _ => return Err(CommError::SignumOutOfRange(n.to_string())),
            },
            (None, true) => return Err(CommError::SignumOutOfRange(n.to_string())),
            (None, false) => return Err(CommError::SignumNotInteger(n.to_string())),
        },
        Some(other) => return Err(CommError::SignumNotInteger(describe(other))),
    };
    let shutdown = object.get("shutdown");
    if signum.is_none() && shutdown.is_none() {
        return Err(CommError::NoCommand);
    }
    Ok(CommRequest {
        signum,
        shutdown: shutdown.is_some_and(python_truthy),
    })
}

/// Python's `bool(value)` for a JSON value.
fn python_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A short description of a value for an error message, bounded in length.
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    kind.to_owned()
}

impl CommRequest {
    /// Renders the request the way EG sends it: `{"signum":N}`, `{"shutdown":1}`, or
    /// `{"signum":N,"shutdown":1}`. A request with neither renders as the harmless no-op
    /// `{"shutdown":0}`, so that [`parse`] reads back every value this returns.
    pub fn to_json(&self) -> Vec<u8> {
        let text = match (self.signum, self.shutdown) {
            (Some(n), false) => format!("{{\"signum\":{n}}}"),
            (Some(n), true) => format!("{{\"signum\":{n},\"shutdown\":1}}"),
            (None, true) => "{\"shutdown\":1}".to_owned(),
            (None, false) => "{\"shutdown\":0}".to_owned(),
        };
        text.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(signum: Option<i32>, shutdown: bool) -> CommRequest {
        CommRequest { signum, shutdown }
    }

    #[test]
    fn eg_requests() {
        assert_eq!(parse(br#"{"signum": 2}"#), Ok(req(Some(2), false)));
        assert_eq!(parse(br#"{"signum": 0}"#), Ok(req(Some(0), false)));
        assert_eq!(parse(br#"{"shutdown": 1}"#), Ok(req(None, true)));
        assert_eq!(
            parse(br#"{"signum":15,"shutdown":1}"#),
            Ok(req(Some(15), true))
        );
        assert_eq!(parse(b"\n {\"signum\": 64} \n"), Ok(req(Some(64), false)));
    }

    #[test]
    fn shutdown_is_python_truthiness() {
        for (text, expected) in [
            ("1", true),
            ("true", true),
            ("2", true),
            ("-1", true),
            ("0.5", true),
            ("\"yes\"", true),
            ("\"0\"", true),
            ("[0]", true),
            ("{\"a\":0}", true),
            ("0", false),
            ("0.0", false),
            ("false", false),
            ("null", false),
            ("\"\"", false),
            ("[]", false),
            ("{}", false),
        ] {
            let doc = format!("{{\"shutdown\": {text}}}");
            assert_eq!(parse(doc.as_bytes()), Ok(req(None, expected)), "{doc}");
        }
    }

    #[test]
    fn rejects_bad_requests() {
        assert_eq!(parse(b""), Err(CommError::Empty));
        assert_eq!(parse(b" \r\n\t"), Err(CommError::Empty));
        assert_eq!(parse(b"{}"), Err(CommError::NoCommand));
        assert_eq!(parse(br#"{"signum": null}"#), Err(CommError::NoCommand));
        assert_eq!(parse(br#"{"other": 1}"#), Err(CommError::NoCommand));
        assert_eq!(parse(b"[1]"), Err(CommError::NotAnObject));
        assert_eq!(parse(b"1"), Err(CommError::NotAnObject));
        assert!(matches!(parse(b"{"), Err(CommError::InvalidJson(_))));
        assert!(matches!(parse(b"\xff"), Err(CommError::InvalidJson(_))));
        assert!(matches!(
            parse(br#"{"signum": 2.5}"#),
            Err(CommError::SignumNotInteger(_))
        ));
        assert!(matches!(
            parse(br#"{"signum": "2"}"#),
            Err(CommError::SignumNotInteger(_))
        ));
        assert!(matches!(
            parse(br#"{"signum": 65}"#),
            Err(CommError::SignumOutOfRange(_))
        ));
        assert!(matches!(
            parse(br#"{"signum": -1}"#),
            Err(CommError::SignumOutOfRange(_))
        ));
        assert!(matches!(
            parse(br#"{"signum": 18446744073709551615}"#),
            Err(CommError::SignumOutOfRange(_))
        ));
        assert!(matches!(
            parse(br#"{"signum": 9223372036854775807}"#),
            Err(CommError::SignumOutOfRange(_))
        ));
    }

    #[test]
    fn length_limit_is_exact() {
        let mut at_limit = br#"{"signum":2}"#.to_vec();
        at_limit.resize(MAX_REQUEST_LEN, b' ');
        assert_eq!(parse(&at_limit), Ok(req(Some(2), false)));
        at_limit.push(b' ');
        assert_eq!(
            parse(&at_limit),
            Err(CommError::TooLong {
                max: MAX_REQUEST_LEN
            })
        );
    }

    #[test]
    fn renders_what_eg_sends() {
        assert_eq!(req(Some(2), false).to_json(), br#"{"signum":2}"#);
        assert_eq!(req(None, true).to_json(), br#"{"shutdown":1}"#);
        assert_eq!(
            req(Some(15), true).to_json(),
            br#"{"signum":15,"shutdown":1}"#
        );
    }

    proptest! {
        #[test]
        fn round_trip(signum in proptest::option::of(0..=MAX_SIGNUM), shutdown in any::<bool>()) {
            let r = req(signum, shutdown);
            prop_assert_eq!(parse(&r.to_json()), Ok(r));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_like_text(s in r#"[{}\[\]":,0-9a-z .eE+-]{0,64}"#) {
            let _ = parse(s.as_bytes());
        }
    }
}
