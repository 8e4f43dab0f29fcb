//! CurveZMQ transport encryption for gateway_provisioners 0.5.0 (`--transport-encryption`):
//! the key pair the launcher makes, and the probe that tells whether the kernel took it.
//!
//! When a gateway asks for encryption, the launcher makes an X25519 key pair (32 bytes from the
//! operating system's CSPRNG, the public key by base-point multiplication, as libsodium's
//! `crypto_box_keypair` and so libzmq's `zmq_curve_keypair` do) and writes both keys, Z85 text,
//! into the connection file as `curve_publickey` / `curve_secretkey`. A kernel that knows them
//! (ipykernel >= 7.3) binds its five sockets as CURVE servers with that pair; the gateway gets
//! both keys in the payload and connects as a CURVE client trusting the public key.
//!
//! An older kernel ignores the two fields and binds in clear text (mechanism NULL), and
//! nothing in the connection file says which happened. Reporting keys for such a kernel would
//! make every gateway connection fail its handshake, so before the payload is sent the launcher
//! asks the kernel: once the heartbeat port accepts connections (the kernel has bound it), it
//! starts a ZMTP greeting there, reads the mechanism the kernel's socket announces in its own
//! ([`protocol::zmtp`]), and hangs up. The heartbeat is asked because a connection to it has
//! no side effects; libzmq drops a connection that fails its handshake without a message or a
//! log line in ipykernel, and the heartbeat keeps answering (tests/it/curve.rs checks both).
//!
//! Then: CURVE, the payload carries both keys; NULL under `auto`, a warning and a payload
//! without keys (the connection file keeps them: ipykernel rewrites the file itself while it
//! starts, so a rewrite here would race with it); NULL under `required`,
//! the gateway is sent the payload without keys, which gateway_provisioners refuses with its
//! own "did not return valid CurveZMQ keys" error naming the kernel, the kernel is stopped and
//! the launcher exits [`EXIT_NO_CURVE`]. Under `none` (the default) nothing of this runs.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use protocol::z85;
use protocol::zmtp::{self, GREETING_LEN, Greeting, Mechanism};
use serde_json::{Map, Value};

use crate::config::TransportEncryption;

/// Exit code when `--transport-encryption required` meets a kernel without CurveZMQ
/// (BSD `EX_UNAVAILABLE`).
pub const EXIT_NO_CURVE: i32 = 69;

/// Connection-file and payload field of the public key.
pub const PUBLIC_FIELD: &str = "curve_publickey";
/// Connection-file and payload field of the secret key.
pub const SECRET_FIELD: &str = "curve_secretkey";

/// How long the probe waits for the kernel to bind its heartbeat port. Generous: a Spark
/// kernel under spark-submit binds its ports only after the driver JVM is up.
pub const PROBE_PATIENCE: Duration = Duration::from_secs(120);
/// Longest wait for one connect or for the kernel's greeting.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A CurveZMQ key pair, both keys as 40 Z85 characters.
pub struct KeyPair {
    pub public: String,
    secret: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh pair from the operating system's random number generator.
    pub fn generate() -> Result<KeyPair, getrandom::Error> {
        let mut secret = [0u8; z85::KEY_LEN];
        getrandom::fill(&mut secret)?;
        let pair = Self::from_secret(secret);
        secret.fill(0);
        Ok(pair)
    }

    /// The pair for a given secret key (X25519 clamps it, as libsodium does).
    fn from_secret(secret: [u8; z85::KEY_LEN]) -> KeyPair {
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        KeyPair {
            public: z85::encode_key(public.as_bytes()),
            secret: z85::encode_key(&secret.to_bytes()),
        }
    }

    /// Adds both keys to connection-file fields.
    pub fn insert_into(&self, fields: &mut Map<String, Value>) {
        fields.insert(PUBLIC_FIELD.into(), Value::String(self.public.clone()));
        fields.insert(SECRET_FIELD.into(), Value::String(self.secret.clone()));
    }
}

/// Removes both keys from connection-file fields.
pub fn remove_from(fields: &mut Map<String, Value>) {
    fields.remove(PUBLIC_FIELD);
    fields.remove(SECRET_FIELD);
}

/// What the probe of the kernel's heartbeat port found.
#[derive(Debug)]
pub enum Probe {
    /// The kernel's socket announced this mechanism.
    Greeted(Greeting),
    /// The kernel exited before it bound the port.
    KernelGone,
    /// No answer that could be read (timeout, a peer that is not ZeroMQ, ...).
    Failed(String),
}

/// What to do with the keys.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel uses them: report them.
    Encrypted,
    /// Report no keys; the kernel runs in clear text (`auto`). The message is the warning.
    Clear(String),
    /// Report no keys, stop the kernel, exit [`EXIT_NO_CURVE`] (`required`). The message is
    /// the error.
    Refused(String),
    /// Nothing to report: the kernel is gone.
    KernelGone,
}

/// Where to reach a kernel port bound on `ip`: loopback when it is bound on every address.
pub fn local_address(ip: IpAddr, port: u16) -> SocketAddr {
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    SocketAddr::new(ip, port)
}

