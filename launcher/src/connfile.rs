//! The kernel's connection file: written before the kernel starts, removed
//! when the launcher exits.
//!
//! It holds the HMAC key, so it is created with mode 0600 and published with a
//! rename, so a kernel never reads a half-written file. The directory is
//! created if missing: an empty container or chroot may have no `/tmp`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use protocol::connection::ConnectionInfo;

/// A written connection file; [`ConnectionFile::remove`] deletes it.
#[derive(Debug)]
pub struct ConnectionFile {
    path: PathBuf,
}

impl ConnectionFile {
    /// Writes `info` to `path` atomically with mode 0600.
    pub fn write(path: &Path, info: &ConnectionInfo) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
            // A directory we had to create is most likely the missing /tmp.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o1777))?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&info.to_json_pretty())?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| ConnectionFile {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the file; a file already gone is not an error.
    pub fn remove(&self) {
        match fs::remove_file(&self.path) {
            Ok(()) => log::debug!("removed connection file {}", self.path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove connection file {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_private_and_removed() {
        let dir = std::env::temp_dir().join(format!("kl-connfile-{}", std::process::id()));
        let path = dir.join("sub").join("kernel-x.json");
        let info = ConnectionInfo::from_json(
            br#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"ip":"0.0.0.0","key":"k"}"#,
        )
        .unwrap();
        let f = ConnectionFile::write(&path, &info).unwrap();
        let mode = fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            ConnectionInfo::from_json(&fs::read(&path).unwrap()).unwrap(),
            info
        );
        f.remove();
        assert!(!path.exists());
        f.remove();
        fs::remove_dir_all(&dir).unwrap();
    }
}
