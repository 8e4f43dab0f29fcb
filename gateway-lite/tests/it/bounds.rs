//! A kernel that breaks the message bounds cannot take the gateway down.
//!
//! The "kernel" here is an attacker's: a program started through kernel-launcher like any
//! kernel, which binds the ports of its connection file and answers every ZeroMQ connection
//! with a ZMTP greeting, READY, and then a frame header announcing 2^62 bytes (or a message of
//! 20000 small parts). Code in a real kernel can do the same by closing ipykernel's sockets
//! and binding their ports. The `zeromq` crate would reserve the announced size and abort the
//! gateway (checked: "memory allocation of 4611686018427453543 bytes failed" without the
//! relay); the relay in front of each clear-text socket drops the message at that header.

use std::path::Path;

use serde_json::json;

use crate::support::{Gateway, Options, python};

/// The attacker's kernel (Python standard library only). `mode` is `huge` (one frame
/// announcing 2^62 bytes) or `parts` (a message of 20000 1-byte parts, never ended).
const EVIL: &str = r#"
import json, socket, struct, sys, threading, time
info = json.load(open(sys.argv[2]))
mode = sys.argv[1]
greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\x01" + b"\0" * 31
body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER"
ready = bytes([0x04, len(body)]) + body
def serve(conn):
    try:
        conn.sendall(greeting + ready)
        if mode == "huge":
            conn.sendall(b"\x02" + struct.pack(">Q", 1 << 62) + b"\0" * 4096)
        else:
            conn.sendall(b"\x01\x01x" * 20000)
        time.sleep(600)
    except OSError:
        pass
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((info["ip"], port))
    s.listen(16)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
    threading.Thread(target=listen, args=(info[name],), daemon=True).start()
time.sleep(3600)
"#;

fn write_evil_spec(dir: &Path, mode: &str) {
    let spec = dir.join("specs").join(format!("evil_{mode}"));
    std::fs::create_dir_all(&spec).unwrap();
    let script = spec.join("evil.py");
    std::fs::write(&script, EVIL).unwrap();
    std::fs::write(
        spec.join("kernel.json"),
        serde_json::to_vec(&json!({
            "argv": [python(), script, mode, "{connection_file}"],
            "display_name": format!("evil {mode}"),
            "language": "python",
        }))
        .unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_breaking_the_message_bounds_leaves_the_gateway_serving() {
    let dir = std::env::temp_dir().join(format!("gl-it-bounds-{}", uuid::Uuid::new_v4()));
    for mode in ["huge", "parts"] {
        write_evil_spec(&dir, mode);
    }
    let gw = Gateway::start(Options {
        dir: Some(dir),
        ..Options::default()
    });
    let cases = [
        // The huge frame is named with the limit (twice --max-message-bytes).
        (
            "huge",
            "a message of at least 4611686018427387904 bytes exceeds the limit of 2097152 bytes",
        ),
        (
            "parts",
            "a message of more than 10000 parts exceeds the limit",
        ),
    ];
    for (mode, dropped) in cases {
        let id = gw.start_kernel(&format!("evil_{mode}")).await;
        // A client connecting makes the gateway open all four sockets to it; the monitor
        // has its iopub socket already. Whether the client gets a bridge does not matter
        // here (the kernel never answers); the gateway must not fall over.
        let _ = gw.try_connect(&id, true).await;
        gw.wait_log(dropped).await;
        let (status, _) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 200, "{}", gw.log());
        let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 204, "{body}");
    }
    // And it still serves real kernels.
    let id = gw.start_kernel("py").await;
    let mut c = gw.connect(&id, true).await;
    let out = c.execute("print(6 * 7)").await;
    assert_eq!((out.status.as_str(), out.text.trim()), ("ok", "42"));
}

/// The relays need a temporary directory that takes Unix sockets: a gateway without one
/// stops at start-up (exit 1) naming TMPDIR, rather than failing every kernel's connection.
#[test]
fn a_temporary_directory_without_room_for_relays_stops_the_start() {
    let not_a_dir = std::env::temp_dir().join(format!("gl-it-tmpfile-{}", uuid::Uuid::new_v4()));
    std::fs::write(&not_a_dir, b"a file, not a directory").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-lite"))
        .args(["--ip", "127.0.0.1", "--port", "0", "--launcher"])
        .arg(crate::support::launcher())
        .env("TMPDIR", &not_a_dir)
        .env_remove("GATEWAY_LITE_AUTH_TOKEN")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&not_a_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot hold the Unix sockets of kernel relays")
            && stderr.contains("set TMPDIR"),
        "{stderr}"
    );
}
