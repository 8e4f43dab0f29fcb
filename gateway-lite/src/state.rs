//! The state file: what a restarted gateway needs to find its running kernels again.
//!
//! Kernels outlive the gateway process (an upgrade, a crash, `kill -9`); clients hold kernel
//! ids and reconnect. So after every change to the set of kernels (start, restart, death,
//! shutdown) the gateway rewrites `kernels.json` in its state directory: kernel id,
//! kernelspec, request env, the connection info (ports and key), the comm port and where the
//! launcher runs ([`Placement`]). The write is atomic (a temporary file, `fsync`, `rename`,
//! `fsync` of the directory), so a crash at any moment leaves either the old or the new file.
//! Each write carries the number of the change it records; a write older than the last one
//! written is skipped, so a slow writer can never put an older snapshot over a newer one. A
//! file that cannot be read is renamed aside with a timestamp and reported; the gateway then
//! starts without it.
//! An exclusive `flock` on `lock` keeps two gateways from sharing one directory, where each
//! would overwrite the other's kernels. Launchers' log files live here too (`logs/<id>.log`),
//! since a launcher that outlives the gateway cannot write into the gateway's pipes.
//!
//! Whether there is a state directory at all is decided here too ([`open_configured`]): a
//! default the gateway cannot have is warned about with the fix, not silently dropped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use protocol::connection::ConnectionInfo;
use serde::{Deserialize, Serialize};

use crate::config::StateDirSource;
use crate::provisioner::Placement;

/// Format version of `kernels.json`; a file of another version is set aside, not misread.
pub const VERSION: u32 = 1;

/// Largest state file read back.
const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// One kernel, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    /// Kernel id.
    pub id: String,
    /// Kernelspec name.
    pub name: String,
    /// The request's validated `KERNEL_*` env (restarts reuse it).
    pub env: BTreeMap<String, String>,
    /// Launch timeout for restarts, in seconds.
    pub launch_timeout_secs: f64,
    /// Incarnation counter.
    pub generation: u64,
    /// Ports, key and signature scheme as the launcher reported them.
    pub connection: ConnectionInfo,
    /// Host at which the ports are reachable.
    pub host: String,
    /// The launcher's comm port.
    pub comm_port: Option<u16>,
    /// Kernel pid as reported.
    pub pid: Option<i64>,
    /// Kernel process group as reported.
    pub pgid: Option<i64>,
    /// Where the launcher runs.
    pub placement: Placement,
    /// The launch secret comm-port requests are signed with (absent: unsigned, as for
    /// Enterprise Gateway's launchers and in state files of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_secret: Option<String>,
    /// The kernel's CurveZMQ public key (Z85), when its channels are CURVE servers: a
    /// re-attaching gateway connects over CurveZMQ again. Absent: clear text (and in state
    /// files of earlier versions). The kernel's secret key is never recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve_publickey: Option<String>,
    /// The warm pool (its kernelspec name) the kernel idles in, unclaimed; absent once a
    /// request claimed it (and for every kernel started for a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    version: u32,
    kernels: Vec<KernelRecord>,
}

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Another process holds the directory's lock.
    #[error(
        "{0} is in use by another gateway-lite; give each gateway its own --state-dir (env GATEWAY_LITE_STATE_DIR)"
    )]
    Locked(PathBuf),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `kernels.json` is not a state file of this version (it was renamed aside).
    #[error(
        "{path} could not be read ({problem}); it was moved to {moved} and no kernels were restored"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// Where it went.
        moved: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An open, locked state directory.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    /// Held for the gateway's lifetime; the lock goes with the process.
    _lock: Flock<File>,
    /// Serializes writers and holds the number of the last snapshot written, so the file on
    /// disk is always the newest snapshot.
    written: Mutex<u64>,
}

