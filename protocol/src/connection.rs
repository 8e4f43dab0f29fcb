//! The Jupyter connection file.
//!
//! A kernel learns where to bind its five ZeroMQ sockets, and which key signs its messages,
//! from a small JSON document (jupyter_client's "connection file"). The launcher writes one
//! for the kernel it starts, and the same fields travel inside the Enterprise Gateway payload
//! (see [`crate::payload::LaunchReport`]). Real connection files carry fields this crate does
//! not name (`"jupyter_session"`, gateway_provisioners' `"curve_publickey"`, ...): they are kept
//! in [`ConnectionInfo::extra`] and written back unchanged, so a launcher never drops something
//! a newer peer relies on.
//!
//! Interop notes:
//! - `transport` and `signature_scheme` are optional on input, as in jupyter_client, and default
//!   to `"tcp"` and `"hmac-sha256"`.
//! - `kernel_name` is optional and usually `""`; Apache Toree sends `"Apache Toree Scala"`.
//! - An empty `key` is legal and means "messages are not signed".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Jupyter kernel connection file.
///
/// Unknown fields are kept in [`extra`](Self::extra) and written back by
/// [`to_json_pretty`](Self::to_json_pretty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Port of the shell ROUTER socket.
    pub shell_port: u16,
    /// Port of the IOPub PUB socket.
    pub iopub_port: u16,
    /// Port of the stdin ROUTER socket.
    pub stdin_port: u16,
    /// Port of the control ROUTER socket.
    pub control_port: u16,
    /// Port of the heartbeat REP socket.
    pub hb_port: u16,
    /// Address the kernel binds (the launcher reports `"0.0.0.0"`; EG overwrites it).
    pub ip: String,
    /// HMAC key, as text. Empty means unsigned.
    pub key: String,
    /// ZeroMQ transport, `"tcp"` or `"ipc"`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// Signature scheme; only `"hmac-sha256"` is in use.
    #[serde(default = "default_signature_scheme")]
    pub signature_scheme: String,
    /// Informational kernel name.
    #[serde(default)]
    pub kernel_name: String,
    /// Every other field, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_transport() -> String {
    "tcp".to_owned()
}

fn default_signature_scheme() -> String {
    "hmac-sha256".to_owned()
}

/// Why a connection file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The document is not valid JSON, is not an object, lacks a required field or has a field
    /// of the wrong type. The fault lies with whoever wrote the file.
    #[error("invalid connection file: {0}")]
    Json(String),
}

/// The names of the fields [`ConnectionInfo`] stores outside `extra`.
pub(crate) const NAMED_FIELDS: [&str; 10] = [
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "ip",
    "key",
    "transport",
    "signature_scheme",
    "kernel_name",
];

