//! `kernel-launcher kernelspec install`: a generated spec, with its placeholders filled the
//! way each gateway fills them, starts a real ipykernel through the launcher; the command's
//! help, usage errors and exit codes.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::kernels::drive_child;
use crate::support::*;

/// Runs `kernel-launcher kernelspec ARGS`; returns (exit code, stdout, stderr).
fn kernelspec(args: &[&str]) -> (i32, String, String) {
    let out = launcher().arg("kernelspec").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_spec(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("kernel.json")).unwrap()).unwrap()
}

/// Installs a local spec for `target`, fills its argv as that gateway would and drives the
/// kernel it starts: execute, interrupt, shutdown, launcher exit 0, connection file removed.
fn generated_local_spec_runs_a_kernel(target: &str) {
    let python = kernel_python();
    let dir = scratch(&format!("kspec-{target}"));
    let spec_dir = dir.join("spec");
    let (code, stdout, stderr) = kernelspec(&[
        "install",
        "--for",
        target,
        "--dir",
        spec_dir.to_str().unwrap(),
        "--python",
        &python,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("Installed kernelspec python_local in"),
        "{stdout}"
    );
    let spec = read_spec(&spec_dir);
    let argv: Vec<String> = serde_json::from_value(spec["argv"].clone()).unwrap();
    // The default --launcher is the binary that wrote the spec.
    assert_eq!(
        Path::new(&argv[0]).canonicalize().unwrap(),
        Path::new(env!("CARGO_BIN_EXE_kernel-launcher"))
            .canonicalize()
            .unwrap()
    );

    let gw = Gateway::new();
    let kernel_id = format!("kspec-{target}");
    let filled: Vec<String> = argv
        .iter()
        .map(|a| match a.as_str() {
            "{kernel_id}" => kernel_id.clone(),
            "{response_address}" => gw.address(),
            "{public_key}" => gw.public_key(),
            "{port_range}" => "0..0".into(),
            // gateway_provisioners fills it with "" when CurveZMQ is off.
            "{transport_encryption}" => String::new(),
            other => other.to_owned(),
        })
        .collect();
    assert!(
        !filled
            .iter()
            .any(|a| a.contains("{kernel_id}") || a.contains("{response_address}")),
        "{filled:?}"
    );
    assert!(
        filled.iter().any(|a| a == "{connection_file}"),
        "the launcher fills it: {filled:?}"
    );
    let conn_dir = dir.join("conn");
    std::fs::create_dir_all(&conn_dir).unwrap();
    let mut cmd = Command::new(&filled[0]);
    without_gateway_env(&mut cmd);
    cmd.args(&filled[1..]).env("TMPDIR", &conn_dir);
    let child = spawn_logged(&mut cmd, &dir);
    drive_child("python", &gw, child, &dir, false);
    let left: Vec<_> = std::fs::read_dir(&conn_dir).unwrap().flatten().collect();
    assert!(left.is_empty(), "connection file left behind: {left:?}");
}

#[test]
fn generated_eg_local_spec_runs_ipykernel() {
    generated_local_spec_runs_a_kernel("eg");
}

#[test]
fn generated_gp_local_spec_runs_ipykernel() {
    generated_local_spec_runs_a_kernel("gp");
}

#[test]
fn help_documents_the_command() {
    let (code, stdout, _) = kernelspec(&["install", "--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--for eg|gateway-lite|gp",
        "--mode MODE",
        "spark-yarn-cluster",
        "--prefix DIR",
        "--user",
        "--sys-prefix",
        "--dir DIR",
        "--ship-launcher",
        "--spark-init-mode",
        "--launch-script",
        "{connection_file}",
        "64 ",
        "73 ",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle:?}");
    }
    let main_help = launcher().arg("--help").output().unwrap();
    let main_help = String::from_utf8_lossy(&main_help.stdout);
    assert!(
        main_help.contains("kernel-launcher kernelspec install"),
        "{main_help}"
    );
}

#[test]
fn usage_errors_exit_64_and_an_existing_spec_73() {
    let dir = scratch("kspec-errors");
    let d = dir.join("spec");
    let d = d.to_str().unwrap();
    for (args, needle) in [
        (&["install", "--mode", "yarn"][..], "--mode"),
        (&["install", "--dir", d, "--mode", "ssh"], "--remote-hosts"),
        (
            &["install", "--dir", d, "--mode", "spark-local"],
            "--spark-home",
        ),
        (
            &["install", "--dir", d, "--mode", "docker", "--image", "i"],
            "--launch-script",
        ),
        (&["uninstall"], "install"),
    ] {
        let (code, _, stderr) = kernelspec(args);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("--help"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!Path::new(d).exists(), "nothing written on a usage error");
    let (code, _, stderr) = kernelspec(&["install", "--dir", d]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = kernelspec(&["install", "--dir", d]);
    assert_eq!(code, 73, "{stderr}");
    assert!(stderr.contains("--replace"), "{stderr}");
    let (code, _, stderr) = kernelspec(&["install", "--dir", d, "--replace", "--language", "r"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(read_spec(Path::new(d))["language"], "R");
}
