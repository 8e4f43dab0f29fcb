//! What a Swarm kernel's service is made of, and what its task's status means: pure
//! functions, each rule unit-tested.
//!
//! Neither Enterprise Gateway nor gateway_provisioners lets a kernelspec or a request place a
//! Swarm kernel (their `launch_docker.py` creates the service with no placement at all), so
//! the names are gateway-lite's own:
//!
//! - the kernelspec's `metadata.process_proxy.config.constraints` (or
//!   `metadata.kernel_provisioner.config.constraints`): Swarm placement constraints, a list
//!   of strings or one comma-separated string, e.g. `["node.labels.gpu==true"]`;
//! - its `config.placement_preferences`: spread preferences, e.g. `["node.labels.zone"]`
//!   (`spread=` in front is accepted, as `docker service create --placement-pref` writes it);
//! - the request's `KERNEL_SWARM_CONSTRAINTS`: more constraints, comma-separated, added to
//!   the spec's (a client can only narrow where its kernel goes).
//!
//! A constraint is `KEY==VALUE` or `KEY!=VALUE` with a key under `node.` or `engine.labels.`
//! (Swarm's own grammar, checked here so a typo is a clear 400 and not a task that never
//! runs). A well-formed constraint no node satisfies is found when the task is pending with
//! Swarm's "no suitable node" error ([`Progress::Unschedulable`]).
//!
//! The service is the container's configuration ([`super::request::container_body`]) as a
//! one-replica service: restart policy `none` (a kernel that ended stays ended; the gateway
//! decides about restarts), `dnsrr` endpoint mode (no virtual IP: the task's own address is
//! the kernel's), the network attachment, the resources, the labels on the service and its
//! container.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, EndpointSpec, EndpointSpecModeEnum, Mount, MountTmpfsOptions, MountType,
    NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task,
    TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use serde_json::{Map, Value};

use crate::provisioner::launched::LaunchError;

/// Most constraints (spec and request together) and preferences.
const MAX_RULES: usize = 16;
/// Longest constraint or preference.
const MAX_RULE_LEN: usize = 256;

/// A Swarm kernelspec's placement rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmSpec {
    /// Placement constraints.
    pub constraints: Vec<String>,
    /// Spread descriptors (`node.labels.zone`).
    pub preferences: Vec<String>,
}

/// Where one service may be placed: the spec's rules and the request's constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Placement {
    pub(super) constraints: Vec<String>,
    pub(super) preferences: Vec<String>,
}

/// A list of strings or one comma-separated string.
fn strings(value: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(split(s)),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for item in items {
                let s = item
                    .as_str()
                    .ok_or_else(|| format!("config.{field}: {item} is not a string"))?;
                out.extend(split(s));
            }
            Ok(out)
        }
        Some(other) => Err(format!(
            "config.{field}: {other} is neither a list of strings nor a comma-separated string"
        )),
    }
}

/// Whether `key` is a placement key Swarm knows the shape of.
fn valid_key(key: &str) -> bool {
    let fixed = [
        "node.id",
        "node.hostname",
        "node.role",
        "node.platform.os",
        "node.platform.arch",
    ];
    let label = ["node.labels.", "engine.labels."]
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .is_some_and(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        });
    fixed.contains(&key) || label
}

/// Checks one constraint's syntax; the message says what is wrong.
fn check_constraint(c: &str) -> Result<(), String> {
    if c.len() > MAX_RULE_LEN {
        return Err(format!("is longer than {MAX_RULE_LEN} characters"));
    }
    let (key, value) = c
        .split_once("==")
        .or_else(|| c.split_once("!="))
        .ok_or("has no == or != (write e.g. node.labels.zone==eu-1)")?;
    let (key, value) = (key.trim(), value.trim());
    if !valid_key(key) {
        return Err(format!(
            "has the key {key:?}; use node.id, node.hostname, node.role, node.platform.os, \
             node.platform.arch, node.labels.NAME or engine.labels.NAME"
        ));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
    {
        return Err(format!(
            "has the value {value:?}; use letters, digits and . _ - : /"
        ));
    }
    Ok(())
}

impl SwarmSpec {
    /// The rules in a kernelspec's `config`; an error names the field.
    pub fn from_config(config: &Map<String, Value>) -> Result<SwarmSpec, String> {
        let constraints = strings(config.get("constraints"), "constraints")?;
        for c in &constraints {
            check_constraint(c).map_err(|e| format!("config.constraints: {c:?} {e}"))?;
        }
        let mut preferences = Vec::new();
        for p in strings(config.get("placement_preferences"), "placement_preferences")? {
            let descriptor = p.strip_prefix("spread=").unwrap_or(&p).trim().to_owned();
            if !valid_key(&descriptor) {
                return Err(format!(
                    "config.placement_preferences: {p:?} is not a spread over a node key (e.g. node.labels.zone)"
                ));
            }
            preferences.push(descriptor);
        }
        if constraints.len() > MAX_RULES || preferences.len() > MAX_RULES {
            return Err(format!(
                "config.constraints / placement_preferences: more than {MAX_RULES} entries"
            ));
        }
        Ok(SwarmSpec {
            constraints,
            preferences,
        })
    }

    /// The spec's rules with the request's `KERNEL_SWARM_CONSTRAINTS` added.
    pub(super) fn with_request(
        &self,
        env: &BTreeMap<String, String>,
    ) -> Result<Placement, LaunchError> {
        let mut constraints = self.constraints.clone();
        if let Some(asked) = env.get("KERNEL_SWARM_CONSTRAINTS") {
            for c in asked.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                check_constraint(c).map_err(|e| {
                    LaunchError::Request(format!("KERNEL_SWARM_CONSTRAINTS: {c:?} {e}"))
                })?;
                constraints.push(c.to_owned());
            }
        }
        if constraints.len() > MAX_RULES {
            return Err(LaunchError::Request(format!(
                "KERNEL_SWARM_CONSTRAINTS: more than {MAX_RULES} constraints with the kernelspec's"
            )));
        }
        Ok(Placement {
            constraints,
            preferences: self.preferences.clone(),
        })
    }
}

