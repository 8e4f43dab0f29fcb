//! Payload contents, exit codes, signal forwarding, group clean-up and the
//! launcher's relation to its parent.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use protocol::connection::ConnectionInfo;

use crate::comm::{kernel_pid, recording_kernel, signals};
use crate::support::*;

#[test]
fn payload_is_sent_once_with_the_kernels_pid_and_distinct_ports() {
    let dir = scratch("payload");
    let gw = Gateway::new();
    let conn = dir.join("conn.json");
    let mut cmd = launcher();
    cmd.args(gw.options("k-payload")).arg(&conn).args([
        "--",
        "sh",
        "-c",
        &format!(
            "echo $$ > {}/kernel.pid; cp {{connection_file}} {}/seen.json; exec sleep 600",
            dir.display(),
            dir.display()
        ),
    ]);
    let mut child = spawn_logged(&mut cmd, &dir);
    let report = gw.receive();
    let pid = kernel_pid(&dir);
    assert_eq!(report.kernel_id, "k-payload");
    assert_eq!(report.pid, Some(pid));
    assert_eq!(report.pgid, Some(pid));
    let c = &report.connection;
    let mut ports = vec![
        c.shell_port,
        c.iopub_port,
        c.stdin_port,
        c.control_port,
        c.hb_port,
        report.comm_port.unwrap(),
    ];
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6, "{report:?}");
    // Bound to the interface that routes to the response address (loopback here), not all.
    assert_eq!(c.ip, "127.0.0.1");
    assert_eq!(
        (c.transport.as_str(), c.signature_scheme.as_str()),
        ("tcp", "hmac-sha256")
    );
    assert_eq!(c.key.len(), 36);
    // The connection file holds the same key, privately.
    eventually("the kernel saw the connection file", || {
        dir.join("seen.json").exists()
    });
    let file = ConnectionInfo::from_json(&std::fs::read(dir.join("seen.json")).unwrap()).unwrap();
    assert_eq!(&file, c);
    assert_eq!(
        std::fs::metadata(&conn).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !gw.receives_again(Duration::from_millis(500)),
        "payload sent twice"
    );
    send_signal(child.id(), Signal::SIGTERM);
    assert_eq!(wait_code(&mut child), 128 + 15, "{}", log_of(&dir));
    assert!(!conn.exists(), "connection file left behind");
}

#[test]
fn container_entrypoint_reads_bootstrap_environment() {
    let dir = scratch("envcfg");
    let gw = Gateway::new();
    let mut cmd = launcher();
    cmd.env("KERNEL_ID", "k-env")
        .env("EG_RESPONSE_ADDRESS", gw.address())
        .env("EG_PUBLIC_KEY", gw.public_key())
        .env("PORT_RANGE", "{port_range}")
        .env("KERNEL_WORKING_DIR", &dir)
        .args(["--", "sh", "-c", "pwd > kernel.cwd; exec sleep 600"]);
    let mut child = spawn_logged(&mut cmd, &dir);
    let report = gw.receive();
    assert_eq!(report.kernel_id, "k-env");
    eventually("the kernel ran in KERNEL_WORKING_DIR", || {
        dir.join("kernel.cwd").exists()
    });
    comm_send(report.comm_port.unwrap(), br#"{"signum": 9}"#).unwrap();
    assert_eq!(wait_code(&mut child), 128 + 9);
}

#[test]
fn legacy_options_ipv6_response_address_and_port_range() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        panic!("this test needs IPv6 on loopback");
    }
    let dir = scratch("legacy6");
    let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = protocol::payload::PrivateKey::generate(2048).unwrap();
    let mut cmd = launcher();
    cmd.env("MIN_PORT_RANGE_SIZE", "100").args([
        "--RemoteProcessProxy.kernel-id",
        "k-legacy",
        &format!("--RemoteProcessProxy.response-address=[::1]:{port}"),
        "--RemoteProcessProxy.public-key",
        &key.public_key().to_eg_string(),
        "--RemoteProcessProxy.port-range",
        "47400..47600",
        "--RemoteProcessProxy.spark-context-initialization-mode",
        "none",
        "--some-future-option",
        "x",
        "--",
        "sleep",
        "600",
    ]);
    let mut child = spawn_logged(&mut cmd, &dir);
    let (mut s, _) = listener.accept().unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut bytes).unwrap();
    let report = protocol::payload::LaunchReport::from_json(
        &protocol::payload::decrypt(&key, &bytes).unwrap(),
    )
    .unwrap();
    let c = &report.connection;
    for p in [
        c.shell_port,
        c.iopub_port,
        c.stdin_port,
        c.control_port,
        c.hb_port,
        report.comm_port.unwrap(),
    ] {
        assert!((47400..=47600).contains(&p), "{p} outside the range");
    }
    assert!(log_of(&dir).contains("unknown option `--some-future-option x`"));
    send_signal(child.id(), Signal::SIGTERM);
    assert_eq!(wait_code(&mut child), 128 + 15);
}

