//! Real kernels in two languages through the launcher: ipykernel and
//! IRkernel. Execute, interrupt through the comm port, check the kernel
//! survived, shut down over ZMQ; the launcher then exits 0 and removes the
//! connection file.

use std::process::Command;

use crate::support::*;

/// Runs `kernel_client.py` against a kernel started with `kernel_args`; with
/// `interrupt_at_start`, an interrupt goes to the comm port the moment the payload
/// arrives, long before the kernel is ready.
fn drive_with(language: &str, kernel_args: &[&str], interrupt_at_start: bool) {
    let dir = scratch(&format!("kernel-{language}"));
    let gw = Gateway::new();
    let conn = dir.join("conn.json");
    let mut cmd = launcher();
    cmd.args(gw.options(&format!("k-{language}")))
        .arg(&conn)
        .args(kernel_args);
    let child = spawn_logged(&mut cmd, &dir);
    drive_child(language, &gw, child, &dir, interrupt_at_start);
    assert!(!conn.exists(), "connection file left behind");
}

/// Drives a launcher `child` that reports to `gw` (its stderr in `dir`): execute, interrupt,
/// check the kernel survived, shut down; the launcher must exit 0.
pub fn drive_child(
    language: &str,
    gw: &Gateway,
    child: std::process::Child,
    dir: &std::path::Path,
    interrupt_at_start: bool,
) {
    drive_report(language, gw.receive(), child, dir, interrupt_at_start);
}

/// [`drive_child`] for a `report` already received.
pub fn drive_report(
    language: &str,
    report: protocol::payload::LaunchReport,
    mut child: std::process::Child,
    dir: &std::path::Path,
    interrupt_at_start: bool,
) {
    let python = kernel_python();
    if interrupt_at_start {
        comm_send(report.comm_port.unwrap(), br#"{"signum": 2}"#).unwrap();
    }
    // The client connects to the address the gateway would substitute.
    let mut info = report.connection.clone();
    info.ip = "127.0.0.1".into();
    let client_conn = dir.join("client.json");
    std::fs::write(&client_conn, info.to_json_pretty()).unwrap();
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/kernel_client.py"
        ))
        .arg(&client_conn)
        .arg(report.comm_port.unwrap().to_string())
        .arg(language)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}\n{}\nlauncher log:\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr),
        log_of(dir)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(seen["add"].as_str().unwrap().contains('2'), "{seen}");
    assert!(
        seen["after_interrupt"].as_str().unwrap().contains("42"),
        "{seen}"
    );
    if language == "python" {
        assert_eq!(seen["interrupt_errors"][0], "KeyboardInterrupt", "{seen}");
        if !interrupt_at_start {
            // The kernel was long past its start-up: the interrupt of the running cell
            // must go straight through, not be held for a starting kernel.
            let log = log_of(dir);
            assert!(!log.contains("interrupt is held"), "{log}");
        }
    }
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(dir));
}

fn drive(language: &str, kernel_args: &[&str]) {
    drive_with(language, kernel_args, false);
}

#[test]
fn ipykernel_interrupted_while_starting_survives() {
    let python = kernel_python();
    drive_with("python", &["--interpreter", &python], true);
}

#[test]
fn ipykernel_execute_interrupt_shutdown() {
    let python = kernel_python();
    drive("python", &["--interpreter", &python]);
}

#[test]
fn ipykernel_explicit_argv() {
    let python = kernel_python();
    drive(
        "python",
        &[
            "--",
            &python,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ],
    );
}

#[test]
fn irkernel_execute_interrupt_shutdown() {
    drive("r", &["--language", "r"]);
}
