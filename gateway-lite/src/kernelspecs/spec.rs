//! One kernelspec: its `kernel.json` read and checked, served as the REST model, and turned
//! into a launcher command line.
//!
//! A spec written for Enterprise Gateway (its argv holds `{response_address}`) is used as is,
//! placeholders filled as EG fills them; any other spec is wrapped in `kernel-launcher ... --`,
//! so every kernel reports its ports through the encrypted payload and gets a comm port. The
//! spec document itself is served unchanged (missing standard fields get Jupyter's defaults).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value, json};

use super::proxy::{Runner, classify};

/// Largest `kernel.json` read.
const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// One kernelspec.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// The spec's name (its directory name).
    pub name: String,
    /// Directory holding `kernel.json` and resources; `None` for the embedded spec.
    pub dir: Option<PathBuf>,
    /// The `kernel.json` document, with standard fields defaulted.
    pub spec: Map<String, Value>,
    /// `argv`, as strings.
    pub argv: Vec<String>,
    /// `env`, string values only.
    pub env: BTreeMap<String, String>,
    /// `interrupt_mode` is `"message"`.
    pub interrupt_by_message: bool,
    /// Where its kernels run: from `metadata.process_proxy.class_name` (Enterprise Gateway)
    /// or `metadata.kernel_provisioner.provisioner_name` (jupyter_client); picks the
    /// provisioner, or refuses the launch.
    pub runner: Runner,
    /// The `config` of the stanza that chose the runner (remote hosts, image name).
    pub proxy_config: Map<String, Value>,
    /// `metadata.supported_encryption` lists `"curve"` (gateway_provisioners' field): its
    /// launcher can be asked for CurveZMQ (`--transport-encryption`).
    pub supports_curve: bool,
}

/// Why a `kernel.json` was skipped.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Not readable, too large, or not JSON.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

