//! Tests for the payload module. Keys are generated here, from fixed seeds, so every run uses
//! the same keys and payloads; no third-party vectors are shipped.

use super::*;
use crate::testing::SeededRng;
use proptest::prelude::*;
use rsa::pkcs1::EncodeRsaPublicKey;
use std::sync::OnceLock;

fn key(bits: usize) -> &'static PrivateKey {
    static K1024: OnceLock<PrivateKey> = OnceLock::new();
    static K2048: OnceLock<PrivateKey> = OnceLock::new();
    static K4096: OnceLock<PrivateKey> = OnceLock::new();
    let cell = match bits {
        1024 => &K1024,
        2048 => &K2048,
        4096 => &K4096,
        _ => panic!("no test key of {bits} bits"),
    };
    cell.get_or_init(|| {
        PrivateKey::generate_with_rng(bits, &mut SeededRng::new(bits as u64)).unwrap()
    })
}

fn other_1024() -> &'static PrivateKey {
    static K: OnceLock<PrivateKey> = OnceLock::new();
    K.get_or_init(|| PrivateKey::generate_with_rng(1024, &mut SeededRng::new(99)).unwrap())
}

/// A predicate saying whether an error is the one a case expects.
type IsExpected = fn(&PayloadError) -> bool;

const INNER: &[u8] = br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"ip":"0.0.0.0","key":"k","transport":"tcp","signature_scheme":"hmac-sha256","kernel_name":"","kernel_id":"0c5d4f0e-0000-4000-8000-000000000001","pid":42,"pgid":42,"comm_port":6}"#;

/// Decodes the outer layer of a payload into its JSON object.
fn outer_of(payload: &str) -> Map<String, Value> {
    let bytes = STANDARD.decode(payload).unwrap();
    match serde_json::from_slice(&bytes).unwrap() {
        Value::Object(m) => m,
        other => panic!("outer is {other}"),
    }
}

fn payload_from_outer(outer: &Value) -> String {
    STANDARD.encode(serde_json::to_vec(outer).unwrap())
}

// ---- AES layer: FIPS-197 known answer, and PKCS#7 always adding a block ----

#[test]
fn aes_ecb_matches_fips_197_and_pads_a_whole_block() {
    // FIPS-197 appendix C.1 (AES-128).
    let key: [u8; 16] = core::array::from_fn(|i| i as u8);
    let plain: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
    let expected_first = [
        0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4, 0xc5,
        0x5a,
    ];
    let ct = aes_ecb_encrypt(&key, &plain);
    // A 16-byte input gains a full block of padding (16 x 0x10).
    assert_eq!(ct.len(), 32);
    assert_eq!(ct[..16], expected_first);
    let pad_block = aes_ecb_encrypt(&key, &[]);
    assert_eq!(pad_block.len(), 16);
    assert_eq!(ct[16..], pad_block[..]);
    assert_eq!(aes_ecb_decrypt(&key, &ct).unwrap(), plain);
    // 15 bytes -> one block, 17 bytes -> two blocks.
    assert_eq!(aes_ecb_encrypt(&key, &[0; 15]).len(), 16);
    assert_eq!(aes_ecb_encrypt(&key, &[0; 17]).len(), 32);
}

// ---- Public keys ----

#[test]
fn eg_key_form_for_rsa_1024() {
    let public = key(1024).public_key();
    assert_eq!(public.bits(), 1024);
    let text = public.to_eg_string();
    assert_eq!(text.len(), 216);
    assert!(text.starts_with("MIGfMA0GCSqGSIb3"), "{text}");
    assert!(!text.contains('\n') && !text.contains('-'));
    assert_eq!(PublicKey::parse(&text).unwrap(), public);
    assert_eq!(PublicKey::parse(&format!("  {text}\n")).unwrap(), public);
}

#[test]
fn pem_forms_are_accepted() {
    let public = key(2048).public_key();
    assert_eq!(public.bits(), 2048);
    let pem = public.to_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(PublicKey::parse(&pem).unwrap(), public);
    assert_eq!(PublicKey::parse(&format!("\n\n{pem}\n")).unwrap(), public);
    // CRLF line endings.
    assert_eq!(
        PublicKey::parse(&pem.replace('\n', "\r\n")).unwrap(),
        public
    );

    let pkcs1 = STANDARD.encode(public.key.to_pkcs1_der().unwrap().as_bytes());
    let pkcs1_pem =
        format!("-----BEGIN RSA PUBLIC KEY-----\n{pkcs1}\n-----END RSA PUBLIC KEY-----\n");
    assert_eq!(PublicKey::parse(&pkcs1_pem).unwrap(), public);
    // Bare PKCS#1 base64 is accepted too.
    assert_eq!(PublicKey::parse(&pkcs1).unwrap(), public);
}

