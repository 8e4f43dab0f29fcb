//! Enterprise Gateway's encrypted launch report ("payload version 1").
//!
//! A remote kernel's launcher must tell the gateway which ports the kernel listens on and
//! which key signs its messages. It does so once, over a plain TCP connection to the gateway's
//! response address, so the report is encrypted for the gateway: the gateway passes its RSA
//! public key on the launcher's command line (`--public-key`, or env `PUBLIC_KEY` in
//! containers), and the launcher sends
//!
//! ```text
//! base64( json { "version": 1,
//!                "key":       base64( RSA-PKCS#1-v1.5-encrypt(gateway_key, aes_key) ),
//!                "conn_info": base64( AES-128-ECB( PKCS#7-pad( inner_json ) ) ) } )
//! ```
//!
//! where `aes_key` is 16 fresh random bytes and `inner_json` is a [`LaunchReport`], as EG's
//! `launch_ipykernel.py` (`_encrypt`) writes it and EG's `processproxy.py`
//! (`ResponseManager._decode_payload`) reads it. [`encrypt`] is the launcher side, [`decrypt`] the
//! gateway side. The cryptography is EG's, kept for compatibility: PKCS#1 v1.5 and ECB are not what
//! one would choose today, and nothing authenticates the payload.
//!
//! Interop quirks handled here:
//! - EG's public key is the PEM SubjectPublicKeyInfo body with the `-----BEGIN/END PUBLIC
//!   KEY-----` armour and every newline removed: 216 base64 characters for RSA-1024, starting
//!   `MIGfMA0GCSqGSIb3`. [`PublicKey::parse`] also takes a full PEM (SPKI or PKCS#1) and
//!   surrounding whitespace, and refuses keys outside 1024..=4096 bits. EG generates 1024-bit
//!   keys; aws-lc-rs would refuse those, RustCrypto `rsa` accepts them.
//! - PKCS#7 padding always adds 1..=16 bytes, so a plaintext whose length is a multiple of 16
//!   gains a whole block. Java's `"AES"` (Toree) is `AES/ECB/PKCS5Padding`, the same thing.
//! - Toree pretty-prints the outer JSON and orders its keys differently; some encoders wrap
//!   base64 in lines. [`decrypt`] ignores ASCII whitespace anywhere in the base64 text, as
//!   Python's `base64.b64decode` does, and reads the outer JSON in any key order.
//! - Toree sends `pid` as a string; EG calls `int()` on it. [`LaunchReport`] reads integers or
//!   strings holding integers, and maps anything else to `None`.
//! - `rsa` 0.10 decrypts PKCS#1 v1.5 with *implicit rejection* (the Marvin-attack fix): a
//!   ciphertext for another key does not fail the RSA step but yields a synthetic message. It
//!   then fails here as a session key of the wrong length or as bad AES padding.
//! - EG also accepts a legacy "version 0" payload (AES keyed with the kernel id, no RSA). EG
//!   3.x launchers never send it and neither does this crate; [`decrypt`] rejects it.

use aes::Aes128;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ecb::cipher::block_padding::Pkcs7;
use ecb::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit};
use rand_core::TryCryptoRng;
use rsa::pkcs1::der::Decode;
use rsa::pkcs1::{ALGORITHM_OID, RsaPublicKeyRef};
use rsa::pkcs8::{EncodePublicKey, SubjectPublicKeyInfoRef};
use rsa::rand_core;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::connection::ConnectionInfo;

/// Smallest RSA modulus accepted, in bits (EG's `ResponseManager.KEY_SIZE`).
pub const MIN_KEY_BITS: usize = 1024;
/// Largest RSA modulus accepted, in bits.
pub const MAX_KEY_BITS: usize = 4096;
/// Longest payload [`decrypt`] reads. A real one is under 2 KiB; the gateway's reader should
/// stop at this many bytes.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;
/// Longest public-key text [`PublicKey::parse`] reads.
pub const MAX_KEY_TEXT_LEN: usize = 16 * 1024;
/// Length of the AES-128 session key.
pub const SESSION_KEY_LEN: usize = 16;

