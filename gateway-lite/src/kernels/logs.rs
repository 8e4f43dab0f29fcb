//! Kernels' log files: named here, kept for a while after their kernel ended, then swept.
//!
//! With a state directory each launcher writes its output (and its kernel's) to
//! `logs/<kernel id>.log` there. That file is what an operator reads to learn why a kernel
//! died, so it must outlive the kernel: when a kernel ends (shut down, or its start failed)
//! the file is only noted as ended, and a sweep deletes it once `--kernel-log-retention` has
//! passed (zero: at once, as before). The sweep runs at start-up, for what earlier runs left
//! (a file's age is then its last change), and on a tracked task every fraction of the
//! retention while the gateway runs. It is bounded: it deletes only regular files directly in
//! the log directory whose names are `<uuid>.log` (the gateway's own pattern), never follows
//! a symbolic link, and never touches the log of a kernel the gateway still has.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::tasks::Tasks;

/// Shortest and longest pause between two sweeps.
const SWEEP_MIN: Duration = Duration::from_secs(1);
const SWEEP_MAX: Duration = Duration::from_secs(3600);

/// The log directory, its retention, and the files of ended kernels not yet deleted.
#[derive(Debug)]
pub struct KernelLogs {
    dir: PathBuf,
    retention: Duration,
    /// Files of kernels that ended, with when they ended.
    ended: Mutex<Vec<(PathBuf, SystemTime)>>,
}

