//! Signed comm-port requests: what a gateway that gave its launcher a secret sends, so that
//! nobody else on the kernel's network can interrupt, kill or stop the kernel.
//!
//! Enterprise Gateway's comm port takes any `{"signum": N}` or `{"shutdown": 1}` from anyone
//! who can reach it ([`crate::comm`]). A launcher started by gateway-lite gets a fresh
//! per-launch secret in its environment (never on its command line); with it, the launcher
//! accepts only requests signed with that secret:
//!
//! ```text
//! {"request": "<body>", "hmac": "<64 lowercase hex digits>"}
//! body = {"signum": N, "shutdown": 1, "time": <unix seconds>, "nonce": "<32 hex digits>"}
//! hmac = HMAC-SHA256(secret, body as sent)
//! ```
//!
//! The body travels as a JSON string so the signature covers its exact bytes (no
//! canonical form to agree on). `time` and `nonce` make every request single-use: the
//! receiver refuses a request older or newer than its [`ReplayGuard`] window, and one whose
//! nonce it has seen in that window. Verification compares in constant time. Without a
//! secret the launcher keeps Enterprise Gateway's unsigned form, unchanged.
//!
//! The same secret seals the launcher's connection payload ([`seal_payload`]): the encrypted
//! payload is preceded by one line, `gateway-lite-auth:<HMAC-SHA256(secret, payload) in
//! hex>`. The gateway checks that line against the secrets of its pending launches before it
//! spends an RSA decryption on the payload, so a flood of forged payloads costs it one hash
//! each, not a private-key operation. Enterprise Gateway's payloads have no such line.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::comm::{self, CommError, CommRequest, MAX_REQUEST_LEN};

/// Seconds a signed request stays valid either side of the receiver's clock.
pub const WINDOW_SECS: u64 = 300;

/// Nonces remembered at most; beyond this the oldest are forgotten early (and requests
/// older than the window are refused anyway).
const MAX_NONCES: usize = 4096;

