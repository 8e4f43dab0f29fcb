//! Shared fixtures for the end-to-end tests: paths to the real peers the test
//! command prepared (static launcher, EG's sdist, the kernel venv) and a
//! stand-in response listener. A missing peer is a test failure with the
//! command that prepares it, never a silent skip.

pub mod kernel_image;

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::payload::{self, LaunchReport, PrivateKey};

/// Generous hang guard; nothing asserts speed.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A path from an environment variable that the test command sets.
pub fn required_path(var: &str, how: &str) -> PathBuf {
    match std::env::var(var) {
        Ok(p) if std::path::Path::new(&p).exists() => PathBuf::from(p),
        _ => panic!("{var} must point at an existing file; {how}"),
    }
}

/// Reads one connection to EOF on `listener` (non-blocking accept with a guard).
/// The listener is left in non-blocking mode.
pub fn accept_payload(listener: &TcpListener) -> Vec<u8> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no payload within {PATIENCE:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    bytes
}

/// Decrypts a version-1 payload into the launcher's report (a payload sealed with a launch
/// secret is taken out of its seal first; the seal itself is the launcher tests' business).
pub fn open_payload(key: &PrivateKey, bytes: &[u8]) -> LaunchReport {
    let bytes = protocol::signed::open_payload(bytes).map_or(bytes, |(_, body)| body);
    let inner = payload::decrypt(key, bytes).expect("payload decrypts");
    LaunchReport::from_json(&inner).expect("payload holds a launch report")
}

/// Polls `f` until it holds or PATIENCE runs out.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