impl KernelLogs {
    /// The logs in `dir`, kept `retention` after their kernel ended.
    pub fn new(dir: PathBuf, retention: Duration) -> Self {
        KernelLogs {
            dir,
            retention,
            ended: Mutex::default(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of kernel `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// How long a log is kept after its kernel ended.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// How often the running gateway sweeps: a quarter of the retention, within bounds.
    pub fn sweep_interval(&self) -> Duration {
        (self.retention / 4).clamp(SWEEP_MIN, SWEEP_MAX)
    }

    /// Kernel `id` has ended: its log is deleted now (no retention) or by a later sweep.
    /// Returns the file when it is kept.
    pub fn ended(&self, id: &str) -> Option<PathBuf> {
        let path = self.path(id);
        if !is_kernel_log(&path) {
            return None;
        }
        if self.retention.is_zero() {
            remove(&path);
            return None;
        }
        if std::fs::symlink_metadata(&path).is_err() {
            return None;
        }
        self.lock().push((path.clone(), SystemTime::now()));
        Some(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PathBuf, SystemTime)>> {
        // Pushes and retains only: nothing can panic half-way under the lock.
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the logs of ended kernels whose retention has passed at `now`. Returns how
    /// many were deleted.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let due: Vec<PathBuf> = {
            let mut ended = self.lock();
            let (due, kept): (Vec<_>, Vec<_>) = ended
                .drain(..)
                .partition(|(_, at)| expired(*at, self.retention, now));
            *ended = kept;
            due.into_iter().map(|(p, _)| p).collect()
        };
        due.iter().filter(|p| remove(p)).count()
    }

    /// At start-up: every kernel log in the directory that is not one of `live` (the kernels
    /// re-attached from the state file) is a leftover of an earlier run. It is deleted if it
    /// has not changed for the retention, else noted as ended at its last change. Returns
    /// how many were deleted.
    pub fn sweep_leftovers(&self, live: &HashSet<String>, now: SystemTime) -> usize {
        match std::fs::symlink_metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                tracing::warn!(dir = %self.dir.display(), "kernel log directory is not a directory (a symbolic link?): not swept");
                return 0;
            }
            Err(_) => return 0,
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot read the kernel log directory: {e}");
                return 0;
            }
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            // The entry's own type: a symbolic link is never followed.
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !regular || !is_kernel_log(&path) || live.contains(id) {
                continue;
            }
            let changed = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if expired(changed, self.retention, now) {
                deleted += usize::from(remove(&path));
            } else {
                self.lock().push((path, changed));
            }
        }
        deleted
    }

    /// Sweeps every [`KernelLogs::sweep_interval`] until the gateway stops, on a tracked
    /// task.
    pub fn spawn_sweeper(self: Arc<Self>, tasks: &Tasks) {
        let blocking = tasks.clone();
        tasks.spawn_until_stopped(async move {
            let mut tick = tokio::time::interval(self.sweep_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let logs = self.clone();
                let _ = blocking
                    .spawn_blocking(move || logs.sweep(SystemTime::now()))
                    .await;
            }
        });
    }
}

/// Whether `ended` plus `retention` is past at `now`.
fn expired(ended: SystemTime, retention: Duration, now: SystemTime) -> bool {
    ended.checked_add(retention).is_none_or(|due| due <= now)
}

/// Whether `path` is named as the gateway names kernel logs: `<uuid>.log`.
fn is_kernel_log(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_suffix(".log")
        .is_some_and(|id| id.len() == 36 && uuid::Uuid::try_parse(id).is_ok())
}

/// Deletes `path` if it is a regular file (a symbolic link there is left alone). Whether it
/// was deleted.
fn remove(path: &Path) -> bool {
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    if !regular {
        return false;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(log_file = %path.display(), "kernel log deleted");
            true
        }
        Err(e) => {
            tracing::warn!(log_file = %path.display(), "cannot delete the kernel log: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("gl-klogs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    #[test]
    fn names_and_intervals() {
        assert!(is_kernel_log(Path::new(
            "/x/0b6e1c59-8c8f-4b43-9c9d-1e1b8f1e2a3b.log"
        )));
        for bad in [
            "/x/notes.log",
            "/x/0b6e1c59-8c8f-4b43-9c9d-1e1b8f1e2a3b.txt",
            "/x/0b6e1c598c8f4b439c9d1e1b8f1e2a3b.log",
            "/x/kernels.json",
        ] {
            assert!(!is_kernel_log(Path::new(bad)), "{bad}");
        }
        let logs = |secs| KernelLogs::new("/x".into(), Duration::from_secs(secs));
        assert_eq!(logs(2).sweep_interval(), SWEEP_MIN);
        assert_eq!(logs(86400).sweep_interval(), SWEEP_MAX);
        assert_eq!(logs(400).sweep_interval(), Duration::from_secs(100));
    }

    #[test]
    fn ended_logs_are_kept_for_the_retention_then_swept() {
        let dir = temp_dir();
        let logs = KernelLogs::new(dir.clone(), Duration::from_secs(60));
        let (a, b) = (id(), id());
        std::fs::write(logs.path(&a), b"a's output").unwrap();
        std::fs::write(logs.path(&b), b"b's output").unwrap();
        assert_eq!(logs.ended(&a), Some(logs.path(&a)));
        let now = SystemTime::now();
        assert_eq!(logs.sweep(now), 0, "not yet");
        assert!(logs.path(&a).exists());
        assert_eq!(logs.sweep(now + Duration::from_secs(61)), 1);
        assert!(!logs.path(&a).exists());
        assert!(logs.path(&b).exists(), "b has not ended");
        assert_eq!(logs.ended(&id()), None, "no file, nothing kept");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn zero_retention_deletes_at_once() {
        let dir = temp_dir();
        let logs = KernelLogs::new(dir.clone(), Duration::ZERO);
        let a = id();
        std::fs::write(logs.path(&a), b"x").unwrap();
        assert_eq!(logs.ended(&a), None);
        assert!(!logs.path(&a).exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn leftovers_are_swept_but_live_kernels_links_and_strangers_are_not() {
        let dir = temp_dir();
        let logs = KernelLogs::new(dir.clone(), Duration::from_secs(60));
        let (old, live, linked) = (id(), id(), id());
        for i in [&old, &live] {
            std::fs::write(logs.path(i), b"x").unwrap();
        }
        let outside = temp_dir();
        let target = outside.join(format!("{}.log", id()));
        std::fs::write(&target, b"not ours").unwrap();
        std::os::unix::fs::symlink(&target, logs.path(&linked)).unwrap();
        std::fs::write(dir.join("notes.log"), b"an operator's").unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let deleted = logs.sweep_leftovers(&HashSet::from([live.clone()]), later);
        assert_eq!(deleted, 1);
        assert!(!logs.path(&old).exists());
        assert!(logs.path(&live).exists(), "a live kernel's log stays");
        assert!(target.exists(), "a link is not followed");
        assert!(
            std::fs::symlink_metadata(logs.path(&linked)).is_ok(),
            "nor deleted"
        );
        assert!(dir.join("notes.log").exists(), "other names stay");
        // A recent leftover waits for its retention.
        let fresh = id();
        std::fs::write(logs.path(&fresh), b"x").unwrap();
        let still = HashSet::from([live.clone()]);
        assert_eq!(logs.sweep_leftovers(&still, SystemTime::now()), 0);
        assert!(logs.path(&fresh).exists());
        assert_eq!(logs.sweep(later + Duration::from_secs(3600)), 1);
        assert!(!logs.path(&fresh).exists());
        // A linked log directory is not swept at all.
        let linked_dir = outside.join("logs");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        let via_link = KernelLogs::new(linked_dir, Duration::ZERO);
        assert_eq!(via_link.sweep_leftovers(&HashSet::new(), later), 0);
        assert!(logs.path(&live).exists());
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_dir_all(outside);
    }
}
