//! The kernel ports stay held by the launcher while the kernel runs: a real
//! pyzmq kernel can still bind them, while nothing else is handed them, by
//! port-0 binds or by another launcher's `--port-range` search.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use nix::sys::signal::Signal;
use protocol::payload::LaunchReport;

use crate::support::*;

fn kernel_ports(report: &LaunchReport) -> Vec<u16> {
    let c = &report.connection;
    vec![
        c.shell_port,
        c.iopub_port,
        c.stdin_port,
        c.control_port,
        c.hb_port,
    ]
}

/// A kernel that does nothing until it is signalled.
fn idle_kernel() -> [&'static str; 3] {
    ["--", "sleep", "600"]
}

/// A launcher that is terminated if the test fails before stopping it.
struct Running {
    child: Child,
    dir: PathBuf,
    stopped: bool,
}

impl Running {
    fn start(cmd: &mut Command, dir: &Path) -> Self {
        Running {
            child: spawn_logged(cmd, dir),
            dir: dir.to_path_buf(),
            stopped: false,
        }
    }

    fn stop(mut self) {
        self.stopped = true;
        send_signal(self.child.id(), Signal::SIGTERM);
        assert_eq!(
            wait_code(&mut self.child),
            128 + 15,
            "{}",
            log_of(&self.dir)
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.stopped {
            send_signal(self.child.id(), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// Binds a pyzmq ROUTER on each of the five ports as ipykernel does, then
/// writes "ok" (or the error) to the file named by argv[2] and idles.
const PYZMQ_KERNEL: &str = r#"
import json, sys, time, zmq
c = json.load(open(sys.argv[1]))
ctx = zmq.Context()
socks = []
try:
    for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
        s = ctx.socket(zmq.ROUTER)
        s.bind("tcp://%s:%d" % (c["ip"], c[name]))
        socks.append(s)
    result = "ok"
except Exception as e:
    result = "%s: %s" % (type(e).__name__, e)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(result)
import os
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(600)
"#;

#[test]
fn pyzmq_binds_the_held_ports() {
    let python = kernel_python();
    let dir = scratch("ports-pyzmq");
    let gw = Gateway::new();
    let result = dir.join("bind-result");
    let mut cmd = launcher();
    cmd.args(gw.options("k-ports-pyzmq"))
        .arg(dir.join("conn.json"))
        .args(["--", &python, "-c", PYZMQ_KERNEL, "{connection_file}"])
        .arg(&result);
    let launcher = Running::start(&mut cmd, &dir);
    let report = gw.receive();
    eventually("the pyzmq kernel tried its binds", || result.exists());
    let outcome = std::fs::read_to_string(&result).unwrap();
    assert_eq!(outcome, "ok", "launcher log:\n{}", log_of(&dir));
    // The kernel's listeners (not the launcher's held sockets, which never
    // listen) accept connections.
    for port in kernel_ports(&report) {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to kernel port {port}: {e}"));
    }
    launcher.stop();
}

#[test]
fn port_zero_binds_are_never_handed_a_port_of_a_starting_kernel() {
    // The kernel never binds its ports, as if it were still starting up.
    let dir = scratch("ports-storm");
    let gw = Gateway::new();
    let mut cmd = launcher();
    cmd.args(gw.options("k-ports-storm"))
        .arg(dir.join("conn.json"))
        .args(idle_kernel());
    let launcher = Running::start(&mut cmd, &dir);
    let held = kernel_ports(&gw.receive());
    // Each listener is dropped at once, so the autobind keeps roaming the
    // ephemeral range; released ports would be handed out almost surely.
    for _ in 0..20_000 {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            !held.contains(&port),
            "bind(0) was handed port {port} of a running launcher's kernel"
        );
    }
    launcher.stop();
}

#[test]
fn launchers_sharing_a_small_port_range_never_share_a_port() {
    // Room for exactly two launchers (outside the ephemeral range, so port-0
    // binds elsewhere cannot interfere); their kernels never bind, so only
    // the launchers' own holds keep the ports apart.
    let range = "31060..31071";
    let dir = scratch("ports-range");
    let start = |name: &str, gw: &Gateway| {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let mut cmd = launcher();
        cmd.env("MIN_PORT_RANGE_SIZE", "0")
            .args(gw.options(&format!("k-ports-{name}")))
            .args(["--port-range", range])
            .arg(sub.join("conn.json"))
            .args(idle_kernel());
        (Running::start(&mut cmd, &sub), sub)
    };
    let (gw_a, gw_b, gw_c) = (Gateway::new(), Gateway::new(), Gateway::new());
    let (a, _) = start("a", &gw_a);
    let report_a = gw_a.receive();
    let (b, _) = start("b", &gw_b);
    let report_b = gw_b.receive();
    let mut ports: Vec<u16> = kernel_ports(&report_a)
        .into_iter()
        .chain(kernel_ports(&report_b))
        .chain([report_a.comm_port.unwrap(), report_b.comm_port.unwrap()])
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 12, "{report_a:?}\n{report_b:?}");
    // Every port of the range is held now, so a third launcher finds none.
    let (mut c, dir_c) = start("c", &gw_c);
    c.stopped = true;
    assert_eq!(wait_code(&mut c.child), 71, "{}", log_of(&dir_c));
    assert!(
        log_of(&dir_c).contains("no free port left"),
        "{}",
        log_of(&dir_c)
    );
    a.stop();
    b.stop();
}