/// What went wrong building, encrypting or decrypting a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The public-key text is not a usable RSA public key. The fault lies with whoever passed
    /// `--public-key` / `PUBLIC_KEY` (normally the gateway).
    #[error(
        "invalid RSA public key: {0}; expected the base64 body of a PEM \"PUBLIC KEY\", as Enterprise Gateway passes it"
    )]
    InvalidPublicKey(String),
    /// A PEM block with a label other than `PUBLIC KEY` or `RSA PUBLIC KEY`. Caller's fault.
    #[error("unsupported PEM label {0:?}; expected \"PUBLIC KEY\" or \"RSA PUBLIC KEY\"")]
    UnsupportedPemLabel(String),
    /// The RSA key size is outside 1024..=4096 bits. Caller's fault (key supplied or requested).
    #[error("RSA key of {bits} bits is not supported; use 1024 to 4096 bits")]
    UnsupportedKeySize {
        /// The modulus size that was found or requested.
        bits: usize,
    },
    /// The random number generator failed. Local fault (operating system).
    #[error("random number generator failed: {0}")]
    Rng(String),
    /// RSA key generation or encryption failed. Local fault.
    #[error("RSA operation failed: {0}")]
    Rsa(String),
    /// The payload is longer than [`MAX_PAYLOAD_LEN`]. Peer's fault.
    #[error("payload is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A base64 field does not decode. Peer's fault.
    #[error("{field} is not valid base64")]
    Base64 {
        /// Which layer: `"payload"`, `"key"` or `"conn_info"`.
        field: &'static str,
    },
    /// The decoded payload is not a JSON object. Peer's fault.
    #[error("payload is not a JSON object: {0}")]
    OuterJson(String),
    /// A required field of the outer JSON is missing or not a string. Peer's fault.
    #[error("payload field {0:?} is missing or not a string")]
    MissingField(&'static str),
    /// `version` is not the integer 1 (for example a legacy "version 0" payload). Peer's fault.
    #[error("unsupported payload version {0}; only version 1 is supported")]
    UnsupportedVersion(String),
    /// The RSA ciphertext does not fit the gateway's key. Peer's fault, or the launcher was
    /// given another gateway's public key.
    #[error("RSA-decrypting the session key failed: {0}")]
    RsaDecrypt(String),
    /// The decrypted session key is not 16 bytes. With implicit rejection this is how a
    /// payload encrypted for a different public key, or a corrupted `key`, shows up. Peer's fault.
    #[error("session key is {len} bytes, expected 16 (payload encrypted for another key?)")]
    SessionKey {
        /// Length of the decrypted key.
        len: usize,
    },
    /// The AES ciphertext is empty or not a whole number of 16-byte blocks. Peer's fault.
    #[error("conn_info ciphertext of {len} bytes is not a positive multiple of 16")]
    CiphertextLength {
        /// Length of the ciphertext.
        len: usize,
    },
    /// The AES plaintext has invalid PKCS#7 padding (wrong session key or corrupted data).
    /// Peer's fault.
    #[error("conn_info has invalid PKCS#7 padding (wrong key or corrupted payload)")]
    Padding,
    /// The decrypted launch report is not the expected JSON. Peer's fault.
    #[error("invalid launch report: {0}")]
    Report(String),
}

/// The gateway's RSA public key, as the launcher receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: rsa::PublicKey,
    /// DER of the SubjectPublicKeyInfo, kept for [`PublicKey::to_eg_string`].
    spki_der: Vec<u8>,
}

/// How the key text was armoured.
#[derive(Clone, Copy)]
enum KeyFormat {
    Spki,
    Pkcs1,
    /// Bare base64: EG sends SPKI, but bare PKCS#1 is accepted as well.
    Unknown,
}

