//! CurveZMQ on the remote path: a kernelspec of the SSH provisioner (EG's
//! `DistributedProcessProxy`) whose kernel is ipykernel 7.4 (venv-lab) and whose metadata lists
//! "curve", run on a "remote host" of [`crate::ssh`] (a network namespace with its own sshd),
//! so the gateway's ZMQ connections cross the namespace's veth as they would cross a network.
//!
//! The kernel starts over CurveZMQ (201, model "curve"), runs a cell, is interrupted over its
//! encrypted control channel and is deleted leaving nothing on its host. Then tcpdump, run
//! inside the namespace on its end of the veth (what anyone on that host could record), holds
//! the traffic of a cell printing a random marker: the marker is nowhere in it with CurveZMQ,
//! and is in the kernel's iopub stream for the same spec under `--transport-encryption none`,
//! so the search can fail. The capture and its checks are [`crate::capture`]'s.
//!
//! Needs what [`crate::ssh`] needs (root, `ip`, `sshd`, `ssh-keygen`), venv-lab and tcpdump;
//! a missing piece fails the test with the fix rather than skipping it.

use serde_json::{Value, json};

use crate::capture::{Seen, assert_hidden, assert_readable, capture_cell};
use crate::curve::{connection_file, transport_encryption};
use crate::ssh::{Hosts, kernel_ns, wait_gone};
use crate::support::tcpdump::Capture;
use crate::support::{Gateway, Options, lab_python};

const SPEC: &str = "dist_curve";

/// Adds the CurveZMQ spec to the hosts' spec directory: ipykernel 7.4, pinned to host 0 (so
/// the test knows whose veth its traffic crosses), message interrupts (so an interrupt goes
/// over the encrypted control channel, not through the launcher's comm port).
fn write_spec(hosts: &Hosts) {
    let d = hosts.dir.join("specs").join(SPEC);
    std::fs::create_dir_all(&d).unwrap();
    let spec = json!({
        "argv": [lab_python(), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python on a remote host (CurveZMQ)",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "process_proxy": {
                "class_name": crate::ssh::DPP,
                "config": {"remote_hosts": hosts.alias(0)},
            },
            "supported_encryption": ["curve"],
        },
    });
    std::fs::write(d.join("kernel.json"), spec.to_string()).unwrap();
}

/// Two hosts with the CurveZMQ spec, and a gateway for them with `args`.
fn start(args: &[&str]) -> (Hosts, Gateway) {
    let hosts = Hosts::start();
    write_spec(&hosts);
    let gw = Gateway::start(Options {
        args: hosts.args(args),
        ..Options::default()
    });
    (hosts, gw)
}

/// Nothing of the kernels is left on the hosts (only their sshd listeners run there).
async fn assert_hosts_empty(hosts: &Hosts) {
    let left = hosts.wait_empty().await;
    assert!(
        left.is_empty(),
        "processes left in the namespaces: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_kernel_runs_over_curve_across_the_veth() {
    let (hosts, gw) = start(&[]);
    let (status, _, body) = gw
        .http(
            "POST",
            "/api/kernels",
            Some(&json!({"name": SPEC}).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{body}\n{}", gw.log());
    let model: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(model["transport_encryption"], "curve", "{model}");
    let id = model["id"].as_str().unwrap().to_owned();
    assert_eq!(transport_encryption(&gw, &id).await, "curve");

    // The kernel runs on host 0 and listens on its address there, with a CurveZMQ key: the
    // gateway's connections cross the veth, encrypted.
    assert_eq!(hosts.index_of(&kernel_ns(&gw, &id).await), 0);
    let conn = connection_file(&id);
    let (_, _, addr) = hosts.wire(0);
    assert_eq!(conn["ip"], addr.to_string(), "{conn}");
    assert!(conn["curve_publickey"].is_string(), "{conn}");

    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("print(6*7)").await.text, "42\n", "{}", gw.log());

    // Interrupt: interrupt_request on the control channel, over CurveZMQ across the veth.
    gw.interrupt_sleeping_cell(&id, &mut c).await;
    assert_eq!(
        c.execute("print(6*7)").await.text,
        "42\n",
        "survives the interrupt"
    );

    let log = gw.log();
    assert!(!log.contains("did not answer kernel_info_request"), "{log}");
    assert!(!log.contains("dropped"), "{log}");

    // Shutdown leaves nothing: no launcher or kernel, no watcher, no ssh session, on the
    // host or here.
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    wait_gone(&id).await;
    assert_hosts_empty(&hosts).await;
}

/// Captures host 0's end of its veth while a kernel of the CurveZMQ spec runs the marker cell
/// under a gateway with `args`; runs `check` on what was seen (while the test's files are
/// still there, kept if it fails), then checks nothing is left on the hosts.
async fn capture_on_the_host(args: &[&str], check: fn(&Seen)) {
    let (hosts, gw) = start(args);
    let (ns, iface, addr) = hosts.wire(0);
    let capture = Capture::start_in(ns, iface, addr, &hosts.dir.join("veth.pcap"));
    check(&capture_cell(&gw, SPEC, capture).await);
    assert_hosts_empty(&hosts).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_curve_kernel_traffic_hides_the_cell_output_on_the_veth() {
    capture_on_the_host(&[], assert_hidden).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_encryption_off_shows_the_cell_output_on_the_veth() {
    capture_on_the_host(&["--transport-encryption", "none"], assert_readable).await;
}
