//! The translation of the command line ([`super::args`]) into a checked [`Config`].
//!
//! Each option has an environment variable (`GATEWAY_LITE_*`, and Enterprise Gateway's own
//! names where a team migrating from it would already have set them). Every check names the
//! option and its variable, and says what to write instead.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::args::Args;
use super::edge;
use super::provisioning::{docker_settings, ssh_settings};
use super::settings::{
    Config, ConfigError, Cull, KERNEL_ENV_STANDARD, Limits, MAX_POOL_REFILL_CONCURRENCY,
    MAX_POOL_SIZE, Pools, SearchEnv, StateDirSource, TransportEncryption, env_matches, parse_secs,
};

impl Config {
    /// Parses the process's command line and environment. `--help` and `--version` print
    /// and exit 0 inside; every other problem, syntax included, is a [`ConfigError`].
    pub fn from_args() -> Result<Self, ConfigError> {
        parse(std::env::args_os(), SearchEnv::from_env(), true)
    }

    /// Parses an explicit argv (for tests); the environment is still consulted by clap.
    pub fn try_from_iter<I, T>(argv: I, search: SearchEnv) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        parse(argv, search, false)
    }
}

/// Parses `argv`; with `exit_on_help`, `--help` and `--version` print and exit 0.
fn parse<I, T>(argv: I, search: SearchEnv, exit_on_help: bool) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let syntax = |e: clap::Error| {
        use clap::error::ErrorKind;
        if exit_on_help && matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit();
        }
        ConfigError {
            option: "command line",
            problem: e.to_string(),
        }
    };
    let matches = Args::command().try_get_matches_from(argv).map_err(syntax)?;
    let args = Args::from_arg_matches(&matches).map_err(syntax)?;
    let token_on_command_line =
        matches.value_source("auth_token") == Some(clap::parser::ValueSource::CommandLine);
    from_parsed(args, search, token_on_command_line)
}

