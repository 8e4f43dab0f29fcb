//! Kernels in Docker containers: the real Docker Engine, the image from
//! `images/python-kernel/build.sh` (kernel-launcher as entrypoint, Debian's ipykernel), an
//! Enterprise Gateway-style Docker kernelspec, and a user-defined network per test.
//!
//! Docker is a required peer here: when it is unusable the tests fail and say why. Every
//! container and network a test makes carries a label unique to that test and is removed by
//! that label when the test ends, failed or not.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, Options, WAIT};

/// Runs `docker ARGS`; returns (success, stdout, stderr).
pub(crate) fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker ({e}): install Docker Engine"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// The kernel image: `$KL_KERNEL_IMAGE` (scripts/test.sh builds it first), else built (or
/// found in the cache) by the image script.
pub(crate) fn kernel_image() -> String {
    if let Ok(i) = std::env::var("KL_KERNEL_IMAGE")
        && !i.is_empty()
    {
        return i;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../images/python-kernel/build.sh"
    );
    let out = Command::new(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the image script prints the image")
        .trim()
        .to_owned()
}

/// A user-defined network with its own subnet (so `docker network connect --ip` works), a
/// label for this test, and the image.
pub(crate) struct DockerEnv {
    pub(crate) label: String,
    pub(crate) network: String,
    gateway_ip: String,
    pub(crate) image: String,
}

impl DockerEnv {
    pub(crate) fn new() -> DockerEnv {
        Self::with_image(kernel_image())
    }

    /// [`Self::new`] with another kernel image.
    pub(crate) fn with_image(image: String) -> DockerEnv {
        let (ok, _, err) = docker(&["info", "--format", "{{.ServerVersion}}"]);
        assert!(
            ok,
            "Docker is required for these tests but the daemon is not usable: {err}"
        );
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let label = format!("gateway-lite-test={tag}");
        let network = format!("gl-it-{}", &tag[..12]);
        // A free /24 in 10.0.0.0/8, picked at random: docker refuses overlapping pools.
        let mut last = String::new();
        for attempt in 0..40u32 {
            let n = u32::from_str_radix(&tag[..8], 16)
                .unwrap_or(0)
                .wrapping_add(attempt * 7919);
            let (b, c) = (100 + n % 150, (n / 150) % 256);
            let subnet = format!("10.{b}.{c}.0/24");
            let gw = format!("10.{b}.{c}.1");
            let (ok, _, err) = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--subnet",
                &subnet,
                "--gateway",
                &gw,
                "--label",
                &label,
                &network,
            ]);
            if ok {
                return DockerEnv {
                    label,
                    network,
                    gateway_ip: gw,
                    image,
                };
            }
            last = err;
        }
        panic!("cannot create a docker network: {last}");
    }

    /// A gateway whose Docker kernels run on this network and report to its gateway address.
    pub(crate) fn gateway(&self, extra: &[&str]) -> Gateway {
        self.gateway_in(None, extra)
    }

    /// [`Self::gateway`] in `dir` (a stopped gateway's, to re-attach its kernels).
    fn gateway_in(&self, dir: Option<std::path::PathBuf>, extra: &[&str]) -> Gateway {
        let dir = dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("gl-it-{}", uuid::Uuid::new_v4()))
        });
        let spec = |class: &str, image: Option<&str>| {
            let mut config = json!({});
            if let Some(i) = image {
                config["image_name"] = json!(i);
            }
            // The argv of EG's Docker specs: gateway-lite does not run it, it starts the
            // container itself from the values in it.
            json!({
                "argv": ["python", "/usr/local/share/jupyter/kernels/docker/scripts/launch_docker.py",
                    "--RemoteProcessProxy.kernel-id", "{kernel_id}",
                    "--RemoteProcessProxy.port-range", "{port_range}",
                    "--RemoteProcessProxy.response-address", "{response_address}",
                    "--RemoteProcessProxy.public-key", "{public_key}"],
                "display_name": "Python in Docker", "language": "python",
                "metadata": {"process_proxy": {"class_name": class, "config": config}}
            })
        };
        for (name, doc) in [
            (
                "docker_py",
                spec(
                    "enterprise_gateway.services.processproxies.docker_swarm.DockerProcessProxy",
                    Some(&self.image),
                ),
            ),
            // Without an image of its own: the default (--docker-image) runs it. Swarm specs
            // run as services and are tested in `swarm.rs`.
            (
                "docker_default",
                spec("gateway_provisioners.docker_swarm.DockerProvisioner", None),
            ),
        ] {
            let d = dir.join("specs").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("kernel.json"), doc.to_string()).unwrap();
        }
        // One spec written by `kernel-launcher kernelspec install`, as an operator would
        // (Enterprise Gateway's form: gateway-lite reads the same file).
        crate::generated::install(&[
            "--for",
            "eg",
            "--mode",
            "docker",
            "--image",
            &self.image,
            "--launch-script",
            "/usr/local/share/jupyter/kernels/python_docker/scripts/launch_docker.py",
            // A restarted gateway (the re-attach tests) writes its specs again.
            "--replace",
            "--dir",
            &dir.join("specs").join("gen_docker_py").to_string_lossy(),
        ]);
        let mut args: Vec<String> = [
            "--response-ip",
            &self.gateway_ip,
            "--docker-network",
            &self.network,
            "--docker-label",
            &self.label,
            "--docker-image",
            &self.image,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Gateway::start(Options {
            args,
            dir: Some(dir),
            ..Options::default()
        })
    }

    /// `docker inspect` of the kernel's container, `None` once it is gone.
    pub(crate) fn container(&self, kernel_id: &str) -> Option<Value> {
        let (ok, out, _) = docker(&[
            "ps",
            "--all",
            "--quiet",
            "--no-trunc",
            "--filter",
            &format!("label={}", self.label),
            "--filter",
            &format!("label=kernel_id={kernel_id}"),
        ]);
        assert!(ok, "docker ps failed");
        let id = out.lines().next()?.to_owned();
        let (ok, out, _) = docker(&["inspect", "--type", "container", &id]);
        if !ok {
            return None;
        }
        serde_json::from_str::<Value>(&out).ok()?.get(0).cloned()
    }

    /// The container's address on this network.
    fn ip(&self, c: &Value) -> String {
        c["NetworkSettings"]["Networks"][&self.network]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        let filter = format!("label={}", self.label);
        let (_, ids, _) = docker(&["ps", "--all", "--quiet", "--filter", &filter]);
        for id in ids.lines().filter(|l| !l.is_empty()) {
            let _ = docker(&["rm", "--force", id]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// Polls `check` until it holds (bounded by [`WAIT`] only against hangs).
pub(crate) async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn model(gw: &Gateway, id: &str) -> (u16, Value) {
    gw.json("GET", &format!("/api/kernels/{id}"), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_kernel_lifecycle_on_a_user_defined_network() {
    let env = DockerEnv::new();
    let gw = env.gateway(&[]);
    let id = gw.start_kernel("docker_py").await;

    let c = env.container(&id).expect("the kernel's container exists");
    assert_eq!(c["State"]["Running"], true, "{c}");
    assert!(!env.ip(&c).is_empty(), "on network {}: {c}", env.network);
    let labels = &c["Config"]["Labels"];
    assert_eq!(labels["component"], "kernel");
    assert_eq!(labels["app"], "gateway-lite");
    assert_eq!(c["Config"]["Image"], env.image.as_str());
    assert_eq!(
        c["Config"]["User"], "1000:100",
        "EG's default KERNEL_UID:KERNEL_GID"
    );
    let first = c["Id"].as_str().unwrap().to_owned();

    let mut k = gw.connect(&id, true).await;
    let out = k.execute("1+1").await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("2", "ok"),
        "{out:?}"
    );
    let out = k
        .execute("import os; x = 5; print(os.getuid(), os.environ['KERNEL_ID'])")
        .await;
    assert_eq!(out.text.trim(), format!("1000 {id}"), "{out:?}");

    // Interrupt over the comm port, across the network.
    // Interrupt once the cell is inside time.sleep (its output says so): a SIGINT that lands
    // before the cell runs user code is not a KeyboardInterrupt in it.
    let sleep = k
        .execute_with(
            // stop_on_error false: see `KernelClient::start_sleep` for ipykernel's abort window.
            json!({"code": "import time; print('asleep', flush=True); time.sleep(60)",
            "silent": false, "stop_on_error": false}),
        )
        .await;
    loop {
        let m = k.recv().await.expect("the sleep cell runs");
        if m.parent_id() == sleep && m.msg_type() == "stream" {
            break;
        }
    }
    let (status, _, body) = gw
        .http("POST", &format!("/api/kernels/{id}/interrupt"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let out = k.collect(&sleep).await;
    assert_eq!(out.ename, "KeyboardInterrupt", "{out:?}");
    let out = k.execute("x").await;
    assert_eq!(out.text, "5", "{out:?}");

    // Restart: same id, a new container, the variable gone.
    let (status, m) = gw
        .json("POST", &format!("/api/kernels/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{m}\n{}", gw.log());
    let c = env.container(&id).expect("a container after the restart");
    assert_ne!(c["Id"].as_str(), Some(first.as_str()), "a new container");
    assert_eq!(c["State"]["Running"], true);
    let mut k = gw.connect(&id, true).await;
    assert_eq!(k.execute("x").await.ename, "NameError");

    // Shutdown removes the container.
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    until("the container is removed", || {
        env.container(&id).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_launcher_failure_fails_the_start_with_the_container_log() {
    let env = DockerEnv::new();
    let gw = env.gateway(&[]);
    // The launcher in the container refuses the language (a KERNEL_* the client sent) and
    // exits before reporting; the start must fail then, with its message, not time out.
    let body = json!({"name": "docker_default", "env": {"KERNEL_LANGUAGE": "cobol", "KERNEL_LAUNCH_TIMEOUT": "120"}});
    let (status, _, text) = gw
        .http("POST", "/api/kernels", Some(&body.to_string()))
        .await;
    assert_eq!(status, 500, "{text}");
    assert!(
        text.contains("cobol"),
        "the container's log tail is in the error: {text}"
    );
    assert!(
        text.contains("exit code 64"),
        "the launcher's usage exit: {text}"
    );
    assert!(
        !text.contains("launch timeout"),
        "failed at once, not by the timeout: {text}"
    );
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]));
    // Its container was removed after its log was read.
    let (_, ids, _) = docker(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("label={}", env.label),
    ]);
    assert_eq!(ids, "", "no container left");

    // A request the provisioner refuses outright: root.
    let body = json!({"name": "docker_py", "env": {"KERNEL_UID": "0"}});
    let (status, _, text) = gw
        .http("POST", "/api/kernels", Some(&body.to_string()))
        .await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("KERNEL_UID=0"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_killed_container_is_reported_dead() {
    let env = DockerEnv::new();
    let gw = env.gateway(&["--restart-limit", "0"]);
    let id = gw.start_kernel("docker_py").await;
    let c = env.container(&id).expect("container");
    let (ok, _, err) = docker(&["kill", c["Id"].as_str().unwrap()]);
    assert!(ok, "{err}");
    let mut last = Value::Null;
    for _ in 0..600 {
        let (_, m) = model(&gw, &id).await;
        if m["execution_state"] == "dead" {
            last = m;
            break;
        }
        last = m;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["execution_state"], "dead", "{last}\n{}", gw.log());
    until("the dead kernel's container is removed", || {
        env.container(&id).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_network_disconnect_then_reconnect_keeps_the_kernel() {
    let env = DockerEnv::new();
    let gw = env.gateway(&[]);
    let id = gw.start_kernel("docker_py").await;
    let mut k = gw.connect(&id, false).await;
    assert_eq!(k.execute("x = 41").await.status, "ok");
    let c = env.container(&id).expect("container");
    let (cid, ip) = (c["Id"].as_str().unwrap().to_owned(), env.ip(&c));

    let (ok, _, err) = docker(&["network", "disconnect", &env.network, &cid]);
    assert!(ok, "{err}");
    assert_eq!(env.ip(&env.container(&id).unwrap()), "", "off the network");
    // A request while the kernel is unreachable: it stays queued in the gateway's sockets.
    let pending = k
        .execute_with(
            json!({"code": "x + 1", "silent": false, "store_history": true,
            "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Back on the network at the same address: the gateway's endpoints (and its TCP
    // connections to the kernel's ports) are bound to that address.
    let (ok, _, err) = docker(&["network", "connect", "--ip", &ip, &env.network, &cid]);
    assert!(ok, "{err}");

    let out = k.collect(&pending).await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("42", "ok"),
        "{out:?}"
    );
    assert_eq!(
        k.execute("x").await.text,
        "41",
        "the same kernel, its state intact"
    );
    let (_, m) = model(&gw, &id).await;
    assert_ne!(m["execution_state"], "dead", "{m}");
    // A new connection works too.
    let mut k2 = gw.connect(&id, true).await;
    assert_eq!(k2.execute("x * 2").await.text, "82");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_kernel_is_reattached_after_the_gateway_is_killed() {
    let env = DockerEnv::new();
    let state = std::env::temp_dir().join(format!("gl-state-{}", uuid::Uuid::new_v4()));
    let state_arg = state.to_string_lossy().into_owned();
    let args = ["--state-dir", &state_arg, "--restart-limit", "0"];
    let first = env.gateway(&args);
    let id = first.start_kernel("docker_py").await;
    let mut k = first.connect(&id, false).await;
    assert_eq!(k.execute("x = 41").await.status, "ok");
    drop(k);
    let dir = first.stop_with(nix::sys::signal::Signal::SIGKILL);
    let c = env
        .container(&id)
        .expect("the container outlives the gateway");
    assert_eq!(c["State"]["Running"], true);

    let second = env.gateway_in(Some(dir), &args);
    let (_, list) = second.json("GET", "/api/kernels", None).await;
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|m| m["id"] == id.as_str())),
        "{list}\n{}",
        second.log()
    );
    let mut k = second.connect(&id, true).await;
    let out = k.execute("x + 1").await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("42", "ok"),
        "{out:?}"
    );
    // The re-attached container is followed: its death is noticed.
    let (ok, _, err) = docker(&["kill", c["Id"].as_str().unwrap()]);
    assert!(ok, "{err}");
    let mut last = Value::Null;
    for _ in 0..600 {
        let (_, m) = model(&second, &id).await;
        last = m;
        if last["execution_state"] == "dead" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["execution_state"], "dead", "{last}\n{}", second.log());
    drop(second);
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_kernels_are_confined() {
    let prefix = format!("gl{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // Dropped last of all (after the gateway and, with `env`, its kernels' containers).
    let _networks = UserNetworks(prefix.clone());
    let env = DockerEnv::new();
    let gw = env.gateway(&["--docker-name-prefix", &prefix, "--docker-network-per-user"]);
    // No capability, no new privileges, a read-only root with a private /tmp.
    let start =
        |user: &str| json!({"name": "docker_py", "env": {"KERNEL_USERNAME": user}}).to_string();
    let (status, alice) = gw.json("POST", "/api/kernels", Some(&start("alice"))).await;
    assert_eq!(status, 201, "{alice}\n{}", gw.log());
    let alice = alice["id"].as_str().unwrap().to_owned();
    let c = env.container(&alice).expect("alice's container");
    let hc = &c["HostConfig"];
    assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
    assert!(
        hc["SecurityOpt"]
            .as_array()
            .is_some_and(|o| o.iter().any(|v| v == "no-new-privileges")),
        "{hc}"
    );
    assert_eq!(hc["ReadonlyRootfs"], true, "{hc}");
    let mut k = gw.connect(&alice, false).await;
    let out = k
        .execute("import os; open('/tmp/w', 'w').write('x'); print(os.access('/etc', os.W_OK), os.getuid())")
        .await;
    assert_eq!(out.text.trim(), "False 1000", "{out:?}");

    // A request may only name an allowed image.
    let body = json!({"name": "docker_py", "env": {"KERNEL_IMAGE": "busybox:latest"}}).to_string();
    let (status, err) = gw.json("POST", "/api/kernels", Some(&body)).await;
    assert_eq!(status, 500, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not an allowed image"),
        "{err}"
    );

    // Each user's kernels on their own network: alice's second kernel reaches her first,
    // bob's does not.
    let mut ids = Vec::new();
    for user in ["alice", "bob"] {
        let (status, m) = gw.json("POST", "/api/kernels", Some(&start(user))).await;
        assert_eq!(status, 201, "{m}\n{}", gw.log());
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    let (alice2, bob) = (ids[0].clone(), ids[1].clone());
    let address = |id: &str| {
        let c = env.container(id).unwrap();
        c["NetworkSettings"]["Networks"]
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|n| n["IPAddress"].as_str())
            .unwrap()
            .to_owned()
    };
    let target = address(&alice);
    k.execute("import socket; s = socket.socket(); s.bind(('0.0.0.0', 12345)); s.listen(8)")
        .await;
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('{target}', 12345), timeout=3).close(); print('reached')\nexcept OSError as e:\n    print('blocked')"
    );
    let mut k2 = gw.connect(&alice2, false).await;
    assert_eq!(k2.execute(&probe).await.text.trim(), "reached", "same user");
    let mut kb = gw.connect(&bob, false).await;
    assert_eq!(
        kb.execute(&probe).await.text.trim(),
        "blocked",
        "another user"
    );
    for id in [&alice, &alice2, &bob] {
        let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 204);
    }
    drop(gw);
}

/// Removes, when dropped (also when a test fails), the per-user networks a gateway with
/// `--docker-name-prefix` made.
struct UserNetworks(String);

impl Drop for UserNetworks {
    fn drop(&mut self) {
        let filter = format!("name={}-user-", self.0);
        let (_, nets, _) = docker(&["network", "ls", "--quiet", "--filter", &filter]);
        for n in nets.lines().filter(|l| !l.is_empty()) {
            let _ = docker(&["network", "rm", n]);
        }
    }
}