impl ConnectionInfo {
    /// Parses a connection file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConnectionError> {
        serde_json::from_slice(bytes).map_err(|e| ConnectionError::Json(e.to_string()))
    }

    /// Renders the connection file as indented JSON, keys in sorted order.
    ///
    /// A key in `extra` that has the same name as a named field is dropped: the named field
    /// wins, so the output never holds duplicate keys.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        let value = Value::Object(self.to_map());
        // Serializing a `Value` to a `Vec` cannot fail: every map key is a string and
        // `Value` numbers are always finite.
        serde_json::to_vec_pretty(&value).unwrap_or_default()
    }

    /// The connection file as a JSON object: `extra` first, then the named fields over it.
    pub(crate) fn to_map(&self) -> Map<String, Value> {
        let mut map = self.extra.clone();
        for name in NAMED_FIELDS {
            map.remove(name);
        }
        let ports = [
            ("shell_port", self.shell_port),
            ("iopub_port", self.iopub_port),
            ("stdin_port", self.stdin_port),
            ("control_port", self.control_port),
            ("hb_port", self.hb_port),
        ];
        for (name, port) in ports {
            map.insert(name.to_owned(), Value::from(port));
        }
        let texts = [
            ("ip", &self.ip),
            ("key", &self.key),
            ("transport", &self.transport),
            ("signature_scheme", &self.signature_scheme),
            ("kernel_name", &self.kernel_name),
        ];
        for (name, text) in texts {
            map.insert(name.to_owned(), Value::from(text.as_str()));
        }
        map
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const PYTHON_STYLE: &str = r#"{
  "shell_port": 53001,
  "iopub_port": 53002,
  "stdin_port": 53003,
  "control_port": 53004,
  "hb_port": 53005,
  "ip": "0.0.0.0",
  "key": "6a4c3b52-1d1e-4c55-9d0c-0b0e8a3f7d11",
  "transport": "tcp",
  "signature_scheme": "hmac-sha256",
  "kernel_name": "",
  "jupyter_session": "/tmp/x.ipynb",
  "nested": {"a": [1, 2.5, null, true]}
}"#;

    #[test]
    fn parses_a_jupyter_client_file_and_keeps_unknown_fields() {
        let info = ConnectionInfo::from_json(PYTHON_STYLE.as_bytes()).unwrap();
        assert_eq!(info.shell_port, 53001);
        assert_eq!(info.hb_port, 53005);
        assert_eq!(info.key, "6a4c3b52-1d1e-4c55-9d0c-0b0e8a3f7d11");
        assert_eq!(info.extra.len(), 2);
        assert_eq!(info.extra["jupyter_session"], "/tmp/x.ipynb");

        let again = ConnectionInfo::from_json(&info.to_json_pretty()).unwrap();
        assert_eq!(again, info);
    }

    #[test]
    fn optional_fields_get_jupyter_client_defaults() {
        let doc = r#"{"shell_port":1,"iopub_port":2,"stdin_port":3,"control_port":4,
                      "hb_port":5,"ip":"127.0.0.1","key":""}"#;
        let info = ConnectionInfo::from_json(doc.as_bytes()).unwrap();
        assert_eq!(info.transport, "tcp");
        assert_eq!(info.signature_scheme, "hmac-sha256");
        assert_eq!(info.kernel_name, "");
        assert!(info.extra.is_empty());
    }

    #[test]
    fn rejects_missing_and_mistyped_fields() {
        for doc in [
            "",
            "[]",
            "null",
            r#"{"shell_port":1}"#,
            r#"{"shell_port":"1","iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"ip":"","key":""}"#,
            r#"{"shell_port":70000,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"ip":"","key":""}"#,
            r#"{"shell_port":-1,"iopub_port":2,"stdin_port":3,"control_port":4,"hb_port":5,"ip":"","key":""}"#,
        ] {
            assert!(
                ConnectionInfo::from_json(doc.as_bytes()).is_err(),
                "accepted {doc:?}"
            );
        }
    }

    #[test]
    fn named_fields_win_over_colliding_extra_keys() {
        let mut info = ConnectionInfo::from_json(PYTHON_STYLE.as_bytes()).unwrap();
        info.extra.insert("shell_port".into(), Value::from(1));
        let text = String::from_utf8(info.to_json_pretty()).unwrap();
        assert_eq!(text.matches("\"shell_port\"").count(), 1);
        let again = ConnectionInfo::from_json(text.as_bytes()).unwrap();
        assert_eq!(again.shell_port, 53001);
        assert!(!again.extra.contains_key("shell_port"));
    }

    pub(crate) fn arb_json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ]
    }

    pub(crate) fn arb_connection_info() -> impl Strategy<Value = ConnectionInfo> {
        (
            any::<[u16; 5]>(),
            ".{0,20}",
            ".{0,40}",
            ".{0,8}",
            ".{0,12}",
            ".{0,20}",
            proptest::collection::btree_map("[a-z_]{1,12}", arb_json_leaf(), 0..5),
        )
            .prop_map(|(p, ip, key, transport, scheme, kernel_name, extra)| {
                let mut extra: Map<String, Value> = extra.into_iter().collect();
                for name in NAMED_FIELDS {
                    extra.remove(name);
                }
                ConnectionInfo {
                    shell_port: p[0],
                    iopub_port: p[1],
                    stdin_port: p[2],
                    control_port: p[3],
                    hb_port: p[4],
                    ip,
                    key,
                    transport,
                    signature_scheme: scheme,
                    kernel_name,
                    extra,
                }
            })
    }

    proptest! {
        #[test]
        fn json_round_trip_keeps_every_field(info in arb_connection_info()) {
            let again = ConnectionInfo::from_json(&info.to_json_pretty()).unwrap();
            prop_assert_eq!(again, info);
        }

        #[test]
        fn from_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ConnectionInfo::from_json(&bytes);
        }
    }
}
