//! What the gateway tells its operator: the access log (every request, never the token), the
//! JSON log format, kernels' log files kept after the kernel and swept later, and the warning
//! when there is no usable state directory. Real gateway, real launcher, real ipykernel.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::support::{self, Gateway, Options};

/// A token no other text of the log could contain by chance.
const TOKEN: &str = "tok-5e1f0c8a-log-test-9d2b";

/// Polls (bounded by WAIT) until `check` holds; panics with `what` and the last log
/// otherwise.
async fn until(gw: &Gateway, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the access line holding every one of `parts`, and returns it.
async fn access_line(gw: &Gateway, parts: &[&str]) -> String {
    let find = || {
        gw.log()
            .lines()
            .find(|l| l.contains("gateway_lite::access") && parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
    };
    until(gw, &format!("an access line with {parts:?}"), || {
        find().is_some()
    })
    .await;
    find().unwrap()
}

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gl-{tag}-{}", uuid::Uuid::new_v4()))
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_every_request_and_never_the_token() {
    let gw = Gateway::start(Options {
        token: Some(TOKEN),
        ..Options::default()
    });
    let (status, _, _) = gw.http("GET", "/api", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = gw
        .raw("GET", &format!("/api/kernels?token={TOKEN}"), "", None)
        .await;
    assert_eq!(status, 200, "the token in the query");
    let (status, _, _) = gw
        .raw(
            "GET",
            "/api/kernelspecs",
            "Authorization: token not-the-token\r\n",
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = gw.http("GET", "/no/such/endpoint", None).await;
    assert_eq!(status, 404);
    let long = format!("/{}", "a".repeat(4000));
    let (status, _, _) = gw.http("GET", &long, None).await;
    assert_eq!(status, 404);
    let body = json!({"name": "py", "env": {"KERNEL_USERNAME": "ada"}}).to_string();
    let (status, _, text) = gw.http("POST", "/api/kernels", Some(&body)).await;
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = gw.connect(&id, false).await;
    drop(c);
    // A client that hangs up before its answer (a launch that never reports): 499.
    let how = support::HangUp {
        after: Duration::from_millis(300),
        whole: true,
        connection_close: false,
        close: support::Close::Fin,
    };
    gw.hang_up("POST", "/api/kernels", Some(r#"{"name":"silent"}"#), how)
        .await;
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);

    let line = access_line(&gw, &["method=GET", "path=\"/api\"", "status=200"]).await;
    assert!(line.contains("user=\"-\""), "{line}");
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
    assert!(line.contains(" INFO "), "{line}");
    let line = access_line(&gw, &["path=\"/api/kernels\"", "status=200"]).await;
    assert!(!line.contains('?'), "no query string: {line}");
    access_line(
        &gw,
        &["method=GET", "path=\"/api/kernelspecs\"", "status=401"],
    )
    .await;
    access_line(&gw, &["path=\"/no/such/endpoint\"", "status=404"]).await;
    let line = access_line(&gw, &["path=\"/aaaa", "status=404"]).await;
    assert!(
        line.len() < 1000,
        "a long path is cut: {} bytes",
        line.len()
    );
    let line = access_line(&gw, &["method=POST", "path=\"/api/kernels\"", "status=201"]).await;
    assert!(line.contains("user=\"ada\""), "{line}");
    access_line(
        &gw,
        &[
            &format!("path=\"/api/kernels/{id}/channels\""),
            "status=101",
        ],
    )
    .await;
    access_line(
        &gw,
        &[
            "method=DELETE",
            &format!("path=\"/api/kernels/{id}\""),
            "status=204",
        ],
    )
    .await;
    access_line(&gw, &["method=POST", "path=\"/api/kernels\"", "status=499"]).await;
    let log = gw.log();
    assert!(
        !log.contains(TOKEN),
        "the token is in the log:\n{}",
        log.lines()
            .filter(|l| l.contains(TOKEN))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_is_one_object_per_line() {
    let gw = Gateway::start(Options {
        token: Some(TOKEN),
        args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    });
    let (status, _, _) = gw
        .raw("GET", &format!("/api/kernels?token={TOKEN}"), "", None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = gw.raw("GET", "/api/kernels", "", None).await;
    assert_eq!(status, 401);
    // A kernel, so the launcher's and kernel's output lines pass through the log too.
    let id = gw.start_kernel("py").await;
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    gw.wait_log("kernel shut down").await;

    let objects = |log: &str| -> Vec<Value> {
        log.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
                assert!(v.is_object(), "{l}");
                v
            })
            .collect()
    };
    let find = |status: u64| {
        objects(&gw.log()).into_iter().find(|v| {
            v["target"] == "gateway_lite::access"
                && v["path"] == "/api/kernels"
                && v["status"] == status
        })
    };
    until(&gw, "JSON access lines", || {
        find(200).is_some() && find(401).is_some()
    })
    .await;
    let line = find(200).unwrap();
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["user"], "-", "{line}");
    assert!(line["duration_ms"].is_number(), "{line}");
    assert!(
        line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(line["timestamp"].is_string(), "{line}");
    let log = gw.log();
    objects(&log);
    assert!(!log.contains(TOKEN), "the token is in the log");
}

/// A gateway with its state directory in `state` and `extra` arguments.
fn with_state(state: &Path, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--state-dir".to_owned(),
        state.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    // Kernels end with this gateway: nothing left for a next one.
    args.push("--shutdown-kernels-on-exit".into());
    Gateway::start(Options {
        args,
        ..Options::default()
    })
}

/// Starts a kernel that writes `marker` to its own stderr (into its log file), then shuts it
/// down. Returns the kernel's id.
async fn kernel_that_says(gw: &Gateway, marker: &str) -> String {
    let id = gw.start_kernel("py").await;
    let mut c = gw.connect(&id, false).await;
    let out = c
        .execute(&format!("import os; os.write(2, b'{marker}\\n'); 'ok'"))
        .await;
    assert_eq!(out.status, "ok", "{out:?}");
    drop(c);
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_logs_are_kept_after_shutdown_and_leftovers_swept() {
    let state = temp("klog-keep");
    let logs = state.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // What an earlier run left: an old log, a recent one, and things that are not its own.
    let log_of = |id: &str| logs.join(format!("{id}.log"));
    let (old, recent, linked) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    std::fs::write(log_of(&old), b"old").unwrap();
    std::fs::File::options()
        .write(true)
        .open(log_of(&old))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 86400))
        .unwrap();
    std::fs::write(log_of(&recent), b"recent").unwrap();
    std::fs::write(logs.join("notes.log"), b"an operator's file").unwrap();
    let outside = temp("klog-outside");
    std::fs::write(&outside, b"not the gateway's").unwrap();
    std::os::unix::fs::symlink(&outside, log_of(&linked)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&outside)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 86400))
        .unwrap();

    let gw = with_state(&state, &[]);
    // The start-up sweep ran before the gateway listened.
    assert!(
        !log_of(&old).exists(),
        "an old leftover is swept at start-up"
    );
    assert!(
        log_of(&recent).exists(),
        "a recent one waits for its retention"
    );
    assert!(
        logs.join("notes.log").exists(),
        "other names are left alone"
    );
    assert!(outside.exists(), "a link is not followed");
    assert!(
        std::fs::symlink_metadata(log_of(&linked)).is_ok(),
        "nor removed"
    );

    let marker = format!("kernel-output-{}", uuid::Uuid::new_v4());
    let id = kernel_that_says(&gw, &marker).await;
    let file = log_of(&id);
    gw.wait_log(&format!("log_file={}", file.display())).await;
    gw.wait_log("its log is kept").await;
    assert!(file.exists(), "the log outlives its kernel");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&marker),
        "the kernel's output is in it:\n{text}"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&outside);
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_retention_deletes_the_log_at_shutdown() {
    let state = temp("klog-zero");
    let gw = with_state(&state, &["--kernel-log-retention", "0"]);
    let id = kernel_that_says(&gw, "zero").await;
    let file = state.join("logs").join(format!("{id}.log"));
    until(&gw, "the log deleted", || !file.exists()).await;
    drop(gw);
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_retention_is_swept_while_running() {
    let state = temp("klog-short");
    let gw = with_state(&state, &["--kernel-log-retention", "2"]);
    let id = kernel_that_says(&gw, "short").await;
    let file = state.join("logs").join(format!("{id}.log"));
    // Kept first (not deleted at shutdown), then swept.
    gw.wait_log("kept_secs=2").await;
    until(&gw, "the log swept", || !file.exists()).await;
    drop(gw);
    let _ = std::fs::remove_dir_all(&state);
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fixed_port(extra: &[&str], env: &[(&str, &str)]) -> Gateway {
    let mut args = vec!["--port".to_owned(), free_port().to_string()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Gateway::start(Options {
        args,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Options::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn no_usable_state_directory_is_a_warning_with_the_fix() {
    let no_home = [("HOME", ""), ("XDG_STATE_HOME", "")];
    let gw = fixed_port(&[], &no_home);
    gw.wait_log("listening").await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("no usable state directory"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    for fix in ["--state-dir", "StateDirectory=", "--no-state-dir"] {
        assert!(line.contains(fix), "names {fix}: {line}");
    }
    drop(gw);

    // A HOME where no directory can be made (a file): the default cannot be had either.
    let file = temp("home-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let home = file.to_string_lossy().into_owned();
    let gw = fixed_port(&[], &[("HOME", &home), ("XDG_STATE_HOME", "")]);
    gw.wait_log("listening").await;
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("no usable state directory"))
        .unwrap_or_else(|| panic!("no warning:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("--state-dir"),
        "{line}"
    );
    drop(gw);
    let _ = std::fs::remove_file(&file);

    // The operator's choice is no warning.
    let gw = fixed_port(&["--no-state-dir"], &no_home);
    gw.wait_log("no state directory (--no-state-dir)").await;
    assert!(!gw.log().contains("no usable state directory"));
    drop(gw);
    let gw = Gateway::start(Options {
        env: vec![("HOME".into(), String::new())],
        ..Options::default()
    });
    gw.wait_log("no state directory with --port 0").await;
    assert!(!gw.log().contains("no usable state directory"));
}
