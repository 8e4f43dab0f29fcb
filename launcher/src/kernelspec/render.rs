//! The content of one kernelspec directory, computed from [`Options`] without touching disk.
//!
//! A kernelspec is a `kernel.json` plus helper files. Which process proxy or provisioner
//! it names, which launcher options its `argv` passes (Enterprise Gateway's
//! `--RemoteProcessProxy.*` form or gateway_provisioners' plain form, with the gateways'
//! `{kernel_id}`, `{response_address}`, `{public_key}`, `{port_range}` placeholders), and for
//! Spark the `spark-submit` options and helper scripts, all follow from the gateway (`--for`)
//! and the placement (`--mode`). Keeping this pure lets the unit tests check every mode's
//! output exactly; [`super::install`] writes the result.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::KernelspecError;
use super::options::{Mode, Options, SparkInit, Target};

/// The run script of Spark kernelspecs, kept in the binary so the launcher is self-contained.
pub const SPARK_RUN_SH: &str = include_str!("spark-run.sh");

/// The primary resource spark-submit needs; kernel-launcher ignores it.
const PRIMARY_PY: &str = "# Primary resource for spark-submit. kernel-launcher ignores it; it is never run.\n\
raise SystemExit(\"kernel-launcher runs this kernel; this file is only the primary resource\")\n";

const EG_PROXIES: &str = "enterprise_gateway.services.processproxies";
/// `spark-submit --name`, as Enterprise Gateway's own Spark kernelspecs set it.
const SPARK_NAME_OPT: &str = "--name ${KERNEL_ID:-ERROR__NO__KERNEL_ID}";
/// Where YARN unpacks the shipped launcher archive, relative to the driver container.
pub const SHIPPED_LAUNCHER: &str = "./kernel-launcher/kernel-launcher";
/// The shipped launcher archive, relative to the spec directory.
pub const LAUNCHER_ARCHIVE: &str = "bin/kernel-launcher.tar.gz";

/// A helper file of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(&'static str),
    /// A tar.gz holding the launcher binary as `kernel-launcher` (mode 0755).
    LauncherArchive,
}

/// One helper file: path relative to the spec directory, content, permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: &'static str,
    pub content: Content,
    pub mode: u32,
}

/// A kernelspec ready to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub name: String,
    pub kernel_json: Value,
    pub files: Vec<File>,
}

fn usage(option: &str, problem: impl Into<String>) -> KernelspecError {
    KernelspecError::Usage {
        option: option.to_owned(),
        problem: problem.into(),
    }
}

