//! Where kernelspecs are looked for, and in which order.
//!
//! A user who runs `jupyter kernelspec list` on the gateway's host should see the specs the
//! gateway serves, so after the operator's own `--kernelspec-dir` directories (first: an
//! explicit choice wins) come Jupyter's data directories, each searched as `<dir>/kernels`,
//! in jupyter_core's order:
//!
//! 1. `JUPYTER_PATH` entries;
//! 2. the user data dir: `JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else
//!    `~/.local/share/jupyter`;
//! 3. the Python environment's `<prefix>/share/jupyter`;
//! 4. the system dirs `/usr/local/share/jupyter` and `/usr/share/jupyter`.
//!
//! Steps 2 and 3 swap, as jupyter_core swaps them, when `JUPYTER_PREFER_ENV_PATH` says so or,
//! without it, when the environment is a virtual environment or a named (not `base`) conda
//! environment that the user owns. The first directory holding a kernel name wins.
//!
//! gateway-lite has no Python, so "the environment" is read from what selects one:
//! `VIRTUAL_ENV`, then `CONDA_PREFIX`, then the prefix of the `python3` found on `PATH`. That
//! last one is the directory above the `bin` holding it, found the way Python finds its own
//! prefix: a `pyvenv.cfg` above that `bin` makes it a virtual environment (whose `python3` is
//! a symlink to the base interpreter, which must not be followed); otherwise the symlinks to
//! the real interpreter are followed. An environment whose data dir is a system dir is
//! searched in the system position only.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::SearchEnv;

/// The system-wide Jupyter data dirs, searched last.
pub const SYSTEM_DATA_DIRS: [&str; 2] = ["/usr/local/share/jupyter", "/usr/share/jupyter"];

/// Every directory that may hold `<name>/kernel.json`, in search order, without repeats.
pub fn spec_roots(extra_dirs: &[PathBuf], search: &SearchEnv) -> Vec<PathBuf> {
    let mut roots = extra_dirs.to_vec();
    roots.extend(data_paths(search).into_iter().map(|d| d.join("kernels")));
    without_repeats(roots)
}

/// Jupyter's data directories, in search order (see the module doc).
pub fn data_paths(search: &SearchEnv) -> Vec<PathBuf> {
    let system: Vec<PathBuf> = SYSTEM_DATA_DIRS.iter().map(PathBuf::from).collect();
    let prefixes = env_prefixes(search);
    let env: Vec<PathBuf> = prefixes
        .iter()
        .map(|p| p.join("share/jupyter"))
        .filter(|d| !system.contains(d))
        .collect();
    let user = user_data_dir(search);
    let mut paths = search.jupyter_path.clone();
    if prefers_env(search, &prefixes) {
        paths.extend(env);
        paths.extend(user);
    } else {
        paths.extend(user);
        paths.extend(env);
    }
    paths.extend(system);
    without_repeats(paths)
}

/// `JUPYTER_DATA_DIR`, else `$XDG_DATA_HOME/jupyter`, else `~/.local/share/jupyter`.
fn user_data_dir(search: &SearchEnv) -> Option<PathBuf> {
    if let Some(d) = &search.data_dir {
        return Some(d.clone());
    }
    if let Some(d) = &search.data_home {
        return Some(d.join("jupyter"));
    }
    search.home.as_ref().map(|h| h.join(".local/share/jupyter"))
}

/// The Python environments' prefixes: `VIRTUAL_ENV`, `CONDA_PREFIX`, then `python3`'s on
/// `PATH`.
pub fn env_prefixes(search: &SearchEnv) -> Vec<PathBuf> {
    let candidates = [
        search.virtual_env.clone(),
        search.conda_prefix.clone(),
        python_prefix(&search.path),
    ];
    without_repeats(
        candidates
            .into_iter()
            .flatten()
            .filter(|p| p.is_absolute())
            .collect(),
    )
}