/// Why a signed request was refused. Every variant is the fault of the peer that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// The request is not in the signed form (an unsigned Enterprise Gateway request, or
    /// garbage).
    #[error("comm-port request is not signed (this launcher requires signed requests): {0}")]
    Unsigned(String),
    /// The signature does not match (another secret, or a changed body).
    #[error("comm-port request has a wrong signature")]
    BadSignature,
    /// The signed body is not a valid request.
    #[error("signed comm-port request: {0}")]
    Body(#[from] CommError),
    /// `time` is missing or outside the window around the receiver's clock.
    #[error("signed comm-port request is stale or from the future (time {time}, now {now})")]
    Stale {
        /// The request's time.
        time: u64,
        /// The receiver's time.
        now: u64,
    },
    /// The nonce was used before.
    #[error("signed comm-port request was replayed (nonce seen before)")]
    Replayed,
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// What it asks for.
    pub request: CommRequest,
    /// When it was signed (unix seconds).
    pub time: u64,
    /// Its single-use nonce.
    pub nonce: String,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Renders `request` signed with `secret`, at `time` (unix seconds), with `nonce`.
pub fn sign(request: &CommRequest, secret: &[u8], time: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    if let Some(n) = request.signum {
        body.insert("signum".into(), n.into());
    }
    body.insert("shutdown".into(), u8::from(request.shutdown).into());
    body.insert("time".into(), time.into());
    body.insert("nonce".into(), hex(nonce).into());
    let body = serde_json::Value::Object(body).to_string();
    let mut m = mac(secret);
    m.update(body.as_bytes());
    let tag = hex(&m.finalize().into_bytes());
    serde_json::json!({ "request": body, "hmac": tag })
        .to_string()
        .into_bytes()
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only (for comparing
/// secrets and tokens; lengths are not secret).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What starts a sealed payload.
pub const PAYLOAD_MARK: &[u8] = b"gateway-lite-auth:";

/// `payload` sealed with `secret`: the mark, the HMAC in hex, a newline, the payload.
pub fn seal_payload(secret: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = mac(secret);
    m.update(payload);
    let tag = hex(&m.finalize().into_bytes());
    let mut out = Vec::with_capacity(PAYLOAD_MARK.len() + tag.len() + 1 + payload.len());
    out.extend_from_slice(PAYLOAD_MARK);
    out.extend_from_slice(tag.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

/// A sealed payload's tag and payload; `None` when `bytes` is not sealed (an Enterprise
/// Gateway payload, or garbage).
pub fn open_payload(bytes: &[u8]) -> Option<([u8; 32], &[u8])> {
    let rest = bytes.strip_prefix(PAYLOAD_MARK)?;
    let hex_tag = rest.get(..64)?;
    if rest.get(64) != Some(&b'\n') {
        return None;
    }
    let tag = unhex(std::str::from_utf8(hex_tag).ok()?)?;
    let tag: [u8; 32] = tag.try_into().ok()?;
    Some((tag, &rest[65..]))
}

/// Whether `tag` is `payload`'s seal under `secret` (constant time).
pub fn payload_sealed_with(secret: &[u8], payload: &[u8], tag: &[u8; 32]) -> bool {
    let mut m = mac(secret);
    m.update(payload);
    m.verify_slice(tag).is_ok()
}

#[derive(Deserialize)]
struct Envelope {
    request: String,
    hmac: String,
}

#[derive(Deserialize)]
struct Stamp {
    time: Option<u64>,
    nonce: Option<String>,
}

/// Checks the signature of one request (the whole content of one connection) against
/// `secret`, and parses its body. Freshness and replay are the [`ReplayGuard`]'s job.
pub fn verify(bytes: &[u8], secret: &[u8]) -> Result<Verified, SignedError> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(CommError::TooLong {
            max: MAX_REQUEST_LEN,
        }
        .into());
    }
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned();
        SignedError::Unsigned(format!("{e} in {shown:?}"))
    })?;
    let tag = unhex(&envelope.hmac).filter(|t| t.len() == 32);
    let Some(tag) = tag else {
        return Err(SignedError::BadSignature);
    };
    let mut m = mac(secret);
    m.update(envelope.request.as_bytes());
    m.verify_slice(&tag)
        .map_err(|_| SignedError::BadSignature)?;
    let request = comm::parse(envelope.request.as_bytes())?;
    let stamp: Stamp = serde_json::from_str(&envelope.request)
        .map_err(|e| SignedError::Body(CommError::InvalidJson(e.to_string())))?;
    let nonce = stamp
        .nonce
        .filter(|n| n.len() == 32 && unhex(n).is_some())
        .ok_or_else(|| SignedError::Body(CommError::InvalidJson("no 32-digit nonce".into())))?;
    let time = stamp
        .time
        .ok_or_else(|| SignedError::Body(CommError::InvalidJson("no \"time\"".into())))?;
    Ok(Verified {
        request,
        time,
        nonce,
    })
}

/// Refuses stale and replayed requests: a request must be signed within [`WINDOW_SECS`] of
/// the receiver's clock, and each nonce is accepted once.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<String, u64>,
}

impl ReplayGuard {
    /// Accepts `v` at receiver time `now` (unix seconds), or says why not.
    pub fn admit(&mut self, v: &Verified, now: u64) -> Result<(), SignedError> {
        if v.time.abs_diff(now) > WINDOW_SECS {
            return Err(SignedError::Stale { time: v.time, now });
        }
        self.seen.retain(|_, t| t.abs_diff(now) <= WINDOW_SECS);
        if self.seen.contains_key(&v.nonce) {
            return Err(SignedError::Replayed);
        }
        if self.seen.len() >= MAX_NONCES
            && let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone())
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(v.nonce.clone(), v.time);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NONCE: [u8; 16] = [7; 16];

    fn req(signum: Option<i32>, shutdown: bool) -> CommRequest {
        CommRequest { signum, shutdown }
    }

    #[test]
    fn signed_requests_round_trip() {
        for r in [req(Some(2), false), req(None, true), req(Some(9), true)] {
            let wire = sign(&r, SECRET, 1_000, &NONCE);
            let v = verify(&wire, SECRET).unwrap();
            assert_eq!(v.request, r);
            assert_eq!(v.time, 1_000);
            assert_eq!(v.nonce, "07".repeat(16));
        }
    }

