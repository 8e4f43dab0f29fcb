//! Kernelspecs written by `kernel-launcher kernelspec install`: gateway-lite lists them and
//! starts their kernels (local, Enterprise Gateway's local form, SSH, Docker), and refuses the
//! YARN cluster one it cannot run, naming what to use instead.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::docker::{DockerEnv, kernel_image};
use crate::ssh::{Hosts, kernel_ns, wait_gone};
use crate::support::{Gateway, Options, launcher, python, run_ok, wait_no_processes};

/// Runs `kernel-launcher kernelspec install ARGS` (the launcher under test); panics on failure.
pub(crate) fn install(args: &[&str]) {
    run_ok(
        Command::new(launcher())
            .args(["kernelspec", "install"])
            .args(args),
        "build it with `cargo build -p launcher`",
    );
}

fn read(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("kernel.json")).unwrap()).unwrap()
}

async fn one_plus_one(gw: &Gateway, spec: &str) {
    let id = gw.start_kernel(spec).await;
    let mut c = gw.connect(&id, false).await;
    let out = c.execute("1+1").await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("2", "ok"),
        "{spec}: {out:?}"
    );
    drop(c);
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{spec}");
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new(), "{spec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_specs_are_listed_and_run() {
    let dir = std::env::temp_dir().join(format!("gl-generated-{}", uuid::Uuid::new_v4()));
    let specs = dir.join("specs");
    let py = python();
    let at = |name: &str| specs.join(name).to_string_lossy().into_owned();
    install(&[
        "--for",
        "gateway-lite",
        "--python",
        &py,
        "--dir",
        &at("gen_lite"),
    ]);
    install(&["--for", "eg", "--python", &py, "--dir", &at("gen_eg")]);
    install(&[
        "--for",
        "eg",
        "--mode",
        "spark-yarn-cluster",
        "--spark-home",
        "/opt/spark",
        "--ship-launcher",
        "no",
        "--dir",
        &at("gen_yarn"),
    ]);
    assert_eq!(
        read(&specs.join("gen_lite"))["metadata"],
        serde_json::json!({})
    );

    let gw = Gateway::start(Options {
        dir: Some(dir.clone()),
        ..Options::default()
    });
    let (status, list) = gw.json("GET", "/api/kernelspecs", None).await;
    assert_eq!(status, 200);
    for (name, display) in [
        ("gen_lite", "Python (local, kernel-launcher)"),
        ("gen_eg", "Python (local, kernel-launcher)"),
        (
            "gen_yarn",
            "Spark - Python (YARN cluster mode, kernel-launcher)",
        ),
    ] {
        assert_eq!(
            list["kernelspecs"][name]["spec"]["display_name"], display,
            "{name}: {list}"
        );
    }
    one_plus_one(&gw, "gen_lite").await;
    // Enterprise Gateway's local form: DistributedProcessProxy on localhost, no ssh.
    one_plus_one(&gw, "gen_eg").await;

    let (status, err) = gw
        .json("POST", "/api/kernels", Some(r#"{"name":"gen_yarn"}"#))
        .await;
    assert_eq!(status, 501, "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("YARN") && message.contains("client"),
        "{message}"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Docker spec is Enterprise Gateway's (its argv runs launch_docker.py, which gateway-lite
/// ignores): gateway-lite starts the image named in it and the kernel answers.
#[tokio::test(flavor = "multi_thread")]
async fn generated_docker_spec_runs_in_a_container() {
    let env = DockerEnv::with_image(kernel_image());
    let gw = env.gateway(&[]);
    let (status, spec) = gw.json("GET", "/api/kernelspecs/gen_docker_py", None).await;
    assert_eq!(status, 200, "{spec}");
    assert!(
        spec["spec"]["metadata"]["process_proxy"]["class_name"]
            .as_str()
            .is_some_and(|c| c.ends_with(".DockerProcessProxy")),
        "{spec}"
    );
    let id = gw.start_kernel("gen_docker_py").await;
    let mut c = gw.connect(&id, true).await;
    let out = c.execute("import os; print(os.environ['KERNEL_ID'])").await;
    assert_eq!(out.text.trim(), id, "{out:?}");
    drop(c);
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
}

/// An SSH spec pinned to the second of two sshd hosts (network namespaces, see ssh.rs): the
/// kernel runs there, through the launcher path the spec names.
#[tokio::test(flavor = "multi_thread")]
async fn generated_ssh_spec_runs_on_its_host() {
    let hosts = Hosts::start();
    let dir = hosts.dir.join("specs").join("gen_ssh");
    install(&[
        "--for",
        "gateway-lite",
        "--mode",
        "ssh",
        "--remote-hosts",
        hosts.alias(1),
        "--python",
        &python(),
        "--dir",
        &dir.to_string_lossy(),
    ]);
    assert_eq!(
        read(&dir)["metadata"]["process_proxy"]["config"]["remote_hosts"],
        hosts.alias(1)
    );
    let gw = Gateway::start(Options {
        args: hosts.args(&[]),
        ..Options::default()
    });
    let id = gw.start_kernel("gen_ssh").await;
    assert_eq!(
        hosts.index_of(&kernel_ns(&gw, &id).await),
        1,
        "{}",
        gw.log()
    );
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("6*7").await.text, "42");
    drop(c);
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    wait_gone(&id).await;
    let left = hosts.wait_empty().await;
    assert!(
        left.is_empty(),
        "processes left in the namespaces: {left:?}"
    );
}
