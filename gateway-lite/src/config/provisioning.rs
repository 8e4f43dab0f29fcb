//! The provisioners' options: SSH hosts and the Docker Engine. Each check names the option
//! and its variable and says what to write instead.

use std::path::PathBuf;
use std::time::Duration;

use super::args::Args;
use super::names::{parse_hosts, valid_image, valid_name};
use protocol::quantity::{self, QuantityError};

use super::settings::{ConfigError, DockerSettings, ResourcePolicy, SshSettings};

/// The Docker provisioner's options.
pub(super) fn docker_settings(args: &Args) -> Result<DockerSettings, ConfigError> {
    let (network, option) = match (&args.docker_network, &args.eg_docker_network) {
        (Some(n), _) => (
            n.clone(),
            "--docker-network (env GATEWAY_LITE_DOCKER_NETWORK)",
        ),
        (None, Some(n)) => (n.clone(), "EG_DOCKER_NETWORK (--docker-network)"),
        (None, None) => ("bridge".to_owned(), "--docker-network"),
    };
    if !valid_name(&network) {
        return Err(ConfigError {
            option,
            problem: format!(
                "{network:?} is not a Docker network name; use letters, digits, '_', '.', '-' (e.g. bridge)"
            ),
        });
    }
    let given: Vec<String> = args
        .docker_images
        .iter()
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty())
        .collect();
    let (images, option) = if given.is_empty() {
        let eg = args
            .eg_kernel_image
            .iter()
            .filter(|i| !i.is_empty())
            .cloned();
        (eg.collect::<Vec<_>>(), "EG_KERNEL_IMAGE (--docker-image)")
    } else {
        (given, "--docker-image (env GATEWAY_LITE_DOCKER_IMAGE)")
    };
    if let Some(i) = images.iter().find(|i| !valid_image(i)) {
        return Err(ConfigError {
            option,
            problem: format!(
                "{i:?} is not an image reference; use e.g. gateway-lite/python-kernel:latest"
            ),
        });
    }
    let image = images.first().cloned();
    if !valid_name(&args.docker_name_prefix) {
        return Err(ConfigError {
            option: "--docker-name-prefix (env GATEWAY_LITE_DOCKER_NAME_PREFIX)",
            problem: format!(
                "{:?} cannot start a container name; use letters, digits, '_', '.', '-' (e.g. gateway-lite)",
                args.docker_name_prefix
            ),
        });
    }
    let mut labels = Vec::new();
    for l in args.docker_labels.iter().filter(|l| !l.is_empty()) {
        match l.split_once('=') {
            Some((k, v))
                if !k.is_empty() && !k.contains(char::is_whitespace) && !v.contains('\0') =>
            {
                labels.push((k.to_owned(), v.to_owned()));
            }
            _ => {
                return Err(ConfigError {
                    option: "--docker-label (env GATEWAY_LITE_DOCKER_LABELS)",
                    problem: format!("{l:?} is not KEY=VALUE; use e.g. team=data"),
                });
            }
        }
    }
    let socket = docker_socket(args)?;
    let swarm_network = match args.swarm_network.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) if valid_name(n) => Some(n.to_owned()),
        Some(n) => {
            return Err(ConfigError {
                option: "--swarm-network (env GATEWAY_LITE_SWARM_NETWORK)",
                problem: format!(
                    "{n:?} is not a Docker network name; use letters, digits, '_', '.', '-' (e.g. kernels)"
                ),
            });
        }
    };
    Ok(DockerSettings {
        socket,
        network,
        image,
        name_prefix: args.docker_name_prefix.clone(),
        labels,
        allowed_images: images,
        network_per_user: args.docker_network_per_user,
        read_only: !args.docker_writable_root,
        swarm_network,
        resources: resource_policy(args)?,
    })
}

