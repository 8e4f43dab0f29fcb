//! Who the kernel runs as: Enterprise Gateway's `KERNEL_UID` / `KERNEL_GID`.
//!
//! EG's container images start as root and drop to the user the gateway asks
//! for, or are started as that user (`docker run --user`, a pod's
//! `runAsUser`). The launcher does the same without a shell or `su`: when it
//! runs as root and `KERNEL_UID` is a non-zero number, it switches itself (and
//! so the kernel it starts afterwards) to that uid, `KERNEL_GID` (default 100,
//! EG's `users`) and the supplementary groups `[gid, 100]`, all numerically:
//! no passwd or group look-ups, so any uid works in an image that does not
//! know it. Root kernels are refused outright, and so is the root group (EG's
//! uid and gid blacklists default to 0 too). Run as another non-root uid, the launcher cannot switch
//! and says so, but keeps going: that is the `--user` case, and the kernel
//! still runs unprivileged.
//!
//! A uid without a passwd entry usually has no writable home either (the
//! image's `HOME` belongs to someone else); kernels write there (IPython's
//! history and profile, R's library, Ivy's cache), so the kernel then gets a
//! private, launcher-created `HOME` under the temporary directory, removed
//! when the launcher exits.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::unistd::{
    AccessFlags, Gid, Uid, access, geteuid, getgid, getuid, setgid, setgroups, setuid,
};

/// Exit code when `KERNEL_UID` asks for root (BSD `EX_NOPERM`).
pub const EXIT_NOPERM: i32 = 77;

/// EG's default `KERNEL_GID` (the `users` group of its images).
pub const DEFAULT_GID: u32 = 100;

/// Why the requested identity cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// `KERNEL_UID` (or `KERNEL_GID`) is not a number.
    #[error(
        "env {var}: `{value}` is not a numeric id; give a number (names are not looked up: the image need not know the user)"
    )]
    NotNumeric { var: &'static str, value: String },
    /// `KERNEL_UID=0`.
    #[error(
        "env KERNEL_UID=0: kernels are never run as root; give the kernel user's uid (EG's default is 1000), or leave KERNEL_UID unset"
    )]
    Root,
    /// `KERNEL_GID=0` (EG's `gid_blacklist` refuses it by default too).
    #[error(
        "env KERNEL_GID=0: kernels are never run in the root group; give the kernel user's gid (EG's default is 100), or leave KERNEL_GID unset"
    )]
    RootGroup,
}

impl IdentityError {
    /// The launcher's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            IdentityError::Root | IdentityError::RootGroup => EXIT_NOPERM,
            IdentityError::NotNumeric { .. } => crate::config::EXIT_USAGE,
        }
    }
}

/// The user and groups the gateway asked the kernel to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// Reads `KERNEL_UID` / `KERNEL_GID` (already trimmed of "absent" values);
    /// `None` when no uid is asked for.
    pub fn from_env(
        uid: Option<&str>,
        gid: Option<&str>,
    ) -> Result<Option<Identity>, IdentityError> {
        let number = |var: &'static str, value: &str| {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| IdentityError::NotNumeric {
                    var,
                    value: value.to_string(),
                })
        };
        let Some(uid) = uid else {
            return Ok(None);
        };
        let uid = number("KERNEL_UID", uid)?;
        if uid == 0 {
            return Err(IdentityError::Root);
        }
        let gid = match gid {
            Some(g) => number("KERNEL_GID", g)?,
            None => DEFAULT_GID,
        };
        if gid == 0 {
            return Err(IdentityError::RootGroup);
        }
        Ok(Some(Identity { uid, gid }))
    }

    /// The supplementary groups: the primary group and EG's `users` (100), once each.
    pub fn groups(&self) -> Vec<u32> {
        let mut groups = vec![self.gid];
        if self.gid != DEFAULT_GID {
            groups.push(DEFAULT_GID);
        }
        groups
    }

    /// Switches this process to the identity when it runs as root; otherwise
    /// logs what it keeps. Must run before any thread is started (the ids are
    /// per-thread in the kernel; libc's wrappers, which nix calls, broadcast
    /// them, but nothing here needs that).
    pub fn apply(&self) -> io::Result<()> {
        let (uid, euid) = (getuid(), geteuid());
        if !euid.is_root() {
            if euid.as_raw() == self.uid {
                log::debug!("already running as KERNEL_UID {}", self.uid);
            } else {
                log::warn!(
                    "KERNEL_UID {} asked for, but the launcher runs as uid {} (not root), so it cannot switch; the kernel runs as uid {}",
                    self.uid,
                    euid,
                    euid
                );
            }
            return Ok(());
        }
        let groups: Vec<Gid> = self.groups().into_iter().map(Gid::from_raw).collect();
        setgroups(&groups).map_err(io::Error::from)?;
        setgid(Gid::from_raw(self.gid)).map_err(io::Error::from)?;
        setuid(Uid::from_raw(self.uid)).map_err(io::Error::from)?;
        log::info!(
            "switched from uid {uid} to KERNEL_UID {} (gid {}, groups {:?})",
            self.uid,
            getgid(),
            self.groups()
        );
        Ok(())
    }
}

