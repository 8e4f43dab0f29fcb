//! Per-kernel resources of Docker kernels (`KERNEL_CPUS`, `KERNEL_MEMORY`, `KERNEL_GPUS` and
//! their `_LIMIT` forms) against the real Docker Engine: what the container gets, the
//! gateway's defaults and maximums, a kernel killed at its memory limit reported dead with
//! the reason OOM, and requests refused with nothing left running.

use serde_json::{Value, json};

use crate::docker::{DockerEnv, docker, model, until};
use crate::support::Gateway;

/// Starts a kernel of `spec` with `env`; the status and the response body.
async fn start(gw: &Gateway, spec: &str, env: Value) -> (u16, Value) {
    let body = json!({"name": spec, "env": env}).to_string();
    gw.json("POST", "/api/kernels", Some(&body)).await
}

/// The containers of this test (by its label).
fn containers(env: &DockerEnv) -> String {
    let (ok, ids, err) = docker(&[
        "ps",
        "--all",
        "--quiet",
        "--filter",
        &format!("label={}", env.label),
    ]);
    assert!(ok, "{err}");
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_kernel_resources_and_death_by_oom() {
    let env = DockerEnv::new();
    let gw = env.gateway(&[
        "--restart-limit",
        "0",
        "--kernel-memory-max",
        "1Gi",
        "--kernel-cpus-max",
        "2",
        "--kernel-memory-limit-default",
        "512Mi",
    ]);
    // Asked for: reservations and limits in Kubernetes' syntax.
    let (status, m) = start(
        &gw,
        "docker_py",
        json!({"KERNEL_MEMORY": "100Mi", "KERNEL_MEMORY_LIMIT": "192Mi",
               "KERNEL_CPUS": "500m", "KERNEL_CPUS_LIMIT": "1.5"}),
    )
    .await;
    assert_eq!(status, 201, "{m}\n{}", gw.log());
    let id = m["id"].as_str().unwrap().to_owned();
    let c = env.container(&id).expect("the kernel's container");
    let hc = &c["HostConfig"];
    assert_eq!(hc["Memory"], 192 << 20, "{hc}");
    assert_eq!(hc["MemoryReservation"], 100 << 20, "{hc}");
    assert_eq!(hc["NanoCpus"], 1_500_000_000u64, "{hc}");
    assert_eq!(hc["CpuShares"], 512, "{hc}");

    // The gateway's default limit for a request without one.
    let (status, m2) = start(&gw, "docker_py", json!({})).await;
    assert_eq!(status, 201, "{m2}\n{}", gw.log());
    let other = m2["id"].as_str().unwrap().to_owned();
    let c2 = env
        .container(&other)
        .expect("the second kernel's container");
    assert_eq!(c2["HostConfig"]["Memory"], 512 << 20);
    let (status, _, _) = gw
        .http("DELETE", &format!("/api/kernels/{other}"), None)
        .await;
    assert_eq!(status, 204);

    // A cell that writes past the limit: the kernel is killed, and said to be, with OOM.
    let mut k = gw.connect(&id, true).await;
    assert_eq!(k.execute("x = 1").await.status, "ok");
    k.execute_with(json!({"code": "b = b'x' * (400 * 1024 * 1024)", "silent": false}))
        .await;
    let dead_status = loop {
        let m = k
            .recv()
            .await
            .expect("the socket stays open until the kernel is dead");
        if m.msg_type() == "status" && m.content["execution_state"] == "dead" {
            break m.content;
        }
    };
    assert!(
        dead_status["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("OOM")),
        "the clients are told why: {dead_status}"
    );
    let (_, m) = model(&gw, &id).await;
    assert_eq!(m["execution_state"], "dead", "{m}");
    let reason = m["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("OOM"), "{m}");
    assert!(
        reason.contains("exit code 137") || reason.contains("signal 9"),
        "{m}"
    );
    gw.wait_log("OOM").await;
    until("the dead kernel's container is removed", || {
        env.container(&id).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_bad_requests_are_refused_and_leave_nothing() {
    let env = DockerEnv::new();
    let gw = env.gateway(&[
        "--kernel-memory-max",
        "1Gi",
        "--kernel-cpus-max",
        "2",
        "--kernel-gpus-max",
        "1",
    ]);
    // (env, status, what the message must say)
    let cases = [
        (
            json!({"KERNEL_MEMORY_LIMIT": "2Gi"}),
            400,
            vec![
                "KERNEL_MEMORY_LIMIT=2Gi",
                "maximum 1Gi",
                "--kernel-memory-max",
            ],
        ),
        (
            json!({"KERNEL_CPUS": "3"}),
            400,
            vec!["KERNEL_CPUS=3", "maximum 2", "--kernel-cpus-max"],
        ),
        (
            json!({"KERNEL_GPUS_LIMIT": "2"}),
            400,
            vec!["KERNEL_GPUS_LIMIT=2", "--kernel-gpus-max"],
        ),
        (
            json!({"KERNEL_MEMORY": "lots"}),
            400,
            vec!["KERNEL_MEMORY=\"lots\"", "512Mi"],
        ),
        (
            json!({"KERNEL_MEMORY": "512Mi", "KERNEL_MEMORY_LIMIT": "256Mi"}),
            400,
            vec!["above KERNEL_MEMORY_LIMIT 256Mi"],
        ),
        (json!({"KERNEL_UID": "0"}), 500, vec!["KERNEL_UID=0"]),
        (
            json!({"KERNEL_IMAGE": "busybox:latest"}),
            500,
            vec!["not an allowed image", "--docker-image"],
        ),
        // There is no GPU here: the Engine's refusal is passed on.
        (json!({"KERNEL_GPUS": "1"}), 500, vec!["nvidia"]),
    ];
    for (request, want_status, wants) in cases {
        let (status, body) = start(&gw, "docker_py", request.clone()).await;
        assert_eq!(status, want_status, "{request}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        for want in wants {
            assert!(
                message.contains(want),
                "{request}: {want:?} not in {message}"
            );
        }
    }
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]));
    assert_eq!(containers(&env), "", "no container left");
}