fn from_parsed(
    args: Args,
    search: SearchEnv,
    token_on_command_line: bool,
) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let ip = parse_ip(&args.ip, "--ip (env GATEWAY_LITE_IP)")?;
    let edge = edge::edge(&args, ip, token_on_command_line, &mut warnings)?;
    let port_range = edge::port_range(&args)?;
    let extra_env = edge::kernel_env(&args)?;
    let kernel_base_env = std::env::vars()
        .filter(|(k, _)| {
            !k.starts_with("GATEWAY_LITE_")
                && (env_matches(KERNEL_ENV_STANDARD, k) || env_matches(&extra_env, k))
        })
        .collect();
    let response_ip = response_ip(&args.response_ip)?;
    if response_ip.is_unspecified() {
        return Err(ConfigError {
            option: "--response-ip (env GATEWAY_LITE_RESPONSE_IP)",
            problem: format!(
                "{response_ip} cannot be advertised to launchers; give the address they can reach, e.g. 127.0.0.1"
            ),
        });
    }
    let kernel_ip = parse_ip(&args.kernel_ip, "--kernel-ip (env GATEWAY_LITE_KERNEL_IP)")?;
    let ssh = ssh_settings(&args)?;
    let docker = docker_settings(&args)?;
    let launch_timeout = parse_secs(&args.launch_timeout).ok_or_else(|| ConfigError {
        option: "--launch-timeout (env GATEWAY_LITE_LAUNCH_TIMEOUT)",
        problem: format!(
            "{:?} is not a positive number of seconds; use e.g. 30",
            args.launch_timeout
        ),
    })?;
    for dir in &args.kernelspec_dirs {
        if !dir.is_dir() {
            return Err(ConfigError {
                option: "--kernelspec-dir (env GATEWAY_LITE_KERNELSPEC_DIRS)",
                problem: format!(
                    "{} is not a directory; give a directory holding <name>/kernel.json",
                    dir.display()
                ),
            });
        }
    }
    let transport_encryption =
        TransportEncryption::parse(&args.transport_encryption).ok_or_else(|| ConfigError {
            option: "--transport-encryption (env GATEWAY_LITE_TRANSPORT_ENCRYPTION)",
            problem: format!(
                "{:?} is not one of none, auto, required",
                args.transport_encryption
            ),
        })?;
    if args.max_message_bytes < 1024 {
        return Err(ConfigError {
            option: "--max-message-bytes (env GATEWAY_LITE_MAX_MESSAGE_BYTES)",
            problem: format!("{} is too small; use at least 1024", args.max_message_bytes),
        });
    }
    let secs_or_zero =
        |text: &str, option: &'static str| -> Result<Option<Duration>, ConfigError> {
            if text.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
                return Ok(None);
            }
            parse_secs(text).map(Some).ok_or_else(|| ConfigError {
                option,
                problem: format!(
                    "{text:?} is not a number of seconds; use e.g. 3600, or 0 to turn it off"
                ),
            })
        };
    let cull_idle = secs_or_zero(
        &args.cull_idle_timeout,
        "--cull-idle-timeout (env GATEWAY_LITE_CULL_IDLE_TIMEOUT)",
    )?;
    let cull_interval = parse_secs(&args.cull_interval).ok_or_else(|| ConfigError {
        option: "--cull-interval (env GATEWAY_LITE_CULL_INTERVAL)",
        problem: format!(
            "{:?} is not a positive number of seconds; use e.g. 300",
            args.cull_interval
        ),
    })?;
    if args.max_kernels == Some(0) {
        return Err(ConfigError {
            option: "--max-kernels (env GATEWAY_LITE_MAX_KERNELS)",
            problem: "0 would refuse every kernel; give at least 1, or leave it out for no limit"
                .into(),
        });
    }
    let max_kernels_per_user = match args.max_kernels_per_user {
        None | Some(-1) => None,
        Some(n) if n >= 1 => usize::try_from(n).ok(),
        Some(n) => {
            return Err(ConfigError {
                option: "--max-kernels-per-user (env GATEWAY_LITE_MAX_KERNELS_PER_USER)",
                problem: format!("{n} is not a limit; give at least 1, or -1 for no limit"),
            });
        }
    };
    let (state_dir, state_dir_source) = match args.state_dir {
        _ if args.no_state_dir => (None, StateDirSource::Off),
        Some(dir) => (Some(dir), StateDirSource::Given),
        None if args.port == 0 => (None, StateDirSource::PortZero),
        None => {
            let base = search
                .state_home
                .clone()
                .or_else(|| search.home.as_ref().map(|h| h.join(".local/state")));
            // Without XDG_STATE_HOME or HOME there is no per-user default: no persistence
            // (warned about at start, with the fix).
            match base {
                Some(b) => (
                    Some(b.join("gateway-lite").join(format!("port-{}", args.port))),
                    StateDirSource::Default,
                ),
                None => (None, StateDirSource::NoHome),
            }
        }
    };
    let kernel_log_retention = parse_retention(&args.kernel_log_retention)?;
    let log_format = args.log_format.parse().map_err(|problem| ConfigError {
        option: "--log-format (env GATEWAY_LITE_LOG_FORMAT)",
        problem,
    })?;
    let limits = Limits {
        max_kernels: args.max_kernels,
        max_kernels_per_user,
    };
    let cull = cull_idle.map(|idle_timeout| Cull {
        idle_timeout,
        interval: cull_interval,
        connected: args.cull_connected,
        busy: args.cull_busy,
    });
    let mut pools = parse_pools(&args.pools, args.pool_refill_concurrency)?;
    pools.refill_delay = match args.pool_refill_delay.trim().parse::<f64>() {
        Ok(0.0) => Duration::ZERO,
        _ => parse_secs(&args.pool_refill_delay)
            .filter(|d| *d <= Duration::from_secs(3600))
            .ok_or_else(|| ConfigError {
                option: "--pool-refill-delay (env GATEWAY_LITE_POOL_REFILL_DELAY)",
                problem: format!(
                    "{:?} is not a number of seconds from 0 to 3600; use e.g. 0.25",
                    args.pool_refill_delay
                ),
            })?,
    };
    let launcher = match args.launcher {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigError {
                        option: "--launcher (env GATEWAY_LITE_LAUNCHER)",
                        problem: format!(
                            "{} is not a file; give the path of the kernel-launcher binary",
                            path.display()
                        ),
                    });
                }
                path
            }
            None => default_launcher().ok_or_else(|| ConfigError {
                option: "--launcher (env GATEWAY_LITE_LAUNCHER)",
                problem: "kernel-launcher was found neither next to gateway-lite nor on PATH; build it (cargo build -p launcher) or pass --launcher PATH".into(),
            })?,
        };
    Ok(Config {
        ip,
        port: args.port,
        edge,
        kernelspec_dirs: args.kernelspec_dirs,
        ssh,
        docker,
        search,
        default_kernel_name: args.default_kernel_name.filter(|n| !n.is_empty()),
        launcher,
        launch_timeout,
        port_range,
        kernel_base_env,
        warnings,
        response_ip,
        kernel_ip,
        max_message_bytes: args.max_message_bytes,
        transport_encryption,
        state_dir,
        state_dir_source,
        kernel_log_retention,
        log_format,
        shutdown_kernels_on_exit: args.shutdown_kernels_on_exit,
        limits,
        restart_limit: args.restart_limit,
        cull,
        pools,
    })
}

