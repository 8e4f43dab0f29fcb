//! Where a kernelspec says its kernel runs, and whether gateway-lite can run it there.
//!
//! Enterprise Gateway reads `metadata.process_proxy.class_name`; jupyter_client and
//! gateway_provisioners read `metadata.kernel_provisioner.provisioner_name`. gateway-lite runs
//! three kinds of them: on this host, over SSH on a list of hosts, and as Docker containers.
//! Every other kind (Kubernetes pods, YARN cluster applications, Spectrum Conductor, a class
//! nobody here has heard of) needs machinery gateway-lite does not have. Running such a
//! kernelspec as a local process instead would start the kernel somewhere its author did not
//! mean, with the wrong resources, or fail in ways that hide the cause; so it is
//! [`Runner::Refused`], and the [`Refusal`] says what to use instead. The spec stays listed,
//! as Enterprise Gateway lists every spec it finds, and its launches fail at once.
//!
//! Class names are matched on their last dotted component, so a class that Enterprise
//! Gateway moved between modules, or a site that re-exports it, still matches. A stanza
//! without a name (or with an empty one) is the local default, as in both of those projects.

use std::fmt;

use serde_json::{Map, Value};

/// Where a kernelspec's kernels run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runner {
    /// A child process of the gateway.
    Local,
    /// Over SSH on remote hosts (Enterprise Gateway's `DistributedProcessProxy`).
    Ssh,
    /// A Docker container.
    Docker,
    /// A Docker Swarm service (one replica).
    Swarm,
    /// Somewhere gateway-lite cannot start kernels.
    Refused(Refusal),
}

impl Runner {
    /// A short name for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Runner::Local => "local",
            Runner::Ssh => "ssh",
            Runner::Docker => "docker",
            Runner::Swarm => "swarm",
            Runner::Refused(_) => "refused",
        }
    }
}

/// The metadata field that chose the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stanza {
    /// `metadata.process_proxy.class_name` (Enterprise Gateway).
    ProcessProxy,
    /// `metadata.kernel_provisioner.provisioner_name` (jupyter_client, gateway_provisioners).
    KernelProvisioner,
}

impl Stanza {
    /// The stanza's path in `kernel.json`.
    pub fn path(self) -> &'static str {
        match self {
            Stanza::ProcessProxy => "metadata.process_proxy",
            Stanza::KernelProvisioner => "metadata.kernel_provisioner",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Stanza::ProcessProxy => "class_name",
            Stanza::KernelProvisioner => "provisioner_name",
        }
    }
}

/// A kind of placement gateway-lite does not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elsewhere {
    /// Pods in a Kubernetes cluster (plain, custom-resource or Spark-operator).
    Kubernetes,
    /// Applications in a Hadoop YARN cluster.
    YarnCluster,
    /// IBM Spectrum Conductor.
    Conductor,
    /// A class or provisioner name gateway-lite does not know.
    Unknown,
}

/// Why a kernelspec cannot be launched here, and what to use instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stanza that named the class.
    pub stanza: Stanza,
    /// The class or provisioner name, as written.
    pub class: String,
    /// What kind of placement it asks for.
    pub elsewhere: Elsewhere,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (stanza, class) = (self.stanza.path(), &self.class);
        let field = self.stanza.field();
        match self.elsewhere {
            Elsewhere::Kubernetes => write!(
                f,
                "{stanza}.{field} {class} runs kernels on Kubernetes, which gateway-lite cannot do: \
                 use Enterprise Gateway for it (with kernel-launcher in the kernel image), \
                 or remove {stanza} to run the kernel on the gateway's host"
            ),
            Elsewhere::YarnCluster => write!(
                f,
                "{stanza}.{field} {class} runs kernels in a YARN cluster, which gateway-lite cannot do: \
                 use Enterprise Gateway for it, or a YARN client-mode kernelspec \
                 (spark-submit --deploy-mode client with DistributedProcessProxy), which gateway-lite runs"
            ),
            Elsewhere::Conductor => write!(
                f,
                "{stanza}.{field} {class} runs kernels on IBM Spectrum Conductor, which gateway-lite cannot do: \
                 use Enterprise Gateway for it"
            ),
            Elsewhere::Unknown => write!(
                f,
                "{stanza}.{field} {class} is not one gateway-lite runs; it runs kernels locally \
                 (no {stanza}, LocalProcessProxy, local-provisioner), over SSH \
                 (DistributedProcessProxy, distributed-provisioner) and in Docker \
                 (DockerProcessProxy, DockerSwarmProcessProxy, docker-provisioner): name one of \
                 these, or remove {stanza} to run the kernel on the gateway's host"
            ),
        }
    }
}

