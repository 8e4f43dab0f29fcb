//! Every mode's kernel.json, checked field by field.

use serde_json::{Value, json};

use super::*;
use crate::kernelspec::options::{Request, parse};

const KL: &str = "/opt/kl/kernel-launcher";
const LEGACY: [&str; 8] = [
    "--RemoteProcessProxy.kernel-id",
    "{kernel_id}",
    "--RemoteProcessProxy.response-address",
    "{response_address}",
    "--RemoteProcessProxy.public-key",
    "{public_key}",
    "--RemoteProcessProxy.port-range",
    "{port_range}",
];
const PLAIN: [&str; 10] = [
    "--kernel-id",
    "{kernel_id}",
    "--port-range",
    "{port_range}",
    "--response-address",
    "{response_address}",
    "--public-key",
    "{public_key}",
    "--transport-encryption",
    "{transport_encryption}",
];

fn opts(args: &[&str]) -> Options {
    let a: Vec<String> = std::iter::once("install")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    match parse(&a).unwrap() {
        Request::Install(o) => *o,
        Request::Help => panic!("help"),
    }
}

fn spec(args: &[&str]) -> Rendered {
    render(&opts(args), Path::new("/k/spec dir"), KL).unwrap()
}

fn err(args: &[&str]) -> String {
    render(&opts(args), Path::new("/k/x"), KL)
        .unwrap_err()
        .to_string()
}