/// `--kernel-{cpus,memory,gpus}-*`: each a quantity in the syntax of the request variables.
fn resource_policy(args: &Args) -> Result<ResourcePolicy, ConfigError> {
    fn read<T>(
        value: Option<&String>,
        option: &'static str,
        parse: fn(&str) -> Result<T, QuantityError>,
        example: &str,
    ) -> Result<Option<T>, ConfigError> {
        match value.map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).map_err(|e| ConfigError {
                option,
                problem: format!("{v:?} {e} (e.g. {example})"),
            }),
        }
    }
    let cpus = |v: Option<&String>, option| read(v, option, quantity::parse_millicpus, "0.5 or 2");
    let memory = |v: Option<&String>, option| read(v, option, quantity::parse_bytes, "512Mi or 2G");
    let policy = ResourcePolicy {
        cpus_default: cpus(
            args.kernel_cpus_default.as_ref(),
            "--kernel-cpus-default (env GATEWAY_LITE_KERNEL_CPUS_DEFAULT)",
        )?,
        cpus_limit_default: cpus(
            args.kernel_cpus_limit_default.as_ref(),
            "--kernel-cpus-limit-default (env GATEWAY_LITE_KERNEL_CPUS_LIMIT_DEFAULT)",
        )?,
        cpus_max: cpus(
            args.kernel_cpus_max.as_ref(),
            "--kernel-cpus-max (env GATEWAY_LITE_KERNEL_CPUS_MAX)",
        )?,
        memory_default: memory(
            args.kernel_memory_default.as_ref(),
            "--kernel-memory-default (env GATEWAY_LITE_KERNEL_MEMORY_DEFAULT)",
        )?,
        memory_limit_default: memory(
            args.kernel_memory_limit_default.as_ref(),
            "--kernel-memory-limit-default (env GATEWAY_LITE_KERNEL_MEMORY_LIMIT_DEFAULT)",
        )?,
        memory_max: memory(
            args.kernel_memory_max.as_ref(),
            "--kernel-memory-max (env GATEWAY_LITE_KERNEL_MEMORY_MAX)",
        )?,
        gpus_max: read(
            args.kernel_gpus_max.as_ref(),
            "--kernel-gpus-max (env GATEWAY_LITE_KERNEL_GPUS_MAX)",
            quantity::parse_count,
            "0 or 1",
        )?,
    };
    // A default above the maximum would refuse every request that relies on it.
    let above =
        |default: Option<u64>, max: Option<u64>| default.zip(max).is_some_and(|(d, m)| d > m);
    for (bad, option) in [
        (
            above(policy.cpus_default, policy.cpus_max)
                || above(policy.cpus_limit_default, policy.cpus_max),
            "--kernel-cpus-default / --kernel-cpus-limit-default",
        ),
        (
            above(policy.memory_default, policy.memory_max)
                || above(policy.memory_limit_default, policy.memory_max),
            "--kernel-memory-default / --kernel-memory-limit-default",
        ),
    ] {
        if bad {
            return Err(ConfigError {
                option,
                problem: "a default is above its maximum (--kernel-*-max); lower the default or raise the maximum".into(),
            });
        }
    }
    Ok(policy)
}

/// The Engine API socket: `--docker-host`, else `DOCKER_HOST`, else the default path. Only
/// Unix sockets are spoken (a TCP daemon would need TLS settings this gateway does not take).
fn docker_socket(args: &Args) -> Result<PathBuf, ConfigError> {
    let (value, option) = match (&args.docker_host, &args.docker_host_env) {
        (Some(v), _) if !v.is_empty() => {
            (v.as_str(), "--docker-host (env GATEWAY_LITE_DOCKER_HOST)")
        }
        (_, Some(v)) if !v.is_empty() => (v.as_str(), "DOCKER_HOST (--docker-host)"),
        _ => return Ok(DockerSettings::default().socket),
    };
    let path = value.strip_prefix("unix://").unwrap_or(value);
    if !path.starts_with('/') {
        return Err(ConfigError {
            option,
            problem: format!(
                "{value:?} is not a Unix socket; give unix:///var/run/docker.sock or a socket path"
            ),
        });
    }
    Ok(PathBuf::from(path))
}

