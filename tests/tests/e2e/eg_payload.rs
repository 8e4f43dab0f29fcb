//! Interop with the real thing, direction EG → us: EG 3.3.0's own
//! `launch_ipykernel.py` (from the PyPI sdist) encrypts its payload with a key
//! we generate, and our `protocol` decrypts it. The other direction (our
//! payload decrypted by EG's ResponseManager) is in tests/eg.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use e2e::*;
use protocol::payload::PrivateKey;

fn eg_launcher_payload(bits: usize, legacy_options: bool) {
    let python = required_path(
        "KL_PY_KERNEL",
        "run scripts/setup-env.sh and source $HOME/.cache/kernel-launcher/env.sh",
    );
    let sdist = required_path("KL_EG_SDIST", "run scripts/setup-env.sh");
    let script = sdist.join("etc/kernel-launchers/python/scripts/launch_ipykernel.py");
    let key = PrivateKey::generate(bits).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let prefix = if legacy_options {
        "--RemoteProcessProxy."
    } else {
        "--"
    };
    let dir = std::env::temp_dir().join(format!("kl-egpayload-{bits}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(python)
        .arg(&script)
        .arg(format!("{prefix}kernel-id"))
        .arg("eg-own-launcher")
        .arg(format!("{prefix}response-address"))
        .arg(&address)
        .arg(format!("{prefix}public-key"))
        .arg(key.public_key().to_eg_string())
        .arg(format!("{prefix}port-range"))
        .arg("0..0")
        .arg(dir.join("conn.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // EG's launcher forks its comm listener; kill the whole group after.
        .process_group(0)
        .spawn()
        .unwrap();
    let bytes = accept_payload(&listener);
    let report = open_payload(&key, &bytes);
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    assert_eq!(report.kernel_id, "eg-own-launcher");
    assert_eq!(report.pid, Some(i64::from(child.id())));
    assert!(report.pgid.is_some());
    assert!(report.comm_port.is_some_and(|p| p > 0));
    let c = &report.connection;
    assert!(
        [
            c.shell_port,
            c.iopub_port,
            c.stdin_port,
            c.control_port,
            c.hb_port
        ]
        .iter()
        .all(|p| *p > 0)
    );
    assert_eq!(c.key.len(), 36);
    assert_eq!(c.signature_scheme, "hmac-sha256");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eg_launch_ipykernel_payload_rsa1024_legacy_options() {
    eg_launcher_payload(1024, true);
}

#[test]
fn eg_launch_ipykernel_payload_rsa2048_plain_options() {
    eg_launcher_payload(2048, false);
}
