//! The service recipe under `deploy/`: systemd accepts the unit as written, the unit keeps
//! kernels across `systemctl restart` and is hardened, and every variable the env file sets or
//! offers is one gateway-lite reads, with values it accepts.
//!
//! systemd cannot run as PID 1 here, so the unit is checked by `systemd-analyze verify` (any
//! warning fails the test: systemd ignores a misspelt key or a bad value with only a warning)
//! and by starting gateway-lite with exactly the environment the unit and env file give it.
//! What `KillMode=process` buys (the gateway alone is signalled; its kernels are re-attached
//! by the next gateway) is the behaviour `policy::kernels_survive_gateway_restarts` tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::support::{Gateway, Options};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `Key=value` lines of a unit or env file, comments and section headers left out; a key
/// may repeat (`Environment=`).
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn one<'a>(unit: &'a [(String, String)], key: &str) -> &'a str {
    let found: Vec<_> = unit.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(found.len(), 1, "{key}= should be set once in the unit");
    &found[0].1
}

/// The unit's `Environment=NAME=value` pairs.
fn unit_env(unit: &[(String, String)]) -> Vec<(String, String)> {
    unit.iter()
        .filter(|(k, _)| k == "Environment")
        .filter_map(|(_, v)| v.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let dir = tempdir();
    // verify checks that ExecStart's program and the EnvironmentFile exist: point them at the
    // built binary and the repository's env file; every other line is as shipped.
    let unit = read("deploy/gateway-lite.service")
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={}", env!("CARGO_BIN_EXE_gateway-lite"))
            } else if l.starts_with("EnvironmentFile=") {
                format!(
                    "EnvironmentFile={}",
                    repo_file("deploy/gateway-lite.env")
                        .canonicalize()
                        .unwrap()
                        .display()
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("gateway-lite.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd; scripts/setup-env.sh does)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_analyze_would_report_a_misspelt_key() {
    // The check above relies on verify warning about what systemd ignores.
    let dir = tempdir();
    let path = dir.join("bad.service");
    std::fs::write(
        &path,
        "[Service]\nExecStart=/bin/true\nKilMode=process\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(String::from_utf8_lossy(&out.stderr).contains("KilMode"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_unit_keeps_kernels_and_is_hardened() {
    let unit = settings(&read("deploy/gateway-lite.service"));
    // Only the gateway is signalled on stop and restart: its kernels outlive it and the next
    // gateway re-attaches them from the state directory.
    assert_eq!(one(&unit, "KillMode"), "process");
    let state = one(&unit, "StateDirectory");
    let env: HashMap<_, _> = unit_env(&unit).into_iter().collect();
    let state_dir = env
        .get("GATEWAY_LITE_STATE_DIR")
        .expect("the unit names the state directory");
    assert!(
        state_dir.starts_with(&format!("/var/lib/{state}/")),
        "{state_dir} is not under StateDirectory={state}"
    );
    assert_eq!(env.get("HOME"), Some(&format!("/var/lib/{state}")));
    assert!(!one(&unit, "EnvironmentFile").starts_with('-'), "required");
    let user = one(&unit, "User");
    assert!(
        user != "root" && user != "0",
        "a dedicated user, not {user}"
    );
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
    ] {
        assert_eq!(one(&unit, key), want, "{key}");
    }
    assert!(matches!(one(&unit, "ProtectSystem"), "full" | "strict"));
    // Options that break kernels (JIT compilers, GPUs) stay off.
    for key in ["MemoryDenyWriteExecute", "PrivateDevices"] {
        assert!(
            !unit.iter().any(|(k, v)| k == key && v == "yes"),
            "{key}=yes breaks kernels"
        );
    }
}

#[test]
fn the_env_file_offers_only_variables_gateway_lite_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_gateway-lite"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let text = read("deploy/gateway-lite.env");
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#');
        if let Some((name, _)) = line.split_once('=')
            && name.starts_with("GATEWAY_LITE_")
            && !name.contains(' ')
        {
            names.push(name.to_owned());
        }
    }
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        // GATEWAY_LITE_LOG is read by the logging set-up, not by an option.
        if name == "GATEWAY_LITE_LOG" {
            continue;
        }
        assert!(
            // `[env: NAME=value]`, or `[env: NAME]` for a secret whose value is hidden.
            help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]")),
            "{name} is not a gateway-lite variable"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_with_the_units_environment_serves_and_keeps_its_state() {
    let dir = tempdir();
    let state_root = dir.join("var-lib");
    let unit = settings(&read("deploy/gateway-lite.service"));
    let mut env = settings(&read("deploy/gateway-lite.env"));
    // The unit's paths moved under a temporary directory; the port chosen by the test.
    for (k, v) in unit_env(&unit) {
        env.push((k, v.replace("/var/lib", &state_root.display().to_string())));
    }
    env.retain(|(k, _)| k != "GATEWAY_LITE_PORT" && k != "PATH");
    let state_dir = PathBuf::from(
        &env.iter()
            .find(|(k, _)| k == "GATEWAY_LITE_STATE_DIR")
            .unwrap()
            .1,
    );
    let gw = Gateway::start(Options {
        env,
        ..Options::default()
    });
    let (status, _) = gw.json("GET", "/api", None).await;
    assert_eq!(status, 200, "{}", gw.log());
    let id = gw.start_kernel("py").await;
    let records = std::fs::read_to_string(state_dir.join("kernels.json")).unwrap_or_default();
    assert!(
        records.contains(&id),
        "the kernel is recorded in {}: {records}\n{}",
        state_dir.display(),
        gw.log()
    );
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gl-deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
