//! The wire formats, in prose.
//!
//! This module holds no code. It describes the formats the other modules implement, in one
//! place, with the upstream documents they follow, so that a reader can check the code against
//! the specification without opening five projects. Where upstream behaviour is odd, the
//! module that handles it says so in its own header.
//!
//! # Jupyter wire messages ([`crate::wire`])
//!
//! Source: Jupyter Client documentation, "Messaging in Jupyter", section "The Wire Protocol";
//! jupyter_client `session.py` (`Session.serialize`, `Session.feed_identities`, `Session.sign`).
//!
//! A message travels on a ZeroMQ socket as a multipart message:
//!
//! ```text
//! frame 0..k-1   routing identities (ROUTER sockets prepend them; often none)
//! frame k        b"<IDS|MSG>"                       delimiter
//! frame k+1      signature                          lowercase hex, or empty when unsigned
//! frame k+2      header          JSON  ┐
//! frame k+3      parent_header   JSON  │ signed, in this order
//! frame k+4      metadata        JSON  │
//! frame k+5      content         JSON  ┘
//! frame k+6..    buffers         raw bytes, NOT signed
//! ```
//!
//! The receiver finds the first frame equal to the delimiter. At least five frames must follow
//! it. The signature is `HMAC-SHA256(key, header ‖ parent_header ‖ metadata ‖ content)` (the
//! four byte strings concatenated with no separator; RFC 2104 for HMAC, FIPS 180-4 for SHA-256),
//! written as 64 lowercase hex digits. `key` is the connection file's `key` string, as bytes.
//! With an empty key the signature frame is empty and nothing is checked. With a key, a
//! receiver must reject a message whose signature is empty, malformed or wrong. ipykernel logs
//! and drops such a message. The comparison must take constant time.
//!
//! # Connection file ([`crate::connection`])
//!
//! Source: Jupyter Client documentation, "Kernels", section "Connection files"; jupyter_client
//! `connect.py` (`write_connection_file`, `load_connection_info`).
//!
//! A JSON object with `shell_port`, `iopub_port`, `stdin_port`, `control_port`, `hb_port`
//! (integers), `ip`, `key`, `transport` (`"tcp"`), `signature_scheme` (`"hmac-sha256"`) and
//! optionally `kernel_name`. Readers ignore extra fields.
//!
//! # Enterprise Gateway launch payload, version 1 ([`crate::payload`])
//!
//! Sources: Jupyter Enterprise Gateway documentation, "Implementing a kernel launcher"
//! (`docs/source/developers/kernel-launcher.md`); EG 3.3.0 `launch_ipykernel.py` (`_encrypt`,
//! `return_connection_info`) and `processproxy.py` (`ResponseManager`). Cryptography:
//! RFC 8017 §7.2 (RSAES-PKCS1-v1_5), FIPS 197 (AES), RFC 5652 §6.3 (PKCS#7 padding),
//! RFC 4648 §4 (base64), RFC 5280 §4.1.2.7 (SubjectPublicKeyInfo).
//!
//! 1. The gateway has an RSA key pair (EG: 1024 bits, one per gateway process). It passes the
//!    public key to the launcher as base64 of the DER SubjectPublicKeyInfo, without PEM armour or
//!    newlines (`{public_key}` in the kernelspec argv; `PUBLIC_KEY` in containers).
//! 2. The launcher serializes its report (the connection-file fields plus `kernel_id`, `pid`,
//!    `pgid` and `comm_port`) as JSON, the *inner* JSON.
//! 3. It draws a random 16-byte AES key, pads the inner JSON with PKCS#7 (1 to 16 bytes, always
//!    at least one), and encrypts it with AES-128 in ECB mode: `conn_info`.
//! 4. It encrypts the AES key with the gateway's RSA public key using PKCS#1 v1.5 padding (not
//!    OAEP): `key`. The ciphertext is as long as the modulus (128 bytes for RSA-1024).
//! 5. It sends `base64(json{"version": 1, "key": base64(key), "conn_info": base64(conn_info)})`
//!    over a fresh TCP connection to the gateway's response address, then closes it. The gateway
//!    reads to end of file and never answers.
//!
//! The gateway reverses the steps: base64, JSON (any key order, any whitespace), `version` must
//! be 1, RSA-decrypt the AES key, AES-decrypt and unpad, parse the inner JSON, and match
//! `kernel_id` to a kernel it is starting. Nothing authenticates the payload beyond that match.
//!
//! # Communication port requests ([`crate::comm`])
//!
//! Source: Jupyter Enterprise Gateway documentation, "Implementing a kernel launcher", section
//! on the communication port; EG `processproxy.py` (`RemoteProcessProxy._send_listener_request`).
//!
//! One TCP connection carries one UTF-8 JSON object with no framing: `{"signum": N}` (send
//! signal N to the kernel; 0 probes liveness), `{"shutdown": 1}` (stop listening), or both,
//! signal first. The client closes (or half-closes) its side to end the request. No reply is
//! sent.
//!
//! # Port ranges ([`crate::ports`])
//!
//! Source: Jupyter Enterprise Gateway documentation, "Configuration options"
//! (`EG_PORT_RANGE`, `EG_MIN_PORT_RANGE_SIZE`); EG `processproxy.py` (`_validate_port_range`).
//!
//! `"<lower>..<upper>"`, inclusive. Equal bounds (including `"0..0"`) mean "unrestricted".
//! Otherwise `upper - lower` must be at least `EG_MIN_PORT_RANGE_SIZE` (default 1000), and
//! both bounds must be within 1024..=65535.
//!
//! # Z85 ([`crate::z85`])
//!
//! Source: ZeroMQ RFC 32 (Z85). CurveZMQ keys (RFC 26) in connection files and payloads.
//!
//! Each 4 bytes, read as a big-endian 32-bit number, become 5 digits (most significant first)
//! from `0-9 a-z A-Z .-:+=^!/*?&<>()[]{}@%$#`. A 32-byte key is 40 characters. Binary input must
//! be a multiple of 4 bytes, text a multiple of 5 characters, and a 5-digit group must not
//! exceed 2^32 - 1.
//!
//! # ZMTP 3.x greeting ([`crate::zmtp`])
//!
//! Source: ZeroMQ RFC 23 (ZMTP 3.0) and RFC 37 (ZMTP 3.1), section "The Greeting".
//!
//! Each side of a ZeroMQ TCP connection first sends 64 bytes: `0xFF`, 8 padding bytes, `0x7F`,
//! the version (major 3, minor 0 or 1), the security mechanism's name NUL-padded to 20 bytes
//! (`NULL`, `PLAIN`, `CURVE`), an as-server byte (0 or 1) and 31 filler bytes. Both sides must
//! use the same mechanism; the handshake that follows is the mechanism's own.
