//! Kernelspecs as an operator meets them: specs for placements gateway-lite does not do
//! (listed, warned about at start, refused at launch without starting anything), a
//! `DistributedProcessProxy` host that is this machine (run locally, no ssh), and specs
//! added, changed, broken and removed while the gateway runs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, Options, eventually, processes_of, python, wait_no_processes};

const EG: &str = "enterprise_gateway.services.processproxies";

/// Writes `specs/name/kernel.json` whole and renames it into place, as an installer would,
/// so that a scan never reads half a file.
fn put(specs: &Path, name: &str, bytes: &[u8]) {
    let d = specs.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let tmp = d.join(".kernel.json.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, d.join("kernel.json")).unwrap();
}

fn write_spec(specs: &Path, name: &str, spec: &Value) {
    put(specs, name, &serde_json::to_vec_pretty(spec).unwrap());
}

fn ipykernel(extra: &[&str]) -> Value {
    let mut argv = vec![python()];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(["-m", "ipykernel_launcher", "-f", "{connection_file}"].map(String::from));
    json!(argv)
}

fn new_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gl-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn specs_for_placements_gateway_lite_cannot_do_are_listed_and_refused() {
    let dir = new_dir("refused");
    let specs = dir.join("specs");
    let started = dir.join("started");
    // Were any of these run, the marker would appear.
    let argv = json!([
        "/bin/sh",
        "-c",
        format!("touch '{}'; exec sleep 60", started.display()),
        "{connection_file}"
    ]);
    let refused = [
        (
            "on_k8s",
            "process_proxy",
            format!("{EG}.k8s.KubernetesProcessProxy"),
            "Kubernetes",
        ),
        (
            "on_yarn",
            "process_proxy",
            format!("{EG}.yarn.YarnClusterProcessProxy"),
            "YARN",
        ),
        (
            "gp_k8s",
            "kernel_provisioner",
            "kubernetes-provisioner".to_owned(),
            "Kubernetes",
        ),
        (
            "mystery",
            "process_proxy",
            "mysite.proxies.SlurmProcessProxy".to_owned(),
            "DistributedProcessProxy",
        ),
    ];
    for (name, stanza, class, _) in &refused {
        let field = if *stanza == "process_proxy" {
            "class_name"
        } else {
            "provisioner_name"
        };
        write_spec(
            &specs,
            name,
            &json!({"argv": argv, "display_name": name, "language": "python",
                    "metadata": {*stanza: {field: class, "config": {}}}}),
        );
    }
    let gw = Gateway::start(Options {
        dir: Some(dir.clone()),
        ..Options::default()
    });
    // One warning per spec at start, naming it and its class.
    for (name, _, class, _) in &refused {
        gw.wait_log(&format!(
            "kernelspec {name} is listed, but launching it is refused"
        ))
        .await;
        assert!(gw.log().contains(class.as_str()), "{class}\n{}", gw.log());
    }

    // Listed, as Enterprise Gateway lists them.
    let (status, list) = gw.json("GET", "/api/kernelspecs", None).await;
    assert_eq!(status, 200);
    for (name, _, _, _) in &refused {
        assert!(list["kernelspecs"][name].is_object(), "{name}: {list}");
    }

    // A launch answers 501 with the class and what to use instead; nothing starts.
    for (name, _, class, instead) in &refused {
        let (status, err) = gw
            .json(
                "POST",
                "/api/kernels",
                Some(&json!({"name": name}).to_string()),
            )
            .await;
        assert_eq!(status, 501, "{name}: {err}");
        assert_eq!(err["reason"], "Not Implemented");
        let message = err["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(class.as_str()) && message.contains(instead) && message.contains(name),
            "{name}: {message}"
        );
    }
    let (status, err) = gw
        .json(
            "POST",
            "/api/sessions",
            Some(r#"{"path":"a.ipynb","type":"notebook","kernel":{"name":"on_k8s"}}"#),
        )
        .await;
    assert_eq!(status, 501, "a session start is refused alike: {err}");
    let (_, kernels) = gw.json("GET", "/api/kernels", None).await;
    assert_eq!(kernels, json!([]));
    assert!(!started.exists(), "a refused spec's argv ran");

    // Re-reads of the directories do not repeat the warnings.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.json("GET", "/api/kernelspecs", None).await;
    let log = gw.log();
    for (name, _, _, _) in &refused {
        let line = format!("kernelspec {name} is listed, but launching it is refused");
        assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    }
}

/// A `DistributedProcessProxy` host that is this machine runs its kernel as a local child:
/// no ssh at all (a fake `ssh` first on `PATH` would fail the launch and leave a mark), and
/// the kernel is re-attached after a gateway restart like any local kernel.
#[tokio::test(flavor = "multi_thread")]
async fn a_distributed_host_that_is_this_machine_runs_without_ssh() {
    let dir = new_dir("dpp-local");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let called = dir.join("ssh-was-called");
    let fake = bin.join("ssh");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\necho 'fake ssh: gateway-lite must not use ssh here' >&2\nexit 255\n",
            called.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let specs = dir.join("specs");
    let dpp = json!({"class_name": format!("{EG}.distributed.DistributedProcessProxy")});
    write_spec(
        &specs,
        "dist_local",
        &json!({"argv": ipykernel(&[]), "display_name": "DPP", "language": "python",
                "metadata": {"process_proxy": dpp}}),
    );
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    write_spec(
        &specs,
        "dist_own",
        &json!({"argv": ipykernel(&[]), "display_name": "DPP (own names)", "language": "python",
                "metadata": {"kernel_provisioner": {"provisioner_name": "distributed-provisioner",
                    "config": {"remote_hosts": [own.trim(), "127.0.0.1"]}}}}),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let state = dir.join("state").to_string_lossy().into_owned();
    let options = |dir: PathBuf| Options {
        args: vec![
            "--remote-hosts".into(),
            "localhost".into(),
            "--state-dir".into(),
            state.clone(),
        ],
        env: vec![("PATH".into(), path.clone())],
        dir: Some(dir),
        ..Options::default()
    };
    let gw = Gateway::start(options(dir.clone()));
    let id = gw.start_kernel("dist_local").await;
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("6*7").await.text, "42");
    c.execute("y = 'kept'").await;
    drop(c);
    gw.wait_log("remote host localhost is this machine: launching the kernel locally")
        .await;
    // Both of the spec's own hosts name this machine too.
    for _ in 0..2 {
        let other = gw.start_kernel("dist_own").await;
        let mut c = gw.connect(&other, false).await;
        assert_eq!(c.execute("1+1").await.text, "2");
        drop(c);
        let (status, _, _) = gw
            .http("DELETE", &format!("/api/kernels/{other}"), None)
            .await;
        assert_eq!(status, 204);
        assert_eq!(wait_no_processes(&other).await, Vec::<i32>::new());
    }
    gw.wait_log(&format!("remote host {} is this machine", own.trim()))
        .await;
    gw.wait_log("remote host 127.0.0.1 is this machine").await;
    assert!(
        !called.exists(),
        "ssh was run: {}",
        std::fs::read_to_string(&called).unwrap_or_default()
    );

    // The gateway dies; the next one re-attaches to the same local launcher.
    let running = processes_of(&id);
    let dir = gw.stop_with(nix::sys::signal::Signal::SIGKILL);
    let gw = Gateway::start(options(dir));
    let (status, model) = gw.json("GET", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 200, "{model}\n{}", gw.log());
    assert_eq!(processes_of(&id), running, "the same launcher and kernel");
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("y").await.text, "'kept'");
    drop(c);
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
    assert!(!called.exists(), "ssh was run after the restart");
}

async fn spec_of(gw: &Gateway, name: &str) -> (u16, Value) {
    gw.json("GET", &format!("/api/kernelspecs/{name}"), None)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kernelspecs_are_read_again_while_the_gateway_runs() {
    let gw = Gateway::start(Options::default());
    let specs = gw.dir.join("specs");
    assert_eq!(spec_of(&gw, "later").await.0, 404);

    // Added: listed, then launchable.
    write_spec(
        &specs,
        "later",
        &json!({"argv": ipykernel(&[]), "display_name": "Later", "language": "python"}),
    );
    eventually("the new spec listed", async || {
        let (_, list) = gw.json("GET", "/api/kernelspecs", None).await;
        (list["kernelspecs"]["later"].is_object(), list)
    })
    .await;
    let id = gw.start_kernel("later").await;
    let mut c = gw.connect(&id, false).await;
    assert_eq!(c.execute("1+1").await.text, "2");
    drop(c);
    gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());

    // Changed: the new display name and argv are served, and the next launch runs the argv.
    write_spec(
        &specs,
        "later",
        &json!({"argv": ipykernel(&["-X", "gl_reload=2"]), "display_name": "Later, changed",
                "language": "python"}),
    );
    let model = eventually("the changed spec served", async || {
        let (_, model) = spec_of(&gw, "later").await;
        (model["spec"]["display_name"] == "Later, changed", model)
    })
    .await;
    assert!(
        model["spec"]["argv"].to_string().contains("gl_reload=2"),
        "{model}"
    );
    let id = gw.start_kernel("later").await;
    let mut c = gw.connect(&id, false).await;
    let out = c
        .execute("import sys; print(sys._xoptions.get('gl_reload'))")
        .await;
    assert_eq!(out.text, "2\n", "{out:?}");
    drop(c);
    gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());

    // A broken kernel.json is skipped, logged once, and takes no other spec down.
    put(&specs, "broken_json", b"{\"argv\": ");
    // The directories are read when a request needs them.
    eventually("the broken spec logged", async || {
        let (_, list) = gw.json("GET", "/api/kernelspecs", None).await;
        (gw.log().contains("broken_json"), list)
    })
    .await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (_, list) = gw.json("GET", "/api/kernelspecs", None).await;
        for name in ["later", "py", "python3"] {
            assert!(list["kernelspecs"][name].is_object(), "{name}: {list}");
        }
        assert!(list["kernelspecs"]["broken_json"].is_null());
    }
    let log = gw.log();
    let skipped = log
        .lines()
        .filter(|l| l.contains("skipping kernelspec") && l.contains("broken_json"))
        .count();
    assert_eq!(skipped, 1, "{log}");

    // An installed python3 replaces the served one, and its removal brings that back.
    let (_, before) = spec_of(&gw, "python3").await;
    write_spec(
        &specs,
        "python3",
        &json!({"argv": ipykernel(&[]), "display_name": "Installed python3", "language": "python"}),
    );
    eventually("the installed python3", async || {
        let (_, model) = spec_of(&gw, "python3").await;
        (model["spec"]["display_name"] == "Installed python3", model)
    })
    .await;
    std::fs::remove_dir_all(specs.join("python3")).unwrap();
    eventually("python3 as before", async || {
        let (_, model) = spec_of(&gw, "python3").await;
        (model == before, model)
    })
    .await;

    // Removed: 404 on GET, and a launch says which spec is missing.
    std::fs::remove_dir_all(specs.join("later")).unwrap();
    eventually("the spec gone", async || {
        let (status, model) = spec_of(&gw, "later").await;
        (status == 404, model)
    })
    .await;
    let (status, err) = gw
        .json("POST", "/api/kernels", Some(r#"{"name":"later"}"#))
        .await;
    assert_eq!(status, 404, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("later"),
        "{err}"
    );
    let log = gw.log();
    for what in [
        "kernelspec added",
        "kernelspec changed",
        "kernelspec removed",
    ] {
        assert!(
            log.lines().any(|l| l.contains(what) && l.contains("later")),
            "{what}\n{log}"
        );
    }
}
