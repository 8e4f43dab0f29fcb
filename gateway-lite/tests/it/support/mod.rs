//! Test support: the real gateway-lite binary, the real kernel-launcher and a real ipykernel,
//! a minimal HTTP client and a WebSocket kernel client (legacy and v1 framings).
//!
//! Peers are required: a missing launcher or Python fails the test with the fix, never skips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod client;
mod procs;
pub mod tcpdump;

pub use client::{KernelClient, v1_encode};
pub use procs::{
    argv, cmdline, env_var, pids, processes_of, processes_with_env, status_kb, wait_no_processes,
};

/// Generous bound for anything a kernel does, only to avoid hangs.
pub const WAIT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn env_sh(key: &str) -> Option<String> {
    let home = std::env::var("HOME").ok()?;
    let cache = std::env::var("KL_CACHE").unwrap_or(format!("{home}/.cache/kernel-launcher"));
    let text = std::fs::read_to_string(format!("{cache}/env.sh")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("export ")?;
        let (k, v) = rest.split_once('=')?;
        (k == key).then(|| v.trim_matches('"').to_owned())
    })
}

/// The kernel-launcher binary: `$KERNEL_LAUNCHER` or target/debug/kernel-launcher.
pub fn launcher() -> PathBuf {
    let p = std::env::var_os("KERNEL_LAUNCHER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/kernel-launcher"));
    assert!(
        p.is_file(),
        "kernel-launcher not found at {}: run `cargo build -p launcher` or set KERNEL_LAUNCHER",
        p.display()
    );
    p
}

/// Runs `cmd`; its stdout, or a panic with its status and stderr (`hint` says what to
/// install when it cannot start at all).
pub fn run_ok(cmd: &mut Command, hint: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} ({hint})"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python with ipykernel: `$KL_PY_KERNEL` or the one in $KL_CACHE/env.sh.
pub fn python() -> String {
    venv_python("KL_PY_KERNEL", "a python with ipykernel")
}

/// The python that `var` names (from the environment or $KL_CACHE/env.sh); panics with the
/// fix when it is missing.
fn venv_python(var: &str, what: &str) -> String {
    let p = std::env::var(var).ok().or_else(|| env_sh(var));
    let p = p.unwrap_or_else(|| {
        panic!("{var} ({what}) is not set and not in ~/.cache/kernel-launcher/env.sh: run scripts/setup-env.sh")
    });
    assert!(
        Path::new(&p).is_file(),
        "{var}={p} does not exist: run scripts/setup-env.sh"
    );
    p
}

/// Python with ipykernel >= 7.3 (CurveZMQ): `$KL_PY_LAB` or the one in $KL_CACHE/env.sh.
pub fn lab_python() -> String {
    venv_python("KL_PY_LAB", "a python with ipykernel >= 7.3, for CurveZMQ")
}

/// Polls until `check` holds (bounded by WAIT); the last value seen otherwise.
pub async fn eventually<T: std::fmt::Debug>(
    what: &str,
    mut check: impl AsyncFnMut() -> (bool, T),
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ok, seen) = check().await;
        if ok {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running gateway-lite with its own kernelspec directory.
pub struct Gateway {
    /// The URL it printed, without the query: scheme, address and base URL.
    pub url: String,
    /// The gateway's process; `None` for one this test did not start ([`Gateway::external`]).
    child: Option<Child>,
    pub port: u16,
    pub token: Option<String>,
    pub dir: PathBuf,
    /// Leave `dir` in place on drop (a later gateway reuses it).
    keep_dir: bool,
}

pub struct Options {
    pub token: Option<&'static str>,
    pub max_message_bytes: usize,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Reuse this directory (specs, log, state) instead of a new one.
    pub dir: Option<PathBuf>,
    /// Extra variables in the gateway's environment.
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            token: None,
            max_message_bytes: 1024 * 1024,
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
        }
    }
}