/// Waits until something accepts connections on `addr` (the kernel's heartbeat port, which the
/// launcher holds without listening, so connections are refused until the kernel listens),
/// then reads the mechanism it greets with. Gives up when `running` says the kernel is gone or
/// after `patience`.
pub fn probe(addr: SocketAddr, running: &dyn Fn() -> bool, patience: Duration) -> Probe {
    let start = Instant::now();
    let deadline = start + patience;
    let mut delay = Duration::from_millis(10);
    loop {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => {
                let result = exchange(stream);
                log::debug!(
                    "CurveZMQ probe of {addr} answered after {:?}: {result:?}",
                    start.elapsed()
                );
                return match result {
                    Ok(greeting) => Probe::Greeted(greeting),
                    Err(e) => Probe::Failed(format!("{addr}: {e}")),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Probe::Failed(format!("cannot connect to {addr}: {e}")),
        }
        if !running() {
            return Probe::KernelGone;
        }
        if Instant::now() + delay > deadline {
            return Probe::Failed(format!(
                "nothing listened on {addr} within {patience:?} of the kernel's start"
            ));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Sends the start of a greeting (signature and major version), reads the peer's whole
/// greeting, hangs up: the peer never sees a mechanism of ours, so it has no mismatch to close
/// on before its own greeting is out (see [`protocol::zmtp`]).
fn exchange(mut stream: TcpStream) -> Result<Greeting, String> {
    let io = |e: io::Error| e.to_string();
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream
        .write_all(&zmtp::greeting(&Mechanism::Curve, false)[..zmtp::PREFIX_LEN])
        .map_err(io)?;
    let mut buf = [0u8; GREETING_LEN];
    let mut got = 0;
    while got < GREETING_LEN {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the ZMTP greeting: {e}")),
        }
        // Stop early on bytes that already cannot be a greeting.
        if let Err(e @ (zmtp::GreetingError::Signature | zmtp::GreetingError::Version { .. })) =
            zmtp::parse_greeting(&buf[..got])
        {
            return Err(e.to_string());
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    zmtp::parse_greeting(&buf[..got]).map_err(|e| e.to_string())
}

/// Decides from the probe what `policy` makes of the kernel `kernel_id`.
pub fn decide(policy: TransportEncryption, kernel_id: &str, probe: &Probe) -> Verdict {
    let required = policy == TransportEncryption::Required;
    let why = match probe {
        Probe::KernelGone => return Verdict::KernelGone,
        Probe::Greeted(g) if g.mechanism == Mechanism::Curve => return Verdict::Encrypted,
        Probe::Greeted(g) => format!(
            "its ZeroMQ sockets use the {} mechanism: it ignored the keys in its connection file",
            g.mechanism
        ),
        Probe::Failed(e) => format!("its heartbeat port could not be asked ({e})"),
    };
    if required {
        Verdict::Refused(format!(
            "kernel {kernel_id} cannot do CurveZMQ transport encryption: {why}. --transport-encryption required needs a kernel that reads curve keys from its connection file (ipykernel >= 7.3); stopping the kernel and reporting no keys to the gateway"
        ))
    } else {
        Verdict::Clear(format!(
            "kernel {kernel_id} does not do CurveZMQ ({why}; ipykernel >= 7.3 would); channels are clear text, HMAC-signed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn key_pair_matches_libzmq() {
        // The example pair in libzmq's zmq_curve(7) manual (made by zmq_curve_keypair).
        let secret = z85::decode_key("D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs").unwrap();
        let pair = KeyPair::from_secret(secret);
        assert_eq!(pair.public, "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID");
        assert_eq!(pair.secret, "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs");
        assert!(!format!("{pair:?}").contains(&pair.secret));
    }

    #[test]
    fn generated_pairs_differ_and_are_z85() {
        let a = KeyPair::generate().unwrap();
        let b = KeyPair::generate().unwrap();
        assert_ne!(a.secret, b.secret);
        for k in [&a.public, &a.secret, &b.public] {
            assert_eq!(k.len(), 40);
            z85::decode_key(k).unwrap();
        }
        let mut fields = Map::new();
        a.insert_into(&mut fields);
        assert_eq!(fields[PUBLIC_FIELD], a.public.as_str());
        remove_from(&mut fields);
        assert!(fields.is_empty());
    }

    #[test]
    fn verdicts() {
        use TransportEncryption::{Auto, Required};
        let greeted = |m: Mechanism| {
            Probe::Greeted(Greeting {
                major: 3,
                minor: 1,
                mechanism: m,
                as_server: false,
            })
        };
        assert_eq!(
            decide(Required, "k", &greeted(Mechanism::Curve)),
            Verdict::Encrypted
        );
        assert_eq!(
            decide(Auto, "k", &greeted(Mechanism::Curve)),
            Verdict::Encrypted
        );
        match decide(Required, "k9", &greeted(Mechanism::Null)) {
            Verdict::Refused(e) => {
                assert!(
                    e.contains("k9") && e.contains("NULL") && e.contains("ipykernel >= 7.3"),
                    "{e}"
                )
            }
            other => panic!("{other:?}"),
        }
        match decide(Auto, "k9", &greeted(Mechanism::Null)) {
            Verdict::Clear(w) => assert!(
                w.contains("kernel k9 does not do CurveZMQ")
                    && w.contains("clear text, HMAC-signed"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(Required, "k", &Probe::Failed("x".into())),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            decide(Auto, "k", &Probe::Failed("x".into())),
            Verdict::Clear(_)
        ));
        assert_eq!(
            decide(Required, "k", &Probe::KernelGone),
            Verdict::KernelGone
        );
    }

    #[test]
    fn probe_waits_for_a_listener_and_names_garbage() {
        // A port nothing listens on yet, and a "kernel" that has exited.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = local_address("0.0.0.0".parse().unwrap(), port);
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(matches!(
            probe(addr, &|| false, PROBE_PATIENCE),
            Probe::KernelGone
        ));
        assert!(matches!(
            probe(addr, &|| true, Duration::from_millis(50)),
            Probe::Failed(e) if e.contains("nothing listened")
        ));
        // Not a ZeroMQ peer: it answers with HTTP.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        match probe(addr, &|| true, PROBE_PATIENCE) {
            Probe::Failed(e) => assert!(e.contains("not a ZeroMQ peer"), "{e}"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }
}
