//! The launcher as PID 1 of a fresh PID namespace, as in a container:
//! `unshare -fp --mount-proc` (needs root, which CI has).

use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::support::*;

#[test]
fn pid1_reaps_orphans_forwards_sigterm_and_propagates_the_exit_code() {
    let dir = scratch("pid1");
    let d = dir.display();
    // The kernel orphans a grandchild (its parent shell exits at once), which
    // is re-parented to PID 1 = the launcher. After it exits, the kernel looks
    // for it in /proc: a zombie means PID 1 did not reap it.
    let kernel = format!(
        "echo $$ > {d}/kernel.pid; cat /proc/1/comm > {d}/pid1.comm; \
         sh -c 'sleep 0.3 & echo $! > {d}/orphan.pid'; sleep 1.5; \
         o=$(cat {d}/orphan.pid); if [ -e /proc/$o ]; then echo zombie > {d}/orphan.state; else echo reaped > {d}/orphan.state; fi; \
         trap 'echo TERM > {d}/term; exit 3' TERM; while :; do sleep 0.05; done"
    );
    let log = std::fs::File::create(dir.join("launcher.log")).unwrap();
    let mut unshare = Command::new("unshare")
        .args(["-fp", "--mount-proc", env!("CARGO_BIN_EXE_kernel-launcher")])
        .args([
            "--kernel-id",
            "k-pid1",
            "--grace-period",
            "5",
            "--",
            "sh",
            "-c",
            &kernel,
        ])
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    eventually("the orphan check ran", || dir.join("orphan.state").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("pid1.comm"))
            .unwrap()
            .trim(),
        "kernel-launcher"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("orphan.state"))
            .unwrap()
            .trim(),
        "reaped"
    );
    // The launcher's pid outside the namespace is unshare's only child.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let launcher: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    send_signal(launcher, Signal::SIGTERM);
    assert_eq!(wait_code(&mut unshare), 3, "{}", log_of(&dir));
    assert!(dir.join("term").exists(), "the kernel did not get SIGTERM");
}

/// As PID 1 started as root (a container without `--user`), the launcher drops to KERNEL_UID
/// before the kernel starts and, as that uid, still reaps orphans and forwards SIGTERM.
#[test]
fn pid1_switches_to_kernel_uid_and_still_reaps_and_forwards() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the PID 1 tests use unshare and need root (CI runs them as root)"
    );
    let dir = scratch("pid1-uid");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = dir.display();
    let kernel = format!(
        "id -u > {d}/uid; awk '/^Uid:/ {{print $2}}' /proc/1/status > {d}/pid1.uid; \
         sh -c 'sleep 0.3 & echo $! > {d}/orphan.pid'; sleep 1.5; \
         o=$(cat {d}/orphan.pid); if [ -e /proc/$o ]; then echo zombie > {d}/orphan.state; else echo reaped > {d}/orphan.state; fi; \
         trap 'echo TERM > {d}/term; exit 5' TERM; while :; do sleep 0.05; done"
    );
    let log = std::fs::File::create(dir.join("launcher.log")).unwrap();
    let mut unshare = Command::new("unshare")
        .args(["-fp", "--mount-proc", env!("CARGO_BIN_EXE_kernel-launcher")])
        .args(["--kernel-id", "k-pid1-uid", "--", "sh", "-c", &kernel])
        .env("KERNEL_UID", "4242")
        .env("KERNEL_GID", "100")
        .env("TMPDIR", &dir)
        .env_remove("KERNEL_ID")
        .env_remove("RESPONSE_ADDRESS")
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    eventually("the orphan check ran", || dir.join("orphan.state").exists());
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("uid"), "4242");
    assert_eq!(read("pid1.uid"), "4242", "PID 1 kept root");
    assert_eq!(read("orphan.state"), "reaped");
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let launcher: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    send_signal(launcher, Signal::SIGTERM);
    assert_eq!(wait_code(&mut unshare), 5, "{}", log_of(&dir));
    assert!(dir.join("term").exists(), "the kernel did not get SIGTERM");
}
