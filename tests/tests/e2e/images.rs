//! The kernel images (images/*/build.sh) run the way Enterprise Gateway's Docker launchers run
//! them: `docker run` with environment only (KERNEL_ID, RESPONSE_ADDRESS, PUBLIC_KEY,
//! KERNEL_UID, ...) and `--user KERNEL_UID`, no command. A real response listener receives and
//! decrypts the payload, jupyter_client (from `$KL_PY_KERNEL`) connects to the ports it names,
//! runs one cell and shuts the kernel down; the container must then exit 0 and nothing of the
//! test may be left. Images come from KL_KERNEL_IMAGE, KL_R_KERNEL_IMAGE,
//! KL_SPARK_KERNEL_IMAGE and KL_SCALA_KERNEL_IMAGE (scripts/test.sh builds and exports them); a
//! missing one fails the test with the command that builds it.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::{accept_payload, open_payload, required_path};
use protocol::payload::{LaunchReport, PrivateKey};

/// A generous guard for a container to exit (a JVM's shutdown included).
const EXIT_PATIENCE: Duration = Duration::from_secs(120);

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker ({e}): these tests need Docker Engine"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The image named by `var`; a missing variable is a failure, not a skip.
fn image(var: &str, script: &str) -> String {
    match std::env::var(var) {
        Ok(i) if !i.trim().is_empty() => i.trim().to_string(),
        _ => panic!(
            "{var} is not set: build the image with `{var}=$({script} | tail -n 1)` (scripts/test.sh does) and export it"
        ),
    }
}

/// One kernel container on a network of its own, and a response listener on the host's address
/// on that network; both container and network (one unique name) are removed when the test
/// ends, passed or failed.
struct Run {
    name: String,
    key: PrivateKey,
    listener: TcpListener,
    address: String,
}

impl Run {
    fn new() -> Run {
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
                return Run {
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

    /// `docker run -d` with EG's environment; `user` is `--user`, `env` extra variables.
    fn start(&self, image: &str, user: &str, env: &[(&str, &str)]) {
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &self.name,
            "--network",
            &self.name,
            "--user",
            user,
        ]
        .iter()
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
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker(&args);
        assert!(out.status.success(), "docker run failed: {}", text(&out));
    }

    fn payload(&self) -> LaunchReport {
        open_payload(&self.key, &accept_payload(&self.listener))
    }

    fn logs(&self) -> String {
        text(&docker(&["logs", &self.name]))
    }

    /// Waits for the container to exit; its exit code.
    fn exit_code(&self) -> i64 {
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

    /// Runs `code` in the kernel the payload describes, then shuts it down over ZMQ; returns
    /// the cell's text output.
    fn execute_and_shut_down(&self, report: &LaunchReport, code: &str) -> String {
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
            .arg(code)
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

impl Drop for Run {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// jupyter_client: connect, wait for the kernel, execute argv[2], print its text output,
/// shut the kernel down (a shutdown_request, as a gateway sends).
const CLIENT: &str = r#"
import sys, time
from jupyter_client import BlockingKernelClient
c = BlockingKernelClient()
c.load_connection_file(sys.argv[1])
c.start_channels(hb=False)
c.wait_for_ready(timeout=300)
msg_id = c.execute(sys.argv[2])
out, deadline = [], time.time() + 600
while True:
    m = c.get_iopub_msg(timeout=max(1, deadline - time.time()))
    if m["parent_header"].get("msg_id") != msg_id:
        continue
    t, x = m["msg_type"], m["content"]
    if t in ("execute_result", "display_data"):
        out.append(x["data"].get("text/plain", ""))
    elif t == "stream":
        out.append(x["text"])
    elif t == "error":
        sys.exit("cell failed: %s: %s" % (x["ename"], x["evalue"]))
    elif t == "status" and x["execution_state"] == "idle":
        break
print("".join(out))
c.shutdown()
"#;

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b)
}

/// EG's way: environment only, `--user KERNEL_UID:KERNEL_GID`; one cell; shutdown; exit 0.
fn cell_in(image: &str, code: &str, extra_env: &[(&str, &str)]) -> String {
    let run = Run::new();
    let mut env = vec![("KERNEL_UID", "1000"), ("KERNEL_GID", "100")];
    env.extend_from_slice(extra_env);
    run.start(image, "1000:100", &env);
    let report = run.payload();
    assert_eq!(report.kernel_id, run.name);
    let output = run.execute_and_shut_down(&report, code);
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
    let name = run.name.clone();
    drop(run);
    let left = docker(&["ps", "-aq", "--filter", &format!("name={name}")]);
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "container {name} left behind"
    );
    output
}

#[test]
fn python_kernel_image_runs_a_cell() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let out = cell_in(
        &image,
        "import os; print('py', os.getuid(), os.getgid())",
        &[],
    );
    assert_eq!(out, "py 1000 100");
}

#[test]
fn r_kernel_image_runs_a_cell() {
    let image = image("KL_R_KERNEL_IMAGE", "images/r-kernel/build.sh");
    assert_eq!(cell_in(&image, "cat(1+1)", &[]), "2");
}

#[test]
fn spark_python_kernel_image_counts_with_spark() {
    let image = image(
        "KL_SPARK_KERNEL_IMAGE",
        "images/spark-python-kernel/build.sh",
    );
    let out = cell_in(
        &image,
        "print(spark.range(10).count(), spark.sparkContext.master)",
        &[],
    );
    assert_eq!(out, "10 local[*]");
}

#[test]
fn scala_kernel_image_adds_in_scala() {
    let image = image("KL_SCALA_KERNEL_IMAGE", "images/scala-kernel/build.sh");
    let out = cell_in(&image, "1 + 1", &[]);
    assert!(out == "2" || out.ends_with("= 2"), "Toree answered {out:?}");
}

/// A uid the image does not know (no passwd entry, HOME not its own) still gets a kernel,
/// with a private writable HOME.
#[test]
fn python_kernel_image_runs_as_an_unknown_uid() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let run = Run::new();
    run.start(&image, "4242:100", &[]);
    let report = run.payload();
    let out = run.execute_and_shut_down(
        &report,
        "import os; h = os.environ['HOME']; print(os.getuid(), h != '/home/jovyan', os.access(h, os.W_OK))",
    );
    assert_eq!(out, "4242 True True", "{}", run.logs());
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
    assert!(run.logs().contains("private HOME"), "{}", run.logs());
}

/// Started as root, the launcher switches to KERNEL_UID / KERNEL_GID before the kernel runs.
#[test]
fn python_kernel_image_started_as_root_switches_to_kernel_uid() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let run = Run::new();
    run.start(
        &image,
        "0:0",
        &[("KERNEL_UID", "4242"), ("KERNEL_GID", "4343")],
    );
    let report = run.payload();
    let out = run.execute_and_shut_down(
        &report,
        "import os; print(os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))",
    );
    assert_eq!(out, "4242 4242 4343 [100, 4343]", "{}", run.logs());
    assert_eq!(run.exit_code(), 0, "{}", run.logs());
}

/// KERNEL_UID=0 is refused with exit code 77 and a message saying why; no payload is sent.
#[test]
fn kernel_uid_0_is_refused() {
    let image = image("KL_KERNEL_IMAGE", "images/python-kernel/build.sh");
    let run = Run::new();
    run.start(&image, "0:0", &[("KERNEL_UID", "0"), ("KERNEL_GID", "0")]);
    assert_eq!(run.exit_code(), 77, "{}", run.logs());
    assert!(run.logs().contains("never run as root"), "{}", run.logs());
}
