//! The kernel's own command line.
//!
//! EG needs a separate launcher per language because each one *is* the kernel
//! (ipykernel in-process, IRkernel behind a Python helper). This launcher wraps
//! any kernel instead: whatever follows `--` is run with `{connection_file}`
//! replaced, so a kernelspec's usual argv moves behind `kernel-launcher ... --`
//! unchanged. Without `--`, the language picks a default command.

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
            return Ok(KernelCommand {
                argv,
                is_default: false,
                ignored_class: kernel_class.map(str::to_string),
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
            other => {
                return Err(format!(
                    "no default kernel command for language `{other}` (defaults exist for python and r); give the kernel argv after `--`, with {PLACEHOLDER} where the connection file goes"
                ));
            }
        };
        Ok(KernelCommand {
            argv,
            is_default: true,
            ignored_class: None,
        })
    }

    /// Warnings about the command worth logging once.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.argv.iter().any(|a| a.contains(PLACEHOLDER)) {
            w.push(format!(
                "the kernel argv has no {PLACEHOLDER}; the kernel will not learn its ports unless it finds the file another way"
            ));
        }
        if let Some(class) = &self.ignored_class {
            w.push(format!(
                "--kernel-class-name {class} only applies to the default python command; pass --IPKernelApp.kernel_class in your argv instead"
            ));
        }
        w
    }

    /// The argv with every `{connection_file}` replaced by `path`.
    pub fn argv_for(&self, path: &Path) -> Vec<String> {
        let p = path.to_string_lossy();
        self.argv
            .iter()
            .map(|a| a.replace(PLACEHOLDER, &p))
            .collect()
    }
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
            c.argv_for(Path::new("/tmp/k.json")),
            ["julia", "-i", "--conn=/tmp/k.json"]
        );
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn defaults_per_language() {
        let py = KernelCommand::resolve(None, None, Some("/venv/bin/python"), Some("my.Kernel"))
            .unwrap();
        assert_eq!(
            py.argv_for(Path::new("c.json")),
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
        assert_eq!(r.argv_for(Path::new("c.json"))[0], "R");
        let e = KernelCommand::resolve(None, Some("scala"), None, None).unwrap_err();
        assert!(e.contains("after `--`"));
        assert!(KernelCommand::resolve(Some(vec![]), None, None, None).is_err());
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
        assert_eq!(c.warnings().len(), 2);
    }
}
