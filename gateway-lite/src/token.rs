//! The generated token's file: where a gateway started without a token leaves the one it
//! made, readable by its own user only.
//!
//! The file is `token` in the state directory, or `port-<PORT>.token` in
//! `$XDG_RUNTIME_DIR/gateway-lite` (else `<temp dir>/gateway-lite-<uid>`), written with mode
//! 0600 in a 0700 directory, atomically (a temporary file renamed over it).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes `token` where the user can find it; the file's path.
pub fn write(token: &str, state_dir: Option<&Path>, port: u16) -> std::io::Result<PathBuf> {
    let (dir, name) = match state_dir {
        Some(d) => (d.to_path_buf(), "token".to_owned()),
        None => {
            let base = std::env::var_os("XDG_RUNTIME_DIR")
                .filter(|v| !v.is_empty())
                .map(|r| PathBuf::from(r).join("gateway-lite"))
                .unwrap_or_else(|| {
                    let uid = nix::unistd::getuid();
                    std::env::temp_dir().join(format!("gateway-lite-{uid}"))
                });
            (base, format!("port-{port}.token"))
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    // A directory made by someone else (a shared temp dir) must not be readable by others.
    let meta = std::fs::metadata(&dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = dir.join(name);
    let tmp = dir.join(".token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_private() {
        let dir = std::env::temp_dir().join(format!("gl-token-{}", uuid::Uuid::new_v4()));
        let path = write("t0k3n", Some(&dir), 1).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "t0k3n\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(dir);
    }
}
