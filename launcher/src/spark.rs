//! Spark context initialization (`--spark-context-initialization-mode`) for
//! the kernel the launcher starts.
//!
//! EG's Python launcher builds the SparkSession inside its own process and
//! treats `lazy` and `eager` alike; on pyspark ≥ 3.4 its thread fails on
//! `spark._wrapped`, so the names stay placeholders that raise (EG issue
//! 1392). Here the launcher is not the kernel, so the code has to reach the
//! kernel another way. A second ZMQ client racing the user is unreliable: the
//! kernel's ROUTER socket fair-queues between clients, so the user's first
//! cell can run before the launcher's request (measured: 3 of 6 runs), and a
//! blocking launcher request holds up a frontend's `kernel_info_request`.
//! `--IPKernelApp.exec_files` runs a file inside the kernel before it serves
//! requests, reliably. So for ipykernel the launcher writes `spark_prewarm.py`
//! (embedded in the binary) next to the connection file and adds that option;
//! the file starts the session on a side thread and defines the names. Toree
//! gets the mode in the form its own launcher passes (`--nosparkcontext` for
//! `none`). Any other kernel gets the mode in `KERNEL_LAUNCHER_SPARK_INIT` and
//! handles it itself.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::command::KernelCommand;
use crate::config::SparkMode;

/// The in-kernel half, run by ipykernel.
const PREWARM_PY: &str = include_str!("spark_prewarm.py");

/// Which launcher convention a kernel argv follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelKind {
    IPyKernel,
    Toree,
    Other,
}

fn kind_of(argv: &[String]) -> KernelKind {
    let any = |needle: &str| argv.iter().any(|a| a.contains(needle));
    if any("ipykernel") {
        KernelKind::IPyKernel
    } else if any("toree") {
        KernelKind::Toree
    } else {
        KernelKind::Other
    }
}

impl SparkMode {
    fn as_str(self) -> &'static str {
        match self {
            SparkMode::None => "none",
            SparkMode::Lazy => "lazy",
            SparkMode::Eager => "eager",
        }
    }
}

/// What Spark initialization adds to the kernel: arguments, environment and
/// a file to remove at exit.
#[derive(Debug, Default)]
pub struct SparkSetup {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    file: Option<PathBuf>,
}

impl SparkSetup {
    /// Prepares the kernel for `mode`; `connection_file` decides where the
    /// pre-warm file goes, `app_name` names the application outside spark-submit.
    pub fn prepare(
        mode: SparkMode,
        cluster_type: &str,
        kernel: &KernelCommand,
        connection_file: &Path,
        app_name: &str,
    ) -> io::Result<SparkSetup> {
        let mut setup = SparkSetup::default();
        if cluster_type != "spark" {
            if mode != SparkMode::None {
                log::info!(
                    "cluster type {cluster_type}: Spark initialization mode {} is not applied",
                    mode.as_str()
                );
            }
            return Ok(setup);
        }
        let kind = kind_of(&kernel.argv_for(connection_file, ""));
        if kind == KernelKind::Toree {
            // Toree's launcher convention (EG ToreeLauncher): `none` disables the context.
            setup.args = match mode {
                SparkMode::None => vec!["--nosparkcontext".into()],
                other => vec![
                    "--spark-context-initialization-mode".into(),
                    other.as_str().into(),
                ],
            };
            return Ok(setup);
        }
        if mode == SparkMode::None {
            return Ok(setup);
        }
        setup.env = vec![
            ("KERNEL_LAUNCHER_SPARK_INIT".into(), mode.as_str().into()),
            ("KERNEL_LAUNCHER_SPARK_APP_NAME".into(), app_name.into()),
        ];
        match kind {
            KernelKind::IPyKernel => {
                let file = prewarm_path(connection_file);
                write_private(&file, PREWARM_PY)?;
                setup.args = vec![format!("--IPKernelApp.exec_files={}", file.display())];
                setup.file = Some(file);
                log::info!(
                    "Spark {} initialization: pre-warm runs inside the kernel",
                    mode.as_str()
                );
            }
            _ => log::warn!(
                "Spark {} initialization is built in for ipykernel and Toree only; this kernel gets KERNEL_LAUNCHER_SPARK_INIT={} and must start Spark itself",
                mode.as_str(),
                mode.as_str()
            ),
        }
        Ok(setup)
    }

    /// Removes the pre-warm file, if one was written.
    pub fn remove(&self) {
        if let Some(f) = &self.file {
            let _ = fs::remove_file(f);
        }
    }
}

fn prewarm_path(connection_file: &Path) -> PathBuf {
    let stem = connection_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".into());
    connection_file.with_file_name(format!("{stem}-spark.py"))
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(argv: &[&str]) -> KernelCommand {
        KernelCommand::resolve(
            Some(argv.iter().map(|s| s.to_string()).collect()),
            None,
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn ipykernel_gets_exec_files_and_env() {
        let dir = std::env::temp_dir().join(format!("kl-spark-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let conn = dir.join("kernel-abc.json");
        let k = kernel(&[
            "python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ]);
        let s = SparkSetup::prepare(SparkMode::Lazy, "spark", &k, &conn, "abc").unwrap();
        let file = dir.join("kernel-abc-spark.py");
        assert_eq!(
            s.args,
            [format!("--IPKernelApp.exec_files={}", file.display())]
        );
        assert!(
            fs::read_to_string(&file)
                .unwrap()
                .contains("_kernel_launcher_spark()")
        );
        assert!(
            s.env
                .contains(&("KERNEL_LAUNCHER_SPARK_INIT".into(), "lazy".into()))
        );
        s.remove();
        assert!(!file.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn none_and_other_cluster_types_add_nothing() {
        let k = kernel(&["python", "-m", "ipykernel_launcher"]);
        let conn = Path::new("/nonexistent/k.json");
        assert!(
            SparkSetup::prepare(SparkMode::None, "spark", &k, conn, "a")
                .unwrap()
                .args
                .is_empty()
        );
        assert!(
            SparkSetup::prepare(SparkMode::Eager, "dask", &k, conn, "a")
                .unwrap()
                .args
                .is_empty()
        );
    }

    #[test]
    fn toree_gets_its_own_flags() {
        let k = kernel(&["java", "-cp", "toree-assembly.jar", "org.apache.toree.Main"]);
        let conn = Path::new("/nonexistent/k.json");
        let none = SparkSetup::prepare(SparkMode::None, "spark", &k, conn, "a").unwrap();
        assert_eq!(none.args, ["--nosparkcontext"]);
        let eager = SparkSetup::prepare(SparkMode::Eager, "spark", &k, conn, "a").unwrap();
        assert_eq!(eager.args, ["--spark-context-initialization-mode", "eager"]);
    }
}
