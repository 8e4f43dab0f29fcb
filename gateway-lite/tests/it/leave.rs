//! Requests whose client leaves before the answer: nothing leaks, nothing wedges.
//!
//! A start whose client hangs up mid-launch is abandoned (its launcher stopped, its place
//! under the limits given back); a restart finishes and leaves the kernel usable; a DELETE
//! still stops the kernel. The state file survives a corrupt copy and reports the kernels it
//! could not re-attach. Real gateway, real launcher, real ipykernel.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{
    Close, Gateway, HangUp, Options, eventually, processes_of, processes_with_env,
    wait_no_processes,
};

/// Sends one whole request over a fresh connection and hangs up (FIN) after `after`.
async fn hang_up(gw: &Gateway, method: &str, path: &str, body: &str, after: Duration) {
    let how = HangUp {
        after,
        whole: true,
        connection_close: false,
        close: Close::Fin,
    };
    gw.hang_up(method, path, Some(body).filter(|b| !b.is_empty()), how)
        .await;
}

async fn metric(gw: &Gateway, line_prefix: &str) -> Option<f64> {
    let (_, _, text) = gw.http("GET", "/metrics", None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_whose_client_leaves_is_abandoned() {
    let gw = Gateway::start(Options::default());
    let mark = format!("KERNEL_MARK={}", uuid::Uuid::new_v4());
    let value = mark.split_once('=').unwrap().1;
    // A launcher that would wait 120 s for nothing: only the client's leaving ends it early.
    let body =
        json!({"name": "silent", "env": {"KERNEL_MARK": value, "KERNEL_LAUNCH_TIMEOUT": "120"}});
    let body = body.to_string();
    let started = hang_up(&gw, "POST", "/api/kernels", &body, Duration::from_secs(2));
    let started = async {
        tokio::join!(started, async {
            eventually("the launcher running", async || {
                let p = processes_with_env(&mark);
                (!p.is_empty(), p)
            })
            .await;
        })
    };
    started.await;
    let left = eventually("the launcher gone", async || {
        let p = processes_with_env(&mark);
        (p.is_empty(), p)
    })
    .await;
    assert!(left.is_empty());
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]), "{}", gw.log());
    assert_eq!(
        metric(&gw, "gateway_lite_kernel_reservations ").await,
        Some(0.0),
        "the reservation was given back"
    );
    assert_eq!(
        metric(
            &gw,
            "gateway_lite_kernel_starts_total{outcome=\"abandoned\"} "
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_whose_client_leaves_still_finishes() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    let before = processes_of(&id);
    hang_up(
        &gw,
        "POST",
        &format!("/api/kernels/{id}/restart"),
        "",
        Duration::from_millis(50),
    )
    .await;
    // The kernel ends up running a new incarnation, and usable.
    eventually("a new incarnation", async || {
        let now = processes_of(&id);
        (
            !now.is_empty() && now.iter().all(|p| !before.contains(p)),
            now,
        )
    })
    .await;
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("6*7").await.text, "42", "{}", gw.log());
    let (status, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 200, "{model}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_whose_client_leaves_still_stops_the_kernel() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    assert!(!processes_of(&id).is_empty());
    hang_up(
        &gw,
        "DELETE",
        &format!("/api/kernels/{id}"),
        "",
        Duration::ZERO,
    )
    .await;
    eventually("the kernel removed", async || {
        let (status, _) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        (status == 404, status)
    })
    .await;
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_state_file_is_kept_aside_and_lost_kernels_are_named() {
    let state = std::env::temp_dir().join(format!("gl-state-{}", uuid::Uuid::new_v4()));
    let state_arg = state.to_string_lossy().into_owned();
    let args = |extra: &[&str]| Options {
        args: ["--state-dir", &state_arg]
            .iter()
            .chain(extra)
            .map(|a| (*a).to_owned())
            .collect(),
        ..Options::default()
    };
    // A kernel whose processes die while no gateway runs is named in the next one's log,
    // with its pid.
    let first = Gateway::start(args(&[]));
    let id = first.start_kernel("py").await;
    let pids = processes_of(&id);
    let dir = first.stop_with(Signal::SIGKILL);
    for pid in &pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(wait_no_processes(&id).await.is_empty());
    let second = Gateway::start(Options {
        dir: Some(dir),
        ..args(&[])
    });
    let (_, list) = second.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]));
    let log = second.log();
    let line = log
        .lines()
        .find(|l| l.contains("not restored") && l.contains(&id))
        .unwrap_or_else(|| panic!("no line names the lost kernel:\n{log}"));
    assert!(line.contains("pid"), "{line}");
    let dir = second.stop_with(Signal::SIGTERM);

    // A state file that is not one: moved aside with a timestamp, reported, and the gateway
    // starts (and serves) all the same.
    std::fs::write(state.join("kernels.json"), b"{ this is not a state file").unwrap();
    let third = Gateway::start(Options {
        dir: Some(dir),
        ..args(&["--shutdown-kernels-on-exit"])
    });
    let (status, list) = third.json("GET", "/api/kernels", None).await;
    assert_eq!((status, list), (200, json!([])));
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("kernels.json.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(third.log().contains("could not be read"), "{}", third.log());
    let id = third.start_kernel("py").await;
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(state.join("kernels.json")).unwrap()).unwrap();
    assert_eq!(recorded["kernels"][0]["id"], id.as_str(), "{recorded}");
    drop(third);
    let _ = std::fs::remove_dir_all(&state);
}