/// The kernel's `HOME` when the inherited one cannot be used.
#[derive(Debug)]
pub struct PrivateHome {
    path: PathBuf,
}

impl PrivateHome {
    /// Checks `home` (the inherited `HOME`) for this process's uid: when it is
    /// unset or not a writable directory, creates a private one (mode 0700)
    /// under `tmp` and returns it. `Ok(None)`: the inherited `HOME` is fine.
    pub fn ensure(home: Option<&Path>, tmp: &Path) -> io::Result<Option<PrivateHome>> {
        if let Some(h) = home
            && writable_dir(h)
        {
            return Ok(None);
        }
        let uid = geteuid();
        // A fresh random name, created exclusively: nothing another user made in a shared
        // temporary directory is ever taken over.
        let path = tmp.join(format!(
            "kernel-home-{uid}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        log::info!(
            "HOME {} is not a writable directory for uid {uid}; the kernel gets a private HOME {} (removed at exit)",
            home.map_or_else(|| "(unset)".to_string(), |h| h.display().to_string()),
            path.display()
        );
        Ok(Some(PrivateHome { path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the private home and what the kernel left in it.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            log::debug!("cannot remove {}: {e}", self.path.display());
        }
    }
}

fn writable_dir(path: &Path) -> bool {
    path.is_dir() && access(path, AccessFlags::W_OK | AccessFlags::X_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_and_gid_are_numbers_and_gid_defaults_to_users() {
        assert_eq!(Identity::from_env(None, Some("100")), Ok(None));
        assert_eq!(
            Identity::from_env(Some(" 4242 "), None),
            Ok(Some(Identity {
                uid: 4242,
                gid: 100
            }))
        );
        assert_eq!(
            Identity::from_env(Some("1000"), Some("4343")),
            Ok(Some(Identity {
                uid: 1000,
                gid: 4343
            }))
        );
        let e = Identity::from_env(Some("jovyan"), None).unwrap_err();
        assert!(e.to_string().contains("KERNEL_UID") && e.to_string().contains("jovyan"));
        assert_eq!(e.exit_code(), crate::config::EXIT_USAGE);
        let e = Identity::from_env(Some("1000"), Some("-1")).unwrap_err();
        assert!(e.to_string().contains("KERNEL_GID"));
    }

    #[test]
    fn root_is_refused() {
        let e = Identity::from_env(Some("0"), Some("0")).unwrap_err();
        assert_eq!(e, IdentityError::Root);
        assert_eq!(e.exit_code(), EXIT_NOPERM);
        assert!(e.to_string().contains("never run as root"));
        let e = Identity::from_env(Some("1000"), Some("0")).unwrap_err();
        assert_eq!(e, IdentityError::RootGroup);
        assert_eq!(e.exit_code(), EXIT_NOPERM);
        assert!(e.to_string().contains("KERNEL_GID=0"));
    }

    #[test]
    fn groups_hold_the_gid_and_users_once() {
        assert_eq!(Identity { uid: 1, gid: 100 }.groups(), [100]);
        assert_eq!(Identity { uid: 1, gid: 7 }.groups(), [7, 100]);
    }

    #[test]
    fn a_missing_or_unwritable_home_gets_a_private_one() {
        let tmp = std::env::temp_dir().join(format!("kl-home-{}", std::process::id()));
        fs::create_dir_all(&tmp).unwrap();
        // A writable HOME is kept.
        assert!(PrivateHome::ensure(Some(&tmp), &tmp).unwrap().is_none());
        // A missing one (or none) is replaced by a fresh private directory.
        for home in [Some(tmp.join("nope").as_path()), None] {
            let h = PrivateHome::ensure(home, &tmp).unwrap().unwrap();
            assert!(h.path().starts_with(&tmp) && h.path().is_dir());
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(h.path()).unwrap().permissions().mode() & 0o777,
                0o700
            );
            fs::write(h.path().join("left"), "x").unwrap();
            h.remove();
            assert!(!h.path().exists());
        }
        fs::remove_dir_all(&tmp).unwrap();
    }
}
