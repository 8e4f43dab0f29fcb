//! Where a kernelspec goes and how it is written.
//!
//! The destination follows `jupyter kernelspec install`: `--prefix DIR` (default
//! `/usr/local`) means `DIR/share/jupyter/kernels/NAME`, `--user` the user's Jupyter data
//! directory, `--sys-prefix` the `sys.prefix` of the kernel's Python, `--dir` exactly that
//! directory. An existing `kernel.json` is kept unless `--replace` is given. Files are written
//! to a temporary name and renamed into place, `kernel.json` last, so a gateway scanning its
//! kernelspec directories never reads half a spec.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::KernelspecError;
use super::archive;
use super::options::{Destination, Options};
use super::render::{self, Content};

/// What was written.
#[derive(Debug)]
pub struct Installed {
    pub name: String,
    pub dir: PathBuf,
}

fn usage(option: &str, problem: impl Into<String>) -> KernelspecError {
    KernelspecError::Usage {
        option: option.to_owned(),
        problem: problem.into(),
    }
}

fn write_error(path: &Path, problem: impl std::fmt::Display) -> KernelspecError {
    KernelspecError::Write {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// The Jupyter data directory of the user, as jupyter_core finds it on Linux.
fn user_data_dir(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, KernelspecError> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(d) = set("JUPYTER_DATA_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = set("XDG_DATA_HOME") {
        return Ok(PathBuf::from(d).join("jupyter"));
    }
    match set("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/jupyter")),
        None => Err(usage(
            "--user",
            "neither JUPYTER_DATA_DIR, XDG_DATA_HOME nor HOME is set: give --prefix DIR or --dir DIR",
        )),
    }
}

/// `sys.prefix` of the kernel's Python (`--python`, default python3).
fn sys_prefix(o: &Options) -> Result<PathBuf, KernelspecError> {
    let python = o.interpreter.as_deref().unwrap_or("python3");
    let out = Command::new(python)
        .args(["-c", "import sys; sys.stdout.write(sys.prefix)"])
        .output()
        .map_err(|e| {
            usage(
                "--sys-prefix",
                format!("cannot run {python} to ask for sys.prefix ({e}): give --python PATH, or --prefix DIR"),
            )
        })?;
    let prefix = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || prefix.trim().is_empty() {
        return Err(usage(
            "--sys-prefix",
            format!(
                "{python} did not report sys.prefix ({}): give --python PATH, or --prefix DIR",
                out.status
            ),
        ));
    }
    Ok(PathBuf::from(prefix.trim_end_matches('\n')))
}

fn absolute(option: &str, p: &Path) -> Result<PathBuf, KernelspecError> {
    std::path::absolute(p).map_err(|e| usage(option, format!("{}: {e}", p.display())))
}