impl KernelSpec {
    pub(super) fn from_json(
        name: &str,
        dir: Option<PathBuf>,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let Value::Object(mut spec) = value else {
            return Err("not a JSON object".into());
        };
        let argv: Vec<String> = match spec.get("argv") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or("argv holds a non-string")?,
            _ => return Err("argv is missing, empty or not an array".into()),
        };
        let env: BTreeMap<String, String> = match spec.get("env") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect::<Option<_>>()
                .ok_or("env holds a non-string value")?,
            Some(_) => return Err("env is not an object".into()),
        };
        spec.entry("display_name").or_insert_with(|| json!(name));
        spec.entry("language").or_insert_with(|| json!(""));
        spec.entry("env").or_insert_with(|| json!({}));
        spec.entry("metadata").or_insert_with(|| json!({}));
        spec.entry("interrupt_mode")
            .or_insert_with(|| json!("signal"));
        let interrupt_by_message = spec.get("interrupt_mode") == Some(&json!("message"));
        let (runner, proxy_config) = classify(spec.get("metadata"));
        let supports_curve = supports_curve(spec.get("metadata"));
        Ok(KernelSpec {
            name: name.to_owned(),
            dir,
            spec,
            argv,
            env,
            interrupt_by_message,
            runner,
            proxy_config,
            supports_curve,
        })
    }

    /// The embedded `python3` spec served unless a spec of that name is installed.
    pub fn embedded_python3() -> Self {
        let doc = br#"{
            "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "metadata": {"debugger": true}
        }"#;
        Self::from_json("python3", None, doc).expect("the embedded spec is valid")
    }

    /// Whether the argv already runs a launcher (it passes `{response_address}`).
    pub fn runs_launcher(&self) -> bool {
        self.argv.iter().any(|a| a.contains("{response_address}"))
    }

    /// Whether this spec's launches are authenticated: the launcher is `kernel-launcher`,
    /// which returns the per-launch secret in its payload and requires it on the comm port.
    /// That holds for a spec gateway-lite wraps, a spec whose argv runs `kernel-launcher`,
    /// and a Docker spec (the container's entrypoint is the launcher) unless its
    /// `metadata.process_proxy.config.launch_secret` is `false` (an image with Enterprise
    /// Gateway's own launcher). Any other launcher keeps Enterprise Gateway's
    /// unauthenticated behaviour.
    pub fn authenticated(&self, launcher: &Path) -> bool {
        if self.proxy_config.get("launch_secret") == Some(&Value::Bool(false)) {
            return false;
        }
        if matches!(self.runner, Runner::Docker | Runner::Swarm) {
            return true;
        }
        if !self.runs_launcher() {
            return true;
        }
        let program = Path::new(&self.argv[0]);
        program == launcher || program.file_name().is_some_and(|n| n == "kernel-launcher")
    }

    /// The command to run: the spec's argv with EG's placeholders filled, wrapped in
    /// `kernel-launcher ... --` unless the spec runs a launcher itself.
    pub fn command(&self, fill: &Placeholders<'_>, launcher: &Path) -> Vec<String> {
        if self.runs_launcher() {
            return self
                .argv
                .iter()
                .map(|a| fill.apply(a, self, true))
                .collect();
        }
        let mut argv = vec![
            launcher.to_string_lossy().into_owned(),
            "--kernel-id".into(),
            fill.kernel_id.into(),
            "--response-address".into(),
            fill.response_address.into(),
            "--public-key".into(),
            fill.public_key.into(),
            "--port-range".into(),
            fill.port_range.into(),
            "--".into(),
        ];
        // `{connection_file}` is left for the launcher, which fills in its own file.
        argv.extend(self.argv.iter().map(|a| fill.apply(a, self, false)));
        argv
    }

    /// The REST model: `{"name", "spec", "resources"}`.
    pub fn model(&self, base_url: &str) -> Value {
        let mut resources = Map::new();
        for file in self.resource_files() {
            let key = file
                .strip_suffix(".png")
                .or_else(|| file.strip_suffix(".svg"))
                .filter(|k| k.starts_with("logo-"))
                .unwrap_or(&file)
                .to_owned();
            resources.insert(
                key,
                json!(format!("{base_url}kernelspecs/{}/{file}", self.name)),
            );
        }
        json!({"name": self.name, "spec": self.spec, "resources": resources})
    }

    /// Resource files present in the spec directory (logos, kernel.js, kernel.css).
    fn resource_files(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|f| {
                (f.starts_with("logo-") && (f.ends_with(".png") || f.ends_with(".svg")))
                    || f == "kernel.js"
                    || f == "kernel.css"
            })
            .collect();
        files.sort();
        files
    }

    /// The file for `GET /kernelspecs/{name}/{resource}`: inside the spec directory, after
    /// resolving symlinks. `None` (404) for `..`, absolute paths, escapes and missing files.
    pub fn resource(&self, resource: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let rel = Path::new(resource);
        if resource.is_empty()
            || resource.contains('\\')
            || resource.contains('\0')
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let root = dir.canonicalize().ok()?;
        let path = root.join(rel).canonicalize().ok()?;
        (path.starts_with(&root) && path.is_file()).then_some(path)
    }
}

/// Values for EG's argv placeholders.
#[derive(Debug, Clone)]
pub struct Placeholders<'a> {
    /// `{kernel_id}`.
    pub kernel_id: &'a str,
    /// `{response_address}`, `HOST:PORT`.
    pub response_address: &'a str,
    /// `{public_key}`, EG's base64 SPKI form.
    pub public_key: &'a str,
    /// `{connection_file}` (for specs that run a launcher themselves).
    pub connection_file: &'a str,
    /// `{port_range}`, `L..U` (`0..0`: any).
    pub port_range: &'a str,
    /// `{transport_encryption}` (gateway_provisioners' form): `auto`, `required`, or empty
    /// when no CurveZMQ is asked for.
    pub transport_encryption: &'a str,
}

