//! `--transport-encryption` with real kernels: ipykernel 7.4 takes the CurveZMQ keys and the
//! payload carries them (a CURVE client works, a clear-text one gets nothing); ipykernel 6.31
//! ignores them, which `required` turns into exit 69 and `auto` into a clear-text kernel.

use std::process::Command;

use protocol::payload::LaunchReport;
use protocol::z85;

use crate::kernels::drive_report;
use crate::support::*;

const PUBLIC: &str = "curve_publickey";
const SECRET: &str = "curve_secretkey";

fn launch(
    name: &str,
    policy: &str,
    python: &str,
) -> (Gateway, std::process::Child, std::path::PathBuf) {
    let dir = scratch(name);
    let gw = Gateway::new();
    let mut cmd = launcher();
    cmd.args(gw.options(&format!("k-{name}")))
        .args(["--transport-encryption", policy, "--interpreter", python])
        .arg(dir.join("conn.json"));
    let child = spawn_logged(&mut cmd, &dir);
    (gw, child, dir)
}

fn key(report: &LaunchReport, field: &str) -> Option<String> {
    report
        .connection
        .extra
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

#[test]
fn required_with_ipykernel_7_reports_keys_that_work() {
    let (gw, mut child, dir) = launch("curve-required-7", "required", &curve_python());
    let report = gw.receive();
    let public = key(&report, PUBLIC).expect("the payload has curve_publickey");
    let secret = key(&report, SECRET).expect("the payload has curve_secretkey");
    assert_eq!((public.len(), secret.len()), (40, 40));
    let public_bytes = z85::decode_key(&public).unwrap();
    let secret_bytes = z85::decode_key(&secret).unwrap();
    let derived = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret_bytes));
    assert_eq!(
        derived.as_bytes(),
        &public_bytes,
        "the public key is not the secret's"
    );

    // The connection file the kernel read has the same pair.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("conn.json")).unwrap()).unwrap();
    assert_eq!(file[PUBLIC], public.as_str());
    assert_eq!(file[SECRET], secret.as_str());

    let mut info = report.connection.clone();
    info.ip = "127.0.0.1".into();
    let client_conn = dir.join("client.json");
    std::fs::write(&client_conn, info.to_json_pretty()).unwrap();
    let out = Command::new(kernel_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/curve_client.py"
        ))
        .arg(&client_conn)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}\nlauncher log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_of(&dir)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        seen["plain_kernel_info"], "none",
        "a client without the keys got an answer: {seen}"
    );
    assert_eq!(seen["heartbeat"], "ping", "{seen}");
    assert_eq!(seen["kernel_info"], "ok", "{seen}");
    assert_eq!(seen["execute"], "42", "{seen}");
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
    let log = log_of(&dir);
    assert!(
        log.contains("binds its sockets as CurveZMQ servers"),
        "{log}"
    );
    assert!(!log.contains("Traceback"), "{log}");
}

#[test]
fn required_with_ipykernel_6_exits_69_and_tells_the_gateway() {
    let (gw, mut child, dir) = launch("curve-required-6", "required", &kernel_python());
    // The gateway gets a payload without keys, which gateway_provisioners refuses under
    // `required` (naming the kernel) instead of waiting for its launch timeout.
    let report = gw.receive();
    assert_eq!(key(&report, PUBLIC), None);
    assert_eq!(key(&report, SECRET), None);
    assert_eq!(wait_code(&mut child), 69, "{}", log_of(&dir));
    let log = log_of(&dir);
    assert!(
        log.contains("kernel k-curve-required-6 cannot do CurveZMQ")
            && log.contains("NULL")
            && log.contains("ipykernel >= 7.3"),
        "{log}"
    );
    let pid = report.pid.unwrap();
    assert!(!alive(pid), "kernel {pid} left running");
    assert!(
        !dir.join("conn.json").exists(),
        "connection file left behind"
    );
}

#[test]
fn auto_with_ipykernel_6_runs_in_clear_text() {
    let (gw, child, dir) = launch("curve-auto-6", "auto", &kernel_python());
    let report = gw.receive();
    assert_eq!(key(&report, PUBLIC), None);
    assert_eq!(key(&report, SECRET), None);
    let log = log_of(&dir);
    assert!(
        log.contains("kernel k-curve-auto-6 does not do CurveZMQ")
            && log.contains("clear text, HMAC-signed"),
        "{log}"
    );
    drive_report("python", report, child, &dir, false);
}

#[test]
fn none_makes_no_keys_and_no_probe() {
    let (gw, mut child, dir) = launch("curve-none", "{transport_encryption}", &curve_python());
    let report = gw.receive();
    assert_eq!(key(&report, PUBLIC), None);
    let file = std::fs::read_to_string(dir.join("conn.json")).unwrap();
    assert!(!file.contains(PUBLIC), "{file}");
    send_signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    wait_code(&mut child);
    let log = log_of(&dir);
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" kernel-launcher "))
        .collect();
    assert!(
        !ours
            .iter()
            .any(|l| l.contains("CurveZMQ") || l.contains("probe")),
        "{log}"
    );
    assert!(
        ours.iter().any(|l| l.contains("transport encryption None")),
        "{log}"
    );
}
