//! KERNEL_UID / KERNEL_GID: the launcher, run as root (as in a container started as root, and
//! as CI runs these tests), switches to them numerically before the kernel starts, gives a
//! uid that cannot write its HOME a private one, and refuses root kernels.

use std::os::unix::fs::PermissionsExt;

use crate::support::*;

fn assert_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the KERNEL_UID tests switch users and need root (CI runs them as root)"
    );
}

#[test]
fn root_launcher_switches_to_kernel_uid_and_gives_a_private_home() {
    assert_root();
    let dir = scratch("identity");
    // The kernel (uid 4242) writes what it is into this directory.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.display();
    let kernel = format!(
        "{{ id -u; id -g; id -G; echo \"$HOME\"; test -w \"$HOME\" && echo writable; }} > {d}/who"
    );
    let mut cmd = launcher();
    cmd.args(["--kernel-id", "k-identity", "--", "sh", "-c", &kernel])
        .env("KERNEL_UID", "4242")
        .env("KERNEL_GID", "4343")
        // Not writable by 4242: root's own, mode 0700.
        .env("HOME", dir.join("roothome"))
        .env("TMPDIR", &dir);
    std::fs::create_dir(dir.join("roothome")).unwrap();
    std::fs::set_permissions(dir.join("roothome"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut child = spawn_logged(&mut cmd, &dir);
    assert_eq!(wait_code(&mut child), 0, "{}", log_of(&dir));
    let who = std::fs::read_to_string(dir.join("who")).unwrap();
    let lines: Vec<&str> = who.lines().collect();
    assert_eq!(&lines[..3], ["4242", "4343", "4343 100"], "{who}");
    let home = lines[3];
    assert!(
        home.starts_with(&format!("{d}/kernel-home-4242-")),
        "{who}\n{}",
        log_of(&dir)
    );
    assert_eq!(lines.get(4), Some(&"writable"), "{who}");
    assert!(
        !std::path::Path::new(home).exists(),
        "private HOME left behind"
    );
    assert!(log_of(&dir).contains("switched from uid 0 to KERNEL_UID 4242"));
}

#[test]
fn kernel_uid_0_is_refused_with_exit_77() {
    let dir = scratch("identity-root");
    let mut cmd = launcher();
    cmd.args(["--kernel-id", "k-root", "--", "sh", "-c", "touch ran"])
        .env("KERNEL_UID", "0")
        .current_dir(&dir);
    let mut child = spawn_logged(&mut cmd, &dir);
    assert_eq!(wait_code(&mut child), 77, "{}", log_of(&dir));
    assert!(
        log_of(&dir).contains("never run as root"),
        "{}",
        log_of(&dir)
    );
    assert!(!dir.join("ran").exists(), "the kernel ran");
}

#[test]
fn a_kernel_uid_that_is_not_a_number_is_a_usage_error() {
    let dir = scratch("identity-name");
    let mut cmd = launcher();
    cmd.args(["--kernel-id", "k-name", "--", "true"])
        .env("KERNEL_UID", "jovyan");
    let mut child = spawn_logged(&mut cmd, &dir);
    assert_eq!(wait_code(&mut child), 64, "{}", log_of(&dir));
    assert!(log_of(&dir).contains("KERNEL_UID"), "{}", log_of(&dir));
}
