//! `gateway-lite run NOTEBOOK`: the client command against a real gateway-lite and ipykernel.
//! The notebook of the first test is the one tests/eg runs against Enterprise Gateway and
//! compares with papermill's run (tests/support/notebooks/nbrun.ipynb). Every test checks the
//! kernel the run started is deleted and its processes gone, whatever the ending.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::support::{Gateway, Options, WAIT, wait_no_processes};

/// What a finished `gateway-lite run` left.
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ran {
    /// The kernel id the run printed ("kernel ID started").
    pub(crate) fn kernel_id(&self) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("kernel ")?.strip_suffix(" started"))
            .unwrap_or_else(|| panic!("no kernel id printed: {}\n{}", self.stdout, self.stderr))
            .to_owned()
    }
}

pub(crate) fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("gl-nbrun-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn command(gw: &Gateway, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway-lite"));
    cmd.arg("run")
        .args(args)
        .args(["--url", &gw.url])
        .env_remove("GATEWAY_LITE_AUTH_TOKEN")
        .env_remove("JUPYTER_GATEWAY_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = &gw.token {
        // Jupyter Server's variable: the client reads it too.
        cmd.env("JUPYTER_GATEWAY_AUTH_TOKEN", t);
    }
    cmd
}

pub(crate) async fn run(gw: &Gateway, args: &[&str]) -> Ran {
    let out = tokio::time::timeout(WAIT * 2, command(gw, args).output())
        .await
        .expect("gateway-lite run ended in time")
        .expect("gateway-lite run started");
    Ran::from(out)
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Self {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Waits until a cell of the running `child` has created `marker`, sends the run `signal`, and
/// collects how it ended.
async fn signal_when_running(
    child: tokio::process::Child,
    marker: &Path,
    signal: nix::sys::signal::Signal,
) -> Ran {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cell never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    Ran::from(out)
}

pub(crate) fn write_nb(dir: &Path, name: &str, sources: &[&str]) -> PathBuf {
    let cells: Vec<Value> = sources
        .iter()
        .map(|s| json!({"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": s}))
        .collect();
    let nb = json!({
        "cells": cells,
        "metadata": {"kernelspec": {"name": "py", "display_name": "Python", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 4,
    });
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(&nb).unwrap()).unwrap();
    p
}

pub(crate) fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The kernel is gone from the gateway and from the process table.
pub(crate) async fn assert_deleted(gw: &Gateway, ran: &Ran) {
    let id = ran.kernel_id();
    let (status, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(status, 200);
    assert_eq!(list, json!([]), "kernel {id} left on the gateway");
    assert!(
        wait_no_processes(&id).await.is_empty(),
        "processes of {id} left"
    );
}

/// A cell's text outputs, joined.
fn text(cell: &Value) -> String {
    cell["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let t = if o["output_type"] == "stream" {
                &o["text"]
            } else {
                &o["data"]["text/plain"]
            };
            match t {
                Value::Array(l) => l.iter().map(|s| s.as_str().unwrap()).collect::<String>(),
                Value::String(s) => s.clone(),
                _ => String::new(),
            }
        })
        .collect()
}

fn cell_by_id<'a>(nb: &'a Value, id: &str) -> &'a Value {
    nb["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no cell {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notebook_runs_with_parameters_outputs_and_metadata() {
    let gw = Gateway::start(Options {
        token: Some("nbrun-token"),
        ..Options::default()
    });
    let d = dir();
    let input =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/notebooks/nbrun.ipynb");
    let out = d.join("out.ipynb");
    let ran = run(
        &gw,
        &[
            input.to_str().unwrap(),
            "--kernel",
            "py",
            "-o",
            out.to_str().unwrap(),
            "-p",
            "alpha",
            "21",
            "-p",
            "name",
            "wo\"rld é",
            "-p",
            "ratio",
            "2.5e-5",
            "-p",
            "flag",
            "True",
            "-p",
            "nothing",
            "None",
            "-r",
            "raw",
            "12",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    // Not a terminal: plain progress lines, cell i of n.
    assert!(ran.stdout.contains("[1/10] alpha = 1"), "{}", ran.stdout);
    assert!(ran.stdout.contains("every cell ran"), "{}", ran.stdout);
    assert_deleted(&gw, &ran).await;

    let nb = read(&out);
    let cells = nb["cells"].as_array().unwrap();
    // The injected cell follows the parameters cell, written as papermill writes it.
    assert_eq!(cells[1]["id"], "params");
    assert_eq!(cells[2]["metadata"]["tags"], json!(["injected-parameters"]));
    assert_eq!(
        cells[2]["source"],
        json!([
            "# Parameters\n",
            "alpha = 21\n",
            "name = \"wo\\\"rld \\xe9\"\n",
            "ratio = 2.5e-05\n",
            "flag = True\n",
            "nothing = None\n",
            "raw = \"12\"\n"
        ])
    );
    assert_eq!(cells[2]["id"].as_str().unwrap().len(), 8);
    // The kernel saw the typed values.
    assert_eq!(
        text(cell_by_id(&nb, "types")),
        "int str float bool NoneType str\n'wo\"rld é' 2.5e-05 True None '12'\n"
    );
    // Streams (stdout merged, stderr apart) and the result, with execution counts.
    let streams = cell_by_id(&nb, "streams");
    assert_eq!(streams["execution_count"], 3);
    let outs = streams["outputs"].as_array().unwrap();
    assert_eq!(
        outs[0],
        json!({"output_type": "stream", "name": "stdout", "text": ["hello wo\"rld é\n", "again\n"]})
    );
    assert_eq!(
        outs[1],
        json!({"output_type": "stream", "name": "stderr", "text": ["to stderr\n"]})
    );
    assert_eq!(outs[2]["output_type"], "execute_result");
    assert_eq!(outs[2]["execution_count"], 3);
    assert_eq!(outs[2]["data"]["text/plain"], json!(["42"]));
    // The image, base64 as the kernel sent it.
    let image = &cell_by_id(&nb, "image")["outputs"][0];
    assert_eq!(image["output_type"], "display_data");
    assert_eq!(
        image["data"]["image/png"],
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    );
    // A display updated in place, then clear_output(wait=True) before the last print.
    assert_eq!(text(cell_by_id(&nb, "displays")), "kept\n");
    // A display updated from a later cell.
    let shared = &cell_by_id(&nb, "shared-display")["outputs"][0];
    assert_eq!(shared["data"]["text/markdown"], json!(["**after**"]));
    assert_eq!(
        text(cell_by_id(&nb, "shared-update")),
        "updated the display of an earlier cell\n"
    );
    // The empty cell is not run; counts go on after it.
    assert_eq!(cell_by_id(&nb, "empty")["execution_count"], Value::Null);
    let result = cell_by_id(&nb, "result");
    assert_eq!(result["execution_count"], 9);
    assert_eq!(text(result), "{'sum': 22, 'flag': True}");
    // Timing as nbclient records it, papermill's per-cell metadata.
    let meta = &result["metadata"];
    for k in [
        "iopub.status.busy",
        "iopub.execute_input",
        "shell.execute_reply",
        "iopub.status.idle",
    ] {
        assert!(meta["execution"][k].is_string(), "{k} missing: {meta}");
    }
    assert_eq!(meta["papermill"]["status"], "completed");
    assert_eq!(meta["papermill"]["exception"], false);
    assert!(meta["papermill"]["duration"].is_f64());
    // Notebook-level: language_info from the kernel, papermill's record, unknown fields kept.
    assert_eq!(nb["metadata"]["language_info"]["name"], "python");
    assert_eq!(nb["metadata"]["papermill"]["parameters"]["alpha"], 21);
    assert_eq!(
        nb["metadata"]["papermill"]["parameters"]["nothing"],
        Value::Null
    );
    assert_eq!(
        nb["metadata"]["custom_extension"],
        json!({"kept": [1, "two"]})
    );
    assert_eq!(cell_by_id(&nb, "raw1")["source"], json!(["a raw cell"]));
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_error_saves_prints_the_cell_and_traceback_and_exits_1() {
    let gw = Gateway::start(Options::default());
    let d = dir();
    let nb = write_nb(
        &d,
        "err.ipynb",
        &[
            "print('before')",
            "def f():\n    raise ValueError('boom')\nf()",
            "print('never')",
        ],
    );
    let ran = run(&gw, &[nb.to_str().unwrap(), "--log-output"]).await;
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    // --log-output: the cells' stdout as it arrives.
    assert!(ran.stdout.lines().any(|l| l == "before"), "{}", ran.stdout);
    assert!(
        ran.stderr
            .contains("cell 2 (In [2]) raised ValueError: boom"),
        "{}",
        ran.stderr
    );
    // The traceback, without terminal colours (stderr is a pipe).
    assert!(ran.stderr.contains("----> 3 f()"), "{}", ran.stderr);
    assert!(!ran.stderr.contains('\x1b'), "{}", ran.stderr);
    assert_deleted(&gw, &ran).await;
    let out = read(&d.join("err.out.ipynb"));
    let cells = out["cells"].as_array().unwrap();
    // papermill's markers: a banner first, an anchor right before the failed cell.
    assert_eq!(cells.len(), 5);
    let banner: String = serde_json::from_value::<Vec<String>>(cells[0]["source"].clone())
        .unwrap()
        .concat();
    assert!(
        banner.contains(
            "An Exception was encountered at '<a href=\"#papermill-error-cell\">In [2]</a>'"
        ),
        "{banner}"
    );
    assert_eq!(
        cells[2]["metadata"]["tags"],
        json!(["papermill-error-cell-tag"])
    );
    assert_eq!(text(&cells[1]), "before\n");
    assert_eq!(cells[3]["outputs"][0]["output_type"], "error");
    assert_eq!(cells[3]["outputs"][0]["ename"], "ValueError");
    assert_eq!(cells[3]["metadata"]["papermill"]["status"], "failed");
    assert_eq!(cells[4]["outputs"], json!([]));
    assert_eq!(cells[4]["metadata"]["papermill"]["status"], "pending");
    assert_eq!(out["metadata"]["papermill"]["exception"], true);
    // Running the saved notebook again: the old markers go, new ones come (not twice).
    let again = d.join("again.ipynb");
    let ran = run(
        &gw,
        &[
            d.join("err.out.ipynb").to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_eq!(read(&again)["cells"].as_array().unwrap().len(), 5);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cell_over_the_timeout_is_interrupted_saved_and_exits_3() {
    let gw = Gateway::start(Options::default());
    let d = dir();
    let nb = write_nb(
        &d,
        "slow.ipynb",
        &[
            "print('started', flush=True)\nimport time\ntime.sleep(600)",
            "print('never')",
        ],
    );
    let out = d.join("slow-out.ipynb");
    let ran = run(
        &gw,
        &[
            nb.to_str().unwrap(),
            "--cell-timeout",
            "3",
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(ran.code, 3, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("cell 1 ran longer than --cell-timeout"),
        "{}",
        ran.stderr
    );
    assert_deleted(&gw, &ran).await;
    let out = read(&out);
    let first = &out["cells"][0];
    assert_eq!(first["outputs"][0]["text"], json!(["started\n"]));
    assert_eq!(first["outputs"][1]["ename"], "KeyboardInterrupt");
    assert_eq!(out["cells"][1]["outputs"], json!([]));
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_interrupts_the_kernel_saves_deletes_and_exits_130() {
    let gw = Gateway::start(Options::default());
    let d = dir();
    let marker = d.join("running");
    let code = format!(
        "print('ran first')\nopen({:?}, 'w').close()\nimport time\ntime.sleep(600)",
        marker.to_str().unwrap()
    );
    let nb = write_nb(&d, "sig.ipynb", &["x = 1", &code, "print('never')"]);
    let child = command(&gw, &[nb.to_str().unwrap()]).spawn().unwrap();
    let ran = signal_when_running(child, &marker, nix::sys::signal::Signal::SIGINT).await;
    assert_eq!(ran.code, 130, "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("SIGINT received"), "{}", ran.stderr);
    assert_deleted(&gw, &ran).await;
    let saved = read(&d.join("sig.out.ipynb"));
    let cell = &saved["cells"][1];
    assert_eq!(cell["outputs"][0]["text"], json!(["ran first\n"]));
    assert_eq!(cell["outputs"][1]["ename"], "KeyboardInterrupt");
    assert_eq!(saved["cells"][0]["execution_count"], 1);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_that_dies_ends_the_run_and_is_still_deleted() {
    let gw = Gateway::start(Options::default());
    let d = dir();
    let nb = write_nb(
        &d,
        "die.ipynb",
        &["import os\nos._exit(1)", "print('never')"],
    );
    let ran = run(&gw, &[nb.to_str().unwrap()]).await;
    assert_eq!(ran.code, 69, "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("cell 1"), "{}", ran.stderr);
    assert_deleted(&gw, &ran).await;
    assert!(d.join("die.out.ipynb").exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_and_failures_end_with_their_exit_codes() {
    let gw = Gateway::start(Options {
        token: Some("right"),
        ..Options::default()
    });
    let d = dir();
    let nb = write_nb(&d, "ok.ipynb", &["1"]);
    let nb = nb.to_str().unwrap();
    // A parameter name that would be code.
    let ran = run(&gw, &[nb, "-p", "x=os.system('id');y", "1"]).await;
    assert_eq!(ran.code, 64, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("is not a variable name"),
        "{}",
        ran.stderr
    );
    // Not a notebook.
    std::fs::write(
        d.join("bad.ipynb"),
        b"{\"nbformat\": 3, \"cells\": [], \"metadata\": {}}",
    )
    .unwrap();
    let ran = run(&gw, &[d.join("bad.ipynb").to_str().unwrap()]).await;
    assert_eq!(ran.code, 64, "{}", ran.stderr);
    assert!(ran.stderr.contains("only 4 is supported"), "{}", ran.stderr);
    let ran = run(&gw, &[d.join("missing.ipynb").to_str().unwrap()]).await;
    assert_eq!(ran.code, 64, "{}", ran.stderr);
    // A bad option value names the option.
    let ran = run(&gw, &[nb, "--cell-timeout=0"]).await;
    assert_eq!(ran.code, 64, "{}", ran.stderr);
    assert!(ran.stderr.contains("--cell-timeout"), "{}", ran.stderr);
    // A wrong token: the gateway's refusal, exit 69.
    let mut cmd = command(&gw, &[nb]);
    cmd.env("JUPYTER_GATEWAY_AUTH_TOKEN", "wrong");
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("POST /api/kernels: the gateway answered 40"),
        "{err}"
    );
    // An unknown kernelspec.
    let ran = run(&gw, &[nb, "--kernel", "no-such-spec"]).await;
    assert_eq!(ran.code, 69, "{}", ran.stderr);
    assert!(ran.stderr.contains("\"no-such-spec\""), "{}", ran.stderr);
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]));
    // An output that cannot be written: exit 73, and the kernel it started is gone.
    let unwritable = d.join("no-such-dir/out.ipynb");
    let ran = run(&gw, &[nb, "-o", unwritable.to_str().unwrap()]).await;
    assert_eq!(ran.code, 73, "{}", ran.stderr);
    assert!(ran.stderr.contains("cannot write"), "{}", ran.stderr);
    assert_deleted(&gw, &ran).await;
    // Nobody listening.
    let closed = Gateway::external(1, "t");
    let ran = run(&closed, &[nb]).await;
    assert_eq!(ran.code, 69, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot connect to 127.0.0.1:1"),
        "{}",
        ran.stderr
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_while_the_kernel_starts_still_deletes_it() {
    // A kernel that takes its time: a shell (named by a marker, to be found) sleeps, then
    // becomes ipykernel; its spec is in the gateway's directory before the gateway starts.
    let gw_dir = std::env::temp_dir().join(format!("gl-it-{}", uuid::Uuid::new_v4()));
    let marker = format!("slow-start-{}", uuid::Uuid::new_v4().simple());
    let spec = gw_dir.join("specs/slow");
    std::fs::create_dir_all(&spec).unwrap();
    let argv = json!([
        "/bin/sh",
        "-c",
        "sleep 5; exec \"$1\" -m ipykernel_launcher -f \"$2\"",
        marker,
        crate::support::python(),
        "{connection_file}"
    ]);
    std::fs::write(
        spec.join("kernel.json"),
        serde_json::to_vec(&json!({"argv": argv, "display_name": "slow", "language": "python"}))
            .unwrap(),
    )
    .unwrap();
    let gw = Gateway::start(Options {
        dir: Some(gw_dir),
        ..Options::default()
    });
    let d = dir();
    let nb = write_nb(&d, "start.ipynb", &["print('never')"]);
    let mut child = command(&gw, &[nb.to_str().unwrap(), "--kernel", "slow"])
        .spawn()
        .unwrap();
    let starting = || {
        crate::support::pids()
            .into_iter()
            .filter(|p| crate::support::cmdline(*p).contains(&marker))
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while starting().is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended early:\n{}",
            gw.log()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow kernel never started:\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr
            .contains("SIGINT received while the kernel started; nothing ran, no notebook written"),
        "{stderr}"
    );
    assert!(!d.join("start.out.ipynb").exists());
    let (_, list) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(list, json!([]), "{stderr}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !starting().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow kernel was left running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn sys_exit_0_ends_the_run_early_and_successfully() {
    let gw = Gateway::start(Options::default());
    let d = dir();
    let nb = write_nb(
        &d,
        "exit.ipynb",
        &["print('one')", "import sys\nsys.exit(0)", "print('never')"],
    );
    let ran = run(&gw, &[nb.to_str().unwrap()]).await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("cell 2 called sys.exit(0)"),
        "{}",
        ran.stdout
    );
    assert_deleted(&gw, &ran).await;
    let out = read(&d.join("exit.out.ipynb"));
    assert_eq!(
        out["cells"].as_array().unwrap().len(),
        3,
        "no error markers"
    );
    assert_eq!(out["cells"][2]["outputs"], json!([]));
    // Any other exit status is an error.
    let nb = write_nb(&d, "exit1.ipynb", &["import sys\nsys.exit(3)"]);
    let ran = run(&gw, &[nb.to_str().unwrap()]).await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("raised SystemExit: 3"),
        "{}",
        ran.stderr
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn env_and_cwd_reach_the_kernel_and_sigterm_exits_143() {
    let gw = Gateway::start(Options::default());
    let d = dir();
    let marker = d.join("running");
    let code = format!(
        "import os, time\nprint(os.environ.get('KERNEL_NBRUN_MARK'), os.getcwd(), flush=True)\nopen({:?}, 'w').close()\ntime.sleep(600)",
        marker.to_str().unwrap()
    );
    let nb = write_nb(&d, "term.ipynb", &[&code]);
    let cwd = d.to_str().unwrap();
    let child = command(
        &gw,
        &[
            nb.to_str().unwrap(),
            "--env",
            "KERNEL_NBRUN_MARK=from-the-client",
            "--cwd",
            cwd,
        ],
    )
    .spawn()
    .unwrap();
    let ran = signal_when_running(child, &marker, nix::sys::signal::Signal::SIGTERM).await;
    assert_eq!(ran.code, 143, "{}\n{}", ran.stdout, ran.stderr);
    assert_deleted(&gw, &ran).await;
    let saved = read(&d.join("term.out.ipynb"));
    assert_eq!(
        saved["cells"][0]["outputs"][0]["text"],
        json!([format!("from-the-client {cwd}\n")])
    );
    let _ = std::fs::remove_dir_all(&d);
}
