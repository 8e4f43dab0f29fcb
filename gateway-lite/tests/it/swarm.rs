//! Swarm kernelspecs as real Swarm services, with gateway-lite itself running as a
//! container on a test-made attachable overlay network (the host cannot route to overlay
//! addresses; a gateway on Swarm is also how it is deployed): the image from
//! `scripts/dist.sh` (`KL_DIST_DIR`), the Docker socket, a kernelspec directory and a state
//! volume mounted, its HTTP port published on 127.0.0.1, `--response-ip` the overlay's subnet
//! (the gateway finds its own address in it, as a gateway run as a Swarm service must).
//!
//! The whole scenario is one test function: a Swarm is machine-wide state, and the test
//! creates one (`docker swarm init --advertise-addr 127.0.0.1`) only when none is active and
//! leaves it only if it created it. Two test processes (nextest runs each test in its own)
//! doing that at once could leave a Swarm under the other's feet, so there is exactly one.
//! Everything else it makes (network, volume, containers, services) carries a label unique
//! to the run and is removed by it, failed or not.

use std::process::Command;

use serde_json::{Value, json};

use crate::docker::{docker, kernel_image, until};
use crate::support::{Gateway, WAIT};

/// Runs `docker ARGS` and panics with its stderr unless it succeeds; its stdout.
fn docker_ok(args: &[&str]) -> String {
    let (ok, out, err) = docker(args);
    assert!(ok, "docker {args:?}: {err}");
    out
}

/// What this test made, removed on drop.
struct SwarmEnv {
    tag: String,
    label: String,
    network: String,
    subnet_prefix: String,
    volume: String,
    gateway: String,
    specs: std::path::PathBuf,
    left_swarm: bool,
}

impl SwarmEnv {
    fn new() -> SwarmEnv {
        let (ok, state, err) = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        assert!(ok, "Docker is required for this test: {err}");
        let created = state != "active";
        if created {
            docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        }
        let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut env = SwarmEnv {
            label: format!("gateway-lite-test={tag}"),
            network: format!("gl-it-swarm-{tag}"),
            subnet_prefix: String::new(),
            volume: format!("gl-it-swarm-state-{tag}"),
            gateway: format!("gl-it-swarm-gw-{tag}"),
            specs: std::env::temp_dir().join(format!("gl-it-swarm-{tag}")),
            tag,
            left_swarm: created,
        };
        // A free /24 in 10.0.0.0/8: the engine refuses overlapping pools.
        let mut last = String::new();
        for attempt in 0..40u32 {
            let n = u32::from_str_radix(&env.tag[..8], 16)
                .unwrap_or(0)
                .wrapping_add(attempt * 7919);
            let prefix = format!("10.{}.{}", 100 + n % 150, (n / 150) % 256);
            let (ok, _, err) = docker(&[
                "network",
                "create",
                "--driver",
                "overlay",
                "--attachable",
                "--subnet",
                &format!("{prefix}.0/24"),
                "--label",
                &env.label,
                &env.network,
            ]);
            if ok {
                env.subnet_prefix = prefix;
                return env;
            }
            last = err;
        }
        panic!("cannot create an overlay network: {last}");
    }

    /// The overlay's subnet: the gateway takes its own address in it (`--response-ip`).
    fn subnet(&self) -> String {
        format!("{}.0/24", self.subnet_prefix)
    }