impl PublicKey {
    /// Parses a key in EG's form (base64 SPKI DER without armour) or as a full PEM
    /// (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`). Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, PayloadError> {
        if s.len() > MAX_KEY_TEXT_LEN {
            return Err(PayloadError::InvalidPublicKey(format!(
                "key text is longer than {MAX_KEY_TEXT_LEN} bytes"
            )));
        }
        let text = s.trim();
        if text.is_empty() {
            return Err(PayloadError::InvalidPublicKey("the key is empty".into()));
        }
        let (body, format) = if text.starts_with("-----BEGIN ") {
            pem_body(text)?
        } else {
            (text, KeyFormat::Unknown)
        };
        let der = b64_decode_lenient(body.as_bytes())
            .ok_or_else(|| PayloadError::InvalidPublicKey("not valid base64".into()))?;
        match format {
            KeyFormat::Spki => from_spki_der(&der),
            KeyFormat::Pkcs1 => from_pkcs1_der(&der),
            KeyFormat::Unknown => from_spki_der(&der).or_else(|spki_err| {
                // Only fall back when the bytes are not SPKI at all.
                if RsaPublicKeyRef::from_der(&der).is_ok() {
                    from_pkcs1_der(&der)
                } else {
                    Err(spki_err)
                }
            }),
        }
    }

    fn from_rsa(key: rsa::PublicKey) -> Result<Self, PayloadError> {
        let spki_der = key
            .to_public_key_der()
            .map_err(|e| PayloadError::Rsa(e.to_string()))?
            .as_bytes()
            .to_vec();
        Ok(PublicKey { key, spki_der })
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        self.key.n().bit_width_vartime() as usize
    }

    /// The key in EG's form: base64 of the SPKI DER, no armour, no newlines.
    pub fn to_eg_string(&self) -> String {
        STANDARD.encode(&self.spki_der)
    }

    /// The key as a PEM `PUBLIC KEY` block with 64-character lines.
    pub fn to_pem(&self) -> String {
        let body = self.to_eg_string();
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }
}

/// Splits a PEM block into its base64 body and format.
fn pem_body(text: &str) -> Result<(&str, KeyFormat), PayloadError> {
    let malformed = || PayloadError::InvalidPublicKey("malformed PEM armour".into());
    let after_begin = text.strip_prefix("-----BEGIN ").ok_or_else(malformed)?;
    let (label, rest) = after_begin.split_once("-----").ok_or_else(malformed)?;
    let end = format!("-----END {label}-----");
    let (body, trailer) = rest.split_once(end.as_str()).ok_or_else(malformed)?;
    if !trailer.trim().is_empty() {
        return Err(malformed());
    }
    let format = match label {
        "PUBLIC KEY" => KeyFormat::Spki,
        "RSA PUBLIC KEY" => KeyFormat::Pkcs1,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(PayloadError::UnsupportedPemLabel(shown));
        }
    };
    Ok((body, format))
}

fn from_spki_der(der: &[u8]) -> Result<PublicKey, PayloadError> {
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| PayloadError::InvalidPublicKey(format!("not a SubjectPublicKeyInfo: {e}")))?;
    if spki.algorithm.oid != ALGORITHM_OID {
        return Err(PayloadError::InvalidPublicKey(format!(
            "algorithm {} is not rsaEncryption",
            spki.algorithm.oid
        )));
    }
    let inner = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| PayloadError::InvalidPublicKey("key bit string has unused bits".into()))?;
    from_pkcs1_der(inner)
}

fn from_pkcs1_der(der: &[u8]) -> Result<PublicKey, PayloadError> {
    let pkcs1 = RsaPublicKeyRef::from_der(der)
        .map_err(|e| PayloadError::InvalidPublicKey(format!("not an RSA public key: {e}")))?;
    let modulus = pkcs1.modulus.as_bytes();
    let bits = match modulus.first() {
        Some(&top) => modulus.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
        return Err(PayloadError::UnsupportedKeySize { bits });
    }
    let key = rsa::PublicKey::try_from(pkcs1)
        .map_err(|e| PayloadError::InvalidPublicKey(e.to_string()))?;
    PublicKey::from_rsa(key)
}

/// The gateway's RSA key pair.
#[derive(Clone)]
pub struct PrivateKey {
    key: rsa::PrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey")
            .field("bits", &self.public.bits())
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a key pair with the operating system RNG. `bits` must be in 1024..=4096;
    /// EG uses 1024, gateway-lite should use 2048.
    pub fn generate(bits: usize) -> Result<Self, PayloadError> {
        Self::generate_with_rng(bits, &mut getrandom::SysRng)
    }