/// `--pool NAME=N` (repeatable) and `--pool-refill-concurrency`.
fn parse_pools(given: &[String], concurrency: usize) -> Result<Pools, ConfigError> {
    const OPTION: &str = "--pool (env GATEWAY_LITE_POOL)";
    let mut sizes = std::collections::BTreeMap::new();
    for item in given.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let fail = |problem: String| ConfigError {
            option: OPTION,
            problem,
        };
        let (name, n) = item.split_once('=').ok_or_else(|| {
            fail(format!(
                "{item:?} is not NAME=N; give a kernelspec name and a count, e.g. python3=4"
            ))
        })?;
        let name = name.trim();
        if name.is_empty()
            || name.len() > 255
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(fail(format!(
                "{name:?} is not a kernelspec name (letters, digits, '_', '-', '.')"
            )));
        }
        let n: usize = n.trim().parse().map_err(|_| {
            fail(format!(
                "{n:?} in {item:?} is not a count; give a whole number from 1 to {MAX_POOL_SIZE}"
            ))
        })?;
        if n == 0 || n > MAX_POOL_SIZE {
            return Err(fail(format!(
                "{name}={n}: a pool keeps 1 to {MAX_POOL_SIZE} kernels; leave the pool out for none"
            )));
        }
        if sizes.insert(name.to_owned(), n).is_some() {
            return Err(fail(format!(
                "kernelspec {name:?} is given twice; give each pool once"
            )));
        }
    }
    if concurrency == 0 || concurrency > MAX_POOL_REFILL_CONCURRENCY {
        return Err(ConfigError {
            option: "--pool-refill-concurrency (env GATEWAY_LITE_POOL_REFILL_CONCURRENCY)",
            problem: format!(
                "{concurrency} is out of range; give 1 to {MAX_POOL_REFILL_CONCURRENCY}"
            ),
        });
    }
    Ok(Pools {
        sizes,
        refill_concurrency: concurrency,
        refill_delay: Duration::ZERO,
    })
}

/// `--kernel-log-retention`: whole or fractional seconds, 0 included (delete at once).
fn parse_retention(text: &str) -> Result<Duration, ConfigError> {
    if text.trim().parse::<f64>().is_ok_and(|v| v == 0.0) {
        return Ok(Duration::ZERO);
    }
    parse_secs(text).ok_or_else(|| ConfigError {
        option: "--kernel-log-retention (env GATEWAY_LITE_KERNEL_LOG_RETENTION)",
        problem: format!(
            "{text:?} is not a number of seconds; use e.g. 86400 (a day), or 0 to delete a kernel's log when it ends"
        ),
    })
}

/// `--response-ip`: an address, or a subnet whose address on this host's interfaces is taken
/// (a gateway on a Swarm overlay network without a fixed address).
fn response_ip(text: &str) -> Result<IpAddr, ConfigError> {
    const OPTION: &str = "--response-ip (env GATEWAY_LITE_RESPONSE_IP)";
    let Some(subnet) = super::subnet::Subnet::parse(text.trim()) else {
        return parse_ip(text, OPTION);
    };
    let addresses = super::subnet::interface_addresses().map_err(|e| ConfigError {
        option: OPTION,
        problem: format!("cannot list this host's interface addresses: {e}"),
    })?;
    subnet.pick(addresses).ok_or_else(|| ConfigError {
        option: OPTION,
        problem: format!(
            "no interface of this host has an address in {text}; give the subnet of a network \
             this host (or container) is attached to, or an address"
        ),
    })
}

