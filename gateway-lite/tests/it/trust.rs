//! The trust boundary, read as an attacker would: a web page the user visits, a neighbour on
//! the kernels' network, anyone who can read `ps`. Each test opens a way in and shows it is
//! closed; each fails if its guard is taken away. Real gateway, launcher and ipykernel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use protocol::connection::ConnectionInfo;
use protocol::payload::{self, LaunchReport, PublicKey};
use serde_json::{Value, json};

use crate::support::{self, Gateway, Options, processes_of};

fn opts(args: &[&str]) -> Options {
    Options {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    }
}

/// The command line of the kernel-launcher process of kernel `id`: what `ps` shows anyone.
fn launcher_argv(id: &str) -> Vec<String> {
    processes_of(id)
        .into_iter()
        .map(support::argv)
        .find(|a| a.first().is_some_and(|p| p.ends_with("kernel-launcher")))
        .unwrap_or_else(|| panic!("no kernel-launcher process for {id}"))
}

fn arg_after(argv: &[String], name: &str) -> String {
    let i = argv.iter().position(|a| a == name).unwrap();
    argv[i + 1].clone()
}

/// One raw HTTP exchange with headers of our choosing; status and body.
fn exchange(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn upgrade(port: u16, id: &str, token: &str, origin: &str) -> u16 {
    let req = format!(
        "GET /api/kernels/{id}/channels?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Origin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(support::WAIT)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_page_cannot_use_the_gateway() {
    let gw = Gateway::start(Options::default());
    let token = gw
        .token
        .clone()
        .expect("a token is generated without configuration");
    assert_eq!(token.len(), 64);
    let port = gw.port;
    // No token: 401.
    let (status, _) = exchange(
        port,
        &format!(
            "GET /api/kernels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 401);
    // DNS rebinding: the page's own name resolves to 127.0.0.1; refused even with a token.
    let (status, body) = exchange(
        port,
        &format!(
            "GET /api/kernels HTTP/1.1\r\nHost: evil.example:{port}\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allow-host"), "{body}");
    // A form or text/plain POST (no preflight in a browser) starts nothing.
    let (status, body) = exchange(
        port,
        &format!(
            "POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: token {token}\r\n\
             Content-Type: text/plain\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{{\"name\": \"py\"}}"
        ),
    );
    assert_eq!(status, 415, "{body}");
    // ... nor one without a type (a Blob body): from a page it carries an Origin.
    let (status, body) = exchange(
        port,
        &format!(
            "POST /api/kernels HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: token {token}\r\n\
             Origin: http://127.0.0.1:{port}\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{{\"name\": \"py\"}}"
        ),
    );
    assert_eq!(status, 415, "{body}");
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]));
    // A cross-origin page cannot open a kernel's WebSocket, even with the token.
    let id = gw.start_kernel("py").await;
    assert_eq!(upgrade(port, &id, &token, "http://evil.example"), 403);
    assert_eq!(upgrade(port, &id, &token, "null"), 403);
    // ... nor change anything.
    let (status, body) = exchange(
        port,
        &format!(
            "POST /api/kernels/{id}/interrupt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: token {token}\r\n\
             Origin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{body}");
    // The gateway's own origin may.
    assert_eq!(
        upgrade(port, &id, &token, &format!("http://127.0.0.1:{port}")),
        101
    );
    // The generated token is in a private file, named in the log.
    let log = gw.log();
    let file = log
        .lines()
        .find_map(|l| l.split("file=").nth(1))
        .map(|f| f.split_whitespace().next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no token file in the log:\n{log}"));
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_origins_and_hosts_are_opt_in_and_no_auth_is_loopback_only() {
    let gw = Gateway::start(opts(&[
        "--allow-origin",
        "https://lab.example",
        "--allow-host",
        "gw.example",
    ]));
    let token = gw.token.clone().unwrap();
    let id = gw.start_kernel("py").await;
    assert_eq!(upgrade(gw.port, &id, &token, "https://lab.example"), 101);
    assert_eq!(upgrade(gw.port, &id, &token, "https://other.example"), 403);
    let (status, text) = exchange(
        gw.port,
        &format!(
            "GET /api HTTP/1.1\r\nHost: gw.example:{}\r\nAuthorization: token {token}\r\nOrigin: https://lab.example\r\nConnection: close\r\n\r\n",
            gw.port
        ),
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://lab.example"),
        "{text}"
    );

    // --no-auth: refused off loopback (exit 64, naming the option), served on it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-lite"))
        .args(["--ip", "0.0.0.0", "--port", "0", "--no-auth", "--launcher"])
        .arg(support::launcher())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-auth"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let open = Gateway::start(opts(&["--no-auth"]));
    assert!(open.token.is_none());
    let (status, _) = open.json("GET", "/api/kernels", None).await;
    assert_eq!(status, 200);
    assert!(open.log().contains("--no-auth"), "the risk is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn kernels_get_an_allow_listed_environment() {
    // Given through the environment here; --auth-token on a command line is warned about.
    let gw = Gateway::start(Options {
        token: Some("s3cret-token-of-the-gateway"),
        args: vec!["--kernel-env".into(), "KL_TEST_PASSED*".into()],
        env: vec![
            ("KL_TEST_PASSED_TOO".into(), "1".into()),
            ("KL_TEST_NOT_PASSED".into(), "1".into()),
        ],
        ..Options::default()
    });
    let id = gw.start_kernel("py").await;
    let mut c = gw.connect(&id, false).await;
    let out = c
        .execute("import os, json; print(json.dumps(dict(os.environ)))")
        .await;
    let env: HashMap<String, String> = serde_json::from_str(out.text.trim()).unwrap();
    for gone in [
        "GATEWAY_LITE_AUTH_TOKEN",
        "GATEWAY_LITE_LOG",
        "KERNEL_LAUNCHER_SECRET",
        "KL_TEST_NOT_PASSED",
    ] {
        assert!(!env.contains_key(gone), "{gone} reached the kernel");
    }
    for kept in ["PATH", "KERNEL_ID", "KL_TEST_PASSED_TOO"] {
        assert!(env.contains_key(kept), "{kept} missing: {env:?}");
    }
    // The gateway's own controls cannot come from a request.
    for (name, value) in [
        ("KERNEL_LAUNCHER_IP", "0.0.0.0"),
        ("KERNEL_LAUNCHER_GRACE_PERIOD", "3600"),
        ("KERNEL_ID", "mine"),
    ] {
        let body = json!({"name": "py", "env": {name: value}}).to_string();
        let (status, err) = gw.json("POST", "/api/kernels", Some(&body)).await;
        assert_eq!(status, 400, "{name}: {err}");
        assert!(err["message"].as_str().unwrap().contains(name), "{err}");
    }
    drop(gw);
    let argv_token = Gateway::start(Options {
        args: vec!["--auth-token".into(), "on-the-command-line".into()],
        ..Options::default()
    });
    assert!(
        argv_token.log().contains("readable by every local user"),
        "{}",
        argv_token.log()
    );
}

/// Forged payloads for a real kernel id, sent by someone who read the launcher's command
/// line (the gateway's key, the response address, the kernel id), flood the response port
/// during a restart. The kernel comes back talking to its real process.
#[tokio::test(flavor = "multi_thread")]
async fn forged_payloads_during_a_restart_do_not_take_the_kernel() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    let argv = launcher_argv(&id);
    let response = arg_after(&argv, "--response-address");
    let key = PublicKey::parse(&arg_after(&argv, "--public-key")).unwrap();
    // The attacker's "kernel": ports that lead nowhere useful.
    let decoy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = decoy.local_addr().unwrap().port();
    let report = LaunchReport {
        connection: ConnectionInfo::from_json(
            format!(
                r#"{{"shell_port":{p},"iopub_port":{p},"stdin_port":{p},"control_port":{p},"hb_port":{p},
                "ip":"127.0.0.1","key":"attacker","transport":"tcp","signature_scheme":"hmac-sha256"}}"#
            )
            .as_bytes(),
        )
        .unwrap(),
        kernel_id: id.clone(),
        pid: Some(1),
        pgid: Some(1),
        comm_port: Some(p),
        launch_secret: Some("guessed".repeat(8)),
    };
    let forged = payload::encrypt(&key, &report.to_json()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, response, forged) = (stop.clone(), response.clone(), forged.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = std::net::TcpStream::connect(&response) {
                    let _ = s.write_all(forged.as_bytes());
                    sent += 1;
                }
            }
            sent
        })
    };
    let before = processes_of(&id);
    let (status, model) = gw
        .json("POST", &format!("/api/kernels/{id}/restart"), None)
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert_eq!(status, 200, "{model}\n{}", gw.log());
    let after = processes_of(&id);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "a new incarnation"
    );
    let mut c = gw.connect(&id, false).await;
    let out = c.execute("import os; print(os.getpid())").await;
    let pid: i32 = out.text.trim().parse().unwrap();
    assert!(after.contains(&pid), "the kernel answering is the real one");
    let (_, _, metrics) = gw.http("GET", "/metrics", None).await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_lite_payloads_refused_total{reason=\"secret\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        refused > 0 && sent > 0,
        "refused {refused} of {sent}\n{metrics}"
    );
}

