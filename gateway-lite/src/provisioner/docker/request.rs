//! What a kernel's container is made of: the gateway's options read back from the filled
//! kernel command line, and the Engine API request that creates the container.
//!
//! Enterprise Gateway's container launchers (`launch_docker.py`) get the kernel's id,
//! response address and public key on their command line and put them into the container's
//! environment, where the image's entrypoint (here `kernel-launcher`) reads them. The same
//! happens here without the script: [`GatewayArgs`] reads those options back from the argv
//! the kernelspec produced, in either of EG's option forms, and [`container_body`] turns
//! them, the request's `KERNEL_*` variables and the spec's `env` into the container's
//! configuration. Pure functions: every rule here has a unit test.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{ContainerCreateBody, HostConfig};

use crate::config::DockerSettings;
use crate::provisioner::launched::{LaunchError, LaunchRequest};

fn fail(message: impl Into<String>) -> LaunchError {
    LaunchError::Docker(message.into())
}

/// The gateway's options in a filled kernel command line (EG's container launchers read the
/// same, in the plain or the `--RemoteProcessProxy.` form, `--x v` or `--x=v`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct GatewayArgs {
    pub(super) response_address: Option<String>,
    pub(super) public_key: Option<String>,
    pub(super) port_range: Option<String>,
    pub(super) spark_mode: Option<String>,
    pub(super) kernel_class: Option<String>,
    /// What follows `--`: the kernel command of a spec gateway-lite wrapped.
    pub(super) kernel_argv: Option<Vec<String>>,
}

impl GatewayArgs {
    pub(super) fn parse(argv: &[String]) -> Self {
        let mut out = GatewayArgs::default();
        let mut i = 1;
        while i < argv.len() {
            let arg = &argv[i];
            if arg == "--" {
                out.kernel_argv = Some(argv[i + 1..].to_vec());
                break;
            }
            let Some(opt) = arg.strip_prefix("--") else {
                i += 1;
                continue;
            };
            let opt = opt.strip_prefix("RemoteProcessProxy.").unwrap_or(opt);
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (opt, None),
            };
            let slot = match name {
                "response-address" => &mut out.response_address,
                "public-key" => &mut out.public_key,
                "port-range" => &mut out.port_range,
                "spark-context-initialization-mode" => &mut out.spark_mode,
                "kernel-class-name" => &mut out.kernel_class,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    match argv.get(i) {
                        Some(v) => v.clone(),
                        None => break,
                    }
                }
            };
            // An unfilled placeholder counts as absent, as the launcher treats it.
            let placeholder = value.starts_with('{') && value.ends_with('}');
            if !value.is_empty() && !placeholder {
                *slot = Some(value);
            }
            i += 1;
        }
        out
    }
}

/// The container for `request`: image `image` (already chosen and checked), named `name`.
pub(super) fn container_body(
    settings: &DockerSettings,
    request: &LaunchRequest,
    image: &str,
    network: &str,
) -> Result<ContainerCreateBody, LaunchError> {
    let args = GatewayArgs::parse(&request.argv);
    let response_address = args
        .response_address
        .ok_or_else(|| fail("the kernel command line has no --response-address"))?;
    let public_key = args
        .public_key
        .ok_or_else(|| fail("the kernel command line has no --public-key"))?;
    let uid = id_from(&request.env, "KERNEL_UID", 1000)?;
    let gid = id_from(&request.env, "KERNEL_GID", 100)?;

    let mut env: BTreeMap<String, String> = request.env.clone();
    // The image's PATH applies inside the container, as in EG's launch_docker.py.
    env.remove("PATH");
    env.insert("KERNEL_ID".into(), request.kernel_id.clone());
    env.insert("RESPONSE_ADDRESS".into(), response_address);
    env.insert("PUBLIC_KEY".into(), public_key);
    env.insert("KERNEL_IMAGE".into(), image.to_owned());
    if let Some(v) = args.port_range {
        env.insert("PORT_RANGE".into(), v);
    }
    if let Some(v) = args.spark_mode {
        env.insert("KERNEL_SPARK_CONTEXT_INIT_MODE".into(), v);
    }
    if let Some(v) = args.kernel_class {
        env.insert("KERNEL_CLASS_NAME".into(), v);
    }
    if let Some(secret) = &request.secret {
        env.insert("KERNEL_LAUNCHER_SECRET".into(), secret.clone());
    }
    let mut pairs = Vec::with_capacity(env.len());
    for (k, v) in &env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(fail(format!(
                "environment variable {k:?} cannot be passed to a container"
            )));
        }
        pairs.push(format!("{k}={v}"));
    }
    let mut labels: HashMap<String, String> = settings.labels.iter().cloned().collect();
    labels.insert("kernel_id".into(), request.kernel_id.clone());
    labels.insert("component".into(), "kernel".into());
    labels.insert("app".into(), "gateway-lite".into());
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some(format!("{uid}:{gid}")),
        env: Some(pairs),
        // An EG spec leaves the image's default command; a wrapped spec's own argv runs
        // under the launcher (the image's entrypoint) after `--`.
        cmd: args.kernel_argv.map(|argv| {
            let mut cmd = vec!["--".to_owned()];
            cmd.extend(argv);
            cmd
        }),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_owned()),
            // A kernel needs no capability; a setuid binary in the image gains none.
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(settings.read_only),
            tmpfs: settings.read_only.then(|| {
                HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,mode=1777".to_owned())])
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    })
}

/// The network of `user`'s kernels: `<prefix>-user-<name>`, the name reduced to what Docker
/// accepts (letters, digits, `_.-`; others become `-`), `anonymous` for no name.
pub(super) fn user_network(prefix: &str, user: &str) -> String {
    let clean: String = user
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = if clean.trim_matches('-').is_empty() {
        "anonymous".to_owned()
    } else {
        clean
    };
    format!("{prefix}-user-{clean}")
}