/// The directory the spec goes to.
fn spec_dir(
    o: &Options,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, KernelspecError> {
    let kernels = |data: PathBuf| data.join("kernels").join(name);
    Ok(match &o.destination {
        Destination::Dir(d) => absolute("--dir", d)?,
        Destination::Prefix(p) => kernels(absolute("--prefix", p)?.join("share/jupyter")),
        Destination::User => kernels(absolute("--user", &user_data_dir(env)?)?),
        Destination::SysPrefix => kernels(sys_prefix(o)?.join("share/jupyter")),
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
fn put(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KernelspecError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(path, e));
    }
    Ok(())
}

/// Renders and writes the kernelspec `o` asks for.
pub fn install(
    o: &Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Installed, KernelspecError> {
    let name = render::spec_name(o)?;
    let dir = spec_dir(o, &name, env)?;
    let launcher = match &o.launcher {
        Some(l) => l.clone(),
        None => std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(|e| {
                usage(
                    "--launcher",
                    format!("cannot tell this binary's path ({e}): give --launcher PATH"),
                )
            })?,
    };
    let launcher_s = launcher.to_string_lossy().into_owned();
    let spec = render::render(o, &dir, &launcher_s)?;
    let kernel_json = dir.join("kernel.json");
    if kernel_json.exists() && !o.replace {
        return Err(write_error(
            &kernel_json,
            "a kernelspec is already there: add --replace to overwrite it, or choose another --name",
        ));
    }
    for file in &spec.files {
        let bytes = match &file.content {
            Content::Text(t) => t.as_bytes().to_vec(),
            Content::LauncherArchive => {
                let binary = std::fs::read(&launcher).map_err(|e| {
                    usage(
                        "--launcher",
                        format!(
                            "--ship-launcher yes packs {launcher_s}, which cannot be read here ({e}): give the launcher's path, or --ship-launcher no"
                        ),
                    )
                })?;
                archive::tar_gz("kernel-launcher", 0o755, &binary)
            }
        };
        put(&dir.join(file.path), &bytes, file.mode)?;
    }
    if !spec
        .files
        .iter()
        .any(|f| f.path == render::LAUNCHER_ARCHIVE)
    {
        // A spec replaced with --ship-launcher no must not keep a stale archive.
        let _ = std::fs::remove_file(dir.join(render::LAUNCHER_ARCHIVE));
    }
    let mut text = serde_json::to_string_pretty(&spec.kernel_json)
        .map_err(|e| write_error(&kernel_json, e))?;
    text.push('\n');
    put(&kernel_json, text.as_bytes(), 0o644)?;
    Ok(Installed {
        name: spec.name,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernelspec::options::{Request, parse};

    fn opts(args: &[&str]) -> Options {
        let a: Vec<String> = std::iter::once("install")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        match parse(&a).unwrap() {
            Request::Install(o) => *o,
            Request::Help => panic!(),
        }
    }

    #[test]
    fn destinations() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        let o = opts(&["--prefix", "/opt/x"]);
        assert_eq!(
            spec_dir(&o, "n", &env).unwrap(),
            PathBuf::from("/opt/x/share/jupyter/kernels/n")
        );
        let o = opts(&["--user"]);
        assert_eq!(
            spec_dir(&o, "n", &env).unwrap(),
            PathBuf::from("/home/u/.local/share/jupyter/kernels/n")
        );
        let xdg = |k: &str| (k == "XDG_DATA_HOME").then(|| "/xdg".to_owned());
        assert_eq!(
            spec_dir(&o, "n", &xdg).unwrap(),
            PathBuf::from("/xdg/jupyter/kernels/n")
        );
        let jdd = |k: &str| (k == "JUPYTER_DATA_DIR").then(|| "/j".to_owned());
        assert_eq!(
            spec_dir(&o, "n", &jdd).unwrap(),
            PathBuf::from("/j/kernels/n")
        );
        let none = |_: &str| None;
        let e = spec_dir(&o, "n", &none).unwrap_err().to_string();
        assert!(e.contains("--user") && e.contains("--prefix"), "{e}");
        let o = opts(&["--dir", "rel/x"]);
        let d = spec_dir(&o, "n", &env).unwrap();
        assert!(d.is_absolute() && d.ends_with("rel/x"), "{}", d.display());
        let o = opts(&["--sys-prefix", "--python", "/nonexistent/python"]);
        let e = spec_dir(&o, "n", &env).unwrap_err().to_string();
        assert!(e.contains("--sys-prefix") && e.contains("--python"), "{e}");
    }

    #[test]
    fn writes_files_refuses_to_overwrite_and_replaces() {
        let dir = std::env::temp_dir().join(format!("kl-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.to_string_lossy().into_owned();
        let env = |_: &str| None;
        let o = opts(&[
            "--mode",
            "spark-yarn-cluster",
            "--spark-home",
            "/opt/spark",
            "--dir",
            &d,
        ]);
        let done = install(&o, &env).unwrap();
        assert_eq!(done.dir, dir);
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("bin/run.sh"), 0o755);
        assert_eq!(mode("kernel.json"), 0o644);
        assert!(dir.join(render::LAUNCHER_ARCHIVE).is_file());
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("kernel.json")).unwrap()).unwrap();
        assert_eq!(spec["argv"][0], format!("{d}/bin/run.sh"));
        assert_eq!(
            std::fs::read_to_string(dir.join("bin/run.sh")).unwrap(),
            render::SPARK_RUN_SH
        );

        let e = install(&o, &env).unwrap_err();
        assert_eq!(e.exit_code(), crate::kernelspec::EXIT_CANTCREAT);
        assert!(e.to_string().contains("--replace"), "{e}");

        let o = opts(&[
            "--mode",
            "spark-yarn-cluster",
            "--spark-home",
            "/opt/spark",
            "--dir",
            &d,
            "--replace",
            "--ship-launcher",
            "no",
        ]);
        install(&o, &env).unwrap();
        assert!(
            !dir.join(render::LAUNCHER_ARCHIVE).exists(),
            "stale archive removed"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        let o = opts(&[
            "--mode",
            "spark-yarn-cluster",
            "--spark-home",
            "/s",
            "--dir",
            &d,
            "--replace",
            "--launcher",
            "/nonexistent/kl",
        ]);
        let e = install(&o, &env).unwrap_err();
        assert_eq!(e.exit_code(), crate::kernelspec::EXIT_USAGE);
        assert!(e.to_string().contains("--ship-launcher no"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
