//! Kernel images under test or benchmark: one container per [`KernelRun`], started the way
//! Enterprise Gateway's Docker launchers start kernels (environment only, `--user`), on a Docker
//! network of its own whose host address is the response address, with a real response
//! listener and RSA key. Container and network share one unique name and are removed on drop.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use protocol::payload::{LaunchReport, PrivateKey};

use crate::{accept_payload, open_payload, required_path};

/// A generous guard for a container to exit (a JVM's shutdown included).
const EXIT_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `docker ARGS`.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker ({e}): these tests need Docker Engine"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One kernel container on a network of its own, and a response listener on the host's address
/// on that network; both container and network (one unique name) are removed when the test
/// ends, passed or failed.
pub struct KernelRun {
    /// The container's (and its network's) name; also its KERNEL_ID.
    pub name: String,
    key: PrivateKey,
    listener: TcpListener,
    address: String,
}

impl KernelRun {
    /// A network and a listener; nothing is started yet.
    pub fn create() -> KernelRun {
        let out = docker(&["info", "--format", "{{.ServerVersion}}"]);
        assert!(
            out.status.success(),
            "the Docker daemon is not usable: {}",
            text(&out)
        );
        let tag = rand_u64();
        let name = format!("kl-e2e-img-{tag:016x}");
        // A network of its own, on a free /24 of 10.0.0.0/8 picked at random (Docker refuses
        // overlapping pools), so the host's address on it is known: the response address.
        let mut last = String::new();
        for attempt in 0..40u64 {
            let n = tag.wrapping_add(attempt * 7919);
            let (b, c) = (100 + n % 150, (n / 150) % 256);
            let host = format!("10.{b}.{c}.1");
            let out = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &format!("10.{b}.{c}.0/24"),
                "--gateway",
                &host,
                &name,
            ]);
            if out.status.success() {
                let listener = TcpListener::bind((host.as_str(), 0)).unwrap();
                let address = format!("{host}:{}", listener.local_addr().unwrap().port());
                return KernelRun {
                    name,
                    key: PrivateKey::generate(1024).unwrap(),
                    listener,
                    address,
                };
            }
            last = text(&out);
        }
        panic!("cannot create a docker network: {last}");
    }

    /// `docker run -d --user USER` with EG's launch variables and `env`.
    pub fn start(&self, image: &str, user: &str, env: &[(&str, &str)]) {
        self.start_with(image, &["--user", user], env, &[]);
    }

    /// What EG 3.3's `launch_docker.py` does: `user=KERNEL_UID` (a bare uid, so the image's
    /// passwd decides the primary group), `group_add=[KERNEL_GID, "100"]`, and the environment
    /// of the gateway's launch (all of it but PATH, so also the gateway's own HOME) plus the
    /// launch variables and `env`. KERNEL_UID / KERNEL_GID default to EG's 1000 / 100.
    pub fn start_like_eg(&self, image: &str, env: &[(&str, &str)]) {
        let get = |k: &str, default: &'static str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map_or(default, |(_, v)| *v)
                .to_string()
        };
        let (uid, gid) = (get("KERNEL_UID", "1000"), get("KERNEL_GID", "100"));
        let mut all = vec![
            ("KERNEL_UID", uid.as_str()),
            ("KERNEL_GID", gid.as_str()),
            ("HOME", "/home/gateway-operator"),
        ];
        all.extend(
            env.iter()
                .filter(|(n, _)| *n != "KERNEL_UID" && *n != "KERNEL_GID"),
        );
        self.start_with(
            image,
            &["--user", &uid, "--group-add", &gid, "--group-add", "100"],
            &all,
            &[],
        );
    }

    /// `docker run -d DOCKER_ARGS` with EG's launch variables and `env`, and `command` after
    /// the image.
    pub fn start_with(
        &self,
        image: &str,
        docker_args: &[&str],
        env: &[(&str, &str)],
        command: &[&str],
    ) {
        let mut args: Vec<String> = ["run", "-d", "--name", &self.name, "--network", &self.name]
            .iter()
            .chain(docker_args)
            .map(|s| s.to_string())
            .collect();
        let public_key = self.key.public_key().to_eg_string();
        let mut all = vec![
            ("KERNEL_ID", self.name.as_str()),
            ("RESPONSE_ADDRESS", self.address.as_str()),
            ("PUBLIC_KEY", public_key.as_str()),
            ("PORT_RANGE", "0..0"),
            ("KERNEL_USERNAME", "e2e"),
        ];
        all.extend_from_slice(env);
        for (k, v) in all {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.push(image.into());
        args.extend(command.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker(&args);
        assert!(out.status.success(), "docker run failed: {}", text(&out));
    }

    pub fn payload(&self) -> LaunchReport {
        open_payload(&self.key, &accept_payload(&self.listener))
    }

    pub fn logs(&self) -> String {
        text(&docker(&["logs", &self.name]))
    }

    /// Waits for the container to exit; its exit code.
    pub fn exit_code(&self) -> i64 {
        let deadline = Instant::now() + EXIT_PATIENCE;
        loop {
            let out = docker(&[
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
                &self.name,
            ]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some(code) = state.strip_prefix("false ") {
                return code.parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "container {} still running after {EXIT_PATIENCE:?} ({state}):\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the `cells` in the kernel the payload describes, then shuts it down over ZMQ;
    /// returns their text outputs, one line each. A cell written `INTERRUPT:<code>` is
    /// interrupted as a gateway interrupts (`{"signum": 2}` to the comm port) two seconds after
    /// it started; its line is then the error's name.
    pub fn execute_and_shut_down(&self, report: &LaunchReport, cells: &[&str]) -> String {
        let python = required_path(
            "KL_PY_KERNEL",
            "run scripts/setup-env.sh and source ~/.cache/kernel-launcher/env.sh",
        );
        let dir = std::env::temp_dir().join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        let conn = dir.join("conn.json");
        std::fs::write(&conn, report.connection.to_json_pretty()).unwrap();
        let out = Command::new(python)
            .args(["-c", CLIENT])
            .arg(&conn)
            .arg(
                report
                    .comm_port
                    .expect("the payload names a comm port")
                    .to_string(),
            )
            .args(cells)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "the client failed: {}\ncontainer log:\n{}",
            text(&out),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for KernelRun {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// jupyter_client: connect, wait for the kernel, execute argv[3:] one by one (interrupting
/// `INTERRUPT:` cells through the comm port argv[2]), print each cell's text output (or an
/// interrupted cell's error name) on a line, shut the kernel down (a shutdown_request, as a
/// gateway sends).
const CLIENT: &str = r#"
import json, socket, sys, time
from jupyter_client import BlockingKernelClient
c = BlockingKernelClient()
c.load_connection_file(sys.argv[1])
comm = (c.ip, int(sys.argv[2]))
c.start_channels(hb=False)
c.wait_for_ready(timeout=300)
for code in sys.argv[3:]:
    interrupt = code.startswith("INTERRUPT:")
    code = code[len("INTERRUPT:"):] if interrupt else code
    msg_id = c.execute(code)
    out, errors, deadline = [], [], time.time() + 600
    while True:
        m = c.get_iopub_msg(timeout=max(1, deadline - time.time()))
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        t, x = m["msg_type"], m["content"]
        if t in ("execute_result", "display_data"):
            out.append(x["data"].get("text/plain", ""))
        elif t == "stream":
            out.append(x["text"])
        elif t == "error" and interrupt:
            errors.append(x["ename"])
        elif t == "error":
            sys.exit("cell %r failed: %s: %s" % (code, x["ename"], x["evalue"]))
        elif t == "status" and x["execution_state"] == "busy" and interrupt:
            time.sleep(2)
            with socket.create_connection(comm, timeout=10) as s:
                s.sendall(json.dumps({"signum": 2}).encode())
        elif t == "status" and x["execution_state"] == "idle":
            break
    print(" ".join(errors) if interrupt else "".join(out).strip())
c.shutdown()
"#;

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b)
}
