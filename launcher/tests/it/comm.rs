//! The comm port against bad input, signals, liveness probes and shutdown.

use std::path::Path;
use std::process::Child;

use crate::support::*;

/// A shell "kernel" that records the signals it gets in `dir/signals`.
/// `on_term` is what it does on SIGTERM.
pub fn recording_kernel(dir: &Path, on_term: &str) -> String {
    format!(
        "d={d}; echo $$ > $d/kernel.pid; trap 'echo INT >> $d/signals' INT; \
         trap 'echo USR2 >> $d/signals' USR2; trap '{on_term}' TERM; \
         while :; do sleep 0.05; done",
        d = dir.display()
    )
}

pub fn signals(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("signals")).unwrap_or_default()
}

pub fn kernel_pid(dir: &Path) -> i64 {
    let mut pid = None;
    eventually("the kernel wrote its pid", || {
        pid = std::fs::read_to_string(dir.join("kernel.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// Starts the launcher with a recording kernel; returns (launcher, comm port, kernel pid).
fn start(name: &str, on_term: &str) -> (Child, Gateway, u16, i64, std::path::PathBuf) {
    let dir = scratch(name);
    let gw = Gateway::new();
    let mut cmd = launcher();
    cmd.args(gw.options(name)).args([
        "--grace-period",
        "1",
        "--",
        "sh",
        "-c",
        &recording_kernel(&dir, on_term),
    ]);
    let child = spawn_logged(&mut cmd, &dir);
    let report = gw.receive();
    let pid = kernel_pid(&dir);
    (child, gw, report.comm_port.unwrap(), pid, dir)
}

#[test]
fn bad_input_leaves_kernel_and_listener_working() {
    let (mut child, _gw, port, pid, dir) = start("comm-bad", "echo TERM >> $d/signals; exit 0");
    let huge = vec![b'x'; 1 << 20];
    let bad: Vec<&[u8]> = vec![
        b"",
        b"garbage",
        b"{",
        b"[1,2]",
        b"{}",
        b"{\"signum\": \"2\"}",
        b"{\"signum\": 99999}",
        b"\xff\xfe\x00",
        &huge,
    ];
    for bytes in &bad {
        // A connection reset while sending 1 MB is fine; the launcher must live on.
        let _ = comm_send(port, bytes);
    }
    // A connection that sends nothing and stays open must not block others.
    let _idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    comm_send(port, br#"{"signum": 0}"#).expect("listener still accepts");
    comm_send(port, br#"{"signum": 2}"#).unwrap();
    eventually("SIGINT reached the kernel", || {
        signals(&dir).contains("INT")
    });
    assert!(alive(pid), "kernel died from bad input");
    let log = log_of(&dir);
    assert!(
        log.contains("ignored request") || log.contains("dropped request"),
        "{log}"
    );
    comm_send(port, br#"{"signum": 15}"#).unwrap();
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
}

#[test]
fn many_connections_are_accepted() {
    let (mut child, _gw, port, _pid, dir) = start("comm-many", "exit 0");
    let handles: Vec<_> = (0..64)
        .map(|_| std::thread::spawn(move || comm_send(port, br#"{"signum": 0}"#)))
        .collect();
    for h in handles {
        h.join().unwrap().expect("every probe connects");
    }
    // The probes' readers may still be busy on a loaded machine, and a connection over the
    // launcher's reader cap is dropped unread (by design): repeat the stop until it lands.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        let _ = comm_send(port, br#"{"signum": 15}"#);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
}

#[test]
fn shutdown_stops_listening_and_ends_the_kernel_after_grace() {
    let (mut child, _gw, port, pid, dir) =
        start("comm-shutdown", "echo TERM >> $d/signals; exit 0");
    comm_send(port, br#"{"shutdown": 1}"#).unwrap();
    eventually("the comm port refuses connections", || {
        comm_send(port, b"{\"signum\":0}").is_err()
    });
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
    assert!(signals(&dir).contains("TERM"));
    assert!(!alive(pid));
}

#[test]
fn shutdown_kills_a_kernel_that_ignores_sigterm() {
    let (mut child, _gw, port, pid, dir) = start("comm-stubborn", "echo TERM >> $d/signals");
    comm_send(port, br#"{"shutdown": 1}"#).unwrap();
    assert_eq!(wait_code(&mut child), 128 + 9, "{}", log_of(&dir));
    assert!(signals(&dir).contains("TERM"));
    assert!(!alive(pid));
}

#[test]
fn combined_signal_and_shutdown() {
    let (mut child, _gw, port, _pid, dir) = start("comm-combined", "exit 5");
    comm_send(port, br#"{"signum": 2, "shutdown": 1}"#).unwrap();
    eventually("SIGINT reached the kernel", || {
        signals(&dir).contains("INT")
    });
    assert_eq!(wait_code(&mut child), 5, "{}", log_of(&dir));
}

#[test]
fn probe_after_kernel_death_is_refused() {
    let dir = scratch("comm-dead");
    let gw = Gateway::new();
    // The kernel exits but leaves a helper in its group that ignores SIGTERM,
    // so the launcher lingers for the grace period with the kernel gone.
    let script = "trap '' TERM; (trap '' TERM; exec sleep 600) & sleep 0.3; exit 3";
    let mut cmd = launcher();
    cmd.args(gw.options("k-dead"))
        .args(["--grace-period", "30", "--", "sh", "-c", script]);
    let mut child = spawn_logged(&mut cmd, &dir);
    let port = gw.receive().comm_port.unwrap();
    eventually("the kernel exits and the comm port refuses", || {
        comm_send(port, b"{\"signum\":0}").is_err()
    });
    // Kill the lingering helper; the launcher then exits with the kernel's code.
    let log_path = dir.join("launcher.log");
    eventually("launcher logged the kernel exit", || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("exited with code 3")
    });
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(kernel_group(&log_of(&dir))),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(wait_code(&mut child), 3, "{}", log_of(&dir));
}

/// The kernel's process group, from the launcher's log line.
fn kernel_group(log: &str) -> i32 {
    let line = log
        .lines()
        .find(|l| l.contains("(process group "))
        .expect("log names the group");
    let after = line.split("(process group ").nth(1).unwrap();
    after.split(')').next().unwrap().parse().unwrap()
}

/// With a launch secret, the payload carries it, the kernel never sees it, and the comm port
/// obeys only requests signed with it, each once: a stranger's `{"shutdown":1}` and
/// `{"signum":9}`, a wrongly signed request and a replayed one all leave the kernel alive.
#[test]
fn with_a_secret_only_signed_requests_are_obeyed() {
    use protocol::comm::CommRequest;
    use protocol::signed;
    let dir = scratch("comm-signed");
    let gw = Gateway::new();
    let secret = "s3cret-for-this-launch-only-0123456789";
    let mut cmd = launcher();
    cmd.env("KERNEL_LAUNCHER_SECRET", secret)
        .args(gw.options("comm-signed"))
        .args([
            "--grace-period",
            "1",
            "--",
            "sh",
            "-c",
            &format!(
                "tr '\\0' '\\n' < /proc/$$/environ > {d}/env; {k}",
                d = dir.display(),
                k = recording_kernel(&dir, "echo TERM >> $d/signals; exit 0")
            ),
        ]);
    let mut child = spawn_logged(&mut cmd, &dir);
    let (sent, report) = gw.receive_raw();
    assert_eq!(report.launch_secret.as_deref(), Some(secret));
    // Sealed with the secret, so a gateway can refuse forgeries before decrypting them.
    let (tag, body) = signed::open_payload(&sent).expect("the payload is sealed");
    assert!(signed::payload_sealed_with(secret.as_bytes(), body, &tag));
    let port = report.comm_port.unwrap();
    let pid = kernel_pid(&dir);
    eventually("the kernel wrote its environment", || {
        dir.join("env").exists()
    });
    let env = std::fs::read_to_string(dir.join("env")).unwrap();
    assert!(!env.contains(secret), "the kernel sees the secret:\n{env}");

    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let kill = CommRequest {
        signum: Some(9),
        shutdown: false,
    };
    for stranger in [
        br#"{"shutdown": 1}"#.to_vec(),
        br#"{"signum": 9}"#.to_vec(),
        signed::sign(&kill, b"not the secret", now(), &[1; 16]),
    ] {
        // Refused, so not acknowledged either.
        assert_eq!(comm_answer(port, &stranger), b"");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(alive(pid), "a stranger's request reached the kernel");
    comm_send(port, br#"{"signum": 0}"#).expect("the port still listens");

    let interrupt = signed::sign(
        &CommRequest {
            signum: Some(2),
            shutdown: false,
        },
        secret.as_bytes(),
        now(),
        &[2; 16],
    );
    comm_send(port, &interrupt).unwrap();
    eventually("the signed SIGINT reached the kernel", || {
        signals(&dir).matches("INT").count() == 1
    });
    // The same bytes again: refused as a replay.
    comm_send(port, &interrupt).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        signals(&dir).matches("INT").count(),
        1,
        "a replay was obeyed"
    );
    let log = log_of(&dir);
    assert!(log.contains("replayed"), "{log}");
    assert!(log.contains("not signed"), "{log}");
    assert!(log.contains("wrong signature"), "{log}");

    let shutdown = CommRequest {
        signum: None,
        shutdown: true,
    };
    // Obeyed, and acknowledged on its connection (gateway-lite answers a DELETE on that).
    let answer = comm_answer(
        port,
        &signed::sign(&shutdown, secret.as_bytes(), now(), &[3; 16]),
    );
    assert_eq!(answer, protocol::comm::SHUTDOWN_ACK);
    assert_eq!(wait_code(&mut child), 0);
    assert!(!alive(pid));
}

#[test]
fn a_short_secret_is_a_configuration_error() {
    let gw = Gateway::new();
    let out = launcher()
        .env("KERNEL_LAUNCHER_SECRET", "short")
        .args(gw.options("comm-short"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KERNEL_LAUNCHER_SECRET"), "{err}");
}
