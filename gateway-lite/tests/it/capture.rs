//! CurveZMQ seen on the wire: tcpdump records the loopback traffic between gateway-lite and a
//! real ipykernel (7.4, venv-lab) while a cell prints a random marker, and the capture is
//! searched for it. With a spec that supports curve and the gateway's default policy (auto),
//! the marker (and the cell's code) must appear nowhere in the capture, though the capture
//! holds the kernel's traffic and every ZMTP greeting on the kernel's ports names CURVE. With
//! encryption off (`--transport-encryption none`, or a spec without `supported_encryption`)
//! the same check finds the marker in the iopub stream: the search can fail.
//!
//! The gateway's own HTTP/WebSocket port is left out of the capture: the browser side carries
//! the cell's output in clear by design and is not what these tests are about. The cell builds
//! its marker from two halves, so the output (iopub) is told apart from the code (shell, and
//! iopub's execute_input), which holds only the halves.
//!
//! Needs root (tcpdump on `lo`); other tests may run kernels meanwhile, so whatever is checked
//! in detail is taken from the connections on this kernel's ports only. The capture and its
//! checks are shared with `ssh_curve`, which captures a remote host's veth instead.

use serde_json::{Value, json};

use protocol::zmtp::{Mechanism, parse_greeting};

use crate::support::tcpdump::{Capture, Pcap, contains};
use crate::support::{Gateway, Options, argv, eventually, lab_python, processes_of};

const CURVE_SPEC: &str = "lab_curve";
const PLAIN_SPEC: &str = "lab_plain";

/// Which port of the kernel each connection-file field names.
const PORT_FIELDS: [&str; 5] = [
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
];

/// A gateway whose spec directory also holds venv-lab kernels with and without curve.
fn gateway(args: &[&str]) -> Gateway {
    let dir = std::env::temp_dir().join(format!("gl-it-capture-{}", uuid::Uuid::new_v4()));
    let argv = json!([
        lab_python(),
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}"
    ]);
    for (name, spec) in [
        (
            CURVE_SPEC,
            json!({"argv": argv, "display_name": "Python (CurveZMQ)", "language": "python",
                "metadata": {"supported_encryption": ["curve"]}}),
        ),
        (
            PLAIN_SPEC,
            json!({"argv": argv, "display_name": "Python (ipykernel 7, no curve in the spec)",
                "language": "python"}),
        ),
    ] {
        let d = dir.join("specs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("kernel.json"), spec.to_string()).unwrap();
    }
    Gateway::start(Options {
        dir: Some(dir),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Options::default()
    })
}

/// The kernel's ports, from the connection file ipykernel was started with.
async fn kernel_ports(id: &str) -> Vec<(String, u16)> {
    eventually("the kernel's connection file read", async || {
        let file = processes_of(id).into_iter().find_map(|pid| {
            let a = argv(pid);
            if !a.iter().any(|x| x == "ipykernel_launcher") {
                return None;
            }
            let path = a.iter().skip_while(|x| *x != "-f").nth(1)?.clone();
            serde_json::from_slice::<Value>(&std::fs::read(path).ok()?).ok()
        });
        let ports: Vec<(String, u16)> = file
            .iter()
            .flat_map(|f| {
                PORT_FIELDS.iter().filter_map(|k| {
                    let p = f[*k].as_u64().and_then(|p| u16::try_from(p).ok())?;
                    Some((k.to_string(), p))
                })
            })
            .collect();
        (ports.len() == PORT_FIELDS.len(), ports)
    })
    .await
}

/// What one captured cell left on the wire.
pub(crate) struct Seen {
    pcap: Pcap,
    ports: Vec<(String, u16)>,
    model: Value,
    marker: String,
    half: String,
}

impl Seen {
    fn port(&self, field: &str) -> u16 {
        self.ports.iter().find(|(k, _)| k == field).unwrap().1
    }

    fn port_numbers(&self) -> Vec<u16> {
        self.ports.iter().map(|(_, p)| *p).collect()
    }

    /// Bytes the kernel's connections carried, both ways.
    fn kernel_bytes(&self) -> usize {
        self.pcap
            .streams(&self.port_numbers())
            .values()
            .map(Vec::len)
            .sum()
    }

    /// The mechanism of every whole ZMTP greeting at the start of a stream on the kernel's
    /// ports, with the kernel's port of that connection. (The launcher's probe sends only
    /// the first 11 bytes of one; it gives none.)
    fn greetings(&self) -> Vec<(u16, Mechanism)> {
        let ports = self.port_numbers();
        self.pcap
            .streams(&ports)
            .iter()
            .filter_map(|((src, dst), bytes)| {
                let kernel_end = if ports.contains(src) { *src } else { *dst };
                Some((kernel_end, parse_greeting(bytes).ok()?.mechanism))
            })
            .collect()
    }

    /// Whether the marker went out in clear from the kernel's iopub port.
    fn marker_in_iopub(&self) -> bool {
        let iopub = self.port("iopub_port");
        self.pcap
            .streams(&[iopub])
            .iter()
            .any(|((src, _), bytes)| *src == iopub && contains(bytes, self.marker.as_bytes()))
    }