/// Builds a PKCS#1 DER public key with a modulus of exactly `bits` bits (not a real key).
fn fake_pkcs1(bits: u32) -> String {
    let mut n_bytes = vec![0u8; bits.div_ceil(8) as usize];
    n_bytes[0] = 1 << ((bits - 1) % 8);
    *n_bytes.last_mut().unwrap() |= 1; // odd
    let n = rsa::BoxedUint::from_be_slice(&n_bytes, bits).unwrap();
    let e = rsa::BoxedUint::from(65537u32);
    let k = rsa::PublicKey::new_with_size_limits(n, e, 1..=16384).unwrap();
    let der = k.to_pkcs1_der().unwrap();
    format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----",
        STANDARD.encode(der.as_bytes())
    )
}

#[test]
fn key_sizes_outside_1024_to_4096_are_rejected() {
    for bits in [512u32, 1023, 4097, 8192] {
        assert_eq!(
            PublicKey::parse(&fake_pkcs1(bits)),
            Err(PayloadError::UnsupportedKeySize {
                bits: bits as usize
            }),
            "{bits}"
        );
    }
    assert_eq!(PublicKey::parse(&fake_pkcs1(1024)).unwrap().bits(), 1024);
    assert_eq!(PublicKey::parse(&fake_pkcs1(4096)).unwrap().bits(), 4096);
    assert_eq!(
        PrivateKey::generate(512).unwrap_err(),
        PayloadError::UnsupportedKeySize { bits: 512 }
    );
    assert_eq!(
        PrivateKey::generate(8192).unwrap_err(),
        PayloadError::UnsupportedKeySize { bits: 8192 }
    );
}