/// The one-replica service running `body` (the kernel's container configuration).
pub(super) fn service_spec(
    body: ContainerCreateBody,
    name: &str,
    network: &str,
    resources: Option<TaskSpecResources>,
    placement: &Placement,
) -> ServiceSpec {
    let host = body.host_config.unwrap_or_default();
    let read_only = host.readonly_rootfs.unwrap_or(false);
    let labels: HashMap<String, String> = body.labels.unwrap_or_default();
    let tmp = read_only.then(|| {
        vec![Mount {
            target: Some("/tmp".into()),
            typ: Some(MountType::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions {
                mode: Some(0o1777),
                ..MountTmpfsOptions::default()
            }),
            ..Mount::default()
        }]
    });
    let preferences = (!placement.preferences.is_empty()).then(|| {
        placement
            .preferences
            .iter()
            .map(|p| TaskSpecPlacementPreferences {
                spread: Some(TaskSpecPlacementSpread {
                    spread_descriptor: Some(p.clone()),
                }),
            })
            .collect()
    });
    ServiceSpec {
        name: Some(name.to_owned()),
        labels: Some(labels.clone()),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
            ..ServiceSpecMode::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: body.image,
                labels: Some(labels),
                args: body.cmd,
                env: body.env,
                user: body.user,
                read_only: Some(read_only),
                mounts: tmp,
                capability_drop: host.cap_drop,
                privileges: Some(TaskSpecContainerSpecPrivileges {
                    no_new_privileges: Some(true),
                    ..TaskSpecContainerSpecPrivileges::default()
                }),
                ..TaskSpecContainerSpec::default()
            }),
            resources,
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..TaskSpecRestartPolicy::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: (!placement.constraints.is_empty())
                    .then(|| placement.constraints.clone()),
                preferences,
                ..TaskSpecPlacement::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(network.to_owned()),
                ..NetworkAttachmentConfig::default()
            }]),
            ..TaskSpec::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ..EndpointSpec::default()
        }),
        ..ServiceSpec::default()
    }
}

/// Where a service's task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Progress {
    /// Not running yet (being scheduled, its image pulled, starting).
    Waiting,
    /// Pending with a scheduling error (no node satisfies the constraints or has the
    /// resources): it will not run unless the cluster changes.
    Unschedulable(String),
    /// Running, in this container (on this node or another).
    Running {
        /// The container's id.
        container: Option<String>,
    },
    /// Ended: complete, failed, rejected, shut down, or gone.
    Ended {
        /// The container's exit code, if it ran.
        code: Option<i64>,
        /// The container's id, if it ran.
        container: Option<String>,
        /// Swarm's error, if any (`task: non-zero exit (137)`, `No such image`, ...).
        error: Option<String>,
    },
}

/// The newest of a service's tasks (with restart policy `none` there is one; a task Swarm
/// replaces when its node is lost is older).
pub(super) fn newest(tasks: &[Task]) -> Option<&Task> {
    tasks
        .iter()
        .max_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0))
}