    /// Generates a key pair with the given RNG.
    pub fn generate_with_rng<R: TryCryptoRng + ?Sized>(
        bits: usize,
        rng: &mut R,
    ) -> Result<Self, PayloadError> {
        if !(MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
            return Err(PayloadError::UnsupportedKeySize { bits });
        }
        let key = rsa::PrivateKey::new(rng, bits).map_err(|e| PayloadError::Rsa(e.to_string()))?;
        let public = PublicKey::from_rsa(key.to_public_key())?;
        Ok(PrivateKey { key, public })
    }

    /// The public half, to hand to launchers with [`PublicKey::to_eg_string`].
    pub fn public_key(&self) -> PublicKey {
        self.public.clone()
    }
}

/// Encrypts `inner_json` for the gateway with the operating system RNG (launcher side).
pub fn encrypt(key: &PublicKey, inner_json: &[u8]) -> Result<String, PayloadError> {
    encrypt_with_rng(key, inner_json, &mut getrandom::SysRng)
}

/// Encrypts `inner_json` for the gateway (launcher side): a fresh AES-128 key from `rng`, the
/// RSA padding from `rng` as well.
pub fn encrypt_with_rng<R: TryCryptoRng + ?Sized>(
    key: &PublicKey,
    inner_json: &[u8],
    rng: &mut R,
) -> Result<String, PayloadError> {
    let mut session_key = [0u8; SESSION_KEY_LEN];
    rng.try_fill_bytes(&mut session_key)
        .map_err(|e| PayloadError::Rng(e.to_string()))?;
    let conn_info = aes_ecb_encrypt(&session_key, inner_json);
    let wrapped_key = key
        .key
        .pkcs1v15_encrypt_with_rng(rng, &session_key)
        .map_err(|e| PayloadError::Rsa(e.to_string()))?;
    // Base64 text needs no JSON escaping, so the outer object is written directly.
    let outer = format!(
        "{{\"version\":1,\"key\":\"{}\",\"conn_info\":\"{}\"}}",
        STANDARD.encode(wrapped_key),
        STANDARD.encode(conn_info)
    );
    Ok(STANDARD.encode(outer))
}

/// Decrypts a payload (gateway side) and returns the inner JSON bytes, to be read with
/// [`LaunchReport::from_json`]. RSA blinding uses the operating system RNG.
pub fn decrypt(key: &PrivateKey, payload: &[u8]) -> Result<Vec<u8>, PayloadError> {
    decrypt_with_rng(key, payload, &mut getrandom::SysRng)
}

/// Decrypts a payload (gateway side), using `rng` for RSA blinding.
pub fn decrypt_with_rng<R: TryCryptoRng + ?Sized>(
    key: &PrivateKey,
    payload: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, PayloadError> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(PayloadError::TooLong {
            max: MAX_PAYLOAD_LEN,
        });
    }
    let outer_bytes =
        b64_decode_lenient(payload).ok_or(PayloadError::Base64 { field: "payload" })?;
    let outer: Value =
        serde_json::from_slice(&outer_bytes).map_err(|e| PayloadError::OuterJson(e.to_string()))?;
    let Value::Object(outer) = outer else {
        return Err(PayloadError::OuterJson("not an object".into()));
    };
    match outer.get("version") {
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) => {
            let shown: String = v.to_string().chars().take(40).collect();
            return Err(PayloadError::UnsupportedVersion(shown));
        }
        None => return Err(PayloadError::UnsupportedVersion("(missing)".into())),
    }
    let field = |name: &'static str| -> Result<Vec<u8>, PayloadError> {
        let text = outer
            .get(name)
            .and_then(Value::as_str)
            .ok_or(PayloadError::MissingField(name))?;
        b64_decode_lenient(text.as_bytes()).ok_or(PayloadError::Base64 { field: name })
    };
    let wrapped_key = field("key")?;
    let conn_info = field("conn_info")?;

    let modulus_len = key.key.size();
    if wrapped_key.len() != modulus_len {
        return Err(PayloadError::RsaDecrypt(format!(
            "ciphertext is {} bytes, the key needs {modulus_len}",
            wrapped_key.len()
        )));
    }
    let session_key = key
        .key
        .pkcs1v15_decrypt_with_rng(rng, &wrapped_key)
        .map_err(|e| PayloadError::RsaDecrypt(e.to_string()))?;
    let session_key: [u8; SESSION_KEY_LEN] =
        session_key
            .as_slice()
            .try_into()
            .map_err(|_| PayloadError::SessionKey {
                len: session_key.len(),
            })?;
    if conn_info.is_empty() || conn_info.len() % 16 != 0 {
        return Err(PayloadError::CiphertextLength {
            len: conn_info.len(),
        });
    }
    aes_ecb_decrypt(&session_key, &conn_info)
}