#[test]
fn bad_key_texts_are_rejected_with_reasons() {
    let eg = key(1024).public_key().to_eg_string();
    let ec_spki = {
        let mut der = vec![0x30, 0x59, 0x30, 0x13, 0x06, 0x07];
        der.extend([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
        der.extend([0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
        der.extend([0x03, 0x42, 0x00, 0x04]);
        der.extend([7u8; 64]);
        STANDARD.encode(der)
    };
    let cases: Vec<(String, IsExpected)> = vec![
        (String::new(), |e| {
            matches!(e, PayloadError::InvalidPublicKey(_))
        }),
        ("   \n".into(), |e| {
            matches!(e, PayloadError::InvalidPublicKey(_))
        }),
        ("not base64!".into(), |e| {
            matches!(e, PayloadError::InvalidPublicKey(_))
        }),
        (eg[..100].to_string(), |e| {
            matches!(e, PayloadError::InvalidPublicKey(_))
        }),
        (STANDARD.encode(b"hello"), |e| {
            matches!(e, PayloadError::InvalidPublicKey(_))
        }),
        (
            ec_spki,
            |e| matches!(e, PayloadError::InvalidPublicKey(m) if m.contains("rsaEncryption")),
        ),
        (
            format!("-----BEGIN PRIVATE KEY-----\n{eg}\n-----END PRIVATE KEY-----"),
            |e| matches!(e, PayloadError::UnsupportedPemLabel(l) if l == "PRIVATE KEY"),
        ),
        (
            format!("-----BEGIN PUBLIC KEY-----\n{eg}\n"),
            |e| matches!(e, PayloadError::InvalidPublicKey(m) if m.contains("armour")),
        ),
        (
            format!("-----BEGIN PUBLIC KEY-----\n{eg}\n-----END PUBLIC KEY-----\ntrailing"),
            |e| matches!(e, PayloadError::InvalidPublicKey(_)),
        ),
        ("A".repeat(MAX_KEY_TEXT_LEN + 1), |e| {
            matches!(e, PayloadError::InvalidPublicKey(_))
        }),
    ];
    for (text, is_expected) in cases {
        let err = PublicKey::parse(&text).unwrap_err();
        assert!(is_expected(&err), "{text:?} gave {err:?}");
    }
    assert!(!format!("{:?}", key(1024)).contains("key:"));
}

// ---- Payload round trips and the test vector ----

#[test]
fn test_vector_from_a_fixed_generated_key() {
    // Key and randomness are fixed by seeds, so this payload is the same on every run.
    let k = key(1024);
    let payload = encrypt_with_rng(&k.public_key(), INNER, &mut SeededRng::new(2024)).unwrap();
    let again = encrypt_with_rng(&k.public_key(), INNER, &mut SeededRng::new(2024)).unwrap();
    assert_eq!(payload, again);
    let different = encrypt_with_rng(&k.public_key(), INNER, &mut SeededRng::new(2025)).unwrap();
    assert_ne!(payload, different);

    let outer = outer_of(&payload);
    assert_eq!(outer.len(), 3);
    assert_eq!(outer["version"], Value::from(1));
    let wrapped = outer["key"].as_str().unwrap();
    assert_eq!(wrapped.len(), 172, "RSA-1024 ciphertext is 128 bytes");
    let conn_info = STANDARD
        .decode(outer["conn_info"].as_str().unwrap())
        .unwrap();
    assert_eq!(conn_info.len(), (INNER.len() / 16 + 1) * 16);

    // The session key is the first 16 bytes the RNG produced; check the AES layer with it.
    let mut rng = SeededRng::new(2024);
    let mut session_key = [0u8; 16];
    rand_core::TryRng::try_fill_bytes(&mut rng, &mut session_key).unwrap();
    assert_eq!(aes_ecb_decrypt(&session_key, &conn_info).unwrap(), INNER);
    assert_eq!(
        k.key
            .pkcs1v15_decrypt(&STANDARD.decode(wrapped).unwrap())
            .unwrap(),
        session_key
    );

    assert_eq!(decrypt(k, payload.as_bytes()).unwrap(), INNER);
    let report = LaunchReport::from_json(&decrypt(k, payload.as_bytes()).unwrap()).unwrap();
    assert_eq!(report.kernel_id, "0c5d4f0e-0000-4000-8000-000000000001");
    assert_eq!(report.comm_port, Some(6));
}

#[test]
fn round_trip_for_each_key_size() {
    for bits in [1024, 2048, 4096] {
        let k = key(bits);
        let payload = encrypt(&k.public_key(), INNER).unwrap();
        let wrapped = outer_of(&payload)["key"].as_str().unwrap().to_owned();
        assert_eq!(STANDARD.decode(wrapped).unwrap().len(), bits / 8);
        assert_eq!(decrypt(k, payload.as_bytes()).unwrap(), INNER, "{bits}");
    }
}

#[test]
fn toree_style_pretty_reordered_and_wrapped_payload_is_accepted() {
    let k = key(1024);
    let payload = encrypt_with_rng(&k.public_key(), INNER, &mut SeededRng::new(5)).unwrap();
    let outer = outer_of(&payload);
    let pretty = format!(
        "{{\n  \"conn_info\" : \"{}\",\n  \"key\" : \"{}\",\n  \"version\" : 1\n}}",
        outer["conn_info"].as_str().unwrap(),
        outer["key"].as_str().unwrap()
    );
    let encoded = STANDARD.encode(pretty);
    // MIME-style line wrapping plus surrounding whitespace.
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let text = format!("\n  {}\r\n", wrapped.join("\r\n"));
    assert_eq!(decrypt(k, text.as_bytes()).unwrap(), INNER);
}

#[test]
fn malformed_payloads_are_errors() {
    let k = key(1024);
    let payload = encrypt_with_rng(&k.public_key(), INNER, &mut SeededRng::new(6)).unwrap();
    let outer = Value::Object(outer_of(&payload));
    let with = |field: &str, value: Value| {
        let mut o = outer.clone();
        o[field] = value;
        payload_from_outer(&o)
    };
    let without = |field: &str| {
        let mut o = outer.clone();
        o.as_object_mut().unwrap().remove(field);
        payload_from_outer(&o)
    };
    let ci = STANDARD
        .decode(outer["conn_info"].as_str().unwrap())
        .unwrap();
    let cases: Vec<(String, IsExpected)> = vec![
        (String::new(), |e| matches!(e, PayloadError::OuterJson(_))),
        ("!!!!".into(), |e| {
            matches!(e, PayloadError::Base64 { field: "payload" })
        }),
        (STANDARD.encode("not json"), |e| {
            matches!(e, PayloadError::OuterJson(_))
        }),
        (STANDARD.encode("[1]"), |e| {
            matches!(e, PayloadError::OuterJson(_))
        }),
        (with("version", Value::from(0)), |e| {
            matches!(e, PayloadError::UnsupportedVersion(_))
        }),
        (with("version", Value::from(2)), |e| {
            matches!(e, PayloadError::UnsupportedVersion(_))
        }),
        (with("version", Value::from("1")), |e| {
            matches!(e, PayloadError::UnsupportedVersion(_))
        }),
        (with("version", Value::from(1.0)), |e| {
            matches!(e, PayloadError::UnsupportedVersion(_))
        }),
        (without("version"), |e| {
            matches!(e, PayloadError::UnsupportedVersion(_))
        }),
        (without("key"), |e| {
            matches!(e, PayloadError::MissingField("key"))
        }),
        (with("key", Value::from(5)), |e| {
            matches!(e, PayloadError::MissingField("key"))
        }),
        (without("conn_info"), |e| {
            matches!(e, PayloadError::MissingField("conn_info"))
        }),
        (with("key", Value::from("%%%")), |e| {
            matches!(e, PayloadError::Base64 { field: "key" })
        }),
        (with("conn_info", Value::from("%%%")), |e| {
            matches!(e, PayloadError::Base64 { field: "conn_info" })
        }),
        (with("key", Value::from(STANDARD.encode([1u8; 127]))), |e| {
            matches!(e, PayloadError::RsaDecrypt(_))
        }),
        (
            with("key", Value::from(STANDARD.encode([0xffu8; 128]))),
            |e| {
                matches!(
                    e,
                    PayloadError::RsaDecrypt(_) | PayloadError::SessionKey { .. }
                )
            },
        ),
        (with("conn_info", Value::from("")), |e| {
            matches!(e, PayloadError::CiphertextLength { len: 0 })
        }),
        (
            with(
                "conn_info",
                Value::from(STANDARD.encode(&ci[..ci.len() - 1])),
            ),
            |e| matches!(e, PayloadError::CiphertextLength { .. }),
        ),
        ("A".repeat(MAX_PAYLOAD_LEN + 4), |e| {
            matches!(e, PayloadError::TooLong { .. })
        }),
    ];
    for (text, is_expected) in cases {
        let err = decrypt(k, text.as_bytes()).unwrap_err();
        assert!(is_expected(&err), "{text:.80} gave {err:?}");
    }
    // Dropping the last block removes the padding block: the padding check catches it.
    let short = with(
        "conn_info",
        Value::from(STANDARD.encode(&ci[..ci.len() - 16])),
    );
    assert_eq!(decrypt(k, short.as_bytes()), Err(PayloadError::Padding));
    // The unmodified payload still decrypts, so the errors above come from the edits.
    assert_eq!(
        decrypt(k, payload_from_outer(&outer).as_bytes()).unwrap(),
        INNER
    );
}

#[test]
fn payload_for_another_key_is_an_error() {
    let payload = encrypt_with_rng(&key(1024).public_key(), INNER, &mut SeededRng::new(7)).unwrap();
    assert!(decrypt(other_1024(), payload.as_bytes()).is_err());
    let payload = encrypt(&key(2048).public_key(), INNER).unwrap();
    assert!(matches!(
        decrypt(key(1024), payload.as_bytes()),
        Err(PayloadError::RsaDecrypt(_))
    ));
}

// ---- Launch report ----

#[test]
fn python_launcher_report() {
    let r = LaunchReport::from_json(INNER).unwrap();
    assert_eq!(r.pid, Some(42));
    assert_eq!(r.pgid, Some(42));
    assert_eq!(r.comm_port, Some(6));
    assert_eq!(r.connection.shell_port, 1);
    assert!(r.connection.extra.is_empty(), "{:?}", r.connection.extra);
    assert_eq!(LaunchReport::from_json(&r.to_json()).unwrap(), r);
}

#[test]
fn toree_report_with_string_pid_and_no_pgid() {
    let doc = br#"{"stdin_port":5,"hb_port":4,"shell_port":1,"iopub_port":2,"control_port":3,
        "ip":"0.0.0.0","key":"abc","transport":"tcp","signature_scheme":"hmac-sha256",
        "kernel_name":"Apache Toree Scala","kernel_id":"id-1","pid":"1234","comm_port":7000}"#;
    let r = LaunchReport::from_json(doc).unwrap();
    assert_eq!(r.pid, Some(1234));
    assert_eq!(r.pgid, None);
    assert_eq!(r.connection.kernel_name, "Apache Toree Scala");
    let text = String::from_utf8(r.to_json()).unwrap();
    assert!(
        text.contains("\"pid\":1234") && !text.contains("pgid"),
        "{text}"
    );
}

#[test]
fn junk_pids_and_ports_read_as_none() {
    for junk in [
        "null", "\"abc\"", "0", "-5", "\"-5\"", "true", "[1]", "{}", "1.5", "1e300",
    ] {
        let doc = format!(
            r#"{{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,
               "ip":"","key":"","kernel_id":"k","pid":{junk},"pgid":{junk},"comm_port":{junk}}}"#
        );
        let r = LaunchReport::from_json(doc.as_bytes()).unwrap();
        assert_eq!((r.pid, r.pgid, r.comm_port), (None, None, None), "{junk}");
    }
    let doc = br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,
        "ip":"","key":"","kernel_id":"k","pid":" 77 ","pgid":77.0,"comm_port":"65535"}"#;
    let r = LaunchReport::from_json(doc).unwrap();
    assert_eq!(
        (r.pid, r.pgid, r.comm_port),
        (Some(77), Some(77), Some(65535))
    );
    let doc = br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,
        "ip":"","key":"","kernel_id":"k","comm_port":65536}"#;
    assert_eq!(LaunchReport::from_json(doc).unwrap().comm_port, None);
}