/// `KERNEL_UID` / `KERNEL_GID`: a number, not 0 (EG refuses root by default).
pub(super) fn id_from(
    env: &BTreeMap<String, String>,
    name: &str,
    default: u32,
) -> Result<u32, LaunchError> {
    let Some(text) = env.get(name).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match text.trim().parse::<u32>() {
        Ok(0) => Err(fail(format!(
            "{name}=0 is refused: kernels do not run as root"
        ))),
        Ok(n) => Ok(n),
        Err(_) => Err(fail(format!("{name}={text:?} is not a number"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn eg_argv_in_both_forms() {
        let eg = s(&[
            "python",
            "/k/launch_docker.py",
            "--RemoteProcessProxy.kernel-id",
            "K",
            "--RemoteProcessProxy.port-range",
            "0..0",
            "--RemoteProcessProxy.response-address",
            "10.0.0.1:5000",
            "--RemoteProcessProxy.public-key=PK",
            "--RemoteProcessProxy.spark-context-initialization-mode",
            "{spark_context_initialization_mode}",
        ]);
        let a = GatewayArgs::parse(&eg);
        assert_eq!(a.response_address.as_deref(), Some("10.0.0.1:5000"));
        assert_eq!(a.public_key.as_deref(), Some("PK"));
        assert_eq!(a.port_range.as_deref(), Some("0..0"));
        assert_eq!(a.spark_mode, None, "an unfilled placeholder is absent");
        assert_eq!(a.kernel_argv, None);

        let wrapped = s(&[
            "/bin/kernel-launcher",
            "--kernel-id",
            "K",
            "--response-address",
            "h:1",
            "--public-key",
            "PK",
            "--",
            "python3",
            "-m",
            "ipykernel_launcher",
            "--public-key",
        ]);
        let a = GatewayArgs::parse(&wrapped);
        assert_eq!(a.response_address.as_deref(), Some("h:1"));
        assert_eq!(
            a.kernel_argv,
            Some(s(&["python3", "-m", "ipykernel_launcher", "--public-key"]))
        );
        // A trailing option without a value is not a crash.
        let a = GatewayArgs::parse(&s(&["x", "--public-key"]));
        assert_eq!(a.public_key, None);
    }

    #[test]
    fn kernel_ids_are_numbers_never_root() {
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(id_from(&BTreeMap::new(), "KERNEL_UID", 1000).unwrap(), 1000);
        assert_eq!(
            id_from(&env("KERNEL_UID", "1234"), "KERNEL_UID", 1).unwrap(),
            1234
        );
        assert!(id_from(&env("KERNEL_UID", "0"), "KERNEL_UID", 1).is_err());
        assert!(id_from(&env("KERNEL_UID", "root"), "KERNEL_UID", 1).is_err());
        assert!(id_from(&env("KERNEL_UID", "-1"), "KERNEL_UID", 1).is_err());
    }

    #[test]
    fn user_networks_are_valid_names() {
        assert_eq!(user_network("gl", "alice"), "gl-user-alice");
        assert_eq!(user_network("gl", "bob smith"), "gl-user-bob-smith");
        assert_eq!(user_network("gl", ""), "gl-user-anonymous");
        assert_eq!(user_network("gl", "///"), "gl-user-anonymous");
        assert!(crate::config::names::valid_name(&user_network(
            "gl",
            &"x".repeat(500)
        )));
    }

    #[test]
    fn container_body_carries_the_contract() {
        let settings = DockerSettings {
            labels: vec![("team".into(), "data".into())],
            network: "kernels".into(),
            ..DockerSettings::default()
        };
        let request = LaunchRequest {
            kernel_id: "K".into(),
            argv: s(&[
                "/kl",
                "--response-address",
                "10.0.0.1:9",
                "--public-key",
                "PK",
                "--",
                "python3",
                "-m",
                "ipykernel",
            ]),
            env: BTreeMap::from([
                ("KERNEL_USERNAME".to_owned(), "ada".to_owned()),
                ("PATH".to_owned(), "/gateway/bin".to_owned()),
            ]),
            secret: Some("x".repeat(64)),
            log_file: None,
        };
        let body = container_body(&settings, &request, "img:1", "kernels").unwrap();
        assert_eq!(body.image.as_deref(), Some("img:1"));
        assert_eq!(body.user.as_deref(), Some("1000:100"));
        let env = body.env.unwrap();
        for want in [
            "KERNEL_ID=K",
            "RESPONSE_ADDRESS=10.0.0.1:9",
            "PUBLIC_KEY=PK",
            "KERNEL_USERNAME=ada",
            "KERNEL_IMAGE=img:1",
        ] {
            assert!(env.iter().any(|e| e == want), "{want}: {env:?}");
        }
        assert!(!env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
        assert_eq!(body.cmd, Some(s(&["--", "python3", "-m", "ipykernel"])));
        let labels = body.labels.unwrap();
        assert_eq!(labels["kernel_id"], "K");
        assert_eq!(labels["team"], "data");
        assert_eq!(
            body.host_config.unwrap().network_mode.as_deref(),
            Some("kernels")
        );

        let mut no_address = request.clone();
        no_address.argv = s(&["/kl", "--public-key", "PK"]);
        assert!(container_body(&settings, &no_address, "img", "n").is_err());
        let mut root = request;
        root.env.insert("KERNEL_UID".into(), "0".into());
        let e = container_body(&settings, &root, "img", "n").unwrap_err();
        assert!(e.to_string().contains("KERNEL_UID=0"), "{e}");
    }
}