fn write_spec(root: &Path, name: &str, spec: Value) {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("kernel.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
}

impl Gateway {
    pub fn start(opts: Options) -> Gateway {
        let py = python();
        let launcher = launcher();
        let dir = opts.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("gl-it-{}", uuid::Uuid::new_v4()))
        });
        let specs = dir.join("specs");
        let ipy = json!([py, "-m", "ipykernel_launcher", "-f", "{connection_file}"]);
        write_spec(
            &specs,
            "py",
            json!({"argv": ipy, "display_name": "Python (it)", "language": "python"}),
        );
        write_spec(
            &specs,
            "py_msg",
            json!({"argv": ipy, "display_name": "Python (message interrupts)", "language": "python", "interrupt_mode": "message"}),
        );
        let mut eg_argv = vec![
            json!(launcher.to_string_lossy()),
            json!("--RemoteProcessProxy.kernel-id"),
            json!("{kernel_id}"),
            json!("--RemoteProcessProxy.response-address"),
            json!("{response_address}"),
            json!("--RemoteProcessProxy.public-key"),
            json!("{public_key}"),
            json!("--RemoteProcessProxy.port-range"),
            json!("{port_range}"),
            json!("--"),
        ];
        eg_argv.extend(ipy.as_array().unwrap().iter().cloned());
        write_spec(
            &specs,
            "py_eg",
            json!({"argv": eg_argv, "display_name": "EG style", "language": "python"}),
        );
        write_spec(
            &specs,
            "broken",
            json!({"argv": ["/nonexistent/kernel-binary", "{connection_file}"], "display_name": "broken", "language": "none"}),
        );
        // Runs "a launcher" (it takes {response_address}) that never reports: the launch times out.
        write_spec(
            &specs,
            "silent",
            json!({"argv": ["/bin/sh", "-c", "exec sleep 120", "{response_address}"], "display_name": "silent", "language": "none"}),
        );
        std::fs::write(specs.join("secret.txt"), b"secret").unwrap();
        std::fs::write(specs.join("py/logo-64x64.png"), b"\x89PNG").unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway-lite"));
        cmd.args(["--ip", "127.0.0.1"]);
        // Any free port, unless the test gives one (`--port` may be given once only).
        if !opts.args.iter().any(|a| a == "--port") {
            cmd.args(["--port", "0"]);
        }
        cmd.arg("--kernelspec-dir")
            .arg(&specs)
            .arg("--launcher")
            .arg(&launcher)
            .args(["--max-message-bytes", &opts.max_message_bytes.to_string()])
            .args(["--default-kernel-name", "py"])
            .env("JUPYTER_PATH", "")
            .env("JUPYTER_DATA_DIR", dir.join("data"))
            .env("GATEWAY_LITE_LOG", "info,gateway_lite=debug")
            .env_remove("GATEWAY_LITE_AUTH_TOKEN")
            .stdout(Stdio::piped())
            .args(&opts.args)
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("gateway.log"))
                    .unwrap(),
            );
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(t) = opts.token {
            // The environment, not the command line: `ps` shows arguments to every user.
            cmd.env("GATEWAY_LITE_AUTH_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("starting gateway-lite");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        // "gateway-lite listening on http[s]://127.0.0.1:PORT/[BASE/][?token=T]": a gateway
        // started without a token makes one and shows it here, once.
        let shown = line.trim().rsplit(' ').next().unwrap_or_default();
        let (url, query) = shown.split_once('?').unwrap_or((shown, ""));
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
        let port = authority
            .split('/')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "gateway did not print its address: {line:?}; log in {}",
                    dir.display()
                )
            });
        let printed = query.strip_prefix("token=").map(str::to_owned);
        Gateway {
            url: url.to_owned(),
            child: Some(child),
            port,
            token: opts.token.map(str::to_owned).or(printed),
            dir,
            keep_dir: false,
        }
    }

    /// Sends `signal` to the gateway, waits for it to exit and keeps its directory for a
    /// successor (`Options::dir`).
    pub fn stop_with(mut self, signal: nix::sys::signal::Signal) -> PathBuf {
        let child = self.child.as_mut().expect("a gateway this test started");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let _ = child.wait();
        self.keep_dir = true;
        self.dir.clone()
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("a gateway this test started")
            .id()
    }

    /// A client of a gateway started elsewhere (a container) that listens on
    /// 127.0.0.1:`port`; its log is not in a file here.
    pub fn external(port: u16, token: &str) -> Gateway {
        Gateway {
            url: format!("http://127.0.0.1:{port}/"),
            child: None,
            port,
            token: Some(token.to_owned()),
            dir: std::env::temp_dir().join(format!("gl-it-external-{}", uuid::Uuid::new_v4())),
            keep_dir: true,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Waits (up to [`WAIT`]) until the log contains `needle`: a line about something a test
    /// has just seen happen can be written a moment after it happened.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never said {needle:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a long cell on `c`, interrupts kernel `id` through the REST API and checks the
    /// cell ends with KeyboardInterrupt.
    pub async fn interrupt_sleeping_cell(&self, id: &str, c: &mut KernelClient) {
        let sleep_id = c.start_sleep().await;
        let (status, _, body) = self
            .http("POST", &format!("/api/kernels/{id}/interrupt"), None)
            .await;
        assert_eq!(status, 204, "{body}");
        assert_eq!(c.collect(&sleep_id).await.ename, "KeyboardInterrupt");
    }

    /// One HTTP request; returns status, headers (lower-case names) and body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, HashMap<String, String>, String) {
        self.raw(method, path, &self.auth_header(), body).await
    }

    fn auth_header(&self) -> String {
        self.token
            .as_ref()
            .map(|t| format!("Authorization: token {t}\r\n"))
            .unwrap_or_default()
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        extra_headers: &str,
        body: Option<&str>,
    ) -> (u16, HashMap<String, String>, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let req = request_text(method, path, extra_headers, body.unwrap_or(""), true);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("HTTP response in time")
            .unwrap();
        parse_response(&buf)
    }

    /// Sends a request and hangs up on it as `how` says, without waiting for the response.
    /// Tells what came back: a response that had begun to arrive before the hang-up (then the
    /// client stays to read it: it was too late to hang up), or one sent after a
    /// [`Close::Shutdown`].
    pub async fn hang_up(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        how: HangUp,
    ) -> HungUp {
        let body = body.unwrap_or("");
        let req = request_text(
            method,
            path,
            &self.auth_header(),
            body,
            how.connection_close,
        );
        // Short of the end: half of the body, or the blank line that ends the head.
        let end = match (how.whole, body.len()) {
            (true, _) => req.len(),
            (false, 0) => req.len() - 2,
            (false, n) => req.len() - n.div_ceil(2),
        };
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        s.write_all(&req.as_bytes()[..end]).await.unwrap();
        tokio::time::sleep(how.after).await;
        let mut early = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = s.try_read(&mut chunk) {
            early.extend_from_slice(&chunk[..n]);
        }
        if !early.is_empty() {
            // The end of the write side ends a kept-alive connection after the response.
            let _ = s.shutdown().await;
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut early))
                .await
                .expect("rest of the HTTP response in time");
            return HungUp {
                before: Some(parse_response(&early)),
                after: None,
                waited: Duration::ZERO,
            };
        }
        let hung_up = std::time::Instant::now();
        let mut after = None;
        match how.close {
            Close::Fin => drop(s),
            Close::Reset => {
                s.set_zero_linger().unwrap();
                drop(s);
            }
            Close::Shutdown => {
                let _ = s.shutdown().await;
                let mut late = Vec::new();
                let read = tokio::time::timeout(WAIT, s.read_to_end(&mut late))
                    .await
                    .expect("the gateway answers or closes after a hang-up");
                if read.is_ok() && !late.is_empty() {
                    after = Some(parse_response(&late));
                }
            }
        }
        HungUp {
            before: None,
            after,
            waited: hung_up.elapsed(),
        }
    }

    pub async fn json(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, _, text) = self.http(method, path, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Starts a kernel of `spec`; panics unless 201.
    pub async fn start_kernel(&self, spec: &str) -> String {
        let (status, h, body) = self
            .http(
                "POST",
                "/api/kernels",
                Some(&json!({"name": spec}).to_string()),
            )
            .await;
        assert_eq!(status, 201, "start {spec}: {body}\n{}", self.log());
        let model: Value = serde_json::from_str(&body).unwrap();
        let id = model["id"].as_str().unwrap().to_owned();
        assert_eq!(
            h.get("location").map(String::as_str),
            Some(format!("/api/kernels/{id}").as_str())
        );
        for key in ["name", "last_activity", "execution_state", "connections"] {
            assert!(model.get(key).is_some(), "model lacks {key}: {model}");
        }
        id
    }

    pub async fn connect(&self, kernel_id: &str, v1: bool) -> KernelClient {
        self.try_connect(kernel_id, v1)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Gateway::connect`], but a failed or late handshake is an error, not a panic.
    pub async fn try_connect(&self, kernel_id: &str, v1: bool) -> Result<KernelClient, String> {
        let header_session = uuid::Uuid::new_v4().to_string();
        self.try_open(kernel_id, "it", &header_session, v1).await
    }

    /// Connects with `?session_id=<session>`; the client also uses `session` in its message
    /// headers, as JupyterLab does.
    pub async fn connect_as(&self, kernel_id: &str, session: &str, v1: bool) -> KernelClient {
        self.open(kernel_id, session, session, v1).await
    }

    async fn open(
        &self,
        kernel_id: &str,
        session_id: &str,
        header_session: &str,
        v1: bool,
    ) -> KernelClient {
        self.try_open(kernel_id, session_id, header_session, v1)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn try_open(
        &self,
        kernel_id: &str,
        session_id: &str,
        header_session: &str,
        v1: bool,
    ) -> Result<KernelClient, String> {
        let url = format!(
            "ws://127.0.0.1:{}/api/kernels/{kernel_id}/channels?session_id={session_id}",
            self.port
        );
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert("Authorization", format!("token {t}").parse().unwrap());
        }
        if v1 {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "v1.kernel.websocket.jupyter.org".parse().unwrap(),
            );
        }
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| "websocket connect in time".to_owned())?
            .map_err(|e| format!("websocket connect: {e}"))?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        if v1 {
            assert_eq!(chosen.as_deref(), Some("v1.kernel.websocket.jupyter.org"));
        } else {
            assert!(chosen.is_none());
        }
        Ok(KernelClient {
            ws,
            v1,
            session: header_session.to_owned(),
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("gateway log kept in {}", self.dir.display());
        } else if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn request_text(
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &str,
    connection_close: bool,
) -> String {
    let connection = if connection_close {
        "Connection: close\r\n"
    } else {
        ""
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}{extra_headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Status, headers (lower-case names) and body of an HTTP response.
pub fn parse_response(buf: &[u8]) -> (u16, HashMap<String, String>, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, headers, body)
}

/// How a client hangs up on a request it sent ([`Gateway::hang_up`]).
#[derive(Debug, Clone, Copy)]
pub struct HangUp {
    /// Time between writing the request and hanging up.
    pub after: Duration,
    /// Send the whole request; else stop short of its end, so the gateway never has all of it.
    pub whole: bool,
    /// Send `Connection: close`, as urllib and tornado's simple HTTP client do; else the
    /// connection is kept alive (HTTP/1.1's default, as browsers do).
    pub connection_close: bool,
    pub close: Close,
}

/// How the client side of a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// `close()`: a FIN.
    Fin,
    /// `close()` with `SO_LINGER` 0: an RST.
    Reset,
    /// `shutdown(SHUT_WR)`: a FIN, but the client still reads, so a response sent after the
    /// hang-up is seen. Until it writes, the gateway cannot tell this from [`Close::Fin`].
    Shutdown,
}

/// What came back on a request the client hung up on.
#[derive(Debug)]
pub struct HungUp {
    /// A response that had begun to arrive before the hang-up (the client read it instead).
    pub before: Option<(u16, HashMap<String, String>, String)>,
    /// A response sent after a [`Close::Shutdown`].
    pub after: Option<(u16, HashMap<String, String>, String)>,
    /// From the hang-up to the end of the connection ([`Close::Shutdown`]).
    pub waited: Duration,
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n.min(tail.len())]);
        rest = tail.get(n + 2..).unwrap_or("");
    }
    out
}