fn argv(r: &Rendered) -> Vec<String> {
    serde_json::from_value(r.kernel_json["argv"].clone()).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const IPY: [&str; 5] = [
    "python3",
    "-m",
    "ipykernel_launcher",
    "-f",
    "{connection_file}",
];

#[test]
fn local_for_each_gateway() {
    let eg = spec(&[]);
    assert_eq!(eg.name, "python_local");
    let mut want = vec![KL];
    want.extend(LEGACY);
    want.push("--");
    want.extend(IPY);
    assert_eq!(argv(&eg), strings(&want));
    assert_eq!(
        eg.kernel_json["metadata"],
        json!({"process_proxy": {
            "class_name": "enterprise_gateway.services.processproxies.distributed.DistributedProcessProxy",
            "config": {"remote_hosts": "localhost"}}})
    );
    assert_eq!(eg.kernel_json["language"], "python");
    assert_eq!(
        eg.kernel_json["display_name"],
        "Python (local, kernel-launcher)"
    );
    assert!(eg.kernel_json.get("interrupt_mode").is_none());
    assert!(eg.files.is_empty());

    let gl = spec(&["--for", "gateway-lite"]);
    assert_eq!(argv(&gl), argv(&eg), "gateway-lite fills EG's placeholders");
    assert_eq!(gl.kernel_json["metadata"], json!({}), "local: no stanza");

    let gp = spec(&["--for", "gp"]);
    let mut want = vec![KL];
    want.extend(PLAIN);
    want.push("--");
    want.extend(IPY);
    assert_eq!(argv(&gp), strings(&want));
    assert_eq!(
        gp.kernel_json["metadata"],
        json!({"kernel_provisioner": {"provisioner_name": "distributed-provisioner",
                                      "config": {"remote_hosts": ["localhost"]}}})
    );
}

#[test]
fn languages_and_commands() {
    let r = spec(&["--language", "r", "--python", "/usr/lib/R/bin/R"]);
    assert_eq!(r.name, "r_local");
    assert_eq!(r.kernel_json["language"], "R");
    assert_eq!(
        argv(&r)[10..],
        strings(&[
            "/usr/lib/R/bin/R",
            "--slave",
            "-e",
            "IRkernel::main()",
            "--args",
            "{connection_file}"
        ])
    );
    let s = spec(&["--language", "scala", "--toree-home", "/opt/toree/"]);
    assert_eq!(
        argv(&s)[10..],
        strings(&["/opt/toree/bin/run.sh", "--profile", "{connection_file}"])
    );
    assert!(err(&["--language", "scala"]).contains("--toree-home"));
    assert!(err(&["--toree-home", "/t"]).starts_with("--toree-home: does not apply"));
    assert!(
        err(&["--language", "scala", "--toree-home", "/t", "--", "x"]).starts_with("--toree-home:")
    );
    let e = err(&["--language", "julia"]);
    assert!(e.contains("--language") && e.contains("after `--`"), "{e}");
    let j = spec(&[
        "--language",
        "julia",
        "--",
        "julia",
        "-e",
        "a \"quoted\" 'arg' $X",
        "{connection_file}",
    ]);
    assert_eq!(j.name, "julia_local");
    assert_eq!(argv(&j)[9], "--");
    assert_eq!(
        argv(&j)[10..],
        strings(&["julia", "-e", "a \"quoted\" 'arg' $X", "{connection_file}"])
    );
    // Escaping is JSON's: the text round-trips.
    let text = serde_json::to_string(&j.kernel_json).unwrap();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, j.kernel_json);
    assert!(text.contains(r#"a \"quoted\" 'arg' $X"#), "{text}");

    let p = spec(&[
        "--python",
        "/v/bin/python",
        "--spark-init-mode",
        "eager",
        "--env",
        "A=b c",
        "--interrupt-mode",
        "message",
        "--display-name",
        "Mine",
    ]);
    let a = argv(&p);
    assert_eq!(
        a[9..11],
        strings(&[
            "--RemoteProcessProxy.spark-context-initialization-mode",
            "eager"
        ])
    );
    assert_eq!(a[12], "/v/bin/python");
    assert_eq!(p.kernel_json["env"], json!({"A": "b c"}));
    assert_eq!(p.kernel_json["interrupt_mode"], "message");
    assert_eq!(p.kernel_json["display_name"], "Mine");
}

#[test]
fn ssh() {
    let eg = spec(&["--mode", "ssh", "--remote-hosts", "n1,n2"]);
    assert_eq!(eg.name, "python_ssh");
    assert_eq!(
        eg.kernel_json["metadata"]["process_proxy"]["config"],
        json!({"remote_hosts": "n1,n2"})
    );
    assert_eq!(argv(&eg)[0], KL);
    let gl = spec(&[
        "--mode",
        "ssh",
        "--remote-hosts",
        "n1",
        "--for",
        "gateway-lite",
    ]);
    assert!(
        gl.kernel_json["metadata"]["process_proxy"]["class_name"]
            .as_str()
            .unwrap()
            .ends_with(".DistributedProcessProxy")
    );
    let gp = spec(&["--mode", "ssh", "--remote-hosts", "n1,n2", "--for", "gp"]);
    assert_eq!(
        gp.kernel_json["metadata"]["kernel_provisioner"]["config"],
        json!({"remote_hosts": ["n1", "n2"]})
    );
    let e = err(&["--mode", "ssh"]);
    assert!(e.starts_with("--remote-hosts:"), "{e}");
    assert!(err(&["--remote-hosts", "a"]).contains("does not apply to --mode local"));
}

#[test]
fn containers() {
    let script = "/usr/local/share/jupyter/kernels/python_docker/scripts/launch_docker.py";
    for (mode, class, provisioner) in [
        (
            "docker",
            "docker_swarm.DockerProcessProxy",
            "docker-provisioner",
        ),
        (
            "swarm",
            "docker_swarm.DockerSwarmProcessProxy",
            "docker-swarm-provisioner",
        ),
        ("kubernetes", "k8s.KubernetesProcessProxy", ""),
    ] {
        let eg = spec(&[
            "--mode",
            mode,
            "--image",
            "img:1",
            "--launch-script",
            script,
        ]);
        assert_eq!(eg.name, format!("python_{mode}"));
        let mut want = vec!["python", script];
        want.extend(LEGACY);
        assert_eq!(argv(&eg), strings(&want));
        assert_eq!(
            eg.kernel_json["metadata"],
            json!({"process_proxy": {"class_name": format!("enterprise_gateway.services.processproxies.{class}"),
                                     "config": {"image_name": "img:1"}}})
        );
        let e = err(&["--mode", mode, "--image", "i"]);
        assert!(e.starts_with("--launch-script:"), "{e}");
        let e = err(&["--mode", mode, "--launch-script", "/s.py"]);
        assert!(e.starts_with("--image:"), "{e}");
        let e = err(&[
            "--mode",
            mode,
            "--image",
            "i",
            "--launch-script",
            "/s",
            "--",
            "x",
        ]);
        assert!(e.starts_with("--:") && e.contains("entrypoint"), "{e}");
        assert!(
            err(&[
                "--mode",
                mode,
                "--image",
                "i",
                "--launch-script",
                "/s",
                "--python",
                "p"
            ])
            .starts_with("--python:")
        );
        if mode == "kubernetes" {
            for target in ["gateway-lite", "gp"] {
                let e = err(&["--mode", mode, "--image", "i", "--for", target]);
                assert!(e.contains("--for eg only"), "{e}");
            }
            continue;
        }
        let gp = spec(&[
            "--mode",
            mode,
            "--image",
            "img:1",
            "--launch-script",
            script,
            "--launch-python",
            "/gp/python",
            "--for",
            "gp",
        ]);
        let mut want = vec!["/gp/python", script];
        want.extend(PLAIN);
        assert_eq!(argv(&gp), strings(&want));
        assert_eq!(
            gp.kernel_json["metadata"]["kernel_provisioner"]["provisioner_name"],
            provisioner
        );
        // gateway-lite ignores the argv and may take the image from --docker-image.
        let gl = spec(&["--mode", mode, "--for", "gateway-lite"]);
        assert_eq!(argv(&gl)[0], KL);
        assert!(
            gl.kernel_json["metadata"]["process_proxy"]
                .get("config")
                .is_none()
        );
    }
}

fn spark(args: &[&str]) -> Rendered {
    let mut a = vec!["--spark-home", "/opt/spark 3"];
    a.extend(args);
    spec(&a)
}

#[test]
fn spark_modes() {
    let name_opt = "--name ${KERNEL_ID:-ERROR__NO__KERNEL_ID}";
    for (mode, name, opts, class) in [
        (
            "spark-local",
            "spark_python_local",
            format!("--master local[*] {name_opt}"),
            "distributed.DistributedProcessProxy",
        ),
        (
            "spark-standalone",
            "spark_python_standalone",
            format!("--master spark://m:7077 --deploy-mode client {name_opt}"),
            "distributed.DistributedProcessProxy",
        ),
        (
            "spark-yarn-client",
            "spark_python_yarn_client",
            format!("--master yarn --deploy-mode client {name_opt}"),
            "distributed.DistributedProcessProxy",
        ),
        (
            "spark-yarn-cluster",
            "spark_python_yarn_cluster",
            format!(
                "--master yarn --deploy-mode cluster {name_opt} --conf spark.yarn.submit.waitAppCompletion=false --conf spark.yarn.maxAppAttempts=1 --archives '/k/spec dir/bin/kernel-launcher.tar.gz#kernel-launcher'"
            ),
            "yarn.YarnClusterProcessProxy",
        ),
    ] {
        let mut a = vec![
            "--mode",
            mode,
            "--python",
            "/v/python",
            "--name-suffix",
            "_43_lazy",
            "--extra-spark-opts",
            "--conf a=b",
        ];
        if mode == "spark-standalone" {
            a.extend(["--master-url", "spark://m:7077"]);
        }
        let r = spark(&a);
        assert_eq!(r.name, format!("{name}_43_lazy"));
        let mut want = vec!["/k/spec dir/bin/run.sh"];
        want.extend(LEGACY);
        want.extend([
            "--RemoteProcessProxy.spark-context-initialization-mode",
            "lazy",
        ]);
        assert_eq!(argv(&r), strings(&want));
        let launcher = if mode == "spark-yarn-cluster" {
            SHIPPED_LAUNCHER
        } else {
            KL
        };
        assert_eq!(
            r.kernel_json["env"],
            json!({"SPARK_HOME": "/opt/spark 3", "KERNEL_LAUNCHER": launcher,
                   "SPARK_OPTS": format!("{opts} --conf a=b ${{KERNEL_EXTRA_SPARK_OPTS}}"),
                   "LAUNCH_OPTS": "--interpreter /v/python"})
        );
        assert_eq!(r.kernel_json["interrupt_mode"], "message");
        assert_eq!(r.kernel_json["language"], "python");
        assert_eq!(
            r.kernel_json["metadata"]["process_proxy"]["class_name"],
            format!("enterprise_gateway.services.processproxies.{class}")
        );
        let paths: Vec<_> = r.files.iter().map(|f| f.path).collect();
        let mut want_files = vec!["bin/run.sh", "bin/primary.py"];
        if mode == "spark-yarn-cluster" {
            want_files.insert(0, LAUNCHER_ARCHIVE);
        }
        assert_eq!(paths, want_files);
        assert!(r.files.iter().any(|f| f.path == "bin/run.sh"
            && f.mode == 0o755
            && f.content == Content::Text(SPARK_RUN_SH)));
    }
    // Defaults: lazy, python3, the old installer's master URL, no extra options.
    let r = spark(&["--mode", "spark-standalone", "--spark-init-mode", "none"]);
    assert_eq!(
        r.kernel_json["env"]["SPARK_OPTS"],
        "--master spark://127.0.0.1:7077 --deploy-mode client --name ${KERNEL_ID:-ERROR__NO__KERNEL_ID} ${KERNEL_EXTRA_SPARK_OPTS}"
    );
    assert_eq!(r.kernel_json["env"]["LAUNCH_OPTS"], "--interpreter python3");
    assert_eq!(argv(&r).last().unwrap(), "none");
    assert_eq!(
        r.kernel_json["display_name"],
        "Spark - Python (standalone client mode, kernel-launcher)"
    );
    // --ship-launcher no: the launcher path on the NodeManagers, no archive.
    let r = spark(&["--mode", "spark-yarn-cluster", "--ship-launcher", "no"]);
    assert_eq!(r.kernel_json["env"]["KERNEL_LAUNCHER"], KL);
    assert!(
        !r.kernel_json["env"]["SPARK_OPTS"]
            .as_str()
            .unwrap()
            .contains("--archives")
    );
    // An interpreter path with a space is quoted for run.sh's eval.
    let r = spark(&["--mode", "spark-local", "--python", "/my env/python"]);
    assert_eq!(
        r.kernel_json["env"]["LAUNCH_OPTS"],
        "--interpreter '/my env/python'"
    );
    // gp: plain options; gateway-lite: no stanza for a local driver.
    let r = spark(&["--mode", "spark-yarn-client", "--for", "gp"]);
    assert_eq!(
        argv(&r)[1..],
        strings(&[&PLAIN[..], &["--spark-context-initialization-mode", "lazy"]].concat())
    );
    let r = spark(&["--mode", "spark-yarn-cluster", "--for", "gp"]);
    assert_eq!(
        r.kernel_json["metadata"]["kernel_provisioner"]["provisioner_name"],
        "yarn-provisioner"
    );
    let r = spark(&["--mode", "spark-local", "--for", "gateway-lite"]);
    assert_eq!(r.kernel_json["metadata"], json!({}));
}

#[test]
fn spark_errors() {
    let e = err(&["--mode", "spark-local"]);
    assert!(e.starts_with("--spark-home:"), "{e}");
    let e = err(&[
        "--mode",
        "spark-local",
        "--spark-home",
        "/s",
        "--language",
        "r",
    ]);
    assert!(e.starts_with("--language:") && e.contains("PySpark"), "{e}");
    let e = err(&["--mode", "spark-local", "--spark-home", "/s", "--", "x"]);
    assert!(e.starts_with("--:"), "{e}");
    let e = err(&[
        "--mode",
        "spark-local",
        "--spark-home",
        "/s",
        "--ship-launcher",
        "no",
    ]);
    assert!(e.contains("spark-yarn-cluster"), "{e}");
    let e = err(&[
        "--mode",
        "spark-local",
        "--spark-home",
        "/s",
        "--master-url",
        "spark://x:1",
    ]);
    assert!(e.starts_with("--master-url:"), "{e}");
    let e = err(&[
        "--mode",
        "spark-yarn-cluster",
        "--spark-home",
        "/s",
        "--for",
        "gateway-lite",
    ]);
    assert!(e.contains("spark-yarn-client"), "{e}");
    let e = err(&[
        "--mode",
        "spark-local",
        "--spark-home",
        "/s",
        "--env",
        "SPARK_OPTS=x",
    ]);
    assert!(
        e.starts_with("--env:") && e.contains("--extra-spark-opts"),
        "{e}"
    );
    let e = err(&[
        "--mode",
        "spark-local",
        "--spark-home",
        "/s",
        "--python",
        "/a$b",
    ]);
    assert!(e.starts_with("--python:"), "{e}");
    assert!(err(&["--spark-home", "/s"]).contains("does not apply to --mode local"));
    assert!(err(&["--name", "a/b"]).starts_with("--name:"));
    assert!(err(&["--name", ".hidden"]).starts_with("--name:"));
}

#[test]
fn shell_words() {
    assert_eq!(
        shell_word("/a/b.tar.gz#kernel-launcher"),
        "/a/b.tar.gz#kernel-launcher"
    );
    assert_eq!(shell_word("#x"), "'#x'");
    assert_eq!(shell_word("a b"), "'a b'");
    assert_eq!(shell_word("it's"), r"'it'\''s'");
    assert_eq!(shell_word("$(x)"), "'$(x)'");
    assert_eq!(shell_word(""), "''");
}

#[test]
fn transport_encryption_advertises_curve_for_gp_and_gateway_lite() {
    for policy in ["auto", "required"] {
        let gp = spec(&["--for", "gp", "--transport-encryption", policy]);
        assert_eq!(
            gp.kernel_json["metadata"]["supported_encryption"],
            json!(["curve"])
        );
        // The policy itself stays gateway_provisioners' to fill in.
        let a = argv(&gp);
        assert!(
            a.windows(2)
                .any(|w| w == ["--transport-encryption", "{transport_encryption}"])
        );
        let docker = spec(&[
            "--for",
            "gp",
            "--mode",
            "docker",
            "--image",
            "img",
            "--launch-script",
            "/s/launch_docker.py",
            "--transport-encryption",
            policy,
        ]);
        assert_eq!(
            docker.kernel_json["metadata"]["supported_encryption"],
            json!(["curve"])
        );
    }
    let plain = spec(&["--for", "gp", "--transport-encryption", "none"]);
    assert!(
        plain.kernel_json["metadata"]
            .get("supported_encryption")
            .is_none()
    );
    assert!(
        spec(&["--for", "gp"]).kernel_json["metadata"]
            .get("supported_encryption")
            .is_none()
    );
    for policy in ["auto", "required"] {
        let gl = spec(&["--for", "gateway-lite", "--transport-encryption", policy]);
        assert_eq!(
            gl.kernel_json["metadata"]["supported_encryption"],
            json!(["curve"])
        );
        // gateway-lite passes its policy in TRANSPORT_ENCRYPTION; the argv stays as for
        // Enterprise Gateway, so an older gateway-lite still runs the spec (in clear text).
        assert!(!argv(&gl).iter().any(|a| a.contains("transport")));
    }
    let e = err(&["--for", "eg", "--transport-encryption", "auto"]);
    assert!(
        e.contains("--transport-encryption") && e.contains("--for gp"),
        "{e}"
    );
}
