//! Integration tests: the real gateway-lite binary, kernel-launcher and ipykernel, driven over
//! REST and WebSocket as Jupyter clients drive them.

mod bounds;
mod capture;
mod curve;
mod deploy;
mod dist;
mod docker;
mod generated;
mod leave;
mod logs;
mod nbrun;
mod policy;
mod pool;
mod resources;
mod shape;
mod soak;
mod specs;
mod ssh;
mod ssh_curve;
mod support;
mod swarm;
mod teardown;
mod tls;
mod trust;
mod ws;

use serde_json::{Value, json};
use support::{Gateway, Options, processes_of, wait_no_processes};

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_over_the_legacy_protocol() {
    let gw = Gateway::start(Options::default());
    let (status, info) = gw.json("GET", "/api", None).await;
    assert_eq!(status, 200);
    assert!(info["gateway_version"].is_string() && info["version"].is_string());

    let id = gw.start_kernel("py").await;
    assert!(
        !processes_of(&id).is_empty(),
        "launcher and kernel should run"
    );
    let (status, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(status, 200);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == id.as_str())
    );

    // The model leaves "starting" once the kernel answers, with or without clients.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (_, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
        if model["execution_state"] == "idle" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {model}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let mut c = gw.connect(&id, false).await;
    let out = c.execute("1+1").await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("2", "ok"),
        "{out:?}"
    );
    let (_, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(model["connections"], 1);

    // Interrupt a long sleep.
    c.execute("x = 5").await;
    let sleep_id = c.start_sleep().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _, body) = gw
        .http("POST", &format!("/api/kernels/{id}/interrupt"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let out = c.collect(&sleep_id).await;
    assert_eq!(out.ename, "KeyboardInterrupt", "{out:?}");
    let out = c.execute("x").await;
    assert_eq!(out.text, "5", "the kernel survives the interrupt: {out:?}");

    // Restart: same id, variables gone; the same WebSocket keeps working.
    let before = processes_of(&id);
    let (status, model) = gw
        .json("POST", &format!("/api/kernels/{id}/restart"), None)
        .await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["id"], id.as_str());
    let after = processes_of(&id);
    assert!(
        before.iter().all(|p| !after.contains(p)),
        "restart must start new processes"
    );
    let out = c.execute("x").await;
    assert_eq!(out.ename, "NameError", "{out:?}");
    assert_eq!(c.execute("2*21").await.text, "42");

    // Delete: 204, then 404, and nothing left running.
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    assert!(
        c.recv().await.is_none_or(|m| m.msg_type() == "status"),
        "socket closes after delete"
    );
    let (status, err) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 404);
    assert!(
        err["reason"].is_string() && err["message"].is_string(),
        "{err}"
    );
    assert_eq!(
        wait_no_processes(&id).await,
        Vec::<i32>::new(),
        "kernel processes left after DELETE"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_protocol_and_eg_style_spec() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py_eg").await;
    let mut c = gw.connect(&id, true).await;
    let out = c.execute("1+1").await;
    assert_eq!(
        (out.text.as_str(), out.status.as_str()),
        ("2", "ok"),
        "{out:?}"
    );
    let out = c.execute("print('hello')").await;
    assert_eq!(out.text, "hello\n");

    // stdin: the input_request comes to this client, which answers on stdin.
    let ask = c
        .execute_with(
            json!({"code": "print('got', input('name? '))", "silent": false, "allow_stdin": true}),
        )
        .await;
    loop {
        let m = c.recv().await.expect("input_request");
        if m.channel == "stdin" && m.msg_type() == "input_request" {
            break;
        }
    }
    c.send("stdin", "input_reply", json!({"value": "ada"}))
        .await;
    assert_eq!(c.collect(&ask).await.text, "got ada\n");
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn message_interrupts() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py_msg").await;
    let mut c = gw.connect(&id, false).await;
    gw.interrupt_sleeping_cell(&id, &mut c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests() {
    let gw = Gateway::start(Options {
        token: Some("s3cret"),
        ..Options::default()
    });
    // Authentication.
    let (status, _, body) = gw.raw("GET", "/api/kernels", "", None).await;
    assert_eq!(status, 401, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(err["reason"].is_string() && err["message"].is_string());
    let (status, _, _) = gw
        .raw(
            "GET",
            "/api/kernels",
            "Authorization: token wrong\r\n",
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = gw.raw("GET", "/api/kernels?token=s3cret", "", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = gw.raw("OPTIONS", "/api/kernels", "", None).await;
    assert_eq!(status, 204, "OPTIONS needs no token");

    // Bodies and names.
    let (status, err) = gw.json("POST", "/api/kernels", Some("{not json")).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = gw
        .json("POST", "/api/kernels", Some(r#"{"name":"no-such-spec"}"#))
        .await;
    assert_eq!(status, 404, "{err}");
    assert!(err["message"].as_str().unwrap().contains("no-such-spec"));
    let (status, err) = gw
        .json(
            "POST",
            "/api/kernels",
            Some(r#"{"name":"py","env":{"KERNEL_X":"a$(id)"}}"#),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    for path in ["/api/kernels/nope", "/api/kernelspecs/nope"] {
        let (status, _) = gw.json("GET", path, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = gw.json("DELETE", "/api/kernels/nope", None).await;
    assert_eq!(status, 404);
    let (status, _) = gw.json("POST", "/api/kernels/nope/interrupt", None).await;
    assert_eq!(status, 404);
    let (status, _) = gw.json("POST", "/api/kernels/nope/restart", None).await;
    assert_eq!(status, 404);

    // Kernelspecs and their resources, without escaping the spec directory.
    let (status, specs) = gw.json("GET", "/api/kernelspecs", None).await;
    assert_eq!(status, 200);
    assert_eq!(specs["default"], "py");
    assert_eq!(
        specs["kernelspecs"]["py"]["resources"]["logo-64x64"],
        "/kernelspecs/py/logo-64x64.png"
    );
    let (status, _, body) = gw.http("GET", "/kernelspecs/py/logo-64x64.png", None).await;
    assert_eq!((status, body.as_str()), (200, "\u{FFFD}PNG"));
    for path in [
        "/kernelspecs/py/../secret.txt",
        "/kernelspecs/py/%2e%2e/secret.txt",
        "/kernelspecs/py/%2e%2e%2fsecret.txt",
        "/kernelspecs/py//etc/passwd",
        "/kernelspecs/py/%2fetc%2fpasswd",
        "/kernelspecs/py/kernel.json/..",
    ] {
        let (status, _, body) = gw.http("GET", path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("secret") || body.contains("No resource"),
            "{path}: {body}"
        );
    }

    // A launcher that never reports times out (KERNEL_LAUNCH_TIMEOUT from the request wins)
    // and is killed.
    let (status, err) = gw
        .json(
            "POST",
            "/api/kernels",
            Some(r#"{"name":"silent","env":{"KERNEL_LAUNCH_TIMEOUT":"1"}}"#),
        )
        .await;
    assert_eq!(status, 500, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("launch timeout"),
        "{err}"
    );
    let (_, kernels) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(kernels, json!([]));

    // A launcher that cannot start its kernel fails the POST at once, with its stderr.
    let (status, err) = gw
        .json("POST", "/api/kernels", Some(r#"{"name":"broken"}"#))
        .await;
    assert_eq!(status, 500, "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("/nonexistent/kernel-binary"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_abuse() {
    let gw = Gateway::start(Options {
        max_message_bytes: 64 * 1024,
        // The end of this test needs a death that stays a death.
        args: vec!["--restart-limit".into(), "0".into()],
        ..Options::default()
    });
    let id = gw.start_kernel("py").await;

    // A malformed frame is ignored; the connection keeps working.
    let mut c = gw.connect(&id, false).await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    c.ws.send(Message::Text("{this is not json".into()))
        .await
        .unwrap();
    c.ws.send(Message::Text(r#"{"header":{},"channel":"nowhere"}"#.into()))
        .await
        .unwrap();
    c.ws.send(Message::Binary(vec![0xff; 16].into()))
        .await
        .unwrap();
    assert_eq!(c.execute("1+1").await.text, "2");

    // A client that never reads does not block another one.
    let mut hog = gw.connect(&id, false).await;
    hog.send(
        "shell",
        "execute_request",
        json!({"code": "for i in range(3000): print('x' * 2000)", "silent": false}),
    )
    .await;
    let mut other = gw.connect(&id, false).await;
    assert_eq!(other.execute("3*3").await.text, "9");

    // An oversized frame closes that connection only.
    let big = "x".repeat(128 * 1024);
    let _ = c
        .send("shell", "execute_request", json!({"code": big}))
        .await;
    // Drain until the gateway closes the socket (recv gives None on close).
    while c.recv().await.is_some() {}
    gw.wait_log("closing websocket").await;
    assert_eq!(other.execute("4*4").await.text, "16");
    drop(hog);

    // A kernel that dies is reported dead to clients and in the model.
    other
        .send(
            "shell",
            "execute_request",
            json!({"code": "import os; os._exit(3)"}),
        )
        .await;
    let mut dead = false;
    while let Some(m) = other.recv().await {
        if m.channel == "iopub"
            && m.msg_type() == "status"
            && m.content["execution_state"] == "dead"
        {
            dead = true;
            break;
        }
    }
    assert!(dead, "status: dead reaches the client");
    let (_, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(model["execution_state"], "dead");
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions() {
    let gw = Gateway::start(Options::default());
    let (status, s) = gw
        .json(
            "POST",
            "/api/sessions",
            Some(r#"{"path":"a.ipynb","name":"a","type":"notebook","kernel":{"name":"py"}}"#),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let sid = s["id"].as_str().unwrap().to_owned();
    let kid = s["kernel"]["id"].as_str().unwrap().to_owned();
    let (status, list) = gw.json("GET", "/api/sessions", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, s) = gw
        .json(
            "PATCH",
            &format!("/api/sessions/{sid}"),
            Some(r#"{"path":"b.ipynb"}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s["path"], "b.ipynb");
    assert_eq!(s["kernel"]["id"], kid.as_str());
    let (status, _, _) = gw
        .http("DELETE", &format!("/api/sessions/{sid}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = gw.json("GET", &format!("/api/sessions/{sid}"), None).await;
    assert_eq!(status, 404);
    assert_eq!(wait_no_processes(&kid).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_exit_shuts_kernels_down() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    assert!(!processes_of(&id).is_empty());
    drop(gw); // SIGTERM
    assert_eq!(
        wait_no_processes(&id).await,
        Vec::<i32>::new(),
        "kernel outlived the gateway"
    );
}