/// Local ports of TCP sockets listening on `port`, from /proc/net/tcp: (address, port).
fn listening(port: u16) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, p) = f.get(1)?.split_once(':')?;
            (u16::from_str_radix(p, 16).ok()? == port && f.get(3)? == &"0A")
                .then(|| addr.to_owned())
        })
        .collect()
}

/// A neighbour on the kernel's network sends the comm port what Enterprise Gateway would:
/// unsigned `{"shutdown":1}` and `{"signum":9}`. The kernel stays, and its ports are bound
/// to the address the gateway uses, not to every address.
#[tokio::test(flavor = "multi_thread")]
async fn a_strangers_comm_requests_leave_the_kernel_alive() {
    let state = std::env::temp_dir().join(format!("gl-state-{}", uuid::Uuid::new_v4()));
    let gw = Gateway::start(opts(&[
        "--state-dir",
        &state.to_string_lossy(),
        "--shutdown-kernels-on-exit",
    ]));
    let id = gw.start_kernel("py").await;
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(state.join("kernels.json")).unwrap()).unwrap();
    let k = &recorded["kernels"][0];
    let comm = k["comm_port"].as_u64().unwrap() as u16;
    assert!(
        k["launch_secret"].as_str().is_some_and(|s| s.len() == 64),
        "{k}"
    );
    // 127.0.0.1 in /proc/net/tcp's little-endian hex: bound to loopback only.
    assert_eq!(listening(comm), vec!["0100007F".to_owned()]);
    let shell = k["connection"]["shell_port"].as_u64().unwrap() as u16;
    // The 201 comes with the payload, before the kernel listens: wait for its shell port.
    let deadline = Instant::now() + support::WAIT;
    while listening(shell).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listening(shell), vec!["0100007F".to_owned()]);
    let pids = processes_of(&id);
    for request in [
        &br#"{"shutdown": 1}"#[..],
        br#"{"signum": 9}"#,
        br#"{"signum": 15}"#,
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", comm)).unwrap();
        s.write_all(request).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Every process of the kernel is still there (the kernel may have started helpers of its
    // own meanwhile: only a lost process would mean a stranger's request was obeyed).
    let now = processes_of(&id);
    assert!(
        pids.iter().all(|p| now.contains(p)),
        "a stranger's request reached the kernel: {pids:?} before, {now:?} after"
    );
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("1+1").await.text, "2");
    // The gateway's own, signed interrupt still works.
    gw.interrupt_sleeping_cell(&id, &mut c).await;
    drop(gw);
    let _ = std::fs::remove_dir_all(state);
}

