//! The kernel's own command line.
//!
//! EG needs a separate launcher per language because each one *is* the kernel
//! (ipykernel in-process, IRkernel behind a Python helper). This launcher wraps
//! any kernel instead: whatever follows `--` is run with `{connection_file}`
//! replaced, so a kernelspec's usual argv moves behind `kernel-launcher ... --`
//! unchanged. Without `--`, the language picks a default command.
//!
//! Interop quirk: the gateway formats the whole kernelspec argv before it runs
//! the launcher, and jupyter_client's `format_kernel_cmd` fills
//! `{connection_file}` with the *gateway's* path (`<runtime dir>/kernel-<id>.json`),
//! a file the gateway wrote with its own ports and key, or that does not even
//! exist on this host. So an argument naming `kernel-<kernel id>.json` is
//! treated as the placeholder too, and the kernel gets the launcher's file.

use std::path::Path;

/// The resolved kernel argv, still holding the `{connection_file}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCommand {
    argv: Vec<String>,
    /// True when the argv came from the language default rather than `--`.
    pub is_default: bool,
    /// Set when a given kernel class could not be applied to a custom argv.
    ignored_class: Option<String>,
}

const PLACEHOLDER: &str = "{connection_file}";

fn runs_ipykernel(argv: &[String]) -> bool {
    argv.iter().any(|a| a.contains("ipykernel"))
}

impl KernelCommand {
    /// Picks the kernel argv: the explicit one, or the default for `language`.
    ///
    /// The error text says what to pass instead.
    pub fn resolve(
        explicit: Option<Vec<String>>,
        language: Option<&str>,
        interpreter: Option<&str>,
        kernel_class: Option<&str>,
    ) -> Result<Self, String> {
        if let Some(argv) = explicit {
            if argv.is_empty() {
                return Err(
                    "`--` is followed by nothing; give the kernel argv, e.g. `-- python3 -m ipykernel_launcher -f {connection_file}`, or drop `--` to use the language default"
                        .to_string(),
                );
            }
            // An ipykernel argv takes the class as an IPKernelApp option; any
            // other kernel cannot use it (warned about once).
            let mut argv = argv;
            let mut ignored_class = None;
            if let Some(class) = kernel_class {
                if runs_ipykernel(&argv) {
                    argv.push(format!("--IPKernelApp.kernel_class={class}"));
                } else {
                    ignored_class = Some(class.to_string());
                }
            }
            return Ok(KernelCommand {
                argv,
                is_default: false,
                ignored_class,
            });
        }
        let lang = language.unwrap_or("python").trim().to_ascii_lowercase();
        let argv: Vec<String> = match lang.as_str() {
            "python" | "python3" => {
                let mut v = vec![
                    interpreter.unwrap_or("python3").to_string(),
                    "-m".into(),
                    "ipykernel_launcher".into(),
                    "-f".into(),
                    PLACEHOLDER.into(),
                ];
                if let Some(class) = kernel_class {
                    v.push(format!("--IPKernelApp.kernel_class={class}"));
                }
                v
            }
            "r" => vec![
                interpreter.unwrap_or("R").to_string(),
                "--slave".into(),
                "-e".into(),
                "IRkernel::main()".into(),
                "--args".into(),
                PLACEHOLDER.into(),
            ],
            // Apache Toree, started the way its own bin/run.sh does (spark-submit --class
            // org.apache.toree.Main ASSEMBLY --profile FILE): INTERPRETER is that script, by
            // default `toree` on PATH (the scala-kernel image has one).
            "scala" => vec![
                interpreter.unwrap_or("toree").to_string(),
                "--profile".into(),
                PLACEHOLDER.into(),
            ],
            other => {
                return Err(format!(
                    "no default kernel command for language `{other}` (defaults exist for python, r and scala); give the kernel argv after `--`, with {PLACEHOLDER} where the connection file goes"
                ));
            }
        };
        Ok(KernelCommand {
            argv,
            is_default: true,
            ignored_class: None,
        })
    }

    /// Whether the argv runs ipykernel (the default for Python, or an explicit argv naming
    /// it), whose start-up is not safe to interrupt (see `supervise`).
    pub fn runs_ipykernel(&self) -> bool {
        runs_ipykernel(&self.argv)
    }

