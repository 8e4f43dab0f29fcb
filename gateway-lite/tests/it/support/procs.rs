//! What `/proc` says about the processes a test started: whose environment names a kernel,
//! their command lines, their memory. Checks for leaks and orphans read it.

use std::time::Duration;

use super::WAIT;

/// Every pid in `/proc`.
pub fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// The argv of `pid` (empty when it is gone).
pub fn argv(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The command line of `pid` joined with spaces (empty when it is gone).
pub fn cmdline(pid: i32) -> String {
    argv(pid).join(" ")
}

/// The value of `key` in the environment of `pid`.
pub fn env_var(pid: i32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Pids whose environment holds `KERNEL_ID=<id>` (the launcher and the kernel).
pub fn processes_of(kernel_id: &str) -> Vec<i32> {
    processes_with_env(&format!("KERNEL_ID={kernel_id}"))
}

/// Live (not zombie) pids whose environment holds the entry `needle` (`NAME=value`).
pub fn processes_with_env(needle: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let is_zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            !is_zombie && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
        })
        .collect()
}

/// Waits (bounded) until no process of `kernel_id` is left.
pub async fn wait_no_processes(kernel_id: &str) -> Vec<i32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = processes_of(kernel_id);
        if left.is_empty() || tokio::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
