//! Shared test fixtures: a stand-in gateway response listener (using our own
//! `protocol` decryption; EG's real one is exercised in tests/eg), launcher
//! processes, and polling helpers with generous hang-guards.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use e2e::{PATIENCE, accept_payload, eventually, open_payload};
use protocol::payload::{LaunchReport, PrivateKey};

pub fn launcher() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kernel-launcher"));
    without_gateway_env(&mut c);
    c
}

/// Keeps the test runner's gateway variables (if any) out of a launcher's environment.
pub fn without_gateway_env(c: &mut Command) {
    c.env_remove("KERNEL_ID")
        .env_remove("RESPONSE_ADDRESS")
        .env_remove("EG_RESPONSE_ADDRESS")
        .env_remove("PUBLIC_KEY")
        .env_remove("EG_PUBLIC_KEY")
        .env_remove("PORT_RANGE")
        .env_remove("EG_PORT_RANGE")
        .env_remove("PYSPARK_GATEWAY_PORT")
        .env_remove("KERNEL_UID")
        .env_remove("KERNEL_GID")
        .env("LOG_LEVEL", "debug");
}

/// A fresh private directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kl-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The python that has ipykernel (set up by scripts/setup-env.sh).
pub fn kernel_python() -> String {
    match std::env::var("KL_PY_KERNEL") {
        Ok(p) if Path::new(&p).exists() => p,
        _ => panic!(
            "KL_PY_KERNEL must name a python with ipykernel and jupyter_client; run scripts/setup-env.sh and source $HOME/.cache/kernel-launcher/env.sh"
        ),
    }
}

/// A python whose ipykernel binds CurveZMQ servers from curve keys in its connection file
/// (ipykernel 7.4, jupyter_client 8.10: venv-lab, set up by scripts/setup-env.sh).
pub fn curve_python() -> String {
    match std::env::var("KL_PY_LAB") {
        Ok(p) if Path::new(&p).exists() => p,
        _ => panic!(
            "KL_PY_LAB must name a python with ipykernel >= 7.3 (CurveZMQ); run scripts/setup-env.sh and source $HOME/.cache/kernel-launcher/env.sh"
        ),
    }
}

/// A stand-in for the gateway's response listener.
pub struct Gateway {
    listener: TcpListener,
    key: PrivateKey,
}

impl Gateway {
    pub fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Gateway {
            listener,
            key: PrivateKey::generate(1024).unwrap(),
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.listener.local_addr().unwrap().port())
    }

    pub fn public_key(&self) -> String {
        self.key.public_key().to_eg_string()
    }

    /// The EG options for `kernel_id`, in the plain form.
    pub fn options(&self, kernel_id: &str) -> Vec<String> {
        vec![
            "--kernel-id".into(),
            kernel_id.into(),
            "--response-address".into(),
            self.address(),
            "--public-key".into(),
            self.public_key(),
        ]
    }

    /// Waits for one payload, reads it to EOF and decrypts it.
    pub fn receive(&self) -> LaunchReport {
        open_payload(&self.key, &accept_payload(&self.listener))
    }

    /// Waits for one payload and returns it as sent, and decrypted.
    pub fn receive_raw(&self) -> (Vec<u8>, LaunchReport) {
        let bytes = accept_payload(&self.listener);
        let report = open_payload(&self.key, &bytes);
        (bytes, report)
    }

    /// True if a second payload arrives within `wait`.
    pub fn receives_again(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Sends one raw request to a comm port; Err if the connect is refused.
pub fn comm_send(port: u16, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(bytes)?;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}

/// Sends one raw request to a comm port and reads the launcher's answer until it closes
/// (empty for every request but a `shutdown` it obeys).
pub fn comm_answer(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the comm port listens");
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .expect("the launcher closes the connection");
    answer
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits for a child to exit and returns its exit code (or 128+signal).
pub fn wait_code(child: &mut Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("launcher did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn send_signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// Spawns the launcher with stderr captured into a file in `dir`.
pub fn spawn_logged(cmd: &mut Command, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("launcher.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("launcher.log")).unwrap_or_default()
}