#[test]
fn report_needs_kernel_id_and_ports() {
    let no_id = br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"ip":"","key":""}"#;
    assert!(matches!(
        LaunchReport::from_json(no_id),
        Err(PayloadError::Report(_))
    ));
    assert!(LaunchReport::from_json(br#"{"kernel_id":"k"}"#).is_err());
    assert!(LaunchReport::from_json(b"").is_err());
}

#[test]
fn curve_keys_and_other_extras_survive() {
    let doc = br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,
        "ip":"","key":"","kernel_id":"k","curve_publickey":"Z85Z85","curve_secretkey":"s"}"#;
    let r = LaunchReport::from_json(doc).unwrap();
    assert_eq!(r.connection.extra["curve_publickey"], "Z85Z85");
    assert!(!r.connection.extra.contains_key("kernel_id"));
    assert_eq!(LaunchReport::from_json(&r.to_json()).unwrap(), r);
}

fn arb_report() -> impl Strategy<Value = LaunchReport> {
    (
        crate::connection::tests::arb_connection_info(),
        ".{0,40}",
        proptest::option::of(1i64..),
        proptest::option::of(1i64..),
        proptest::option::of(1u16..),
        proptest::option::of("[0-9a-f]{0,64}"),
    )
        .prop_map(
            |(mut connection, kernel_id, pid, pgid, comm_port, launch_secret)| {
                for name in REPORT_FIELDS {
                    connection.extra.remove(name);
                }
                LaunchReport {
                    connection,
                    kernel_id,
                    pid,
                    pgid,
                    comm_port,
                    launch_secret,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn report_json_round_trip(r in arb_report()) {
        prop_assert_eq!(LaunchReport::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn encrypt_decrypt_round_trip_arbitrary_bytes(
        inner in proptest::collection::vec(any::<u8>(), 0..600),
        size in prop_oneof![Just(1024usize), Just(2048), Just(4096)],
        seed in any::<u64>(),
    ) {
        let k = key(size);
        let payload = encrypt_with_rng(&k.public_key(), &inner, &mut SeededRng::new(seed)).unwrap();
        prop_assert_eq!(decrypt_with_rng(k, payload.as_bytes(), &mut SeededRng::new(seed)).unwrap(), inner);
    }

    #[test]
    fn decrypt_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decrypt(key(1024), &bytes);
    }

    #[test]
    fn decrypt_never_panics_on_well_formed_outer(
        wrapped in proptest::collection::vec(any::<u8>(), 120..136),
        conn_info in proptest::collection::vec(any::<u8>(), 0..80),
        version in prop_oneof![Just(Value::from(1)), any::<i64>().prop_map(Value::from)],
    ) {
        let outer = serde_json::json!({
            "version": version,
            "key": STANDARD.encode(wrapped),
            "conn_info": STANDARD.encode(conn_info),
        });
        // Reaches the RSA and AES steps with peer-chosen bytes; must return, not panic.
        let _ = decrypt(key(1024), payload_from_outer(&outer).as_bytes());
    }

    #[test]
    fn public_key_parse_never_panics(s in "\\PC{0,300}") {
        let _ = PublicKey::parse(&s);
    }

    #[test]
    fn report_from_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = LaunchReport::from_json(&bytes);
    }
}
