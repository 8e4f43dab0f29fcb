//! Release artifacts from `scripts/dist.sh`: the tarballs verify against their sha256 files
//! and hold static binaries that run; the launcher-only image works as a `COPY --from=`
//! source in a kernel image's Dockerfile, whose kernel then answers through gateway-lite; the
//! gateway-lite image serves the API as a non-root user.
//!
//! `scripts/test.sh` runs `scripts/dist.sh` once and passes its output directory in
//! `KL_DIST_DIR`; without it the test runs the script itself (a release build: minutes).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::docker::{DockerEnv, docker, kernel_image};

pub(crate) struct Dist {
    pub(crate) dir: PathBuf,
    pub(crate) version: String,
}

/// The artifacts: `KL_DIST_DIR`, or made here (cargo and docker make repeats cheap).
pub(crate) fn dist() -> Dist {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = match std::env::var("KL_DIST_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let out = repo.join("target/dist-test");
            let status = Command::new(repo.join("scripts/dist.sh"))
                .arg("--out")
                .arg(&out)
                .status()
                .expect("running scripts/dist.sh");
            assert!(status.success(), "scripts/dist.sh failed");
            out
        }
    };
    let cargo = std::fs::read_to_string(repo.join("Cargo.toml")).unwrap();
    let version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("version = ")))
        .expect("the workspace version")
        .trim_matches('"')
        .to_owned();
    Dist { dir, version }
}

fn run(cmd: &mut Command) -> String {
    crate::support::run_ok(cmd, "install tar, coreutils and file")
}

fn unpack(tarball: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(into));
}

#[test]
fn tarballs_verify_and_hold_static_binaries_that_run() {
    let d = dist();
    let tmp = std::env::temp_dir().join(format!("gl-dist-{}", uuid::Uuid::new_v4()));
    for (name, bins) in [
        ("kernel-launcher", &["kernel-launcher"][..]),
        ("gateway-lite", &["gateway-lite", "kernel-launcher"][..]),
    ] {
        let base = format!("{name}-{}-x86_64-linux", d.version);
        let tarball = d.dir.join(format!("{base}.tar.gz"));
        run(Command::new("sha256sum")
            .arg("-c")
            .arg(format!("{base}.tar.gz.sha256"))
            .current_dir(&d.dir));
        unpack(&tarball, &tmp);
        let root = tmp.join(&base);
        assert!(root.join("LICENSE").is_file(), "{base} has the licence");
        for bin in bins {
            let path = root.join(bin);
            let kind = run(Command::new("file").arg("-b").arg(&path));
            assert!(kind.contains("static"), "{bin}: {kind}");
            let version = run(Command::new(&path).arg("--version"));
            assert!(version.contains(&d.version), "{bin} --version: {version}");
        }
        if name == "gateway-lite" {
            assert!(root.join("deploy/gateway-lite.service").is_file());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Builds `dockerfile` in an empty context as a test-unique tag, removed on drop.
struct Built(String);

impl Built {
    fn new(dockerfile: &str) -> Built {
        let tag = format!("gl-it-dist:{}", uuid::Uuid::new_v4().simple());
        let ctx = std::env::temp_dir().join(format!("gl-dist-ctx-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let (ok, _, err) = docker(&["build", "-q", "-t", &tag, &ctx.display().to_string()]);
        let _ = std::fs::remove_dir_all(&ctx);
        assert!(ok, "docker build:\n{dockerfile}\n{err}");
        Built(tag)
    }
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "--force", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_from_the_launcher_image_makes_a_kernel_image_that_answers_through_gateway_lite() {
    let d = dist();
    // A Python kernel image without kernel-launcher: the Debian rootfs the project's kernel
    // image is built on (its label names it), standing in for a team's existing image.
    let (ok, key, err) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"org.jupyter.gateway-lite.rootfs\"}}",
        &kernel_image(),
    ]);
    assert!(
        ok && !key.is_empty(),
        "the kernel image's rootfs label: {err}"
    );
    let base = format!("gateway-lite/python-kernel-base:{key}");
    let (ok, _, _) = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        &base,
        "-c",
        "! test -e /usr/local/bin/kernel-launcher",
    ]);
    assert!(ok, "{base} must not hold a launcher already");
    // The lines a team adds to its own Dockerfile.
    let image = Built::new(&format!(
        "FROM {base}\n\
         COPY --from=kernel-launcher:{v} /kernel-launcher /usr/local/bin/kernel-launcher\n\
         USER 1000:100\n\
         WORKDIR /home/jovyan\n\
         ENV HOME=/home/jovyan LANG=C.UTF-8\n\
         ENTRYPOINT [\"/usr/local/bin/kernel-launcher\"]\n",
        v = d.version
    ));
    let env = DockerEnv::with_image(image.0.clone());
    let gw = env.gateway(&[]);
    let id = gw.start_kernel("docker_py").await;
    let mut k = gw.connect(&id, true).await;
    let out = k
        .execute("import os; print(os.getuid(), os.environ['KERNEL_ID'])")
        .await;
    assert_eq!(
        out.text.trim(),
        format!("1000 {id}"),
        "{out:?}\n{}",
        gw.log()
    );
    assert_eq!(k.execute("6*7").await.text, "42");
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_image_serves_the_api_as_a_non_root_user() {
    let d = dist();
    let image = format!("gateway-lite:{}", d.version);
    let name = format!("gl-it-dist-{}", uuid::Uuid::new_v4().simple());
    let (ok, _, err) = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "gateway-lite-test=dist",
        "-p",
        "127.0.0.1::8888",
        &image,
    ]);
    assert!(ok, "docker run {image}: {err}");
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = docker(&["rm", "--force", "--volumes", &self.0]);
        }
    }
    let _gone = Gone(name.clone());
    let (_, user, _) = docker(&["inspect", "--format", "{{.Config.User}}", &name]);
    assert_eq!(user, "65532:65532");
    let (ok, port, err) = docker(&["port", &name, "8888/tcp"]);
    assert!(ok, "{err}");
    let addr = port.lines().next().unwrap_or_default().to_owned();
    // The generated token is shown once, in the URL on stdout.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    let token = loop {
        let (_, logs, _) = docker(&["logs", &name]);
        if let Some(t) = logs.split("?token=").nth(1) {
            break t.split_whitespace().next().unwrap_or_default().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no URL in the logs: {logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let get = |auth: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(t) = auth {
            cmd.args(["-H", &format!("Authorization: token {t}")]);
        }
        cmd.arg(format!("http://{addr}/api/kernelspecs"));
        run(&mut cmd)
    };
    assert_eq!(get(Some(&token)), "200");
    assert_eq!(get(None), "401");
}