/// Enterprise Gateway's process proxies and gateway_provisioners' classes, by the last
/// component of the class name.
fn by_class(last: &str) -> Option<Result<Runner, Elsewhere>> {
    Some(match last {
        "LocalProcessProxy" | "LocalProvisioner" => Ok(Runner::Local),
        "DistributedProcessProxy" | "DistributedProvisioner" => Ok(Runner::Ssh),
        "DockerProcessProxy" | "DockerProvisioner" => Ok(Runner::Docker),
        "DockerSwarmProcessProxy" | "DockerSwarmProvisioner" => Ok(Runner::Swarm),
        "KubernetesProcessProxy"
        | "CustomResourceProcessProxy"
        | "SparkOperatorProcessProxy"
        | "KubernetesProvisioner"
        | "CustomResourceProvisioner"
        | "SparkOperatorProvisioner" => Err(Elsewhere::Kubernetes),
        "YarnClusterProcessProxy" | "YarnProvisioner" => Err(Elsewhere::YarnCluster),
        "ConductorClusterProcessProxy" => Err(Elsewhere::Conductor),
        _ => return None,
    })
}

/// jupyter_client's and gateway_provisioners' registered provisioner names.
fn by_provisioner_name(name: &str) -> Option<Result<Runner, Elsewhere>> {
    Some(match name {
        "local-provisioner" => Ok(Runner::Local),
        "distributed-provisioner" => Ok(Runner::Ssh),
        "docker-provisioner" => Ok(Runner::Docker),
        "docker-swarm-provisioner" => Ok(Runner::Swarm),
        "kubernetes-provisioner" | "spark-operator-provisioner" => Err(Elsewhere::Kubernetes),
        "yarn-provisioner" => Err(Elsewhere::YarnCluster),
        _ => return None,
    })
}