/// The SSH provisioner's options.
pub(super) fn ssh_settings(args: &Args) -> Result<SshSettings, ConfigError> {
    let hosts = match (&args.remote_hosts, &args.eg_remote_hosts) {
        (Some(h), _) => parse_hosts(h).map_err(|problem| ConfigError {
            option: "--remote-hosts (env GATEWAY_LITE_REMOTE_HOSTS)",
            problem: format!("{problem}; give ssh destinations separated by commas"),
        })?,
        (None, Some(h)) => parse_hosts(h).map_err(|problem| ConfigError {
            option: "EG_REMOTE_HOSTS (--EnterpriseGatewayApp.remote_hosts)",
            problem: format!("{problem}; give ssh destinations separated by commas"),
        })?,
        (None, None) => Vec::new(),
    };
    if let Some(f) = &args.ssh_config
        && !f.is_file()
    {
        return Err(ConfigError {
            option: "--ssh-config (env GATEWAY_LITE_SSH_CONFIG)",
            problem: format!("{} is not a file; give an ssh_config file", f.display()),
        });
    }
    let user = args.ssh_user.clone().filter(|u| !u.is_empty());
    if let Some(u) = &user
        && (u.starts_with('-') || u.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ConfigError {
            option: "--ssh-user (env GATEWAY_LITE_SSH_USER)",
            problem: format!("{u:?} is not a user name"),
        });
    }
    let balancing = args.load_balancing.parse().map_err(|problem| ConfigError {
        option: "--load-balancing (env GATEWAY_LITE_LOAD_BALANCING)",
        problem,
    })?;
    let connect_timeout = args
        .ssh_connect_timeout
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=3600).contains(s))
        .ok_or_else(|| ConfigError {
            option: "--ssh-connect-timeout (env GATEWAY_LITE_SSH_CONNECT_TIMEOUT)",
            problem: format!(
                "{:?} is not a whole number of seconds from 1 to 3600; use e.g. 10",
                args.ssh_connect_timeout
            ),
        })?;
    let dir = &args.remote_log_dir;
    if !dir.starts_with('/') || dir.chars().any(char::is_control) {
        return Err(ConfigError {
            option: "--remote-log-dir (env GATEWAY_LITE_REMOTE_LOG_DIR)",
            problem: format!("{dir:?} is not an absolute path; use e.g. /tmp"),
        });
    }
    Ok(SshSettings {
        hosts,
        ssh_config: args.ssh_config.clone(),
        user,
        balancing,
        connect_timeout: Duration::from_secs(connect_timeout),
        remote_log_dir: dir.clone(),
        ..SshSettings::default()
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::ResourcePolicy;
    use crate::config::test_parse as parse;

    #[test]
    fn resource_options() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.docker.resources, ResourcePolicy::default());
        assert_eq!(c.docker.swarm_network, None);
        let c = parse(&[
            "--kernel-cpus-default",
            "250m",
            "--kernel-cpus-limit-default",
            "1",
            "--kernel-cpus-max",
            "4",
            "--kernel-memory-default",
            "256Mi",
            "--kernel-memory-limit-default",
            "1G",
            "--kernel-memory-max",
            "8Gi",
            "--kernel-gpus-max",
            "0",
            "--swarm-network",
            "kernels",
        ])
        .unwrap();
        let r = c.docker.resources;
        assert_eq!(
            (r.cpus_default, r.cpus_limit_default, r.cpus_max),
            (Some(250), Some(1000), Some(4000))
        );
        assert_eq!(
            (r.memory_default, r.memory_limit_default, r.memory_max),
            (Some(256 << 20), Some(1_000_000_000), Some(8 << 30))
        );
        assert_eq!(r.gpus_max, Some(0));
        assert_eq!(c.docker.swarm_network.as_deref(), Some("kernels"));
        for (args, option) in [
            (&["--kernel-memory-max", "8GB"][..], "--kernel-memory-max"),
            (&["--kernel-cpus-default=-1"][..], "--kernel-cpus-default"),
            (&["--kernel-gpus-max", "one"][..], "--kernel-gpus-max"),
            (
                &[
                    "--kernel-memory-limit-default",
                    "4Gi",
                    "--kernel-memory-max",
                    "2Gi",
                ][..],
                "--kernel-memory-default / --kernel-memory-limit-default",
            ),
            (&["--swarm-network", "a b"][..], "--swarm-network"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn docker_options() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.docker.network, "bridge");
        assert_eq!(c.docker.name_prefix, "gateway-lite");
        assert_eq!(c.docker.socket, Path::new("/var/run/docker.sock"));
        let c = parse(&["--docker-host", "unix:///run/d.sock"]).unwrap();
        assert_eq!(c.docker.socket, Path::new("/run/d.sock"));
        let c = parse(&[
            "--docker-network",
            "kernels",
            "--docker-image",
            "gateway-lite/python-kernel:latest",
            "--docker-label",
            "a=b",
            "--docker-label",
            "c=",
        ])
        .unwrap();
        assert_eq!(c.docker.network, "kernels");
        assert_eq!(
            c.docker.image.as_deref(),
            Some("gateway-lite/python-kernel:latest")
        );
        assert_eq!(
            c.docker.labels,
            vec![("a".into(), "b".into()), ("c".into(), String::new())]
        );
        for (args, option) in [
            (&["--docker-network=-x"][..], "--docker-network"),
            (&["--docker-image=--privileged"][..], "--docker-image"),
            (&["--docker-name-prefix", "a b"][..], "--docker-name-prefix"),
            (&["--docker-label", "novalue"][..], "--docker-label"),
            (&["--docker-host", "tcp://h:2375"][..], "--docker-host"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn ssh_options_are_checked_and_named() {
        use crate::config::settings::Balancing;
        let c = parse(&[
            "--remote-hosts",
            "a, root@b",
            "--load-balancing",
            "least-connection",
        ])
        .unwrap();
        assert_eq!(c.ssh.hosts, ["a", "root@b"]);
        assert_eq!(c.ssh.balancing, Balancing::LeastConnection);
        for (args, option) in [
            (&["--remote-hosts=a,-oProxyCommand=x"][..], "--remote-hosts"),
            (&["--load-balancing", "random"][..], "--load-balancing"),
            (
                &["--ssh-config", "/definitely/not/here"][..],
                "--ssh-config",
            ),
            (&["--ssh-user=-x"][..], "--ssh-user"),
            (&["--ssh-connect-timeout", "0"][..], "--ssh-connect-timeout"),
            (&["--remote-log-dir", "relative"][..], "--remote-log-dir"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.option.starts_with(option), "{args:?}: {e}");
        }
        assert!("fastest".parse::<Balancing>().is_err());
    }
}
