//! Transport encryption of one launch: whether the launcher is asked for CurveZMQ, and what
//! its payload's answer means.
//!
//! `--transport-encryption` is gateway-lite's policy; a kernelspec opts in by listing `"curve"`
//! in `metadata.supported_encryption` (gateway_provisioners 0.5's field). For such a spec under
//! `auto` or `required` the launcher gets `TRANSPORT_ENCRYPTION=<policy>` in its environment
//! (every provisioner passes the launch environment on: a local child's, the remote `env`
//! of an SSH launch, a container's) and `{transport_encryption}` in its argv when the spec has
//! that placeholder. The launcher makes a key pair, puts it in the kernel's connection file,
//! and reports `curve_publickey` and `curve_secretkey` only when the kernel bound its sockets
//! as CURVE servers. The public key becomes the server key of every socket to the kernel; the
//! secret key is the kernel's and is dropped from the connection info as soon as the payload is
//! read, so it reaches neither memory that outlives the launch, nor the state file, nor a log.

use protocol::connection::ConnectionInfo;
use protocol::z85;

use super::error::KernelError;
use crate::config::TransportEncryption;
use crate::kernelspecs::KernelSpec;

/// Payload field of the kernel's public key.
const PUBLIC_FIELD: &str = "curve_publickey";
/// Payload field of the kernel's secret key (never kept).
const SECRET_FIELD: &str = "curve_secretkey";

/// What a launch of `spec` asks the launcher for under `policy`: `None` for clear text.
/// `required` with a spec that cannot do CurveZMQ is refused before anything starts.
pub(super) fn ask(
    policy: TransportEncryption,
    spec: &KernelSpec,
) -> Result<Option<TransportEncryption>, KernelError> {
    match policy {
        TransportEncryption::None => Ok(None),
        _ if spec.supports_curve => Ok(Some(policy)),
        TransportEncryption::Auto => Ok(None),
        TransportEncryption::Required => Err(KernelError::EncryptionUnsupported {
            spec: spec.name.clone(),
        }),
    }
}

/// Takes the CurveZMQ keys out of a payload's connection info and returns the kernel's public
/// key, raw, when there is one. The secret key is removed unread.
///
/// No keys: clear text, unless `asked` was `required` (the kernel could not do CurveZMQ; the
/// launcher has stopped it). Keys that were not asked for are used anyway, with a warning: a
/// kernel bound as a CURVE server cannot be reached in clear text.
pub(super) fn server_key(
    kernel_id: &str,
    asked: Option<TransportEncryption>,
    info: &mut ConnectionInfo,
) -> Result<Option<[u8; z85::KEY_LEN]>, KernelError> {
    info.extra.remove(SECRET_FIELD);
    let public = info.extra.remove(PUBLIC_FIELD);
    let fail = |message: String| KernelError::Launch {
        kernel_id: kernel_id.to_owned(),
        message,
    };
    let text = match public {
        None | Some(serde_json::Value::Null) => {
            return match asked {
                Some(TransportEncryption::Required) => Err(fail(
                    "--transport-encryption is required, but the kernel did not bind its channels with CurveZMQ (its payload has no curve_publickey): the kernel needs ipykernel >= 7.3; nothing was left running".into(),
                )),
                Some(_) => {
                    tracing::warn!(
                        kernel_id,
                        "the kernel cannot do CurveZMQ (ipykernel >= 7.3 can); its channels run in clear text (--transport-encryption auto)"
                    );
                    Ok(None)
                }
                None => Ok(None),
            };
        }
        Some(serde_json::Value::String(s)) => s,
        Some(other) => {
            return Err(fail(format!(
                "the payload's curve_publickey is not a string but {}; refused",
                json_kind(&other)
            )));
        }
    };
    let key = z85::decode_key(&text).map_err(|e| {
        fail(format!(
            "the payload's curve_publickey is not a Z85 CurveZMQ key ({e}); refused"
        ))
    })?;
    if asked.is_none() {
        tracing::warn!(
            kernel_id,
            "the launcher reported CurveZMQ keys though none were asked for; connecting over CurveZMQ"
        );
    }
    Ok(Some(key))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(curve: bool) -> KernelSpec {
        let mut spec = KernelSpec::embedded_python3();
        spec.name = "s".into();
        spec.supports_curve = curve;
        spec
    }

    #[test]
    fn what_is_asked() {
        use TransportEncryption::{Auto, None as Off, Required};
        assert_eq!(ask(Off, &spec(true)).unwrap(), None);
        assert_eq!(ask(Auto, &spec(true)).unwrap(), Some(Auto));
        assert_eq!(ask(Required, &spec(true)).unwrap(), Some(Required));
        assert_eq!(ask(Auto, &spec(false)).unwrap(), None);
        assert_eq!(ask(Off, &spec(false)).unwrap(), None);
        let e = ask(Required, &spec(false)).unwrap_err().to_string();
        assert!(
            e.contains("Kernelspec s") && e.contains("--transport-encryption"),
            "{e}"
        );
    }

    fn info(extra: serde_json::Value) -> ConnectionInfo {
        let mut v = json!({"shell_port": 1, "iopub_port": 2, "stdin_port": 3,
            "control_port": 4, "hb_port": 5, "key": "k", "ip": "127.0.0.1"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn payload_keys() {
        use TransportEncryption::{Auto, Required};
        let public = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
        let mut i = info(
            json!({"curve_publickey": public, "curve_secretkey": "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6", "other": 1}),
        );
        let key = server_key("k1", Some(Auto), &mut i).unwrap().unwrap();
        assert_eq!(z85::encode_key(&key), public);
        assert!(!i.extra.contains_key("curve_secretkey"));
        assert!(!i.extra.contains_key("curve_publickey"));
        assert_eq!(i.extra["other"], 1);

        let mut clear = info(json!({}));
        assert_eq!(server_key("k1", Some(Auto), &mut clear).unwrap(), None);
        assert_eq!(server_key("k1", None, &mut clear).unwrap(), None);
        let e = server_key("k1", Some(Required), &mut clear)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k1") && e.contains("required"), "{e}");

        for bad in [json!("short"), json!(7), json!("~".repeat(40))] {
            let mut i = info(json!({"curve_publickey": bad, "curve_secretkey": "x"}));
            let e = server_key("k1", Some(Auto), &mut i)
                .unwrap_err()
                .to_string();
            assert!(e.contains("curve_publickey"), "{e}");
            assert!(!i.extra.contains_key("curve_secretkey"));
        }
    }
}