    /// Warnings about the command worth logging once.
    pub fn warnings(&self, kernel_id: &str) -> Vec<String> {
        let mut w = Vec::new();
        let gateway_file = gateway_file_name(kernel_id);
        if !self
            .argv
            .iter()
            .any(|a| a.contains(PLACEHOLDER) || a.ends_with(&gateway_file))
        {
            w.push(format!(
                "the kernel argv has no {PLACEHOLDER}; the kernel will not learn its ports unless it finds the file another way"
            ));
        }
        if let Some(class) = &self.ignored_class {
            w.push(format!(
                "--kernel-class-name {class} applies to ipykernel only; this kernel argv does not run ipykernel, so it is ignored"
            ));
        }
        w
    }

    /// The argv with every `{connection_file}`, and every path the gateway
    /// substituted for it (one ending in `kernel-<kernel_id>.json`), replaced by `path`.
    pub fn argv_for(&self, path: &Path, kernel_id: &str) -> Vec<String> {
        let p = path.to_string_lossy();
        let gateway_file = gateway_file_name(kernel_id);
        self.argv
            .iter()
            .map(|a| {
                if a.ends_with(&gateway_file) && a.as_str() != p {
                    log::info!("the gateway filled {PLACEHOLDER} with `{a}`; the kernel gets the launcher's file `{p}`");
                    // `--opt=/path/kernel-<id>.json` or a bare path.
                    match a.split_once('=') {
                        Some((opt, _)) if opt.starts_with('-') => format!("{opt}={p}"),
                        _ => p.to_string(),
                    }
                } else {
                    a.replace(PLACEHOLDER, &p)
                }
            })
            .collect()
    }
}

fn gateway_file_name(kernel_id: &str) -> String {
    format!("kernel-{kernel_id}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_argv_is_substituted() {
        let c = KernelCommand::resolve(
            Some(vec![
                "julia".into(),
                "-i".into(),
                "--conn={connection_file}".into(),
            ]),
            Some("julia"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            c.argv_for(Path::new("/tmp/k.json"), "id"),
            ["julia", "-i", "--conn=/tmp/k.json"]
        );
        assert!(c.warnings("id").is_empty());
    }

    #[test]
    fn defaults_per_language() {
        let py = KernelCommand::resolve(None, None, Some("/venv/bin/python"), Some("my.Kernel"))
            .unwrap();
        assert_eq!(
            py.argv_for(Path::new("c.json"), "id"),
            [
                "/venv/bin/python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "c.json",
                "--IPKernelApp.kernel_class=my.Kernel"
            ]
        );
        let r = KernelCommand::resolve(None, Some("R"), None, None).unwrap();
        assert_eq!(r.argv_for(Path::new("c.json"), "id")[0], "R");
        let scala = KernelCommand::resolve(None, Some("Scala"), None, None).unwrap();
        assert_eq!(
            scala.argv_for(Path::new("c.json"), "id"),
            ["toree", "--profile", "c.json"]
        );
        let e = KernelCommand::resolve(None, Some("julia"), None, None).unwrap_err();
        assert!(e.contains("after `--`"));
        assert!(KernelCommand::resolve(Some(vec![]), None, None, None).is_err());
    }

    #[test]
    fn kernel_class_applies_to_an_ipykernel_argv() {
        let c = KernelCommand::resolve(
            Some(vec![
                "py".into(),
                "-m".into(),
                "ipykernel_launcher".into(),
                "-f".into(),
                "{connection_file}".into(),
            ]),
            None,
            None,
            Some("my.Kernel"),
        )
        .unwrap();
        assert!(c.warnings("id").is_empty());
        assert_eq!(
            c.argv_for(Path::new("c.json"), "id").last().unwrap(),
            "--IPKernelApp.kernel_class=my.Kernel"
        );
    }

    #[test]
    fn missing_placeholder_warns() {
        let c = KernelCommand::resolve(
            Some(vec!["sleep".into(), "9".into()]),
            None,
            None,
            Some("x.Y"),
        )
        .unwrap();
        assert_eq!(c.warnings("id").len(), 2);
    }

    #[test]
    fn gateway_substituted_connection_file_is_replaced() {
        let argv = [
            "python",
            "-m",
            "ipykernel_launcher",
            "-f",
            "/gw/runtime/kernel-abc.json",
            "--x=/gw/kernel-abc.json",
            "/gw/other.json",
        ];
        let c = KernelCommand::resolve(
            Some(argv.iter().map(|s| s.to_string()).collect()),
            None,
            None,
            None,
        )
        .unwrap();
        assert!(c.warnings("abc").is_empty());
        assert_eq!(
            c.argv_for(Path::new("/tmp/kernel-abc.json"), "abc"),
            [
                "python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "/tmp/kernel-abc.json",
                "--x=/tmp/kernel-abc.json",
                "/gw/other.json"
            ]
        );
    }
}
