//! What `/proc` and the gateway's own answers say about a soak's processes and kernels, read
//! for checks and failure messages.

use serde_json::Value;

use crate::support::{argv, cmdline, env_var};

/// Whether `pid` runs kernel-launcher.
pub(super) fn is_launcher(pid: i32) -> bool {
    argv(pid)
        .first()
        .is_some_and(|a| a.ends_with("kernel-launcher"))
}

/// Pids with their command line, kernel id and soak tag, for failure messages.
pub(super) fn describe(pids: &[i32]) -> String {
    let v: Vec<String> = pids
        .iter()
        .map(|p| {
            let mut cmd = cmdline(*p);
            cmd.truncate(100);
            format!(
                "{p} [{cmd}] KERNEL_ID={} KERNEL_SOAK_TAG={}",
                env_var(*p, "KERNEL_ID").unwrap_or_default(),
                env_var(*p, "KERNEL_SOAK_TAG").unwrap_or_default()
            )
        })
        .collect();
    format!("[{}]", v.join("; "))
}

/// The value of the sample line `name value` in Prometheus text.
pub(super) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

pub(super) fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|k| k["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