impl StateStore {
    /// Creates (mode 0700) and locks `dir`.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("logs"))
            .map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Locked(dir.to_owned()))?;
        Ok(StateStore {
            dir: dir.to_owned(),
            _lock: lock,
            written: Mutex::new(0),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("kernels.json")
    }

    /// The directory of launchers' log files ([`crate::kernels`] names and sweeps them).
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The recorded kernels; none when there is no file yet. An unreadable file is moved
    /// aside (never silently overwritten) and reported.
    pub fn load(&self) -> Result<Vec<KernelRecord>, StateError> {
        let path = self.file();
        let bytes = match File::open(&path) {
            Ok(f) => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BYTES), &mut buf)
                    .map_err(io(&path))?;
                buf
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        let problem = match serde_json::from_slice::<Document>(&bytes) {
            Ok(doc) if doc.version == VERSION => return Ok(doc.kernels),
            Ok(doc) => format!("version {} where {VERSION} is expected", doc.version),
            Err(e) => e.to_string(),
        };
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let moved = self.dir.join(format!("kernels.json.unreadable-{stamp}"));
        std::fs::rename(&path, &moved).map_err(io(&path))?;
        Err(StateError::Corrupt {
            path,
            problem,
            moved,
        })
    }

    /// Replaces the recorded kernels with `kernels`, the state after change number `seq`,
    /// atomically; does nothing if a later change was written already.
    pub fn save(&self, seq: u64, kernels: Vec<KernelRecord>) -> Result<(), StateError> {
        self.save_latest(seq, move || (seq, kernels))
    }

    /// Makes sure the state after change number `seq` or a later one is on disk: does
    /// nothing if one was written already, else writes the newest state `latest` gives (its
    /// change number and kernels). Writes are one at a time, so changes that pile up behind
    /// one write (100 DELETEs at once) are then written together, once.
    pub fn save_latest(
        &self,
        seq: u64,
        latest: impl FnOnce() -> (u64, Vec<KernelRecord>),
    ) -> Result<(), StateError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if seq <= *written {
            return Ok(());
        }
        let (seq, kernels) = latest();
        let doc = Document {
            version: VERSION,
            kernels,
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| StateError::Io {
            path: self.file(),
            source: std::io::Error::other(e),
        })?;
        let tmp = self.dir.join("kernels.json.tmp");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        let path = self.file();
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        *written = seq;
        Ok(())
    }
}