impl Placeholders<'_> {
    fn apply(&self, arg: &str, spec: &KernelSpec, fill_connection_file: bool) -> String {
        let resource_dir = spec
            .dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut out = arg
            .replace("{kernel_id}", self.kernel_id)
            .replace("{response_address}", self.response_address)
            .replace("{public_key}", self.public_key)
            .replace("{port_range}", self.port_range)
            .replace("{transport_encryption}", self.transport_encryption)
            .replace("{resource_dir}", &resource_dir);
        if fill_connection_file {
            out = out.replace("{connection_file}", self.connection_file);
        }
        out
    }
}

/// Whether `metadata.supported_encryption` (a list of strings, or one string) names `curve`.
fn supports_curve(metadata: Option<&Value>) -> bool {
    let is_curve = |v: &Value| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("curve"));
    match metadata.and_then(|m| m.get("supported_encryption")) {
        Some(Value::Array(items)) => items.iter().any(is_curve),
        Some(v) => is_curve(v),
        None => false,
    }
}

/// Reads `dir/kernel.json` as the spec `name`.
pub(super) fn read_spec(name: &str, dir: &Path) -> Result<KernelSpec, SpecError> {
    let file = dir.join("kernel.json");
    let invalid = |problem: String| SpecError::Invalid {
        path: file.display().to_string(),
        problem,
    };
    let len = std::fs::metadata(&file)
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if len > MAX_SPEC_BYTES {
        return Err(invalid(format!("larger than {MAX_SPEC_BYTES} bytes")));
    }
    let bytes = std::fs::read(&file).map_err(|e| invalid(e.to_string()))?;
    KernelSpec::from_json(name, Some(dir.to_path_buf()), &bytes).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill() -> Placeholders<'static> {
        Placeholders {
            kernel_id: "K",
            response_address: "127.0.0.1:9",
            public_key: "PK",
            connection_file: "/run/kernel-K.json",
            port_range: "0..0",
            transport_encryption: "",
        }
    }

    #[test]
    fn curve_support_and_placeholder() {
        let spec = |meta: &str| {
            let doc = format!(
                r#"{{"argv":["kl","--response-address","{{response_address}}","--transport-encryption","{{transport_encryption}}"],"metadata":{meta}}}"#
            );
            KernelSpec::from_json("x", None, doc.as_bytes()).unwrap()
        };
        assert!(spec(r#"{"supported_encryption":["curve"]}"#).supports_curve);
        assert!(spec(r#"{"supported_encryption":"CURVE"}"#).supports_curve);
        assert!(!spec(r#"{"supported_encryption":[]}"#).supports_curve);
        assert!(!spec(r#"{"supported_encryption":["tls"]}"#).supports_curve);
        assert!(!spec("{}").supports_curve);
        assert!(!KernelSpec::embedded_python3().supports_curve);
        let gp = spec(r#"{"supported_encryption":["curve"]}"#);
        let argv = gp.command(&fill(), Path::new("/bin/kl"));
        assert_eq!(argv[3..], ["--transport-encryption", ""]);
        let auto = Placeholders {
            transport_encryption: "auto",
            ..fill()
        };
        assert_eq!(gp.command(&auto, Path::new("/bin/kl"))[4], "auto");
    }

    #[test]
    fn plain_spec_is_wrapped() {
        let spec = KernelSpec::embedded_python3();
        assert!(!spec.runs_launcher());
        let argv = spec.command(&fill(), Path::new("/bin/kl"));
        assert_eq!(
            argv,
            [
                "/bin/kl",
                "--kernel-id",
                "K",
                "--response-address",
                "127.0.0.1:9",
                "--public-key",
                "PK",
                "--port-range",
                "0..0",
                "--",
                "python3",
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}"
            ]
        );
    }

    #[test]
    fn eg_spec_is_filled() {
        let doc = br#"{"argv":["kl","--RemoteProcessProxy.kernel-id","{kernel_id}",
            "--RemoteProcessProxy.response-address","{response_address}",
            "--RemoteProcessProxy.public-key","{public_key}",
            "--RemoteProcessProxy.port-range","{port_range}","--","py","-f","{connection_file}",
            "{resource_dir}/x"],"display_name":"x","language":"python"}"#;
        let spec = KernelSpec::from_json("x", Some("/specs/x".into()), doc).unwrap();
        assert!(spec.runs_launcher());
        let argv = spec.command(&fill(), Path::new("/bin/kl"));
        assert_eq!(
            argv,
            [
                "kl",
                "--RemoteProcessProxy.kernel-id",
                "K",
                "--RemoteProcessProxy.response-address",
                "127.0.0.1:9",
                "--RemoteProcessProxy.public-key",
                "PK",
                "--RemoteProcessProxy.port-range",
                "0..0",
                "--",
                "py",
                "-f",
                "/run/kernel-K.json",
                "/specs/x/x"
            ]
        );
        assert_eq!(spec.spec["interrupt_mode"], "signal");
    }

    #[test]
    fn which_specs_are_authenticated() {
        let kl = Path::new("/opt/bin/kernel-launcher");
        assert!(KernelSpec::embedded_python3().authenticated(kl), "wrapped");
        let spec = |argv: &str, meta: &str| {
            let doc = format!(r#"{{"argv":{argv},"metadata":{meta}}}"#);
            KernelSpec::from_json("x", None, doc.as_bytes()).unwrap()
        };
        let ours = spec(
            r#"["/usr/local/bin/kernel-launcher","{response_address}"]"#,
            "{}",
        );
        assert!(ours.authenticated(kl));
        let eg = spec(
            r#"["python","/k/launch_ipykernel.py","{response_address}"]"#,
            "{}",
        );
        assert!(!eg.authenticated(kl), "Enterprise Gateway's own launcher");
        let docker = r#"{"process_proxy":{"class_name":"enterprise_gateway.services.processproxies.docker_swarm.DockerProcessProxy"}}"#;
        assert!(
            spec(
                r#"["python","/k/launch_docker.py","{response_address}"]"#,
                docker
            )
            .authenticated(kl)
        );
        let eg_image = r#"{"process_proxy":{"class_name":"x.DockerProcessProxy","config":{"launch_secret":false}}}"#;
        assert!(!spec(r#"["python","{response_address}"]"#, eg_image).authenticated(kl));
    }

    #[test]
    fn bad_specs_are_rejected() {
        for doc in [
            &b"[]"[..],
            br#"{"argv":[]}"#,
            br#"{"argv":[1]}"#,
            br#"{"argv":["a"],"env":{"A":1}}"#,
        ] {
            assert!(KernelSpec::from_json("x", None, doc).is_err());
        }
    }

    #[test]
    fn resources_stay_inside_the_spec_dir() {
        let base = std::env::temp_dir().join(format!("gl-spec-{}", std::process::id()));
        let dir = base.join("kernels/k");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kernel.json"), br#"{"argv":["a"]}"#).unwrap();
        std::fs::write(dir.join("logo-64x64.png"), b"png").unwrap();
        std::fs::write(base.join("secret"), b"s").unwrap();
        let _ = std::os::unix::fs::symlink(base.join("secret"), dir.join("link"));
        let spec = read_spec("k", &dir).unwrap();
        assert!(spec.resource("logo-64x64.png").is_some());
        for bad in [
            "../secret",
            "/etc/passwd",
            "link",
            "",
            "a/../../secret",
            "nope",
        ] {
            assert!(spec.resource(bad).is_none(), "{bad}");
        }
        let model = spec.model("/");
        assert_eq!(
            model["resources"]["logo-64x64"],
            "/kernelspecs/k/logo-64x64.png"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