/// The spec's name: `--name`, else one derived from language and mode, plus `--name-suffix`.
pub fn spec_name(o: &Options) -> Result<String, KernelspecError> {
    let base = match &o.name {
        Some(n) => n.clone(),
        None => {
            let lang = o.language.replace(['+', '#'], "_");
            match o.mode {
                Mode::SparkLocal => format!("spark_{lang}_local"),
                Mode::SparkStandalone => format!("spark_{lang}_standalone"),
                Mode::SparkYarnClient => format!("spark_{lang}_yarn_client"),
                Mode::SparkYarnCluster => format!("spark_{lang}_yarn_cluster"),
                m => format!("{lang}_{}", m.as_str()),
            }
        }
    };
    let name = format!("{base}{}", o.name_suffix);
    let option = if o.name.is_some() {
        "--name"
    } else {
        "--name-suffix"
    };
    if name.is_empty() || name.len() > 128 || name.starts_with('.') {
        return Err(usage(
            option,
            format!("{name:?}: a kernel name is 1 to 128 characters and does not start with '.'"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(usage(
            option,
            format!(
                "{name:?}: a kernel name holds only letters, digits, '.', '_' and '-' (as Jupyter requires)"
            ),
        ));
    }
    Ok(name)
}

fn language_field(lang: &str) -> String {
    match lang {
        "r" => "R".into(),
        other => other.to_owned(),
    }
}

fn language_title(lang: &str) -> String {
    match lang {
        "python" => "Python".into(),
        "r" => "R".into(),
        "scala" => "Scala".into(),
        other => other.to_owned(),
    }
}

fn display_name(o: &Options) -> String {
    if let Some(d) = &o.display_name {
        return d.clone();
    }
    let lang = language_title(&o.language);
    let place = match o.mode {
        Mode::SparkLocal => return format!("Spark - {lang} (local mode, kernel-launcher)"),
        Mode::SparkStandalone => {
            return format!("Spark - {lang} (standalone client mode, kernel-launcher)");
        }
        Mode::SparkYarnClient => {
            return format!("Spark - {lang} (YARN client mode, kernel-launcher)");
        }
        Mode::SparkYarnCluster => {
            return format!("Spark - {lang} (YARN cluster mode, kernel-launcher)");
        }
        Mode::Local => "local",
        Mode::Ssh => "SSH",
        Mode::Docker => "Docker",
        Mode::Swarm => "Docker Swarm",
        Mode::Kubernetes => "Kubernetes",
    };
    format!("{lang} ({place}, kernel-launcher)")
}

/// Refuses options the mode does not use, so a spec never silently differs from the intent.
fn check_applicable(o: &Options) -> Result<(), KernelspecError> {
    let m = o.mode;
    let spark = m.is_spark();
    let container = m.is_container();
    let rules: [(&str, bool, bool, &str); 12] = [
        (
            "--spark-home",
            o.spark_home.is_some(),
            spark,
            "the spark-* modes",
        ),
        (
            "--master-url",
            o.master_url.is_some(),
            m == Mode::SparkStandalone,
            "--mode spark-standalone",
        ),
        (
            "--extra-spark-opts",
            o.extra_spark_opts.is_some(),
            spark,
            "the spark-* modes",
        ),
        (
            "--ship-launcher",
            o.ship_launcher.is_some(),
            m == Mode::SparkYarnCluster,
            "--mode spark-yarn-cluster",
        ),
        (
            "--image",
            o.image.is_some(),
            container,
            "--mode docker, swarm or kubernetes",
        ),
        (
            "--launch-script",
            o.launch_script.is_some(),
            container,
            "--mode docker, swarm or kubernetes",
        ),
        (
            "--launch-python",
            o.launch_python.is_some(),
            container,
            "--mode docker, swarm or kubernetes",
        ),
        (
            "--remote-hosts",
            !o.remote_hosts.is_empty(),
            matches!(
                m,
                Mode::Ssh | Mode::SparkLocal | Mode::SparkStandalone | Mode::SparkYarnClient
            ),
            "--mode ssh and the client-side spark-* modes (local, standalone, yarn-client)",
        ),
        (
            "--spark-init-mode",
            o.spark_init.is_some(),
            spark || matches!(m, Mode::Local | Mode::Ssh),
            "--mode local, ssh and the spark-* modes",
        ),
        (
            "--python",
            o.interpreter.is_some(),
            !container,
            "every mode but docker, swarm and kubernetes (the image holds the interpreter)",
        ),
        (
            "--toree-home",
            o.toree_home.is_some(),
            matches!(m, Mode::Local | Mode::Ssh) && o.language == "scala" && o.command.is_empty(),
            "--language scala in --mode local or ssh, without a command after `--`",
        ),
        (
            "--",
            !o.command.is_empty(),
            matches!(m, Mode::Local | Mode::Ssh),
            "--mode local and ssh (in containers the image's entrypoint runs the kernel; under Spark, run.sh does)",
        ),
    ];
    for (option, given, applies, which) in rules {
        if given && !applies {
            return Err(usage(
                option,
                format!("does not apply to --mode {}; it is for {which}", m.as_str()),
            ));
        }
    }
    if o.curve && o.target == Target::Eg {
        return Err(usage(
            "--transport-encryption",
            "is for --for gp and --for gateway-lite: Enterprise Gateway 3.x connects to kernels without CurveZMQ",
        ));
    }
    match (o.target, m) {
        (Target::GatewayLite | Target::Gp, Mode::Kubernetes) => Err(usage(
            "--mode kubernetes",
            "is for --for eg only (KubernetesProcessProxy); gateway-lite cannot run Kubernetes kernels",
        )),
        (Target::GatewayLite, Mode::SparkYarnCluster) => Err(usage(
            "--mode spark-yarn-cluster",
            "gateway-lite cannot run YARN cluster applications: use --for eg (or gp), or --mode spark-yarn-client",
        )),
        _ if spark && o.language != "python" => Err(usage(
            "--language",
            format!(
                "the spark-* modes run PySpark kernels only (the launcher is spark-submit's driver Python), not {:?}: use --language python",
                o.language
            ),
        )),
        _ if spark && o.spark_home.is_none() => Err(usage(
            "--spark-home",
            format!(
                "--mode {} needs the Spark distribution's path on the kernel's host, e.g. --spark-home /opt/spark",
                m.as_str()
            ),
        )),
        (_, Mode::Ssh) if o.remote_hosts.is_empty() => Err(usage(
            "--remote-hosts",
            "--mode ssh needs the hosts the gateway may start kernels on, e.g. --remote-hosts node1,node2",
        )),
        (Target::Eg | Target::Gp, _) if container && o.launch_script.is_none() => Err(usage(
            "--launch-script",
            format!(
                "--mode {} for --for {} runs the gateway's container launch script: give its path on the gateway host, e.g. --launch-script /usr/local/share/jupyter/kernels/python_{}/scripts/{}",
                m.as_str(),
                if o.target == Target::Eg { "eg" } else { "gp" },
                if m == Mode::Kubernetes {
                    "kubernetes"
                } else {
                    "docker"
                },
                if m == Mode::Kubernetes {
                    "launch_kubernetes.py"
                } else {
                    "launch_docker.py"
                },
            ),
        )),
        (Target::Eg | Target::Gp, _) if container && o.image.is_none() => Err(usage(
            "--image",
            format!(
                "--mode {} needs the kernel image, e.g. --image gateway-lite/python-kernel:latest",
                m.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// The gateway options in the argv, with the gateway's placeholders.
fn gateway_options(o: &Options, spark_init: Option<SparkInit>) -> Vec<String> {
    let mut v: Vec<String> = match o.target {
        Target::Eg | Target::GatewayLite => [
            "--RemoteProcessProxy.kernel-id",
            "{kernel_id}",
            "--RemoteProcessProxy.response-address",
            "{response_address}",
            "--RemoteProcessProxy.public-key",
            "{public_key}",
            "--RemoteProcessProxy.port-range",
            "{port_range}",
        ]
        .map(String::from)
        .to_vec(),
        // gateway_provisioners 0.5 passes the plain form and always fills
        // {transport_encryption} (empty when CurveZMQ is off).
        Target::Gp => [
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
        ]
        .map(String::from)
        .to_vec(),
    };
    if let Some(mode) = spark_init {
        v.push(match o.target {
            Target::Gp => "--spark-context-initialization-mode".into(),
            _ => "--RemoteProcessProxy.spark-context-initialization-mode".into(),
        });
        v.push(mode.as_str().into());
    }
    v
}

/// The kernel command for local and ssh modes: `--` or the language's default.
fn kernel_command(o: &Options) -> Result<Vec<String>, KernelspecError> {
    if !o.command.is_empty() {
        return Ok(o.command.clone());
    }
    let interp = |default: &str| o.interpreter.clone().unwrap_or_else(|| default.to_owned());
    Ok(match o.language.as_str() {
        "python" => vec![
            interp("python3"),
            "-m".into(),
            "ipykernel_launcher".into(),
            "-f".into(),
            "{connection_file}".into(),
        ],
        "r" => vec![
            interp("R"),
            "--slave".into(),
            "-e".into(),
            "IRkernel::main()".into(),
            "--args".into(),
            "{connection_file}".into(),
        ],
        "scala" => {
            let home = o.toree_home.as_deref().ok_or_else(|| {
                usage(
                    "--toree-home",
                    "--language scala runs Apache Toree: give its installation (the directory holding bin/run.sh), or the command after `--`",
                )
            })?;
            vec![
                format!("{}/bin/run.sh", home.trim_end_matches('/')),
                "--profile".into(),
                "{connection_file}".into(),
            ]
        }
        other => {
            return Err(usage(
                "--language",
                format!(
                    "{other:?} has no default kernel command: give it after `--`, e.g. -- my-kernel --connection-file {{connection_file}}"
                ),
            ));
        }
    })
}

/// A word for a shell `eval`: unchanged when it is plain, else single-quoted.
fn shell_word(s: &str) -> String {
    // '#' starts a comment only at the start of a word.
    let plain = !s.is_empty()
        && !s.starts_with('#')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+=,#-".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A value that lands in a kernelspec env entry: jupyter_client expands `$NAME` there, so a
/// `$` in a path would be replaced before run.sh ever sees it.
fn no_dollar(option: &str, value: &str) -> Result<(), KernelspecError> {
    if value.contains('$') {
        return Err(usage(
            option,
            format!(
                "{value:?} holds '$', which the gateway expands in kernelspec env values: use a path without '$'"
            ),
        ));
    }
    Ok(())
}

fn stanza(o: &Options, config: Map<String, Value>) -> Option<Value> {
    let m = o.mode;
    let (class, provisioner) = match m {
        Mode::Local
        | Mode::Ssh
        | Mode::SparkLocal
        | Mode::SparkStandalone
        | Mode::SparkYarnClient => (
            "distributed.DistributedProcessProxy",
            "distributed-provisioner",
        ),
        Mode::Docker => ("docker_swarm.DockerProcessProxy", "docker-provisioner"),
        Mode::Swarm => (
            "docker_swarm.DockerSwarmProcessProxy",
            "docker-swarm-provisioner",
        ),
        Mode::Kubernetes => ("k8s.KubernetesProcessProxy", "kubernetes-provisioner"),
        Mode::SparkYarnCluster => ("yarn.YarnClusterProcessProxy", "yarn-provisioner"),
    };
    let with_config = |mut v: Map<String, Value>| {
        if !config.is_empty() {
            v.insert("config".into(), Value::Object(config.clone()));
        }
        Value::Object(v)
    };
    match o.target {
        // gateway-lite runs a spec without a stanza on its own host; one on other hosts or
        // in containers names the same classes as for Enterprise Gateway.
        Target::GatewayLite if config.is_empty() && !m.is_container() && m != Mode::Ssh => None,
        Target::Eg | Target::GatewayLite => {
            let mut v = Map::new();
            v.insert("class_name".into(), json!(format!("{EG_PROXIES}.{class}")));
            Some(json!({"process_proxy": with_config(v)}))
        }
        Target::Gp => {
            let mut v = Map::new();
            v.insert("provisioner_name".into(), json!(provisioner));
            // gateway_provisioners reads `config` always; its own specs write {}.
            v.insert("config".into(), Value::Object(config.clone()));
            Some(json!({"kernel_provisioner": Value::Object(v)}))
        }
    }
}

fn proxy_config(o: &Options) -> Map<String, Value> {
    let mut c = Map::new();
    let hosts = if o.mode == Mode::Local && o.target != Target::GatewayLite {
        // Enterprise Gateway and gateway_provisioners launch on the host they are on when the
        // chosen remote host resolves to a local address, without SSH.
        vec!["localhost".to_owned()]
    } else {
        o.remote_hosts.clone()
    };
    if !hosts.is_empty() {
        // Enterprise Gateway splits a comma-separated string; gateway_provisioners' config is
        // a traitlets List. gateway-lite reads both.
        let v = match o.target {
            Target::Gp => json!(hosts),
            _ => json!(hosts.join(",")),
        };
        c.insert("remote_hosts".into(), v);
    }
    if let Some(image) = &o.image {
        c.insert("image_name".into(), json!(image));
    }
    c
}

/// Everything of the spec: `dir` is where it will live (absolute), `launcher` the launcher path.
pub fn render(o: &Options, dir: &Path, launcher: &str) -> Result<Rendered, KernelspecError> {
    check_applicable(o)?;
    let name = spec_name(o)?;
    let mut env = Map::new();
    let mut files = Vec::new();
    let mut interrupt_mode = o.interrupt_mode.clone();
    let argv: Vec<String> = if o.mode.is_spark() {
        let dir_s = dir.to_string_lossy().into_owned();
        no_dollar("the kernelspec directory", &dir_s)?;
        no_dollar("--launcher", launcher)?;
        let python = o.interpreter.clone().unwrap_or_else(|| "python3".into());
        no_dollar("--python", &python)?;
        let spark_home = o.spark_home.clone().unwrap_or_default();
        let mut opts = match o.mode {
            Mode::SparkLocal => format!("--master local[*] {SPARK_NAME_OPT}"),
            Mode::SparkStandalone => format!(
                "--master {} --deploy-mode client {SPARK_NAME_OPT}",
                o.master_url.as_deref().unwrap_or("spark://127.0.0.1:7077")
            ),
            Mode::SparkYarnClient => format!("--master yarn --deploy-mode client {SPARK_NAME_OPT}"),
            _ => format!(
                "--master yarn --deploy-mode cluster {SPARK_NAME_OPT} \
                 --conf spark.yarn.submit.waitAppCompletion=false --conf spark.yarn.maxAppAttempts=1"
            ),
        };
        let ship = o.mode == Mode::SparkYarnCluster && o.ship_launcher.unwrap_or(true);
        let spec_launcher = if ship {
            // YARN unpacks an --archives entry into the driver container's working directory
            // under the alias after '#', keeping the executable bit (--files would drop it).
            let archive = format!(
                "{}/{LAUNCHER_ARCHIVE}#kernel-launcher",
                dir_s.trim_end_matches('/')
            );
            opts.push_str(&format!(" --archives {}", shell_word(&archive)));
            files.push(File {
                path: LAUNCHER_ARCHIVE,
                content: Content::LauncherArchive,
                mode: 0o644,
            });
            SHIPPED_LAUNCHER.to_owned()
        } else {
            launcher.to_owned()
        };
        if let Some(extra) = o
            .extra_spark_opts
            .as_deref()
            .filter(|e| !e.trim().is_empty())
        {
            opts.push(' ');
            opts.push_str(extra);
        }
        opts.push_str(" ${KERNEL_EXTRA_SPARK_OPTS}");
        env.insert("SPARK_HOME".into(), json!(spark_home));
        env.insert("KERNEL_LAUNCHER".into(), json!(spec_launcher));
        env.insert("SPARK_OPTS".into(), json!(opts));
        env.insert(
            "LAUNCH_OPTS".into(),
            json!(format!("--interpreter {}", shell_word(&python))),
        );
        files.push(File {
            path: "bin/run.sh",
            content: Content::Text(SPARK_RUN_SH),
            mode: 0o755,
        });
        files.push(File {
            path: "bin/primary.py",
            content: Content::Text(PRIMARY_PY),
            mode: 0o644,
        });
        // A Spark kernel's interrupt must travel to ipykernel over ZMQ: a signal to the
        // spark-submit process group would kill the driver JVM (exit 130) and the session.
        interrupt_mode.get_or_insert_with(|| "message".into());
        let run_sh = dir.join("bin/run.sh").to_string_lossy().into_owned();
        let mut argv = vec![run_sh];
        argv.extend(gateway_options(
            o,
            Some(o.spark_init.unwrap_or(SparkInit::Lazy)),
        ));
        argv
    } else if o.mode.is_container() {
        // Enterprise Gateway runs its launch script on the gateway host; it starts the
        // container, whose entrypoint (kernel-launcher in our images) runs the kernel.
        // gateway-lite starts the container itself and ignores the argv.
        let mut argv = match &o.launch_script {
            Some(script) => vec![
                o.launch_python.clone().unwrap_or_else(|| "python".into()),
                script.clone(),
            ],
            None => vec![launcher.to_owned()],
        };
        argv.extend(gateway_options(o, None));
        argv
    } else {
        let mut argv = vec![launcher.to_owned()];
        argv.extend(gateway_options(o, o.spark_init));
        argv.push("--".into());
        argv.extend(kernel_command(o)?);
        argv
    };
    for (k, v) in &o.env {
        if env.contains_key(k) {
            return Err(usage(
                "--env",
                format!(
                    "{k} is written by the spark-* modes; set it through their options (--spark-home, --extra-spark-opts, --python, --launcher)"
                ),
            ));
        }
        env.insert(k.clone(), json!(v));
    }
    let mut spec = Map::new();
    spec.insert("argv".into(), json!(argv));
    spec.insert("display_name".into(), json!(display_name(o)));
    spec.insert("language".into(), json!(language_field(&o.language)));
    if let Some(mode) = interrupt_mode {
        spec.insert("interrupt_mode".into(), json!(mode));
    }
    spec.insert("env".into(), Value::Object(env));
    let mut metadata = Map::new();
    if let Some(Value::Object(s)) = stanza(o, proxy_config(o)) {
        metadata.extend(s);
    }
    if o.curve {
        // gateway_provisioners and gateway-lite ask for keys only from a spec that lists
        // "curve" here, when their own transport-encryption setting is auto or required:
        // gateway_provisioners through {transport_encryption}, gateway-lite through the
        // launcher's TRANSPORT_ENCRYPTION (and that placeholder, where a spec has it).
        metadata.insert("supported_encryption".into(), json!(["curve"]));
    }
    spec.insert("metadata".into(), Value::Object(metadata));
    Ok(Rendered {
        name,
        kernel_json: Value::Object(spec),
        files,
    })
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