    fn describe(&self) -> String {
        format!(
            "model {}; ports {:?}; {} bytes captured ({:?} packets dropped on {}), {} on the kernel's ports; greetings {:?}; tcpdump: {}",
            self.model,
            self.ports,
            self.pcap.bytes.len(),
            self.pcap.dropped(),
            self.pcap.iface,
            self.kernel_bytes(),
            self.greetings(),
            self.pcap.said.trim()
        )
    }
}

/// A capture of `lo`: all TCP but the gateway's own port.
fn on_lo(gw: &Gateway) -> Capture {
    Capture::start(&gw.dir.join("lo.pcap"), gw.port)
}

/// With `capture` running, starts a kernel of `spec` and runs a cell that prints a fresh
/// marker 20 times; stops the capture, then deletes the kernel.
pub(crate) async fn capture_cell(gw: &Gateway, spec: &str, capture: Capture) -> Seen {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let (a, b) = marker.split_at(16);
    let id = gw.start_kernel(spec).await;
    let mut c = gw.connect(&id, false).await;
    let out = c
        .execute(&format!(
            "m = '{a}' + '{b}'\nfor _ in range(20):\n    print(m)"
        ))
        .await;
    assert_eq!(
        (out.text, out.status.as_str()),
        (format!("{marker}\n").repeat(20), "ok"),
        "the cell's output reached the client"
    );
    let (_, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    let ports = kernel_ports(&id).await;
    let pcap = capture.stop();
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    Seen {
        pcap,
        ports,
        model,
        half: a.to_owned(),
        marker,
    }
}

/// The capture holds this kernel's traffic, all of it: more than 1 KB on its ports, requests
/// to its shell port, output from its iopub port, and no connection on its ports with bytes
/// missing (tcpdump's drop count is for the whole interface, which other tests may share).
fn assert_kernel_traffic(seen: &Seen) {
    let ports = seen.port_numbers();
    let streams = seen.pcap.streams(&ports);
    let (shell, iopub) = (seen.port("shell_port"), seen.port("iopub_port"));
    assert!(
        seen.kernel_bytes() > 1024
            && streams.keys().any(|(_, dst)| *dst == shell)
            && streams.keys().any(|(src, _)| *src == iopub),
        "the capture missed the kernel's traffic: {}",
        seen.describe()
    );
    assert_eq!(
        seen.pcap.incomplete(&ports),
        Vec::<String>::new(),
        "the capture lost some of the kernel's traffic: {}",
        seen.describe()
    );
}

/// Every whole greeting on the kernel's ports names `want`, on shell and iopub at least.
fn assert_mechanism(seen: &Seen, want: Mechanism) {
    let greetings = seen.greetings();
    let on = |port: u16| greetings.iter().any(|(p, _)| *p == port);
    assert!(
        on(seen.port("shell_port"))
            && on(seen.port("iopub_port"))
            && greetings.iter().all(|(_, m)| *m == want),
        "every ZMTP greeting should name {}: {}",
        want.name(),
        seen.describe()
    );
}

/// The checks of a CurveZMQ kernel's capture: model "curve", the kernel's traffic captured in
/// full, neither the marker (output) nor a half of it (code) anywhere in the capture, CURVE
/// in every greeting on its ports.
pub(crate) fn assert_hidden(seen: &Seen) {
    assert_eq!(
        seen.model["transport_encryption"],
        "curve",
        "{}",
        seen.describe()
    );
    assert_kernel_traffic(seen);
    let wire = &seen.pcap.iface;
    assert!(
        !contains(&seen.pcap.bytes, seen.marker.as_bytes()),
        "the cell's output is readable on {wire}: {}",
        seen.describe()
    );
    assert!(
        !contains(&seen.pcap.bytes, seen.half.as_bytes()),
        "the cell's code is readable on {wire}: {}",
        seen.describe()
    );
    assert_mechanism(seen, Mechanism::Curve);
}

/// The checks of a clear-text kernel's capture (the control of [`assert_hidden`]): model
/// "none", the kernel's traffic captured in full, the marker readable in its iopub stream,
/// NULL greetings.
pub(crate) fn assert_readable(seen: &Seen) {
    assert_eq!(
        seen.model["transport_encryption"],
        "none",
        "{}",
        seen.describe()
    );
    assert_kernel_traffic(seen);
    assert!(
        seen.marker_in_iopub(),
        "the clear-text output should be in the capture: {}",
        seen.describe()
    );
    assert_mechanism(seen, Mechanism::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn curve_kernel_traffic_hides_the_cell_output() {
    let gw = gateway(&[]);
    assert_hidden(&capture_cell(&gw, CURVE_SPEC, on_lo(&gw)).await);
}

/// Runs the marker cell on `spec` under a gateway with `args` and checks the kernel's channels
/// were clear text.
async fn assert_clear_text(args: &[&str], spec: &str) {
    let gw = gateway(args);
    assert_readable(&capture_cell(&gw, spec, on_lo(&gw)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn encryption_off_shows_the_cell_output() {
    assert_clear_text(&["--transport-encryption", "none"], CURVE_SPEC).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_without_curve_stays_clear_text() {
    assert_clear_text(&[], PLAIN_SPEC).await;
}
