//! The command line of `kernel-launcher kernelspec install`, parsed into typed [`Options`].
//!
//! The shape follows `jupyter kernelspec install` (`--name`, `--display-name`, `--prefix`,
//! `--user`, `--sys-prefix`, `--replace`) plus what a gateway kernelspec needs: which gateway
//! reads it (`--for`), where its kernels run (`--mode`), and the kernel command after `--`.
//! Every option is checked here or in [`super::render`] before anything is written, and every
//! error names the option and what to give instead. Options that do not apply to the chosen
//! mode are refused rather than silently ignored, so a typo'd intent never yields a spec that
//! quietly does something else.

use std::path::PathBuf;

use super::KernelspecError;

/// Which gateway reads the kernelspec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Jupyter Enterprise Gateway 3.x: `metadata.process_proxy.class_name`.
    Eg,
    /// gateway-lite: reads both stanzas; local specs carry none.
    GatewayLite,
    /// gateway_provisioners 0.5: `metadata.kernel_provisioner.provisioner_name`.
    Gp,
}

/// Where the kernels of the spec run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Local,
    Ssh,
    Docker,
    Swarm,
    Kubernetes,
    SparkLocal,
    SparkStandalone,
    SparkYarnClient,
    SparkYarnCluster,
}

impl Mode {
    pub const ALL: &'static str = "local, ssh, docker, swarm, kubernetes, spark-local, \
                                   spark-standalone, spark-yarn-client or spark-yarn-cluster";

    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "local" => Mode::Local,
            "ssh" => Mode::Ssh,
            "docker" => Mode::Docker,
            "swarm" => Mode::Swarm,
            "kubernetes" | "k8s" => Mode::Kubernetes,
            "spark-local" => Mode::SparkLocal,
            "spark-standalone" => Mode::SparkStandalone,
            "spark-yarn-client" => Mode::SparkYarnClient,
            "spark-yarn-cluster" => Mode::SparkYarnCluster,
            _ => return None,
        })
    }

    /// The name as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Ssh => "ssh",
            Mode::Docker => "docker",
            Mode::Swarm => "swarm",
            Mode::Kubernetes => "kubernetes",
            Mode::SparkLocal => "spark-local",
            Mode::SparkStandalone => "spark-standalone",
            Mode::SparkYarnClient => "spark-yarn-client",
            Mode::SparkYarnCluster => "spark-yarn-cluster",
        }
    }

    /// Spark modes: the kernel runs under spark-submit through the embedded run.sh.
    pub fn is_spark(self) -> bool {
        matches!(
            self,
            Mode::SparkLocal
                | Mode::SparkStandalone
                | Mode::SparkYarnClient
                | Mode::SparkYarnCluster
        )
    }

    /// Container modes: the image's entrypoint runs the kernel; the gateway runs a launch script.
    pub fn is_container(self) -> bool {
        matches!(self, Mode::Docker | Mode::Swarm | Mode::Kubernetes)
    }
}

/// Where the kernelspec directory goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `<DIR>/share/jupyter/kernels/<name>`.
    Prefix(PathBuf),
    /// The user's Jupyter data directory.
    User,
    /// `<sys.prefix of the interpreter>/share/jupyter/kernels/<name>`.
    SysPrefix,
    /// Exactly this directory.
    Dir(PathBuf),
}

/// Spark context initialization inside the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparkInit {
    Lazy,
    Eager,
    None,
}

impl SparkInit {
    pub fn as_str(self) -> &'static str {
        match self {
            SparkInit::Lazy => "lazy",
            SparkInit::Eager => "eager",
            SparkInit::None => "none",
        }
    }
}

/// Everything `kernelspec install` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub target: Target,
    pub mode: Mode,
    /// `python`, `r`, `scala`, or any other language name (then `--` is required).
    pub language: String,
    pub name: Option<String>,
    pub name_suffix: String,
    pub display_name: Option<String>,
    pub destination: Destination,
    pub replace: bool,
    /// The launcher path in the spec; `None`: this binary.
    pub launcher: Option<PathBuf>,
    /// The kernel's interpreter (`--python` / `--interpreter`).
    pub interpreter: Option<String>,
    pub env: Vec<(String, String)>,
    pub remote_hosts: Vec<String>,
    pub image: Option<String>,
    pub launch_script: Option<String>,
    pub launch_python: Option<String>,
    pub spark_home: Option<String>,
    pub master_url: Option<String>,
    pub spark_init: Option<SparkInit>,
    pub extra_spark_opts: Option<String>,
    pub ship_launcher: Option<bool>,
    pub interrupt_mode: Option<String>,
    pub toree_home: Option<String>,
    /// `--transport-encryption auto|required`: advertise CurveZMQ to gateway_provisioners.
    pub curve: bool,
    /// The kernel command after `--`.
    pub command: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Request {
    Help,
    Install(Box<Options>),
}

