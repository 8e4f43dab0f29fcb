//! `--transport-encryption` with real kernels: a kernelspec listing "curve" in
//! `metadata.supported_encryption` runs over CurveZMQ with ipykernel 7.4 (executes, interrupts,
//! restarts with new keys, survives a gateway restart; a clear-text subscriber on its iopub
//! gets nothing), in clear text with ipykernel 6.31 under `auto`, and fails its start under
//! `required`; `required` refuses a spec without "curve" before anything runs; `none` never
//! asks.

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use zeromq::{Socket, SocketRecv};

use crate::support::{
    Gateway, Options, argv, eventually, lab_python, processes_of, processes_with_env, python,
    wait_no_processes,
};

/// A gateway directory holding the spec `name`: `python` running ipykernel, with
/// `supported_encryption: ["curve"]` and message interrupts (so interrupts go over the
/// encrypted control channel).
fn dir_with_spec(name: &str, python: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gl-it-{}", uuid::Uuid::new_v4()));
    let spec = dir.join("specs").join(name);
    std::fs::create_dir_all(&spec).unwrap();
    let doc = json!({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"supported_encryption": ["curve"]},
    });
    std::fs::write(spec.join("kernel.json"), doc.to_string()).unwrap();
    dir
}

fn gateway(dir: &std::path::Path, args: &[&str]) -> Gateway {
    Gateway::start(Options {
        dir: Some(dir.to_owned()),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Options::default()
    })
}

/// The connection file the kernel of `id` read (its `-f` argument).
pub(crate) fn connection_file(id: &str) -> Value {
    for pid in processes_of(id) {
        let a = argv(pid);
        if let Some(i) = a.iter().position(|x| x == "-f")
            && let Some(path) = a.get(i + 1)
            && let Ok(bytes) = std::fs::read(path)
        {
            return serde_json::from_slice(&bytes).unwrap();
        }
    }
    panic!("no process of kernel {id} names its connection file");
}

/// Runs a cell that prints for a few seconds while a clear-text (`zeromq`, no keys) SUB is
/// connected to the kernel's iopub; what that subscriber received first, if anything.
async fn clear_text_spy(c: &mut crate::support::KernelClient, conn: &Value) -> Option<String> {
    let iopub = format!("tcp://127.0.0.1:{}", conn["iopub_port"]);
    let spy = tokio::spawn(async move {
        let mut sub = zeromq::SubSocket::new();
        let connected = tokio::time::timeout(crate::support::WAIT, sub.connect(&iopub)).await;
        if !connected.is_ok_and(|r| r.is_ok()) {
            return None;
        }
        let _ = sub.subscribe("").await;
        sub.recv().await.ok().map(|m| format!("{m:?}"))
    });
    // Long enough that a subscription made meanwhile sees lines of it.
    let out = c
        .execute("import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.1)")
        .await;
    assert_eq!(out.status, "ok");
    assert!(out.text.contains("29"), "{out:?}");
    if spy.is_finished() {
        spy.await.unwrap()
    } else {
        spy.abort();
        None
    }
}

pub(crate) async fn transport_encryption(gw: &Gateway, id: &str) -> Value {
    let (status, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 200, "{model}");
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        listed["transport_encryption"], model["transport_encryption"],
        "list and model agree"
    );
    model["transport_encryption"].clone()
}

async fn delete(gw: &Gateway, id: &str) {
    let (status, _, body) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(wait_no_processes(id).await, Vec::<i32>::new());
}

