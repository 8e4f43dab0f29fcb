//! Configuration errors: each names the option and the fix, with exit code 64.

use crate::support::*;

fn usage_error(args: &[&str]) -> String {
    let out = launcher().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(64), "stderr: {stderr}");
    stderr
}

#[test]
fn help_documents_options_env_and_exit_codes() {
    let out = launcher().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--kernel-id",
        "--RemoteProcessProxy.NAME",
        "--response-address",
        "--public-key",
        "--port-range",
        "--spark-context-initialization-mode",
        "--cluster-type",
        "--kernel-class-name",
        "--transport-encryption",
        "--customAppName",
        "KERNEL_ID",
        "RESPONSE_ADDRESS",
        "EG_PUBLIC_KEY",
        "KERNEL_LANGUAGE",
        "KERNEL_WORKING_DIR",
        "{connection_file}",
        "EXIT CODES",
        "128+S",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn missing_kernel_id() {
    let e = usage_error(&["--", "true"]);
    assert!(
        e.contains("--kernel-id") && e.contains("{kernel_id}"),
        "{e}"
    );
}

#[test]
fn invalid_public_key() {
    let e = usage_error(&[
        "--kernel-id",
        "k",
        "--response-address",
        "127.0.0.1:9",
        "--public-key",
        "bm90IGEga2V5",
        "--",
        "true",
    ]);
    assert!(e.contains("--public-key"), "{e}");
}

#[test]
fn missing_public_key_with_response_address() {
    let e = usage_error(&[
        "--kernel-id",
        "k",
        "--response-address",
        "127.0.0.1:9",
        "--",
        "true",
    ]);
    assert!(e.contains("--public-key") && e.contains("missing"), "{e}");
}

#[test]
fn invalid_port_ranges() {
    for range in ["100..50", "abc", "1..70000", "40000..40010"] {
        let e = usage_error(&["--kernel-id", "k", "--port-range", range, "--", "true"]);
        assert!(e.contains("--port-range"), "{range}: {e}");
    }
}

#[test]
fn invalid_response_address() {
    let e = usage_error(&[
        "--kernel-id",
        "k",
        "--response-address",
        "nohost",
        "--",
        "true",
    ]);
    assert!(
        e.contains("--response-address") && e.contains("HOST:PORT"),
        "{e}"
    );
}

#[test]
fn unknown_language_without_argv() {
    let e = usage_error(&["--kernel-id", "k", "--language", "julia"]);
    assert!(e.contains("after `--`"), "{e}");
}

#[test]
fn exhausted_port_range_is_a_clear_error() {
    // Hold 3 ports of an 8-port range: only 5 remain, 6 are needed.
    // Below the kernel's ephemeral range (32768..), so no outgoing connection holds them.
    let base = 23_300u16;
    let _held: Vec<_> = (base..base + 3)
        .map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).expect("test ports free"))
        .collect();
    let range = format!("{base}..{}", base + 7);
    let out = launcher()
        .env("MIN_PORT_RANGE_SIZE", "0")
        .args([
            "--kernel-id",
            "k",
            "--ip",
            "127.0.0.1",
            "--port-range",
            &range,
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(71), "{stderr}");
    assert!(
        stderr.contains("no free port") && stderr.contains(&range),
        "{stderr}"
    );
}

#[test]
fn kernel_not_found_is_127() {
    let out = launcher()
        .args([
            "--kernel-id",
            "k",
            "--",
            "/nonexistent/kernel",
            "{connection_file}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unreachable_response_address_gives_up_and_stops_the_kernel() {
    let dir = scratch("unreachable");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::new();
    let script = format!(
        "echo $$ > {d}/kernel.pid; exec sleep 600",
        d = dir.display()
    );
    let mut child = spawn_logged(
        launcher().args([
            "--kernel-id",
            "k-unreachable",
            "--response-address",
            &format!("127.0.0.1:{port}"),
            "--public-key",
            &gw.public_key(),
            "--response-timeout",
            "1",
            "--grace-period",
            "1",
            "--",
            "sh",
            "-c",
            &script,
        ]),
        &dir,
    );
    let code = wait_code(&mut child);
    let log = log_of(&dir);
    assert_eq!(code, 69, "{log}");
    assert!(
        log.contains("could not deliver") && log.contains("attempts"),
        "{log}"
    );
    let pid: i64 = std::fs::read_to_string(dir.join("kernel.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "kernel {pid} outlived the launcher");
}

#[test]
fn invalid_transport_encryption() {
    let e = usage_error(&[
        "--kernel-id",
        "k",
        "--transport-encryption",
        "curve",
        "--",
        "true",
    ]);
    assert!(
        e.contains("--transport-encryption") && e.contains("none, auto, required"),
        "{e}"
    );
}
