//! Tearing kernels down: many DELETEs at once, a kernel that will not stop, a DELETE during a
//! restart, and a gateway that exits while kernels are still stopping.
//!
//! A DELETE is answered once the kernel has acknowledged its shutdown (its `shutdown_reply`,
//! or the launcher's comm-port acknowledgement); the kernel's owner then waits for the exit
//! and kills what does not end. These tests check what must hold whatever the timing:
//! every DELETE gets its 204, and afterwards nothing is left (no process, no listing, no
//! reservation, no state-file record). Real gateway, real launcher, real ipykernel; the
//! kernel that ignores its shutdown is a small Python script behind the launcher's `--`.

use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{Gateway, Options, eventually, processes_of, python, wait_no_processes};

/// Kernels DELETEd at once: 50 by default on this 2-core machine, `KL_IT_TEARDOWN_KERNELS`
/// (up to 200) for the full 100.
fn storm_size() -> usize {
    std::env::var("KL_IT_TEARDOWN_KERNELS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=200).contains(n))
        .unwrap_or(50)
}

/// A kernel that neither speaks the protocol nor stops on SIGTERM: it writes `TERM` to the
/// file in `KERNEL_MARK_FILE` when it gets one, and sleeps on.
const DEAF_KERNEL: &str = r#"
import os, signal, sys, time
mark = os.environ["KERNEL_MARK_FILE"]
def ignore(signum, frame):
    with open(mark, "a") as f:
        f.write("TERM\n")
signal.signal(signal.SIGTERM, ignore)
signal.signal(signal.SIGINT, signal.SIG_IGN)
with open(mark, "a") as f:
    f.write("started\n")
while True:
    time.sleep(1)
"#;

/// A gateway whose kernelspecs include `deaf` (see [`DEAF_KERNEL`]), with `args`.
fn gateway_with_deaf_kernel(args: &[&str]) -> Gateway {
    let dir = std::env::temp_dir().join(format!("gl-it-{}", uuid::Uuid::new_v4()));
    let spec = dir.join("specs/deaf");
    std::fs::create_dir_all(&spec).unwrap();
    let argv = json!([python(), "-c", DEAF_KERNEL, "{connection_file}"]);
    let kernel = json!({"argv": argv, "display_name": "deaf", "language": "python"});
    std::fs::write(spec.join("kernel.json"), kernel.to_string()).unwrap();
    Gateway::start(Options {
        dir: Some(dir),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    })
}

/// Starts a `deaf` kernel that marks `mark` and waits until it runs.
async fn start_deaf(gw: &Gateway, mark: &Path) -> String {
    let file = mark.to_string_lossy();
    let body = json!({"name": "deaf", "env": {"KERNEL_MARK_FILE": file}}).to_string();
    let (status, model) = gw.json("POST", "/api/kernels", Some(&body)).await;
    assert_eq!(status, 201, "{model}\n{}", gw.log());
    eventually("the deaf kernel running", async || {
        let text = std::fs::read_to_string(mark).unwrap_or_default();
        (text.contains("started"), text)
    })
    .await;
    model["id"].as_str().unwrap().to_owned()
}

async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let (_, _, text) = gw.http("GET", "/metrics", None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Nothing of the kernels `ids` left in the gateway: not listed, not found, no reservation.
async fn nothing_listed(gw: &Gateway, ids: &[String]) {
    let (status, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!((status, &list), (200, &json!([])), "{}", gw.log());
    for id in ids {
        let (status, _) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        assert_eq!(status, 404, "kernel {id} still answers");
    }
    assert_eq!(
        metric(gw, "gateway_lite_kernel_reservations").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_deletes_all_answer_and_leave_nothing() {
    let state = std::env::temp_dir().join(format!("gl-state-{}", uuid::Uuid::new_v4()));
    let state_arg = state.to_string_lossy().into_owned();
    let gw = Gateway::start(Options {
        args: vec!["--state-dir".into(), state_arg],
        ..Options::default()
    });
    let n = storm_size();
    let ids: Vec<String> =
        futures_util::future::join_all((0..n).map(|_| gw.start_kernel("py"))).await;
    // Every kernel up and answering before the storm, so each DELETE meets a running kernel.
    for id in &ids {
        let mut c = gw.connect(id, false).await;
        assert_eq!(c.execute("1 + 1").await.text, "2", "{}", gw.log());
    }
    let records = |state: &Path| -> Vec<Value> {
        let text = std::fs::read_to_string(state.join("kernels.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        doc["kernels"].as_array().cloned().unwrap_or_default()
    };
    assert_eq!(records(&state).len(), n, "every kernel is recorded");
    let procs: Vec<i32> = ids.iter().flat_map(|id| processes_of(id)).collect();
    assert!(
        procs.len() >= 2 * n,
        "a launcher and a kernel each: {procs:?}"
    );

    let deletes = ids.iter().map(|id| {
        let path = format!("/api/kernels/{id}");
        let gw = &gw;
        async move { gw.http("DELETE", &path, None).await.0 }
    });
    let statuses = futures_util::future::join_all(deletes).await;
    assert_eq!(statuses, vec![204; n], "{}", gw.log());
    nothing_listed(&gw, &ids).await;
    assert_eq!(
        records(&state),
        Vec::<Value>::new(),
        "the state file is updated"
    );
    // Every process ends on its own or by the owner's kill; the bound only guards hangs.
    for id in &ids {
        assert_eq!(
            wait_no_processes(id).await,
            Vec::<i32>::new(),
            "kernel {id}"
        );
    }
    assert_eq!(
        metric(&gw, "gateway_lite_kernel_shutdowns_total").await,
        Some(n as f64),
        "every owner finished its stop"
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_that_ignores_its_shutdown_is_killed() {
    let gw = gateway_with_deaf_kernel(&[]);
    let mark = gw.dir.join("deaf.mark");
    let id = start_deaf(&gw, &mark).await;
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    nothing_listed(&gw, std::slice::from_ref(&id)).await;
    // No shutdown_reply comes; the launcher, told on its comm port, and then the owner
    // escalate: SIGTERM, which the kernel ignores, then SIGKILL.
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
    let marks = std::fs::read_to_string(&mark).unwrap();
    assert!(
        marks.contains("TERM"),
        "the kernel was sent SIGTERM first: {marks}"
    );
    // What the DELETE was answered on: the launcher's acknowledgement on its comm port.
    gw.wait_log("the launcher acknowledged the shutdown").await;
    gw.wait_log("no shutdown_reply within").await;
    // The launcher reports the kernel's death by SIGKILL as its exit status, 128 + 9.
    gw.wait_log(&format!("launcher ended: exit code 137 kernel_id={id}"))
        .await;
    gw.wait_log(&format!("kernel shut down kernel_id={id}"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_during_a_restart_leaves_nothing() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    let first = processes_of(&id);
    assert!(!first.is_empty());
    let restart = async {
        let (status, _, body) = gw
            .http("POST", &format!("/api/kernels/{id}/restart"), None)
            .await;
        (status, body)
    };
    let delete = async {
        // Once the restart is under way: the old incarnation stopping or the new one
        // launching.
        eventually("the restart under way", async || {
            let (_, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
            let state = model["execution_state"].as_str().unwrap_or("").to_owned();
            (state == "restarting", state)
        })
        .await;
        gw.http("DELETE", &format!("/api/kernels/{id}"), None)
            .await
            .0
    };
    let ((restart_status, restart_body), delete_status) = tokio::join!(restart, delete);
    assert_eq!(delete_status, 204, "{}", gw.log());
    // The restart either finished just before the DELETE took over or was abandoned by it.
    assert!(
        [200, 404, 409].contains(&restart_status),
        "{restart_status}: {restart_body}"
    );
    nothing_listed(&gw, std::slice::from_ref(&id)).await;
    // Neither incarnation is left.
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_exiting_while_kernels_stop_leaves_nothing() {
    let gw = gateway_with_deaf_kernel(&[]);
    let mark = gw.dir.join("deaf.mark");
    let deaf = start_deaf(&gw, &mark).await;
    let mut ids: Vec<String> =
        futures_util::future::join_all((0..4).map(|_| gw.start_kernel("py"))).await;
    ids.push(deaf.clone());
    let statuses = futures_util::future::join_all(ids.iter().map(|id| {
        let path = format!("/api/kernels/{id}");
        let gw = &gw;
        async move { gw.http("DELETE", &path, None).await.0 }
    }))
    .await;
    assert_eq!(statuses, vec![204; ids.len()], "{}", gw.log());
    // Answered, but the deaf kernel is only killed after its grace: the gateway's exit must
    // wait for that stop rather than drop it.
    assert!(
        !processes_of(&deaf).is_empty(),
        "the deaf kernel still runs its grace"
    );
    let dir = gw.stop_with(Signal::SIGTERM);
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    for id in &ids {
        // Exited gateway, reaped launchers: a bound only for /proc to catch up.
        assert_eq!(
            wait_no_processes(id).await,
            Vec::<i32>::new(),
            "kernel {id}: {log}"
        );
    }
    assert!(log.contains("waiting for kernels still stopping"), "{log}");
    assert!(
        log.contains(&format!("kernel shut down kernel_id={deaf}")),
        "the deaf kernel's stop ended before the gateway did: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
