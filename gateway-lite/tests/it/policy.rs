//! The operator's side of gateway-lite: kernels that survive a gateway restart (SIGTERM and
//! `kill -9`), limits in total and per user, idle culling, automatic restart of a dead
//! kernel, and the Prometheus metrics that count all of it. Real gateway, real launcher,
//! real ipykernel.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, Gateway, Options, processes_of, wait_no_processes};

fn opts(args: &[&str]) -> Options {
    Options {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    }
}

/// Polls `GET /api/kernels/{id}` until `pred` holds for the model (bounded by WAIT).
async fn wait_model(
    gw: &Gateway,
    id: &str,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (status, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        if pred(status, &model) {
            return model;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kernel {id} never {what}: {status} {model}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_as(gw: &Gateway, user: &str) -> (u16, Value) {
    let body = json!({"name": "py", "env": {"KERNEL_USERNAME": user}}).to_string();
    gw.json("POST", "/api/kernels", Some(&body)).await
}

fn ids(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn kernels_survive_gateway_restarts() {
    let state = std::env::temp_dir().join(format!("gl-state-{}", uuid::Uuid::new_v4()));
    let state_arg = state.to_string_lossy().into_owned();
    let first = Gateway::start(opts(&["--state-dir", &state_arg]));
    let a = first.start_kernel("py").await;
    let b = first.start_kernel("py_eg").await;
    for id in [&a, &b] {
        let mut c = first.connect(id, false).await;
        assert_eq!(c.execute("x = 41").await.status, "ok");
    }
    let dir = first.stop_with(Signal::SIGTERM);
    for id in [&a, &b] {
        assert!(
            !processes_of(id).is_empty(),
            "kernel {id} should outlive a SIGTERM'd gateway"
        );
    }

    let second = Gateway::start(Options {
        dir: Some(dir),
        ..opts(&["--state-dir", &state_arg])
    });
    let (status, list) = second.json("GET", "/api/kernels", None).await;
    assert_eq!(status, 200);
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids(&list), want, "{}", second.log());
    for id in [&a, &b] {
        let mut c = second.connect(id, true).await;
        let out = c.execute("x + 1").await;
        assert_eq!(
            (out.text.as_str(), out.status.as_str()),
            ("42", "ok"),
            "{out:?}"
        );
        assert_eq!(c.execute("x = 43").await.status, "ok");
    }
    // Interrupt and restart work on re-attached kernels too.
    let mut c = second.connect(&a, false).await;
    let sleep = c.start_sleep().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, body) = second
        .http("POST", &format!("/api/kernels/{a}/interrupt"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.collect(&sleep).await.ename, "KeyboardInterrupt");
    // A cell that runs across the next gateway's start.
    c.start_sleep().await;
    drop(c);

    let dir = second.stop_with(Signal::SIGKILL);
    // Kernel b dies while no gateway runs: the next one must not claim it.
    for pid in processes_of(&b) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(wait_no_processes(&b).await.is_empty());

    let third = Gateway::start(Options {
        dir: Some(dir),
        ..opts(&["--state-dir", &state_arg, "--shutdown-kernels-on-exit"])
    });
    let (_, list) = third.json("GET", "/api/kernels", None).await;
    assert_eq!(ids(&list), vec![a.clone()], "{}", third.log());
    let (status, _) = third.json("GET", &format!("/api/kernels/{b}"), None).await;
    assert_eq!(status, 404);
    // The interrupt of a re-attached busy kernel goes out at once: it does not wait for the
    // readiness probe, which sits behind the running cell (that wait would be 30 s).
    let asked = std::time::Instant::now();
    let (status, _, body) = third
        .http("POST", &format!("/api/kernels/{a}/interrupt"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "interrupt took {:?}",
        asked.elapsed()
    );
    let mut c = third.connect(&a, false).await;
    let out = c.execute("x").await;
    assert_eq!(out.text, "43", "{out:?}");
    drop(c);
    let (_, metrics) = {
        let (s, _, body) = third.http("GET", "/metrics", None).await;
        (s, body)
    };
    assert!(
        metrics.contains("gateway_lite_kernels_reattached_total 1\n"),
        "{metrics}"
    );

    // A second gateway on the same state directory is refused, naming the option.
    let clash = std::process::Command::new(env!("CARGO_BIN_EXE_gateway-lite"))
        .args(["--port", "0", "--state-dir", &state_arg, "--launcher"])
        .arg(support::launcher())
        .output()
        .unwrap();
    assert!(!clash.status.success());
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(err.contains("--state-dir"), "{err}");

    drop(third);
    assert!(
        wait_no_processes(&a).await.is_empty(),
        "--shutdown-kernels-on-exit stops kernels"
    );
    let _ = std::fs::remove_dir_all(state);
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_limits_in_total_and_per_user() {
    let gw = Gateway::start(opts(&["--max-kernels", "2", "--max-kernels-per-user", "1"]));
    let (status, alice) = start_as(&gw, "alice").await;
    assert_eq!(status, 201, "{alice}");
    let (status, again) = start_as(&gw, "alice").await;
    assert_eq!(status, 403, "{again}");
    assert!(
        again["message"].as_str().unwrap().contains("alice"),
        "{again}"
    );
    let (status, bob) = start_as(&gw, "bob").await;
    assert_eq!(status, 201, "{bob}");
    let (status, carol) = start_as(&gw, "carol").await;
    assert_eq!(status, 403, "total limit: {carol}");
    let alice_id = alice["id"].as_str().unwrap();
    let (status, _, _) = gw
        .http("DELETE", &format!("/api/kernels/{alice_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, carol) = start_as(&gw, "carol").await;
    assert_eq!(status, 201, "a freed place is usable: {carol}");
    let (_, _, metrics) = gw.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains("gateway_lite_kernel_starts_total{outcome=\"refused\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_lite_kernel_starts_total{outcome=\"ok\"} 3\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_starts_respect_the_limit() {
    let gw = Gateway::start(opts(&["--max-kernels", "2"]));
    let starts = (0..5).map(|i| {
        let gw = &gw;
        async move { start_as(gw, &format!("u{i}")).await.0 }
    });
    let mut codes = futures_util::future::join_all(starts).await;
    codes.sort();
    assert_eq!(
        codes,
        vec![201, 201, 403, 403, 403],
        "launches in flight count"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_kernels_are_culled_connected_ones_are_not() {
    let gw = Gateway::start(opts(&["--cull-idle-timeout", "2", "--cull-interval", "1"]));
    let lonely = gw.start_kernel("py").await;
    let watched = gw.start_kernel("py").await;
    let mut c = gw.connect(&watched, false).await;
    assert_eq!(c.execute("1").await.status, "ok");
    wait_model(&gw, &lonely, "culled", |s, _| s == 404).await;
    assert!(wait_no_processes(&lonely).await.is_empty());
    let (status, model) = gw
        .json("GET", &format!("/api/kernels/{watched}"), None)
        .await;
    assert_eq!(status, 200, "a connected kernel is not culled: {model}");
    assert_eq!(c.execute("2").await.text, "2");
    let (_, _, metrics) = gw.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains("gateway_lite_kernels_culled_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_kernel_is_restarted_under_the_same_id() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("x = 1").await.status, "ok");
    let before = processes_of(&id);
    for pid in &before {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // The client is told "restarting", never "dead" (JupyterLab would give the kernel up).
    loop {
        let m = c
            .recv()
            .await
            .expect("status restarting before the socket closes");
        if m.channel == "iopub" && m.msg_type() == "status" {
            let state = m.content["execution_state"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            assert_ne!(
                state, "dead",
                "an automatic restart is not a death to clients"
            );
            if state == "restarting" {
                break;
            }
        }
    }
    wait_model(&gw, &id, "restarted", |s, m| {
        s == 200 && m["execution_state"] == "idle" && {
            let now = processes_of(&id);
            !now.is_empty() && now.iter().all(|p| !before.contains(p))
        }
    })
    .await;
    drop(c);
    let mut c = gw.connect(&id, false).await;
    assert_eq!(
        c.execute("x").await.ename,
        "NameError",
        "a new kernel process"
    );
    assert_eq!(c.execute("3").await.text, "3");
    let (_, _, metrics) = gw.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains("gateway_lite_kernel_restarts_total{cause=\"death\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_lite_kernel_deaths_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_restart_limit_zero_a_dead_kernel_stays_dead() {
    let gw = Gateway::start(opts(&["--restart-limit", "0"]));
    let id = gw.start_kernel("py").await;
    for pid in processes_of(&id) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_model(&gw, &id, "reported dead", |s, m| {
        s == 200 && m["execution_state"] == "dead"
    })
    .await;
    assert!(wait_no_processes(&id).await.is_empty());
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_token() {
    let gw = Gateway::start(Options {
        token: Some("s3cret"),
        ..Options::default()
    });
    let (status, _, _) = gw.raw("GET", "/metrics", "", None).await;
    assert_eq!(status, 401);
    let (status, headers, body) = gw.http("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("text/plain"),
        "{headers:?}"
    );
    assert!(body.contains("# TYPE gateway_lite_kernels gauge"), "{body}");
    assert!(body.contains("process_resident_memory_bytes "), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupt_right_after_the_start_does_not_kill_the_kernel() {
    // POST returns as soon as the launcher reports, well before ipykernel ignores SIGINT
    // between cells; a SIGINT then would end the kernel. With no automatic restart, a death
    // would show.
    let gw = Gateway::start(opts(&["--restart-limit", "0"]));
    let id = gw.start_kernel("py").await;
    let (status, _, body) = gw
        .http("POST", &format!("/api/kernels/{id}/interrupt"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 200);
    assert_ne!(model["execution_state"], "dead", "{model}\n{}", gw.log());
    let mut c = gw.connect(&id, true).await;
    let out = c.execute("1+1").await;
    assert_eq!(out.text, "2", "{out:?}\n{}", gw.log());

    // An interrupt waiting for a kernel that is shut down meanwhile ends with the shutdown.
    let id = gw.start_kernel("py").await;
    let (interrupt_url, kernel_url) = (
        format!("/api/kernels/{id}/interrupt"),
        format!("/api/kernels/{id}"),
    );
    let (interrupt, delete) = tokio::join!(
        gw.http("POST", &interrupt_url, None),
        gw.http("DELETE", &kernel_url, None),
    );
    assert_eq!(delete.0, 204, "{}", delete.2);
    assert!(
        [204, 404, 409].contains(&interrupt.0),
        "{} {}",
        interrupt.0,
        interrupt.2
    );
}

/// A client that connects at once (as JupyterLab does) and interrupts its first long cell is
/// answered at once. The readiness probe used to give up when the kernel's ports were not
/// bound yet, and every signal interrupt of that kernel then waited its 30 s limit (in about
/// half of fresh kernels); five kernels in a row make that visible.
#[tokio::test(flavor = "multi_thread")]
async fn interrupting_a_fresh_kernels_first_cell_is_not_held() {
    let gw = Gateway::start(Options::default());
    for _ in 0..5 {
        let id = gw.start_kernel("py").await;
        let mut c = gw.connect(&id, false).await;
        assert_eq!(c.execute("1+1").await.text, "2");
        let sleep = c.start_sleep().await;
        let asked = std::time::Instant::now();
        let (status, _, body) = gw
            .http("POST", &format!("/api/kernels/{id}/interrupt"), None)
            .await;
        let took = asked.elapsed();
        assert_eq!(status, 204, "{body}");
        assert_eq!(c.collect(&sleep).await.ename, "KeyboardInterrupt");
        // Well under the 30 s a held interrupt waits; generous for a loaded machine.
        assert!(
            took < Duration::from_secs(15),
            "interrupt took {took:?}\n{}",
            gw.log()
        );
        let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 204);
    }
}