fn parse_ip(text: &str, option: &'static str) -> Result<IpAddr, ConfigError> {
    text.trim_matches(|c| c == '[' || c == ']')
        .parse()
        .map_err(|_| ConfigError {
            option,
            problem: format!("{text:?} is not an IP address; use e.g. 127.0.0.1 or ::1"),
        })
}

/// `kernel-launcher` next to our own binary, else the first on `PATH`.
fn default_launcher() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("kernel-launcher")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kernel-launcher"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    use crate::config::test_parse as parse;

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.launch_timeout, Duration::from_secs(30));
        assert!(
            matches!(&c.edge.auth, crate::config::Auth::Token { source: crate::config::TokenSource::Generated, value } if value.len() == 64),
            "a token is generated: {:?}",
            c.edge.auth
        );
        assert_eq!(c.ip.to_string(), "127.0.0.1");
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse(&["--launch-timeout", "soon"]).unwrap_err();
        assert!(e.option.starts_with("--launch-timeout"), "{e}");
        let e = parse(&["--ip", "nowhere"]).unwrap_err();
        assert!(e.option.starts_with("--ip"), "{e}");
        let e = parse(&["--response-ip", "0.0.0.0"]).unwrap_err();
        assert!(e.option.starts_with("--response-ip"), "{e}");
        let e = parse(&["--kernelspec-dir", "/definitely/not/here"]).unwrap_err();
        assert!(e.option.starts_with("--kernelspec-dir"), "{e}");
        let e = parse(&["--transport-encryption", "curve"]).unwrap_err();
        assert!(e.option.starts_with("--transport-encryption"), "{e}");
        assert!(e.to_string().contains("none, auto, required"), "{e}");
    }

    #[test]
    fn transport_encryption() {
        assert_eq!(
            parse(&[]).unwrap().transport_encryption,
            TransportEncryption::Auto
        );
        for (text, want) in [
            ("none", TransportEncryption::None),
            ("Auto", TransportEncryption::Auto),
            ("required", TransportEncryption::Required),
        ] {
            let c = parse(&["--transport-encryption", text]).unwrap();
            assert_eq!(c.transport_encryption, want, "{text}");
        }
    }

    #[test]
    fn policy_options() {
        let c = parse(&["--port", "0"]).unwrap();
        assert!(c.state_dir.is_none(), "no default state with --port 0");
        assert!(c.cull.is_none());
        assert_eq!(c.restart_limit, 5);
        let c = parse(&[
            "--cull-idle-timeout",
            "60",
            "--cull-interval",
            "5",
            "--max-kernels",
            "3",
            "--max-kernels-per-user",
            "-1",
            "--state-dir",
            "/tmp/x",
        ])
        .unwrap();
        let cull = c.cull.unwrap();
        assert_eq!(cull.idle_timeout, Duration::from_secs(60));
        assert_eq!(cull.interval, Duration::from_secs(5));
        assert_eq!(c.limits.max_kernels, Some(3));
        assert_eq!(c.limits.max_kernels_per_user, None);
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/tmp/x")));
        let c = parse(&["--port", "9999", "--no-state-dir"]).unwrap();
        assert!(
            c.state_dir.is_none(),
            "--no-state-dir turns persistence off"
        );
        for (args, option) in [
            (&["--cull-idle-timeout", "soon"][..], "--cull-idle-timeout"),
            (&["--cull-interval", "0"][..], "--cull-interval"),
            (&["--max-kernels", "0"][..], "--max-kernels "),
            (
                &["--max-kernels-per-user", "0"][..],
                "--max-kernels-per-user",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn pool_options() {
        let c = parse(&[]).unwrap();
        assert!(c.pools.sizes.is_empty());
        assert_eq!(c.pools.refill_concurrency, 2);
        assert_eq!(c.pools.refill_delay, Duration::from_millis(250));
        let c = parse(&[
            "--pool",
            "python3=4",
            "--pool",
            "spark_python=1,r=2",
            "--pool-refill-concurrency",
            "3",
            "--pool-refill-delay",
            "30",
        ])
        .unwrap();
        assert_eq!(c.pools.refill_delay, Duration::from_secs(30));
        let sizes: Vec<_> = c
            .pools
            .sizes
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(sizes, [("python3", 4), ("r", 2), ("spark_python", 1)]);
        assert_eq!(c.pools.refill_concurrency, 3);
        for (args, option) in [
            (&["--pool", "python3"][..], "--pool "),
            (&["--pool", "python3=0"][..], "--pool "),
            (&["--pool", "python3=257"][..], "--pool "),
            (&["--pool", "python3=x"][..], "--pool "),
            (&["--pool", "=2"][..], "--pool "),
            (&["--pool", "a/b=2"][..], "--pool "),
            (&["--pool", "p=1,p=2"][..], "--pool "),
            (
                &["--pool-refill-concurrency", "0"][..],
                "--pool-refill-concurrency",
            ),
            (&["--pool-refill-delay", "-1"][..], "--pool-refill-delay"),
            (&["--pool-refill-delay", "soon"][..], "--pool-refill-delay"),
            (&["--pool-refill-delay", "7200"][..], "--pool-refill-delay"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn logging_options() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.log_format, crate::config::LogFormat::Text);
        assert_eq!(c.kernel_log_retention, Duration::from_secs(86400));
        let c = parse(&["--log-format", "json", "--kernel-log-retention", "2.5"]).unwrap();
        assert_eq!(c.log_format, crate::config::LogFormat::Json);
        assert_eq!(c.kernel_log_retention, Duration::from_millis(2500));
        let c = parse(&["--kernel-log-retention", "0"]).unwrap();
        assert_eq!(c.kernel_log_retention, Duration::ZERO);
        for (args, option) in [
            (&["--log-format", "xml"][..], "--log-format"),
            (&["--log-format", ""][..], "--log-format"),
            (
                &["--kernel-log-retention", "-5"][..],
                "--kernel-log-retention",
            ),
            (
                &["--kernel-log-retention", "a day"][..],
                "--kernel-log-retention",
            ),
            (
                &["--kernel-log-retention", "inf"][..],
                "--kernel-log-retention",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
            assert!(
                e.option.contains("GATEWAY_LITE_"),
                "names the variable: {e}"
            );
        }
    }

    #[test]
    fn where_the_state_directory_comes_from() {
        let with = |search: SearchEnv, extra: &[&str]| {
            let exe = std::env::current_exe().unwrap();
            let launcher = exe.to_string_lossy().into_owned();
            let mut argv = vec!["gateway-lite", "--launcher", &launcher];
            argv.extend_from_slice(extra);
            Config::try_from_iter(argv, search).unwrap()
        };
        let home = SearchEnv {
            home: Some("/home/ada".into()),
            ..SearchEnv::default()
        };
        let c = with(home.clone(), &["--port", "9000"]);
        assert_eq!(c.state_dir_source, StateDirSource::Default);
        assert_eq!(
            c.state_dir.as_deref(),
            Some(Path::new("/home/ada/.local/state/gateway-lite/port-9000"))
        );
        let c = with(SearchEnv::default(), &["--port", "9000"]);
        assert_eq!(
            (c.state_dir, c.state_dir_source),
            (None, StateDirSource::NoHome)
        );
        let c = with(home.clone(), &["--port", "0"]);
        assert_eq!(c.state_dir_source, StateDirSource::PortZero);
        let c = with(home.clone(), &["--port", "9000", "--no-state-dir"]);
        assert_eq!(c.state_dir_source, StateDirSource::Off);
        let c = with(SearchEnv::default(), &["--state-dir", "/srv/gw"]);
        assert_eq!(c.state_dir_source, StateDirSource::Given);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_secs("0"), None);
        assert_eq!(parse_secs("-1"), None);
        assert_eq!(parse_secs("NaN"), None);
    }
}