/// The runner a kernelspec's `metadata` asks for, and that stanza's `config` (remote hosts,
/// image name). `process_proxy` wins over `kernel_provisioner` when both are present, as in
/// Enterprise Gateway, whose API this gateway serves.
pub fn classify(metadata: Option<&Value>) -> (Runner, Map<String, Value>) {
    let stanza_of = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_object);
    let (stanza, object) = match (stanza_of("process_proxy"), stanza_of("kernel_provisioner")) {
        (Some(p), _) => (Stanza::ProcessProxy, p),
        (None, Some(p)) => (Stanza::KernelProvisioner, p),
        (None, None) => return (Runner::Local, Map::new()),
    };
    let config = object
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let name = object
        .get(stanza.field())
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default();
    if name.is_empty() {
        return (Runner::Local, config);
    }
    let known = match stanza {
        Stanza::ProcessProxy => by_class(name.rsplit('.').next().unwrap_or(name)),
        Stanza::KernelProvisioner => by_provisioner_name(name),
    };
    let runner = match known {
        Some(Ok(runner)) => runner,
        Some(Err(elsewhere)) => Runner::Refused(Refusal {
            stanza,
            class: name.to_owned(),
            elsewhere,
        }),
        None => Runner::Refused(Refusal {
            stanza,
            class: name.to_owned(),
            elsewhere: Elsewhere::Unknown,
        }),
    };
    (runner, config)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn proxy(class: &str) -> Runner {
        classify(Some(&json!({"process_proxy": {"class_name": class}}))).0
    }

    fn provisioner(name: &str) -> Runner {
        classify(Some(
            &json!({"kernel_provisioner": {"provisioner_name": name}}),
        ))
        .0
    }

    fn refused(r: Runner) -> Refusal {
        match r {
            Runner::Refused(why) => why,
            other => panic!("{other:?} is not refused"),
        }
    }

    #[test]
    fn the_classes_gateway_lite_runs() {
        let eg = "enterprise_gateway.services.processproxies";
        assert_eq!(classify(None).0, Runner::Local);
        assert_eq!(classify(Some(&json!({}))).0, Runner::Local);
        assert_eq!(
            classify(Some(&json!({"process_proxy": {}}))).0,
            Runner::Local,
            "a stanza without a class is the local default"
        );
        assert_eq!(proxy(""), Runner::Local);
        assert_eq!(
            proxy(&format!("{eg}.processproxy.LocalProcessProxy")),
            Runner::Local
        );
        assert_eq!(
            proxy(&format!("{eg}.distributed.DistributedProcessProxy")),
            Runner::Ssh
        );
        for (class, runner) in [
            ("DockerProcessProxy", Runner::Docker),
            ("DockerSwarmProcessProxy", Runner::Swarm),
        ] {
            assert_eq!(proxy(&format!("{eg}.docker_swarm.{class}")), runner);
        }
        // Matched on the last component, wherever the class lives.
        assert_eq!(proxy("x.DockerProcessProxy"), Runner::Docker);
        assert_eq!(
            proxy("gateway_provisioners.distributed.DistributedProvisioner"),
            Runner::Ssh
        );
        assert_eq!(
            proxy("gateway_provisioners.docker_swarm.DockerProvisioner"),
            Runner::Docker
        );
        assert_eq!(
            proxy("jupyter_client.provisioning.LocalProvisioner"),
            Runner::Local
        );
        assert_eq!(provisioner("local-provisioner"), Runner::Local);
        assert_eq!(provisioner("distributed-provisioner"), Runner::Ssh);
        assert_eq!(provisioner("docker-provisioner"), Runner::Docker);
        assert_eq!(provisioner("docker-swarm-provisioner"), Runner::Swarm);
        assert_eq!(
            proxy("gateway_provisioners.docker_swarm.DockerSwarmProvisioner"),
            Runner::Swarm
        );
        assert_eq!(
            classify(Some(&json!({"kernel_provisioner": {"config": {}}}))).0,
            Runner::Local
        );
    }

    #[test]
    fn the_classes_gateway_lite_refuses() {
        let eg = "enterprise_gateway.services.processproxies";
        for (class, elsewhere) in [
            (
                format!("{eg}.k8s.KubernetesProcessProxy"),
                Elsewhere::Kubernetes,
            ),
            (
                format!("{eg}.crd.CustomResourceProcessProxy"),
                Elsewhere::Kubernetes,
            ),
            (
                format!("{eg}.spark_operator.SparkOperatorProcessProxy"),
                Elsewhere::Kubernetes,
            ),
            (
                format!("{eg}.yarn.YarnClusterProcessProxy"),
                Elsewhere::YarnCluster,
            ),
            (
                format!("{eg}.conductor.ConductorClusterProcessProxy"),
                Elsewhere::Conductor,
            ),
            (
                "gateway_provisioners.k8s.KubernetesProvisioner".into(),
                Elsewhere::Kubernetes,
            ),
            (
                "gateway_provisioners.crd.CustomResourceProvisioner".into(),
                Elsewhere::Kubernetes,
            ),
            (
                "gateway_provisioners.yarn.YarnProvisioner".into(),
                Elsewhere::YarnCluster,
            ),
            ("mysite.SlurmProcessProxy".into(), Elsewhere::Unknown),
            ("MyDockerProcessProxy".into(), Elsewhere::Unknown),
        ] {
            let why = refused(proxy(&class));
            assert_eq!(
                (why.elsewhere, why.stanza),
                (elsewhere, Stanza::ProcessProxy)
            );
            let text = why.to_string();
            assert!(text.contains(&class), "{text}");
            assert!(text.contains("metadata.process_proxy"), "{text}");
        }
        for (name, elsewhere) in [
            ("kubernetes-provisioner", Elsewhere::Kubernetes),
            ("spark-operator-provisioner", Elsewhere::Kubernetes),
            ("yarn-provisioner", Elsewhere::YarnCluster),
            ("slurm-provisioner", Elsewhere::Unknown),
        ] {
            let why = refused(provisioner(name));
            assert_eq!(why.elsewhere, elsewhere, "{name}");
            let text = why.to_string();
            assert!(
                text.contains(name) && text.contains("metadata.kernel_provisioner"),
                "{text}"
            );
        }
        let k8s = refused(proxy("a.KubernetesProcessProxy")).to_string();
        assert!(
            k8s.contains("Kubernetes") && k8s.contains("Enterprise Gateway"),
            "{k8s}"
        );
        let unknown = refused(proxy("a.B")).to_string();
        assert!(unknown.contains("DistributedProcessProxy"), "{unknown}");
    }

    #[test]
    fn process_proxy_wins_and_its_config_comes_along() {
        let (runner, config) = classify(Some(&json!({
            "process_proxy": {"class_name": "a.DockerProcessProxy", "config": {"image_name": "i"}},
            "kernel_provisioner": {"provisioner_name": "kubernetes-provisioner"}
        })));
        assert_eq!(runner, Runner::Docker);
        assert_eq!(config["image_name"], "i");
        let (runner, config) = classify(Some(&json!({
            "kernel_provisioner": {"provisioner_name": "distributed-provisioner",
                                   "config": {"remote_hosts": ["a", "b"]}}
        })));
        assert_eq!(runner, Runner::Ssh);
        assert_eq!(config["remote_hosts"], json!(["a", "b"]));
    }
}