/// Longest value any option takes: enough for any path or option string, small enough that
/// a runaway argument is an error, not a huge kernel.json.
const MAX_VALUE: usize = 4096;
/// Most `--env` entries and `--remote-hosts` entries.
const MAX_ITEMS: usize = 256;

fn usage(option: &str, problem: impl Into<String>) -> KernelspecError {
    KernelspecError::Usage {
        option: option.to_owned(),
        problem: problem.into(),
    }
}

/// Parses the arguments after `kernelspec`.
pub fn parse(args: &[String]) -> Result<Request, KernelspecError> {
    match args.first().map(String::as_str) {
        Some("install") => {}
        Some("-h" | "--help" | "help") | None => return Ok(Request::Help),
        Some(other) => {
            return Err(usage(
                "kernelspec",
                format!("unknown subcommand {other:?}; the one subcommand is `install`"),
            ));
        }
    }
    let mut o = Options {
        target: Target::Eg,
        mode: Mode::Local,
        language: "python".into(),
        name: None,
        name_suffix: String::new(),
        display_name: None,
        destination: Destination::Prefix(PathBuf::from("/usr/local")),
        replace: false,
        launcher: None,
        interpreter: None,
        env: Vec::new(),
        remote_hosts: Vec::new(),
        image: None,
        launch_script: None,
        launch_python: None,
        spark_home: None,
        master_url: None,
        spark_init: None,
        extra_spark_opts: None,
        ship_launcher: None,
        interrupt_mode: None,
        toree_home: None,
        curve: false,
        command: Vec::new(),
    };
    let mut destinations: Vec<&'static str> = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            o.command = args[i..].to_vec();
            if o.command.is_empty() {
                return Err(usage(
                    "--",
                    "no kernel command after `--`; give one, e.g. -- python3 -m ipykernel_launcher -f {connection_file}, or drop `--` for the language's default",
                ));
            }
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        // Flags first: they take no value.
        let flag = match name {
            "-h" | "--help" => return Ok(Request::Help),
            "--user" | "--sys-prefix" | "--replace" => true,
            _ => false,
        };
        if flag {
            if inline.is_some() {
                return Err(usage(name, "takes no value"));
            }
            match name {
                "--user" => {
                    destinations.push("--user");
                    o.destination = Destination::User;
                }
                "--sys-prefix" => {
                    destinations.push("--sys-prefix");
                    o.destination = Destination::SysPrefix;
                }
                _ => o.replace = true,
            }
            continue;
        }
        if !name.starts_with('-') {
            return Err(usage(
                name,
                "unexpected argument; options take the form --NAME VALUE, and the kernel command goes after `--`",
            ));
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = args.get(i).ok_or_else(|| usage(name, "needs a value"))?;
                i += 1;
                v.clone()
            }
        };
        if value.len() > MAX_VALUE {
            return Err(usage(name, format!("value longer than {MAX_VALUE} bytes")));
        }
        if value.contains('\0') {
            return Err(usage(name, "value holds a NUL byte"));
        }
        let nonempty = |v: &str| {
            if v.trim().is_empty() {
                Err(usage(name, "needs a non-empty value"))
            } else {
                Ok(v.to_owned())
            }
        };
        match name {
            "--for" => {
                o.target = match value.as_str() {
                    "eg" | "enterprise-gateway" => Target::Eg,
                    "gateway-lite" => Target::GatewayLite,
                    "gp" | "gateway-provisioners" => Target::Gp,
                    _ => {
                        return Err(usage(
                            name,
                            format!("{value:?}: use eg, gateway-lite or gp"),
                        ));
                    }
                }
            }
            "--mode" => {
                o.mode = Mode::parse(&value).ok_or_else(|| {
                    let hint = if matches!(value.as_str(), "lazy" | "eager" | "none") {
                        " (the Spark context mode is --spark-init-mode)"
                    } else {
                        ""
                    };
                    usage(name, format!("{value:?}: use {}{hint}", Mode::ALL))
                })?
            }
            "--language" => {
                let v = nonempty(&value)?;
                if !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-_.#".contains(c))
                {
                    return Err(usage(
                        name,
                        format!(
                            "{v:?}: use letters, digits and + - _ . # only (e.g. python, r, scala)"
                        ),
                    ));
                }
                o.language = v.to_ascii_lowercase();
            }
            "--name" => o.name = Some(value),
            "--name-suffix" => o.name_suffix = value,
            "--display-name" => o.display_name = Some(nonempty(&value)?),
            "--prefix" => {
                destinations.push("--prefix");
                o.destination = Destination::Prefix(PathBuf::from(nonempty(&value)?));
            }
            "--dir" => {
                destinations.push("--dir");
                o.destination = Destination::Dir(PathBuf::from(nonempty(&value)?));
            }
            "--launcher" => o.launcher = Some(PathBuf::from(nonempty(&value)?)),
            "--python" | "--interpreter" => o.interpreter = Some(nonempty(&value)?),
            "--env" => {
                let (k, v) = value
                    .split_once('=')
                    .ok_or_else(|| usage(name, format!("{value:?} is not KEY=VALUE")))?;
                let valid = !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(usage(
                        name,
                        format!(
                            "{k:?} is not a variable name (letters, digits, _; not starting with a digit)"
                        ),
                    ));
                }
                if o.env.len() >= MAX_ITEMS {
                    return Err(usage(name, format!("more than {MAX_ITEMS} entries")));
                }
                o.env.retain(|(key, _)| key != k);
                o.env.push((k.to_owned(), v.to_owned()));
            }
            "--remote-hosts" => {
                let hosts: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect();
                if hosts.is_empty() || hosts.len() > MAX_ITEMS {
                    return Err(usage(
                        name,
                        format!(
                            "give 1 to {MAX_ITEMS} comma-separated host names, e.g. node1,node2"
                        ),
                    ));
                }
                if let Some(bad) = hosts.iter().find(|h| {
                    !h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._:[]@".contains(c))
                }) {
                    return Err(usage(name, format!("{bad:?} is not a host name")));
                }
                o.remote_hosts = hosts;
            }
            "--image" => {
                let v = nonempty(&value)?;
                if v.chars().any(char::is_whitespace) {
                    return Err(usage(name, format!("{v:?}: an image name has no spaces")));
                }
                o.image = Some(v);
            }
            "--launch-script" => o.launch_script = Some(nonempty(&value)?),
            "--launch-python" => o.launch_python = Some(nonempty(&value)?),
            "--spark-home" => o.spark_home = Some(nonempty(&value)?),
            "--master-url" => {
                let v = nonempty(&value)?;
                if v.chars().any(char::is_whitespace) {
                    return Err(usage(name, format!("{v:?}: a master URL has no spaces")));
                }
                o.master_url = Some(v);
            }
            "--spark-init-mode" | "--spark-context-initialization-mode" => {
                o.spark_init = Some(match value.as_str() {
                    "lazy" => SparkInit::Lazy,
                    "eager" => SparkInit::Eager,
                    "none" => SparkInit::None,
                    _ => return Err(usage(name, format!("{value:?}: use lazy, eager or none"))),
                })
            }
            "--extra-spark-opts" => o.extra_spark_opts = Some(value),
            "--ship-launcher" => {
                o.ship_launcher = Some(match value.as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(usage(name, format!("{value:?}: use yes or no"))),
                })
            }
            "--interrupt-mode" => {
                if value != "signal" && value != "message" {
                    return Err(usage(name, format!("{value:?}: use signal or message")));
                }
                o.interrupt_mode = Some(value);
            }
            "--toree-home" => o.toree_home = Some(nonempty(&value)?),
            "--transport-encryption" => {
                o.curve = match value.as_str() {
                    "auto" | "required" => true,
                    "none" => false,
                    _ => {
                        return Err(usage(
                            name,
                            format!("{value:?}: use auto, required or none"),
                        ));
                    }
                }
            }
            _ => {
                return Err(usage(
                    name,
                    "unknown option; see `kernel-launcher kernelspec install --help`",
                ));
            }
        }
    }
    if destinations.len() > 1 {
        return Err(usage(
            destinations[1],
            format!(
                "conflicts with {}: give one of --prefix, --user, --sys-prefix, --dir",
                destinations[0]
            ),
        ));
    }
    Ok(Request::Install(Box::new(o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        std::iter::once("install")
            .chain(s.iter().copied())
            .map(String::from)
            .collect()
    }

    fn install(s: &[&str]) -> Options {
        match parse(&args(s)).unwrap() {
            Request::Install(o) => *o,
            Request::Help => panic!("help"),
        }
    }

    fn error(s: &[&str]) -> String {
        parse(&args(s)).unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_values() {
        let o = install(&[]);
        assert_eq!(o.target, Target::Eg);
        assert_eq!(o.mode, Mode::Local);
        assert_eq!(o.language, "python");
        assert_eq!(o.destination, Destination::Prefix("/usr/local".into()));
        let o = install(&[
            "--for=gp",
            "--mode",
            "spark-yarn-cluster",
            "--env",
            "A=1",
            "--env=A=2",
            "--env",
            "B=x=y",
            "--remote-hosts",
            " h1, h2 ,",
            "--dir",
            "/tmp/x",
            "--",
            "cmd",
            "--",
            "{connection_file}",
        ]);
        assert_eq!(o.target, Target::Gp);
        assert_eq!(o.mode, Mode::SparkYarnCluster);
        assert_eq!(
            o.env,
            vec![("A".into(), "2".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(o.remote_hosts, vec!["h1", "h2"]);
        assert_eq!(o.destination, Destination::Dir("/tmp/x".into()));
        assert_eq!(o.command, vec!["cmd", "--", "{connection_file}"]);
    }

    #[test]
    fn help_and_subcommands() {
        assert!(matches!(parse(&[]).unwrap(), Request::Help));
        assert!(matches!(parse(&["--help".into()]).unwrap(), Request::Help));
        assert!(matches!(
            parse(&args(&["--mode", "ssh", "-h"])).unwrap(),
            Request::Help
        ));
        let e = parse(&["list".into()]).unwrap_err().to_string();
        assert!(e.contains("`install`"), "{e}");
    }

    #[test]
    fn errors_name_the_option_and_the_fix() {
        for (argv, needles) in [
            (
                &["--mode", "lazy"][..],
                &["--mode", "--spark-init-mode"][..],
            ),
            (&["--mode", "yarn"], &["--mode", "spark-yarn-cluster"]),
            (&["--for", "jupyter"], &["--for", "gateway-lite"]),
            (&["--env", "NOEQUALS"], &["--env", "KEY=VALUE"]),
            (&["--env", "1X=2"], &["--env", "variable name"]),
            (
                &["--remote-hosts", ","],
                &["--remote-hosts", "comma-separated"],
            ),
            (
                &["--remote-hosts", "a b"],
                &["--remote-hosts", "not a host"],
            ),
            (&["--image", "a b"], &["--image", "no spaces"]),
            (
                &["--ship-launcher", "maybe"],
                &["--ship-launcher", "yes or no"],
            ),
            (&["--spark-init-mode", "x"], &["--spark-init-mode", "lazy"]),
            (&["--interrupt-mode", "x"], &["--interrupt-mode", "signal"]),
            (
                &["--transport-encryption", "curve"],
                &["--transport-encryption", "auto, required or none"],
            ),
            (&["--bogus", "1"], &["--bogus", "--help"]),
            (&["stray"], &["stray", "after `--`"]),
            (&["--name"], &["--name", "needs a value"]),
            (&["--user=1"], &["--user", "no value"]),
            (
                &["--user", "--prefix", "/x"],
                &["--prefix", "conflicts with --user"],
            ),
            (&["--display-name", " "], &["--display-name", "non-empty"]),
            (&["--language", "c c"], &["--language", "letters"]),
            (&["--"], &["`--`", "default"]),
        ] {
            let e = error(argv);
            for n in needles {
                assert!(e.contains(n), "{argv:?}: {e:?} lacks {n:?}");
            }
        }
        let long = "x".repeat(MAX_VALUE + 1);
        assert!(error(&["--name", &long]).contains("longer than"));
    }
}