/// AES-128-ECB with PKCS#7 padding (always 1..=16 bytes added).
fn aes_ecb_encrypt(key: &[u8; SESSION_KEY_LEN], plaintext: &[u8]) -> Vec<u8> {
    ecb::Encryptor::<Aes128>::new(&(*key).into()).encrypt_padded_vec::<Pkcs7>(plaintext)
}

/// Inverse of [`aes_ecb_encrypt`]; the caller has checked the length is a positive multiple
/// of 16, and the padding is checked here.
fn aes_ecb_decrypt(
    key: &[u8; SESSION_KEY_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, PayloadError> {
    ecb::Decryptor::<Aes128>::new(&(*key).into())
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map_err(|_| PayloadError::Padding)
}

/// Standard base64 with `=` padding, ignoring ASCII whitespace anywhere (line-wrapped or
/// indented text), as Python's `base64.b64decode` does.
fn b64_decode_lenient(text: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(compact).ok()
}

/// The inner JSON a launcher reports: the kernel's connection info plus who it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchReport {
    /// Ports, key, transport, ...; unknown fields (e.g. gateway_provisioners' Curve keys) are
    /// kept in `connection.extra`.
    #[serde(flatten)]
    pub connection: ConnectionInfo,
    /// The kernel id the gateway passed; EG drops a report without it.
    pub kernel_id: String,
    /// Kernel process id. Read from an integer or a string holding one (Toree); anything
    /// that is not a positive integer reads as `None`, because `kill(0)` or `kill(-n)` would
    /// signal a whole process group.
    #[serde(
        default,
        deserialize_with = "lenient_positive",
        skip_serializing_if = "Option::is_none"
    )]
    pub pid: Option<i64>,
    /// Kernel process-group id (Toree omits it); read like `pid`.
    #[serde(
        default,
        deserialize_with = "lenient_positive",
        skip_serializing_if = "Option::is_none"
    )]
    pub pgid: Option<i64>,
    /// The launcher's comm port; read like `pid`, and `None` unless in 1..=65535.
    #[serde(
        default,
        deserialize_with = "lenient_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub comm_port: Option<u16>,
    /// The per-launch secret gateway-lite gave the launcher in its environment, returned to
    /// prove the report comes from that launcher (absent under Enterprise Gateway, which
    /// gives none and ignores the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_secret: Option<String>,
}

/// Fields [`LaunchReport`] stores outside `connection`.
const REPORT_FIELDS: [&str; 5] = ["kernel_id", "pid", "pgid", "comm_port", "launch_secret"];

/// An integer, a float with no fraction, or a string holding an integer; `None` otherwise.
fn lenient_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn lenient_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(value.as_ref().and_then(lenient_int).filter(|n| *n > 0))
}

fn lenient_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(lenient_int)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|p| *p != 0))
}

impl LaunchReport {
    /// Renders the report as compact JSON, keys sorted. Named fields win over colliding keys
    /// in `connection.extra`; absent optional fields are omitted (as Toree omits `pgid`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut map: Map<String, Value> = self.connection.to_map();
        for name in REPORT_FIELDS {
            map.remove(name);
        }
        map.insert("kernel_id".into(), Value::from(self.kernel_id.as_str()));
        if let Some(pid) = self.pid {
            map.insert("pid".into(), Value::from(pid));
        }
        if let Some(pgid) = self.pgid {
            map.insert("pgid".into(), Value::from(pgid));
        }
        if let Some(port) = self.comm_port {
            map.insert("comm_port".into(), Value::from(port));
        }
        if let Some(secret) = &self.launch_secret {
            map.insert("launch_secret".into(), Value::from(secret.as_str()));
        }
        // Serializing a `Value` cannot fail.
        serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
    }

    /// Parses a decrypted report.
    pub fn from_json(b: &[u8]) -> Result<Self, PayloadError> {
        serde_json::from_slice(b).map_err(|e| PayloadError::Report(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