#[test]
fn exit_codes_propagate() {
    let code = |script: &str| {
        let out = launcher()
            .args(["--kernel-id", "k-exit", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status.code().unwrap()
    };
    assert_eq!(code("exit 7"), 7);
    assert_eq!(code("exit 0"), 0);
    assert_eq!(code("kill -9 $$"), 128 + 9);
}

#[test]
fn forwarded_signals_reach_the_kernel_group() {
    let dir = scratch("forward");
    let mut cmd = launcher();
    cmd.args([
        "--kernel-id",
        "k-fwd",
        "--grace-period",
        "2",
        "--",
        "sh",
        "-c",
    ])
    .arg(recording_kernel(&dir, "echo TERM >> $d/signals; exit 0"));
    let mut child = spawn_logged(&mut cmd, &dir);
    let pid = kernel_pid(&dir);
    send_signal(child.id(), Signal::SIGINT);
    eventually("SIGINT forwarded", || signals(&dir).contains("INT"));
    send_signal(child.id(), Signal::SIGUSR2);
    eventually("SIGUSR2 forwarded", || signals(&dir).contains("USR2"));
    // Job-control signals are not forwarded and do not stop the launcher.
    send_signal(child.id(), Signal::SIGTSTP);
    send_signal(child.id(), Signal::SIGTERM);
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
    assert!(signals(&dir).contains("TERM"));
    assert!(!alive(pid));
}

#[test]
fn rest_of_the_group_is_ended_when_the_kernel_exits() {
    let dir = scratch("leftover");
    let script = format!(
        "sleep 600 & echo $! > {}/helper.pid; sleep 0.2; exit 4",
        dir.display()
    );
    let out = launcher()
        .args([
            "--kernel-id",
            "k-left",
            "--grace-period",
            "2",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let helper: i64 = std::fs::read_to_string(dir.join("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(helper), "helper {helper} outlived the launcher");
}

/// Starts the launcher from a short-lived shell, which exits at once.
fn orphaned_launcher(dir: &std::path::Path, extra: &str) -> (i64, std::process::Child) {
    let bin = env!("CARGO_BIN_EXE_kernel-launcher");
    let script = format!(
        "{bin} --kernel-id k-orphan {extra} -- sh -c 'echo $$ > {d}/kernel.pid; exec sleep 600' \
         2>{d}/launcher.log </dev/null & echo $! > {d}/launcher.pid; sleep 1",
        d = dir.display()
    );
    let parent = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let launcher_pid = {
        let mut pid = None;
        eventually("launcher pid written", || {
            pid = std::fs::read_to_string(dir.join("launcher.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        });
        pid.unwrap()
    };
    (launcher_pid, parent)
}

#[test]
fn kernel_outlives_the_launchers_parent_by_default() {
    let dir = scratch("outlive");
    let (launcher_pid, mut parent) = orphaned_launcher(&dir, "");
    parent.wait().unwrap();
    let kernel = kernel_pid(&dir);
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(launcher_pid) && alive(kernel), "{}", log_of(&dir));
    send_signal(launcher_pid as u32, Signal::SIGTERM);
    eventually("launcher and kernel exit", || {
        !alive(launcher_pid) && !alive(kernel)
    });
}

#[test]
fn exit_with_parent_ends_the_kernel() {
    let dir = scratch("withparent");
    let (launcher_pid, mut parent) = orphaned_launcher(&dir, "--exit-with-parent --grace-period 1");
    let kernel = kernel_pid(&dir);
    parent.wait().unwrap();
    eventually("launcher and kernel exit after the parent", || {
        !alive(launcher_pid) && !alive(kernel)
    });
    assert!(
        log_of(&dir).contains("exit-with-parent"),
        "{}",
        log_of(&dir)
    );
}

#[test]
fn closed_stderr_does_not_kill_the_launcher() {
    // A gateway that restarts closes the pipe the launcher logs to.
    let mut child = launcher()
        .args([
            "--kernel-id",
            "k-epipe",
            "--",
            "sh",
            "-c",
            "sleep 0.5; exit 6",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    assert_eq!(wait_code(&mut child), 6);
}

#[test]
fn under_spark_submit_stdin_eof_ends_the_kernel() {
    // PythonRunner gives the driver's child a stdin pipe from the JVM; EOF
    // means the JVM is gone. The primary resource argument is ignored.
    let dir = scratch("stdin-eof");
    let mut child = launcher()
        .env("PYSPARK_GATEWAY_PORT", "1")
        .args([
            "/opt/primary.py",
            "--kernel-id",
            "k-jvm",
            "--grace-period",
            "1",
            "--",
            "sh",
            "-c",
        ])
        .arg(recording_kernel(&dir, "echo TERM >> $d/signals; exit 0"))
        .stdin(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("launcher.log")).unwrap())
        .spawn()
        .unwrap();
    let kernel = kernel_pid(&dir);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(kernel), "{}", log_of(&dir));
    drop(child.stdin.take());
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
    assert!(signals(&dir).contains("TERM"));
    assert!(
        log_of(&dir).contains("stdin reached EOF"),
        "{}",
        log_of(&dir)
    );
}
