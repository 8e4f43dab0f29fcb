//! The `env` of a kernel start request: which variables reach the kernel, and the checks
//! every value passes.
//!
//! A request's `KERNEL_*` variables end up in launcher command lines, shell scripts (the SSH
//! provisioner) and container environments, so each is checked before anything runs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::KernelError;

/// Longest value of a `KERNEL_*` variable.
pub const MAX_ENV_VALUE: usize = 4096;

/// Validates the request's `env`: `KERNEL_ID` and `KERNEL_LAUNCHER_*` are the gateway's
/// controls and are refused by name. `env` is an object; `KERNEL_*` values are strings of at most
/// [`MAX_ENV_VALUE`] characters without `$`, backquote, CR, LF or NUL (they end up in
/// command lines and shell scripts of launchers). Other names are ignored, as EG does
/// unless they are allow-listed.
pub fn kernel_env(env: Option<&Value>) -> Result<BTreeMap<String, String>, KernelError> {
    let mut out = BTreeMap::new();
    let obj = match env {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(o)) => o,
        Some(_) => {
            return Err(KernelError::BadEnv(
                "\"env\" must be a JSON object of strings".into(),
            ));
        }
    };
    for (k, v) in obj {
        if !k.starts_with("KERNEL_") {
            tracing::debug!("request env {k} ignored (only KERNEL_* is passed to kernels)");
            continue;
        }
        if k == "KERNEL_ID" || k.starts_with("KERNEL_LAUNCHER_") {
            return Err(KernelError::BadEnv(format!(
                "env {k} is set by the gateway, not by requests; remove it"
            )));
        }
        let Some(s) = v.as_str() else {
            return Err(KernelError::BadEnv(format!("env {k} must be a string")));
        };
        if s.chars().count() > MAX_ENV_VALUE {
            return Err(KernelError::BadEnv(format!(
                "env {k} is longer than {MAX_ENV_VALUE} characters"
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '$' | '`' | '\r' | '\n' | '\0'))
        {
            return Err(KernelError::BadEnv(format!(
                "env {k} contains the forbidden character {c:?}"
            )));
        }
        if k.len() > 256 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(KernelError::BadEnv(format!(
                "env name {k:?} is not a valid variable name"
            )));
        }
        out.insert(k.clone(), s.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_rules() {
        assert!(kernel_env(None).unwrap().is_empty());
        let ok = kernel_env(Some(
            &json!({"KERNEL_USERNAME": "a", "PATH": "x", "OTHER": 1}),
        ))
        .unwrap();
        assert_eq!(ok.len(), 1);
        for bad in [
            json!({"KERNEL_X": "a$b"}),
            json!({"KERNEL_X": "a`b"}),
            json!({"KERNEL_X": "a\nb"}),
            json!({"KERNEL_X": "a\rb"}),
            json!({"KERNEL_X": "a\u{0}b"}),
            json!({"KERNEL_X": 1}),
            json!({"KERNEL_X": "x".repeat(MAX_ENV_VALUE + 1)}),
            json!({"KERNEL_X-Y": "a"}),
            json!({"KERNEL_ID": "mine"}),
            json!({"KERNEL_LAUNCHER_IP": "0.0.0.0"}),
            json!({"KERNEL_LAUNCHER_GRACE_PERIOD": "3600"}),
            json!({"KERNEL_LAUNCHER_SECRET": "0123456789abcdef0123"}),
            json!([1]),
        ] {
            assert!(kernel_env(Some(&bad)).is_err(), "{bad}");
        }
        assert!(kernel_env(Some(&json!({"KERNEL_X": "x".repeat(MAX_ENV_VALUE)}))).is_ok());
    }
}