/// Opens the configured state directory, or says why there is none. The operator's own
/// choices (`--no-state-dir`, `--port 0`) are logged at INFO; a default that cannot be had
/// (no `HOME`, an unwritable one) at WARN with the fix, and the gateway goes on without
/// one. A directory given with `--state-dir` must work: its failure is the error.
pub fn open_configured(
    dir: Option<&Path>,
    source: StateDirSource,
) -> Result<Option<StateStore>, StateError> {
    const FIX: &str = "give one with --state-dir PATH (env GATEWAY_LITE_STATE_DIR; under systemd: StateDirectory=gateway-lite and Environment=GATEWAY_LITE_STATE_DIR=%S/gateway-lite), or pass --no-state-dir if this is intended";
    const WITHOUT: &str = "kernels end with the gateway and their output goes to this log";
    let Some(dir) = dir else {
        match source {
            StateDirSource::Off => {
                tracing::info!("no state directory (--no-state-dir): kernels end with the gateway");
            }
            StateDirSource::PortZero => tracing::info!(
                "no state directory with --port 0 (give --state-dir to have one): kernels end with the gateway"
            ),
            _ => tracing::warn!(
                "no usable state directory: neither XDG_STATE_HOME nor HOME is set, so {WITHOUT}; {FIX}"
            ),
        }
        return Ok(None);
    };
    match StateStore::open(dir) {
        Ok(store) => {
            tracing::info!(state_dir = %dir.display(), "kernels are recorded for restarts");
            Ok(Some(store))
        }
        Err(e @ StateError::Io { .. }) if source == StateDirSource::Default => {
            tracing::warn!(
                "no usable state directory: the default one cannot be used ({e}), so {WITHOUT}; {FIX}"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> KernelRecord {
        KernelRecord {
            id: id.into(),
            name: "python3".into(),
            env: BTreeMap::from([("KERNEL_USERNAME".into(), "alice".into())]),
            launch_timeout_secs: 30.0,
            generation: 2,
            connection: ConnectionInfo::from_json(
                br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,
                     "ip":"127.0.0.1","key":"k","transport":"tcp","signature_scheme":"hmac-sha256"}"#,
            )
            .unwrap(),
            host: "127.0.0.1".into(),
            comm_port: Some(6),
            pid: Some(7),
            pgid: Some(7),
            placement: Placement::Local {
                pid: 8,
                start_time: 9,
                log_file: None,
            },
            launch_secret: Some("s".repeat(64)),
            curve_publickey: None,
            pool: None,
        }
    }

    #[test]
    fn curve_key_is_kept_and_optional() {
        let curve = KernelRecord {
            curve_publickey: Some("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7".into()),
            ..record("c")
        };
        let text = serde_json::to_string(&curve).unwrap();
        assert!(text.contains("curve_publickey"));
        assert!(!text.contains("curve_secretkey"));
        assert_eq!(serde_json::from_str::<KernelRecord>(&text).unwrap(), curve);
        // A record of an earlier version, without the field: clear text.
        let mut old = serde_json::to_value(record("o")).unwrap();
        assert!(old.get("curve_publickey").is_none());
        old.as_object_mut().unwrap().remove("curve_publickey");
        let back: KernelRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back.curve_publickey, None);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "gwl-state-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ))
    }

    #[test]
    fn round_trip_and_replace() {
        let dir = temp_dir("rt");
        let s = StateStore::open(&dir).unwrap();
        assert!(s.load().unwrap().is_empty());
        let pooled = KernelRecord {
            pool: Some("python3".into()),
            ..record("p")
        };
        s.save(1, vec![record("a"), record("b"), pooled.clone()])
            .unwrap();
        assert_eq!(
            s.load().unwrap(),
            vec![record("a"), record("b"), pooled],
            "a pooled kernel comes back pooled"
        );
        s.save(3, vec![record("b")]).unwrap();
        assert_eq!(s.load().unwrap(), vec![record("b")]);
        // An older snapshot that reaches the disk late is not written over a newer one.
        s.save(2, vec![record("a")]).unwrap();
        assert_eq!(s.load().unwrap(), vec![record("b")]);
        assert!(!dir.join("kernels.json.tmp").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn second_opener_is_refused() {
        let dir = temp_dir("lock");
        let first = StateStore::open(&dir).unwrap();
        let e = StateStore::open(&dir).unwrap_err();
        assert!(matches!(e, StateError::Locked(_)), "{e}");
        assert!(e.to_string().contains("--state-dir"), "{e}");
        drop(first);
        StateStore::open(&dir).expect("free again once the first is gone");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unusable_default_is_no_error_but_a_given_directory_must_work() {
        let file = temp_dir("file");
        std::fs::write(&file, b"not a directory").unwrap();
        let below = file.join("state");
        let none = open_configured(Some(&below), StateDirSource::Default).unwrap();
        assert!(none.is_none(), "the gateway goes on without one");
        let e = open_configured(Some(&below), StateDirSource::Given).unwrap_err();
        assert!(matches!(e, StateError::Io { .. }), "{e}");
        for source in [
            StateDirSource::Off,
            StateDirSource::PortZero,
            StateDirSource::NoHome,
        ] {
            assert!(open_configured(None, source).unwrap().is_none());
        }
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn unreadable_file_is_moved_aside() {
        let dir = temp_dir("bad");
        let s = StateStore::open(&dir).unwrap();
        std::fs::write(dir.join("kernels.json"), b"{not json").unwrap();
        let e = s.load().unwrap_err();
        let StateError::Corrupt { moved, .. } = &e else {
            panic!("{e}")
        };
        assert!(moved.exists());
        assert!(s.load().unwrap().is_empty(), "a fresh start after the move");
        std::fs::write(dir.join("kernels.json"), br#"{"version":99,"kernels":[]}"#).unwrap();
        assert!(matches!(s.load(), Err(StateError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