/// What `task`'s status says.
pub(super) fn progress(task: &Task) -> Progress {
    let status = task.status.as_ref();
    let error = status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty());
    let container = status
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.container_id.clone())
        .filter(|c| !c.is_empty());
    let code = status
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.exit_code);
    match status.and_then(|s| s.state) {
        Some(TaskState::RUNNING) => Progress::Running { container },
        Some(
            TaskState::COMPLETE
            | TaskState::FAILED
            | TaskState::REJECTED
            | TaskState::SHUTDOWN
            | TaskState::REMOVE
            | TaskState::ORPHANED,
        ) => Progress::Ended {
            code,
            container,
            error,
        },
        // Swarm keeps an unschedulable task pending with the reason in its error.
        Some(TaskState::PENDING) if error.is_some() => {
            Progress::Unschedulable(error.unwrap_or_default())
        }
        _ => Progress::Waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerStatus, ObjectVersion, TaskStatus};
    use serde_json::json;

    fn config(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn spec_rules_in_both_forms() {
        let s = SwarmSpec::from_config(&config(json!({
            "constraints": ["node.role==worker", "node.labels.zone != eu-2"],
            "placement_preferences": "spread=node.labels.zone, node.labels.rack"
        })))
        .unwrap();
        assert_eq!(
            s.constraints,
            ["node.role==worker", "node.labels.zone != eu-2"]
        );
        assert_eq!(s.preferences, ["node.labels.zone", "node.labels.rack"]);
        assert_eq!(
            SwarmSpec::from_config(&Map::new()).unwrap(),
            SwarmSpec::default()
        );
        for (bad, want) in [
            (json!({"constraints": 3}), "config.constraints"),
            (json!({"constraints": ["zone=eu"]}), "has no == or !="),
            (
                json!({"constraints": ["node.colour==red"]}),
                "has the key \"node.colour\"",
            ),
            (
                json!({"constraints": ["node.labels.x==a b"]}),
                "has the value",
            ),
            (json!({"placement_preferences": ["random"]}), "not a spread"),
        ] {
            let e = SwarmSpec::from_config(&config(bad.clone())).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn request_constraints_add_to_the_spec() {
        let spec = SwarmSpec {
            constraints: vec!["node.role==worker".into()],
            preferences: vec![],
        };
        let env = |v: &str| BTreeMap::from([("KERNEL_SWARM_CONSTRAINTS".to_owned(), v.to_owned())]);
        let p = spec
            .with_request(&env("node.labels.gpu==yes, engine.labels.x!=1"))
            .unwrap();
        assert_eq!(
            p.constraints,
            [
                "node.role==worker",
                "node.labels.gpu==yes",
                "engine.labels.x!=1"
            ]
        );
        let e = spec.with_request(&env("gpu")).unwrap_err();
        assert!(matches!(e, LaunchError::Request(_)), "{e:?}");
        assert!(e.to_string().contains("KERNEL_SWARM_CONSTRAINTS"), "{e}");
        let many = vec!["node.role==worker"; MAX_RULES].join(",");
        assert!(spec.with_request(&env(&many)).is_err());
    }

    #[test]
    fn service_carries_the_container() {
        let body = ContainerCreateBody {
            image: Some("img:1".into()),
            user: Some("1000:100".into()),
            env: Some(vec!["KERNEL_ID=K".into()]),
            cmd: Some(vec!["--".into(), "python3".into()]),
            labels: Some(HashMap::from([("kernel_id".into(), "K".into())])),
            host_config: Some(bollard::models::HostConfig {
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let placement = Placement {
            constraints: vec!["node.role==manager".into()],
            preferences: vec!["node.labels.zone".into()],
        };
        let s = service_spec(body, "gl-K", "kernels", None, &placement);
        assert_eq!(s.name.as_deref(), Some("gl-K"));
        assert_eq!(s.labels.as_ref().unwrap()["kernel_id"], "K");
        assert_eq!(
            s.endpoint_spec.unwrap().mode,
            Some(EndpointSpecModeEnum::DNSRR)
        );
        let t = s.task_template.unwrap();
        let c = t.container_spec.unwrap();
        assert_eq!(c.user.as_deref(), Some("1000:100"));
        assert_eq!(c.args.unwrap(), ["--", "python3"]);
        assert_eq!(c.labels.unwrap()["kernel_id"], "K");
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.mounts.unwrap()[0].target.as_deref(), Some("/tmp"));
        assert_eq!(
            t.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        let p = t.placement.unwrap();
        assert_eq!(p.constraints.unwrap(), ["node.role==manager"]);
        assert_eq!(t.networks.unwrap()[0].target.as_deref(), Some("kernels"));
    }

    fn task(index: u64, state: TaskState, err: Option<&str>, code: Option<i64>) -> Task {
        Task {
            version: Some(ObjectVersion { index: Some(index) }),
            status: Some(TaskStatus {
                state: Some(state),
                err: err.map(str::to_owned),
                container_status: Some(ContainerStatus {
                    container_id: Some("c1".into()),
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn task_states() {
        assert_eq!(
            progress(&task(1, TaskState::PREPARING, None, None)),
            Progress::Waiting
        );
        assert_eq!(
            progress(&task(1, TaskState::PENDING, None, None)),
            Progress::Waiting
        );
        assert_eq!(
            progress(&task(
                1,
                TaskState::PENDING,
                Some("no suitable node (x)"),
                None
            )),
            Progress::Unschedulable("no suitable node (x)".into())
        );
        assert_eq!(
            progress(&task(1, TaskState::RUNNING, None, None)),
            Progress::Running {
                container: Some("c1".into())
            }
        );
        assert_eq!(
            progress(&task(
                1,
                TaskState::FAILED,
                Some("task: non-zero exit (137)"),
                Some(137)
            )),
            Progress::Ended {
                code: Some(137),
                container: Some("c1".into()),
                error: Some("task: non-zero exit (137)".into())
            }
        );
        assert_eq!(progress(&Task::default()), Progress::Waiting);
        let tasks = [
            task(5, TaskState::FAILED, None, Some(1)),
            task(9, TaskState::RUNNING, None, None),
        ];
        assert_eq!(
            newest(&tasks).map(progress),
            Some(Progress::Running {
                container: Some("c1".into())
            })
        );
    }
}