/// The prefix of the first `python3` on `path`: the directory above its `bin`, without
/// following the interpreter's symlink when that directory is a virtual environment.
fn python_prefix(path: &[PathBuf]) -> Option<PathBuf> {
    let dir = path
        .iter()
        .filter(|d| d.is_absolute())
        .find(|d| d.join("python3").is_file())?;
    // The PATH entry itself may be a link (`/bin` to `/usr/bin`): resolve the directory only.
    let bin = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    if let Some(venv) = bin.parent().filter(|p| p.join("pyvenv.cfg").is_file()) {
        return Some(venv.to_path_buf());
    }
    let real = dir.join("python3").canonicalize().ok()?;
    let bin = real.parent()?;
    if bin.file_name()? != "bin" {
        return None;
    }
    bin.parent().map(Path::to_path_buf)
}

/// Whether the environment dirs come before the user dir: `JUPYTER_PREFER_ENV_PATH` when set
/// (any value but a false one), else whether the first environment is a virtual environment
/// or a named conda environment, and the user's own.
fn prefers_env(search: &SearchEnv, prefixes: &[PathBuf]) -> bool {
    if let Some(v) = &search.prefer_env_path {
        let v = v.trim().to_ascii_lowercase();
        return !matches!(v.as_str(), "no" | "n" | "false" | "off" | "0" | "0.0");
    }
    let Some(prefix) = prefixes.first() else {
        return false;
    };
    let venv = prefix.join("pyvenv.cfg").is_file();
    let named_conda = search
        .conda_prefix
        .as_ref()
        .is_some_and(|c| prefix.starts_with(c))
        && search
            .conda_default_env
            .as_deref()
            .is_some_and(|n| n != "base");
    (venv || named_conda) && owned(prefix)
}

/// Whether the user can write to `dir` or owns it (the nearest existing ancestor).
fn owned(dir: &Path) -> bool {
    let Some(existing) = dir.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let writable = nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok();
    writable
        || std::fs::metadata(existing).is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw())
}