/// A start that must fail: its status and message, after checking nothing of it runs.
async fn failed_start(gw: &Gateway, spec: &str) -> (u16, String) {
    let mark = uuid::Uuid::new_v4().to_string();
    let body = json!({"name": spec, "env": {"KERNEL_MARK": mark}}).to_string();
    let (status, _, text) = gw.http("POST", "/api/kernels", Some(&body)).await;
    let left = eventually("nothing of the failed start running", async || {
        let p = processes_with_env(&format!("KERNEL_MARK={mark}"));
        (p.is_empty(), p)
    })
    .await;
    assert!(left.is_empty());
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]), "{}", gw.log());
    let message: Value = serde_json::from_str(&text).unwrap_or_default();
    (
        status,
        message["message"].as_str().unwrap_or(&text).to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ipykernel_7_runs_over_curve_under_auto() {
    let dir = dir_with_spec("py_curve", &lab_python());
    let gw = gateway(&dir, &[]);
    let id = gw.start_kernel("py_curve").await;
    assert_eq!(
        transport_encryption(&gw, &id).await,
        "curve",
        "{}",
        gw.log()
    );
    // The status monitor's probe (kernel_info over CurveZMQ) moves the model to idle.
    eventually("the model idle", async || {
        let (_, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        (model["execution_state"] == "idle", model)
    })
    .await;
    let conn = connection_file(&id);
    let first_key = conn["curve_publickey"].as_str().unwrap().to_owned();

    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("print(6*7)").await.text, "42\n", "{}", gw.log());

    // A clear-text subscriber on the kernel's iopub gets nothing while a cell prints (with
    // encryption off it gets the cell's messages: see `none_runs_a_curve_spec_in_clear_text`).
    assert_eq!(
        clear_text_spy(&mut c, &conn).await,
        None,
        "a clear-text subscriber got a message"
    );

    // Interrupt (interrupt_request on the control channel, over CurveZMQ).
    gw.interrupt_sleeping_cell(&id, &mut c).await;

    // Restart: a new incarnation with a new key pair, still CurveZMQ.
    let (status, _, body) = gw
        .http("POST", &format!("/api/kernels/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(transport_encryption(&gw, &id).await, "curve");
    let second_key = connection_file(&id)["curve_publickey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(first_key, second_key, "a restart makes a new key pair");
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("print(6*7)").await.text, "42\n", "{}", gw.log());

    let (_, _, metrics) = gw.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains("gateway_lite_kernels_curve 1\n"),
        "{metrics}"
    );
    let log = gw.log();
    assert!(log.contains("transport_encryption=\"curve\""), "{log}");
    // Every socket got through: the iopub nudge was answered, nothing was dropped.
    assert!(!log.contains("did not answer kernel_info_request"), "{log}");
    assert!(!log.contains("dropped"), "{log}");
    delete(&gw, &id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ipykernel_6_runs_in_clear_text_under_auto_and_fails_under_required() {
    let dir = dir_with_spec("py6_curve", &python());
    let gw = gateway(&dir, &[]);
    let id = gw.start_kernel("py6_curve").await;
    assert_eq!(transport_encryption(&gw, &id).await, "none");
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("print(6*7)").await.text, "42\n", "{}", gw.log());
    delete(&gw, &id).await;
    drop(c);
    let dir = gw.stop_with(Signal::SIGTERM);

    let gw = gateway(&dir, &["--transport-encryption", "required"]);
    let (status, message) = failed_start(&gw, "py6_curve").await;
    assert_eq!(status, 500, "{message}");
    assert!(
        message.contains("CurveZMQ") && message.contains("ipykernel >= 7.3"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn required_refuses_a_spec_without_curve_before_it_starts() {
    let dir = dir_with_spec("py_curve", &lab_python());
    let gw = gateway(&dir, &["--transport-encryption", "required"]);
    let (status, message) = failed_start(&gw, "py").await;
    assert_eq!(status, 400, "{message}");
    assert!(
        message.contains("Kernelspec py ")
            && message.contains("--transport-encryption")
            && message.contains("supported_encryption"),
        "{message}"
    );
    // A curve spec starts under required.
    let id = gw.start_kernel("py_curve").await;
    assert_eq!(transport_encryption(&gw, &id).await, "curve");
    delete(&gw, &id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn none_runs_a_curve_spec_in_clear_text() {
    let dir = dir_with_spec("py_curve", &lab_python());
    let gw = gateway(&dir, &["--transport-encryption", "none"]);
    let id = gw.start_kernel("py_curve").await;
    assert_eq!(transport_encryption(&gw, &id).await, "none");
    let conn = connection_file(&id);
    assert!(conn.get("curve_publickey").is_none(), "{conn}");
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("print(6*7)").await.text, "42\n", "{}", gw.log());
    // The control for the clear-text subscriber of the CurveZMQ test: here it hears the cell.
    assert!(clear_text_spy(&mut c, &conn).await.is_some());
    delete(&gw, &id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_gateway_reattaches_over_curve() {
    let dir = dir_with_spec("py_curve", &lab_python());
    let state = dir.join("state");
    let state_arg = state.to_string_lossy().into_owned();
    let first = gateway(&dir, &["--state-dir", &state_arg]);
    let id = first.start_kernel("py_curve").await;
    {
        let mut c = first.connect(&id, false).await;
        assert_eq!(c.execute("x = 41").await.status, "ok");
    }
    let conn = connection_file(&id);
    let secret = conn["curve_secretkey"].as_str().unwrap().to_owned();
    let public = conn["curve_publickey"].as_str().unwrap().to_owned();
    let dir = first.stop_with(Signal::SIGTERM);
    assert!(
        !processes_of(&id).is_empty(),
        "the kernel outlives the gateway"
    );

    // The state file has the kernel's public key and not its secret one.
    let recorded = std::fs::read_to_string(state.join("kernels.json")).unwrap();
    let doc: Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(doc["kernels"][0]["curve_publickey"], public.as_str());
    assert!(
        !recorded.contains(&secret) && !recorded.contains("curve_secretkey"),
        "{recorded}"
    );

    let second = gateway(&dir, &["--state-dir", &state_arg]);
    assert_eq!(transport_encryption(&second, &id).await, "curve");
    let mut c = second.connect(&id, false).await;
    assert_eq!(
        c.execute("print(x + 1)").await.text,
        "42\n",
        "{}",
        second.log()
    );
    delete(&second, &id).await;
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    assert!(!log.contains(&secret), "the secret key is in the log");
}

/// Specs written by `kernel-launcher kernelspec install --transport-encryption auto`: the
/// gateway-lite form (the launcher gets `TRANSPORT_ENCRYPTION`) and gateway_provisioners' form
/// (its argv takes `{transport_encryption}`) both run over CurveZMQ.
#[tokio::test(flavor = "multi_thread")]
async fn installed_curve_specs_run_over_curve() {
    let dir = std::env::temp_dir().join(format!("gl-it-{}", uuid::Uuid::new_v4()));
    let specs = dir.join("specs");
    let py = lab_python();
    for (target, name) in [("gateway-lite", "gen_lite_curve"), ("gp", "gen_gp_curve")] {
        let at = specs.join(name).to_string_lossy().into_owned();
        crate::generated::install(&[
            "--for",
            target,
            "--python",
            &py,
            "--transport-encryption",
            "auto",
            "--dir",
            &at,
        ]);
        let doc: Value =
            serde_json::from_slice(&std::fs::read(specs.join(name).join("kernel.json")).unwrap())
                .unwrap();
        assert_eq!(doc["metadata"]["supported_encryption"], json!(["curve"]));
    }
    let gw = gateway(&dir, &[]);
    for name in ["gen_lite_curve", "gen_gp_curve"] {
        let id = gw.start_kernel(name).await;
        assert_eq!(transport_encryption(&gw, &id).await, "curve", "{name}");
        let mut c = gw.connect(&id, false).await;
        assert_eq!(c.execute("print(6*7)").await.text, "42\n", "{name}");
        delete(&gw, &id).await;
    }
}