    #[test]
    fn unsigned_wrong_and_tampered_requests_are_refused() {
        // Enterprise Gateway's plain form.
        assert!(matches!(
            verify(br#"{"signum": 9}"#, SECRET),
            Err(SignedError::Unsigned(_))
        ));
        assert!(matches!(verify(b"", SECRET), Err(SignedError::Unsigned(_))));
        let wire = sign(&req(Some(2), false), SECRET, 1_000, &NONCE);
        assert_eq!(
            verify(&wire, b"another secret"),
            Err(SignedError::BadSignature)
        );
        // The body changed after signing: 2 becomes 9.
        let text = String::from_utf8(wire.clone()).unwrap();
        let tampered = text.replace("\\\"signum\\\":2", "\\\"signum\\\":9");
        assert_ne!(tampered, text);
        assert_eq!(
            verify(tampered.as_bytes(), SECRET),
            Err(SignedError::BadSignature)
        );
        // An empty or malformed signature.
        let v: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        for hmac in ["", "zz", "00"] {
            let doc = serde_json::json!({"request": v["request"], "hmac": hmac}).to_string();
            assert_eq!(
                verify(doc.as_bytes(), SECRET),
                Err(SignedError::BadSignature),
                "{hmac:?}"
            );
        }
    }

    #[test]
    fn stale_and_replayed_requests_are_refused() {
        let mut guard = ReplayGuard::default();
        let now = 10_000;
        let fresh = verify(
            &sign(&req(Some(2), false), SECRET, now - 10, &NONCE),
            SECRET,
        )
        .unwrap();
        assert_eq!(guard.admit(&fresh, now), Ok(()));
        assert_eq!(guard.admit(&fresh, now + 1), Err(SignedError::Replayed));
        let old = verify(
            &sign(
                &req(Some(2), false),
                SECRET,
                now - WINDOW_SECS - 1,
                &[1; 16],
            ),
            SECRET,
        )
        .unwrap();
        assert!(matches!(
            guard.admit(&old, now),
            Err(SignedError::Stale { .. })
        ));
        let future = verify(
            &sign(
                &req(Some(2), false),
                SECRET,
                now + WINDOW_SECS + 1,
                &[2; 16],
            ),
            SECRET,
        )
        .unwrap();
        assert!(matches!(
            guard.admit(&future, now),
            Err(SignedError::Stale { .. })
        ));
        // Nonces are forgotten once their time is out of the window (and refused anyway).
        assert_eq!(
            guard.admit(&fresh, now + 2 * WINDOW_SECS),
            Err(SignedError::Stale {
                time: fresh.time,
                now: now + 2 * WINDOW_SECS
            })
        );
        assert!(guard.seen.len() <= 1);
    }

    #[test]
    fn the_nonce_memory_is_bounded() {
        let mut guard = ReplayGuard::default();
        for i in 0..(MAX_NONCES + 10) as u64 {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&i.to_le_bytes());
            let v = verify(
                &sign(&req(Some(0), false), SECRET, 500 + i % 10, &nonce),
                SECRET,
            )
            .unwrap();
            assert_eq!(guard.admit(&v, 505), Ok(()));
        }
        assert!(guard.seen.len() <= MAX_NONCES);
    }

    #[test]
    fn constant_time_eq() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn sealed_payloads() {
        let sealed = seal_payload(SECRET, b"eyJ2ZXJzaW9uIjoxfQ==");
        let (tag, payload) = open_payload(&sealed).unwrap();
        assert_eq!(payload, b"eyJ2ZXJzaW9uIjoxfQ==");
        assert!(payload_sealed_with(SECRET, payload, &tag));
        assert!(!payload_sealed_with(b"other", payload, &tag));
        assert!(!payload_sealed_with(SECRET, b"changed", &tag));
        // Enterprise Gateway's plain payloads, and broken seals, are not sealed.
        assert_eq!(open_payload(b"eyJ2ZXJzaW9uIjoxfQ=="), None);
        assert_eq!(open_payload(b"gateway-lite-auth:zz"), None);
        let mut no_newline = sealed.clone();
        no_newline[PAYLOAD_MARK.len() + 64] = b' ';
        assert_eq!(open_payload(&no_newline), None);
    }

    proptest! {
        #[test]
        fn open_payload_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = PAYLOAD_MARK.to_vec();
            b.extend_from_slice(&bytes);
            let _ = open_payload(&b);
            let _ = open_payload(&bytes);
        }

        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = verify(&bytes, SECRET);
        }

        #[test]
        fn only_the_secret_verifies(secret in proptest::collection::vec(any::<u8>(), 0..64), signum in 0..=64i32) {
            let wire = sign(&req(Some(signum), false), &secret, 1, &NONCE);
            prop_assert_eq!(verify(&wire, &secret).map(|v| v.request), Ok(req(Some(signum), false)));
            let mut other = secret.clone();
            other.push(1);
            prop_assert_eq!(verify(&wire, &other), Err(SignedError::BadSignature));
        }
    }
}