/// `paths` without the later copies of a path.
fn without_repeats(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory removed on drop.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new() -> Self {
            let d = std::env::temp_dir().join(format!("gl-search-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&d).unwrap();
            Tmp(d)
        }

        fn dir(&self, rel: &str) -> PathBuf {
            let d = self.0.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            d
        }

        fn file(&self, rel: &str) -> PathBuf {
            let f = self.0.join(rel);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"").unwrap();
            f
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn system() -> Vec<PathBuf> {
        SYSTEM_DATA_DIRS.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn kernelspec_dirs_then_jupyter_order() {
        let t = Tmp::new();
        let conda = t.dir("conda");
        let search = SearchEnv {
            jupyter_path: vec![t.dir("jp1"), t.dir("jp2")],
            home: Some(t.dir("home")),
            conda_prefix: Some(conda.clone()),
            conda_default_env: Some("base".into()),
            ..SearchEnv::default()
        };
        let extra = vec![t.dir("extra")];
        let mut want = vec![
            t.0.join("extra"),
            t.0.join("jp1/kernels"),
            t.0.join("jp2/kernels"),
            t.0.join("home/.local/share/jupyter/kernels"),
            conda.join("share/jupyter/kernels"),
        ];
        want.extend(system().iter().map(|d| d.join("kernels")));
        assert_eq!(spec_roots(&extra, &search), want);

        // JUPYTER_DATA_DIR, else XDG_DATA_HOME, names the user dir.
        let xdg = SearchEnv {
            data_home: Some(t.0.join("xdg")),
            ..search.clone()
        };
        assert_eq!(data_paths(&xdg)[2], t.0.join("xdg/jupyter"));
        let jdd = SearchEnv {
            data_dir: Some(t.0.join("jdd")),
            ..xdg
        };
        assert_eq!(data_paths(&jdd)[2], t.0.join("jdd"));
        // Without any environment, the user dir is followed by the system dirs.
        let bare = SearchEnv {
            home: Some(t.0.join("home")),
            ..SearchEnv::default()
        };
        let mut want = vec![t.0.join("home/.local/share/jupyter")];
        want.extend(system());
        assert_eq!(data_paths(&bare), want);
    }

    #[test]
    fn environments_before_the_user_dir_when_jupyter_would() {
        let t = Tmp::new();
        let venv = t.dir("venv");
        t.file("venv/pyvenv.cfg");
        let user = t.0.join("home/.local/share/jupyter");
        let search = SearchEnv {
            home: Some(t.0.join("home")),
            virtual_env: Some(venv.clone()),
            ..SearchEnv::default()
        };
        let env = venv.join("share/jupyter");
        // A virtual environment the user owns comes first.
        assert_eq!(data_paths(&search)[..2], [env.clone(), user.clone()]);
        // JUPYTER_PREFER_ENV_PATH decides when set.
        let off = SearchEnv {
            prefer_env_path: Some("0".into()),
            ..search.clone()
        };
        assert_eq!(data_paths(&off)[..2], [user.clone(), env.clone()]);
        // A conda base environment is not preferred; a named one is.
        let conda = t.dir("conda");
        let base = SearchEnv {
            home: Some(t.0.join("home")),
            conda_prefix: Some(conda.clone()),
            conda_default_env: Some("base".into()),
            ..SearchEnv::default()
        };
        let cenv = conda.join("share/jupyter");
        assert_eq!(data_paths(&base)[..2], [user.clone(), cenv.clone()]);
        let named = SearchEnv {
            conda_default_env: Some("analysis".into()),
            ..base.clone()
        };
        assert_eq!(data_paths(&named)[..2], [cenv.clone(), user.clone()]);
        let forced = SearchEnv {
            prefer_env_path: Some("yes".into()),
            ..base
        };
        assert_eq!(data_paths(&forced)[..2], [cenv, user]);
    }

    #[test]
    fn python_on_path_gives_the_environment() {
        let t = Tmp::new();
        // A base interpreter, and a venv whose python3 links to it.
        let base_python = t.file("base/bin/python3");
        t.dir("venv/bin");
        t.file("venv/pyvenv.cfg");
        std::os::unix::fs::symlink(&base_python, t.0.join("venv/bin/python3")).unwrap();
        let prefix = |path: Vec<PathBuf>| {
            env_prefixes(&SearchEnv {
                path,
                ..SearchEnv::default()
            })
        };
        assert_eq!(
            prefix(vec![t.dir("empty"), t.0.join("venv/bin")]),
            [t.0.join("venv")],
            "the venv, not the interpreter it links to"
        );
        // Outside a venv the link is followed to the real interpreter's prefix.
        t.dir("tools/bin");
        std::os::unix::fs::symlink(&base_python, t.0.join("tools/bin/python3")).unwrap();
        assert_eq!(prefix(vec![t.0.join("tools/bin")]), [t.0.join("base")]);
        // A PATH entry that is itself a link to a venv's bin.
        std::os::unix::fs::symlink(t.0.join("venv/bin"), t.0.join("venvbin")).unwrap();
        assert_eq!(prefix(vec![t.0.join("venvbin")]), [t.0.join("venv")]);
        // VIRTUAL_ENV and CONDA_PREFIX come first; repeats are dropped.
        let search = SearchEnv {
            virtual_env: Some(t.0.join("venv")),
            conda_prefix: Some(t.0.join("conda")),
            path: vec![t.0.join("venv/bin")],
            ..SearchEnv::default()
        };
        assert_eq!(env_prefixes(&search), [t.0.join("venv"), t.0.join("conda")]);
        // An interpreter outside any `bin` gives no prefix; relative entries are ignored.
        t.file("loose/python3");
        assert!(prefix(vec![t.0.join("loose"), PathBuf::from("venv/bin")]).is_empty());
    }

    #[test]
    fn a_system_environment_is_searched_in_the_system_position() {
        let search = SearchEnv {
            virtual_env: Some(PathBuf::from("/usr")),
            ..SearchEnv::default()
        };
        assert_eq!(data_paths(&search), system());
    }
}