    /// Services of this test, or of one kernel.
    fn services(&self, kernel_id: Option<&str>) -> Vec<String> {
        let mut args = vec![
            "service".to_owned(),
            "ls".into(),
            "--quiet".into(),
            "--filter".into(),
            format!("label={}", self.label),
        ];
        if let Some(id) = kernel_id {
            args.extend(["--filter".into(), format!("label=kernel_id={id}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn service(&self, kernel_id: &str) -> Option<Value> {
        let id = self.services(Some(kernel_id)).into_iter().next()?;
        let (ok, out, _) = docker(&["service", "inspect", &id]);
        ok.then(|| serde_json::from_str::<Value>(&out).ok()?.get(0).cloned())
            .flatten()
    }

    /// The kernel's task container (on this node).
    fn task_container(&self, kernel_id: &str) -> Option<Value> {
        let out = docker_ok(&[
            "ps",
            "--quiet",
            "--no-trunc",
            "--filter",
            &format!("label=kernel_id={kernel_id}"),
            "--filter",
            &format!("label={}", self.label),
        ]);
        let id = out.lines().next()?.to_owned();
        let (ok, out, _) = docker(&["inspect", "--type", "container", &id]);
        ok.then(|| serde_json::from_str::<Value>(&out).ok()?.get(0).cloned())
            .flatten()
    }

    /// Starts the gateway container; a client for it.
    /// `runs`: how many times the container will have started (1, then 2 after a restart).
    async fn start_gateway(&self, token: &str, image: &str, runs: usize) -> Gateway {
        let kernel = kernel_image();
        let spec = |config: Value| {
            json!({
                "argv": ["python", "/usr/local/share/jupyter/kernels/docker/scripts/launch_docker.py",
                    "--RemoteProcessProxy.kernel-id", "{kernel_id}",
                    "--RemoteProcessProxy.port-range", "{port_range}",
                    "--RemoteProcessProxy.response-address", "{response_address}",
                    "--RemoteProcessProxy.public-key", "{public_key}"],
                "display_name": "Python on Swarm", "language": "python",
                "metadata": {"process_proxy": {
                    "class_name": "enterprise_gateway.services.processproxies.docker_swarm.DockerSwarmProcessProxy",
                    "config": config}}
            })
        };
        for (name, doc) in [
            (
                "swarm_py",
                spec(json!({"image_name": kernel, "constraints": ["node.role==manager"]})),
            ),
            (
                "swarm_nowhere",
                spec(json!({"image_name": kernel, "constraints": "node.labels.gl-it-absent==yes"})),
            ),
            // gateway_provisioners' form: its provisioner name and the plain option names.
            (
                "gp_swarm",
                json!({
                    "argv": ["python", "/usr/local/share/jupyter/kernels/gp/scripts/launch_docker.py",
                        "--kernel-id", "{kernel_id}", "--port-range", "{port_range}",
                        "--response-address", "{response_address}", "--public-key", "{public_key}"],
                    "display_name": "Python on Swarm (gateway_provisioners)", "language": "python",
                    "metadata": {"kernel_provisioner": {
                        "provisioner_name": "docker-swarm-provisioner",
                        "config": {"image_name": kernel}}}
                }),
            ),
        ] {
            let d = self.specs.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("kernel.json"), doc.to_string()).unwrap();
        }
        let (ok, _, _) = docker(&["container", "inspect", &self.gateway]);
        if !ok {
            // The socket's group, so the gateway's user (65532) may use it.
            let gid = crate::support::run_ok(
                Command::new("stat").args(["-c", "%g", "/var/run/docker.sock"]),
                "install coreutils",
            );
            let gid = gid.trim();
            let specs = format!("{}:/specs:ro", self.specs.display());
            let state = format!("{}:/var/lib/gateway-lite", self.volume);
            let token_env = format!("GATEWAY_LITE_AUTH_TOKEN={token}");
            let subnet = self.subnet();
            let prefix = format!("gl-it-{}", self.tag);
            docker_ok(&[
                "run",
                "-d",
                "--name",
                &self.gateway,
                "--label",
                &self.label,
                "--network",
                &self.network,
                "-p",
                "127.0.0.1::8888",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                "--group-add",
                gid,
                "-v",
                &specs,
                "-v",
                &state,
                "-e",
                &token_env,
                "-e",
                "GATEWAY_LITE_LOG=info,gateway_lite=debug",
                image,
                "--ip",
                "0.0.0.0",
                "--port",
                "8888",
                "--kernelspec-dir",
                "/specs",
                "--response-ip",
                &subnet,
                "--swarm-network",
                &self.network,
                "--docker-image",
                &kernel,
                "--docker-label",
                &self.label,
                "--docker-name-prefix",
                &prefix,
                "--restart-limit",
                "0",
                "--kernel-memory-max",
                "1Gi",
            ]);
        } else {
            docker_ok(&["start", &self.gateway]);
        }
        // The published port (it may change when the container is restarted).
        let deadline = std::time::Instant::now() + WAIT;
        let port = loop {
            let (ok, out, _) = docker(&["port", &self.gateway, "8888/tcp"]);
            if let Some(p) = ok
                .then(|| out.lines().next()?.rsplit(':').next()?.parse::<u16>().ok())
                .flatten()
            {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no published port: {}",
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        // Ready when it says so (the published port accepts connections before that, and
        // resets them). A restarted container's log still holds the first run's lines:
        // count them.
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.logs().matches("listening addr=").count() < runs {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway container never listened:\n{}",
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Gateway::external(port, token)
    }

    fn logs(&self) -> String {
        let (_, out, err) = docker(&["logs", "--tail", "200", &self.gateway]);
        format!("{out}\n{err}")
    }
}

impl Drop for SwarmEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("gateway container log:\n{}", self.logs());
        }
        let _ = docker(&["rm", "--force", &self.gateway]);
        for s in self.services(None) {
            let _ = docker(&["service", "rm", &s]);
        }
        // A network is busy until its services' tasks are gone.
        for _ in 0..100 {
            if docker(&["network", "rm", &self.network]).0
                || !docker(&["network", "inspect", &self.network]).0
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = docker(&["volume", "rm", "--force", &self.volume]);
        let _ = std::fs::remove_dir_all(&self.specs);
        if self.left_swarm {
            let _ = docker(&["swarm", "leave", "--force"]);
        }
    }
}

async fn start(gw: &Gateway, spec: &str, env: Value) -> (u16, Value) {
    let body = json!({"name": spec, "env": env}).to_string();
    gw.json("POST", "/api/kernels", Some(&body)).await
}

async fn wait_dead(gw: &Gateway, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        if m["execution_state"] == "dead" {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never dead: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swarm_kernels_run_as_services_with_the_gateway_on_the_overlay() {
    let d = crate::dist::dist();
    let image = format!("gateway-lite:{}", d.version);
    let env = SwarmEnv::new();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let gw = env.start_gateway(&token, &image, 1).await;

    // A kernel as a service: one replica, no restarts, dnsrr, EG's labels, the user, the
    // resources, on the overlay.
    let (status, m) = start(
        &gw,
        "swarm_py",
        json!({"KERNEL_MEMORY_LIMIT": "512Mi", "KERNEL_CPUS": "250m"}),
    )
    .await;
    assert_eq!(status, 201, "{m}\n{}", env.logs());
    let id = m["id"].as_str().unwrap().to_owned();
    let s = env.service(&id).expect("the kernel's service");
    let spec = &s["Spec"];
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 1, "{spec}");
    assert_eq!(spec["EndpointSpec"]["Mode"], "dnsrr", "{spec}");
    assert_eq!(spec["Labels"]["component"], "kernel");
    assert_eq!(spec["Labels"]["app"], "gateway-lite");
    let task = &spec["TaskTemplate"];
    assert_eq!(task["RestartPolicy"]["Condition"], "none", "{task}");
    assert_eq!(task["ContainerSpec"]["User"], "1000:100");
    assert_eq!(
        task["Resources"]["Limits"]["MemoryBytes"],
        512 << 20,
        "{task}"
    );
    assert_eq!(
        task["Resources"]["Reservations"]["NanoCPUs"], 250_000_000,
        "{task}"
    );
    assert_eq!(
        task["Placement"]["Constraints"],
        json!(["node.role==manager"])
    );
    let c = env.task_container(&id).expect("the task's container");
    assert_eq!(c["Config"]["Labels"]["component"], "kernel", "{c}");
    let first_service = s["ID"].as_str().unwrap().to_owned();

    let mut k = gw.connect(&id, true).await;
    let out = k
        .execute("import os; x = 5; print(os.getuid(), os.environ['KERNEL_ID'])")
        .await;
    assert_eq!(
        out.text.trim(),
        format!("1000 {id}"),
        "{out:?}\n{}",
        env.logs()
    );

    // Interrupt (over the launcher's comm port, across the overlay).
    let sleep = k
        .execute_with(
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
    assert_eq!(k.collect(&sleep).await.ename, "KeyboardInterrupt");
    assert_eq!(k.execute("x").await.text, "5");

    // Restart: a new service, the variable gone.
    let (status, m) = gw
        .json("POST", &format!("/api/kernels/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{m}\n{}", env.logs());
    let s = env.service(&id).expect("a service after the restart");
    assert_ne!(
        s["ID"].as_str(),
        Some(first_service.as_str()),
        "a new service"
    );
    let mut k = gw.connect(&id, true).await;
    // `y` first: after an error ipykernel aborts requests queued right behind it.
    assert_eq!(k.execute("y = 41").await.status, "ok");
    assert_eq!(k.execute("x").await.ename, "NameError");
    drop(k);

    // Re-attach: the gateway container restarts (its kernels keep running; the state is on
    // its volume) and finds the service again.
    docker_ok(&["stop", "--time", "20", &env.gateway]);
    assert!(
        env.service(&id).is_some(),
        "the service outlives the gateway"
    );
    let gw = env.start_gateway(&token, &image, 2).await;
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert!(
        list.as_array()
            .is_some_and(|l| l.iter().any(|m| m["id"] == id.as_str())),
        "{list}\n{}",
        env.logs()
    );
    let mut k = gw.connect(&id, true).await;
    assert_eq!(k.execute("y + 1").await.text, "42", "{}", env.logs());
    drop(k);

    // Shutdown removes the service.
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    until("the service is removed", || {
        env.services(Some(&id)).is_empty().then_some(())
    })
    .await;

    // A kernel killed at its memory limit is dead with the reason OOM.
    let (status, m) = start(&gw, "swarm_py", json!({"KERNEL_MEMORY_LIMIT": "192Mi"})).await;
    assert_eq!(status, 201, "{m}\n{}", env.logs());
    let oom = m["id"].as_str().unwrap().to_owned();
    let mut k = gw.connect(&oom, true).await;
    k.execute_with(json!({"code": "b = b'x' * (400 * 1024 * 1024)", "silent": false}))
        .await;
    let m = wait_dead(&gw, &oom).await;
    assert!(
        m["reason"].as_str().is_some_and(|r| r.starts_with("OOM")),
        "{m}\n{}",
        env.logs()
    );
    until("the dead kernel's service is removed", || {
        env.services(Some(&oom)).is_empty().then_some(())
    })
    .await;

    // Refused requests: a clear error and nothing left.
    let cases = [
        (
            "swarm_nowhere",
            json!({}),
            500,
            vec!["no suitable node", "node.labels.gl-it-absent==yes"],
        ),
        (
            "swarm_py",
            json!({"KERNEL_SWARM_CONSTRAINTS": "node.labels.gl-it-absent==yes"}),
            500,
            vec!["no suitable node", "KERNEL_SWARM_CONSTRAINTS"],
        ),
        (
            "swarm_py",
            json!({"KERNEL_SWARM_CONSTRAINTS": "gpu"}),
            400,
            vec!["KERNEL_SWARM_CONSTRAINTS", "has no == or !="],
        ),
        (
            "swarm_py",
            json!({"KERNEL_MEMORY_LIMIT": "2Gi"}),
            400,
            vec![
                "KERNEL_MEMORY_LIMIT=2Gi",
                "maximum 1Gi",
                "--kernel-memory-max",
            ],
        ),
        (
            "swarm_py",
            json!({"KERNEL_MEMORY": "1.5.5Gi"}),
            400,
            vec!["KERNEL_MEMORY=\"1.5.5Gi\""],
        ),
        (
            "swarm_py",
            json!({"KERNEL_UID": "0"}),
            500,
            vec!["KERNEL_UID=0"],
        ),
        (
            "swarm_py",
            json!({"KERNEL_IMAGE": "busybox:latest"}),
            500,
            vec!["not an allowed image"],
        ),
        // The launcher in the task refuses the language and exits: the start fails at once
        // with the task's log (read through the service's logs) and exit code.
        (
            "swarm_py",
            json!({"KERNEL_LANGUAGE": "cobol"}),
            500,
            vec!["cobol", "exit code 64"],
        ),
        // No node advertises GPUs: Swarm finds no node with the resources.
        (
            "swarm_py",
            json!({"KERNEL_GPUS": "1"}),
            500,
            vec!["no suitable node"],
        ),
    ];
    for (spec, request, want_status, wants) in cases {
        let (status, body) = start(&gw, spec, request.clone()).await;
        assert_eq!(status, want_status, "{spec} {request}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        for want in wants {
            assert!(
                message.contains(want),
                "{request}: {want:?} not in {message}"
            );
        }
        assert_eq!(
            env.services(None),
            Vec::<String>::new(),
            "{request}: no service left"
        );
    }
    // A gateway_provisioners spec runs as a service too.
    let (status, m) = start(&gw, "gp_swarm", json!({})).await;
    assert_eq!(status, 201, "{m}\n{}", env.logs());
    let gp = m["id"].as_str().unwrap().to_owned();
    let s = env
        .service(&gp)
        .expect("the gateway_provisioners kernel's service");
    assert_eq!(s["Spec"]["Labels"]["kernel_id"], gp.as_str());
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{gp}"), None).await;
    assert_eq!(status, 204, "{body}");
    until("its service is removed", || {
        env.services(Some(&gp)).is_empty().then_some(())
    })
    .await;

    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(
        list.as_array()
            .map(|l| l.iter().filter(|m| m["execution_state"] != "dead").count()),
        Some(0),
        "{list}"
    );
}
