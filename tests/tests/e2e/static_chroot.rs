//! The static launcher in a chroot that holds nothing but it and a static
//! kernel (busybox): no /lib, /etc, /dev, /proc or /tmp. It must still pick
//! ports, write the connection file, report an EG payload, serve the comm
//! port and pass on the kernel's exit code.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use e2e::*;
use protocol::payload::PrivateKey;

#[test]
fn static_launcher_runs_in_an_empty_chroot() {
    let launcher = required_path(
        "KL_STATIC_LAUNCHER",
        "build it with scripts/build-static.sh",
    );
    let busybox = required_path(
        "KL_BUSYBOX",
        "install Debian's busybox-static (scripts/setup-env.sh)",
    );
    let root = std::env::temp_dir().join(format!("kl-chroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(&launcher, root.join("kernel-launcher")).unwrap();
    std::fs::copy(&busybox, root.join("busybox")).unwrap();

    let key = PrivateKey::generate(1024).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let kernel = "/busybox cat {connection_file} > /seen.json; trap 'exit 9' TERM; while :; do /busybox sleep 0.05; done";
    let child = Command::new("/usr/sbin/chroot")
        .arg(&root)
        .args([
            "/kernel-launcher",
            "--kernel-id",
            "k-chroot",
            "--response-address",
            &address,
        ])
        .args([
            "--public-key",
            &key.public_key().to_eg_string(),
            "--grace-period",
            "2",
        ])
        .args(["--", "/busybox", "sh", "-c", kernel])
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let report = open_payload(&key, &accept_payload(&listener));
    assert_eq!(report.kernel_id, "k-chroot");
    eventually("the kernel read its connection file", || {
        std::fs::read(root.join("seen.json")).is_ok_and(|b| !b.is_empty())
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", report.comm_port.unwrap())).unwrap();
    s.write_all(br#"{"signum": 15}"#).unwrap();
    drop(s);
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{log}");
    assert!(
        !root.join("tmp/kernel-k-chroot.json").exists(),
        "connection file left behind"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