/// Raises this test process's open-files limit (1,000 idle sockets need room).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// 1,000 silent connections held open on the response port do not hold a launch back: the
/// launch is not queued behind them (it was, for up to 10 s, with a fixed number of
/// read slots).
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_do_not_hold_launches_back() {
    raise_nofile();
    let gw = Gateway::start(Options::default());
    let first = gw.start_kernel("py").await;
    let response = arg_after(&launcher_argv(&first), "--response-address");
    let idle: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(&response).ok())
        .collect();
    assert!(idle.len() >= 900, "{} connections", idle.len());
    let asked = Instant::now();
    gw.start_kernel("py").await;
    let took = asked.elapsed();
    drop(idle);
    println!(
        "a launch with {} idle connections held open took {took:?}",
        1000
    );
    // A start takes well under a second here; queued behind the idle connections it took
    // ten. The bound only guards against hangs on a loaded machine.
    assert!(took < Duration::from_secs(5), "start took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped() {
    let gw = Gateway::start(opts(&["--max-connections", "16"]));
    let held: Vec<std::net::TcpStream> = (0..16)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The 17th is closed unread.
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    extra.set_read_timeout(Some(support::WAIT)).unwrap();
    let _ = extra.write_all(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = gw.json("GET", "/api", None).await;
    assert_eq!(status, 200);
    gw.wait_log("too many open connections").await;
}

/// A client that never finishes its request headers does not hold its connection (and its
/// place under the connection cap) for ever: it is closed after the header-read timeout.
#[tokio::test(flavor = "multi_thread")]
async fn unfinished_request_headers_are_cut_off() {
    let gw = Gateway::start(Options::default());
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    slow.write_all(b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let asked = Instant::now();
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    // hyper answers 408 or just closes; either way the connection ends well before 90 s.
    assert!(
        n == 0 || text.starts_with("HTTP/1.1 408"),
        "unexpected answer: {text:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(60),
        "{:?}",
        asked.elapsed()
    );
}
