//! The gateway's own log on stderr, as text lines or as JSON objects (`--log-format`).
//!
//! Service managers and log shippers want one record per line that a program can read:
//! with `json`, each event is one object whose fields sit at the top level next to
//! `timestamp`, `level`, `target` and `message` (`jq 'select(.target == "gateway_lite::access") | .path'`).
//! With `text`, the default, each event is one line for people; string fields are quoted and
//! escaped there, so a value sent by a client cannot start a line of its own. Either way the
//! level filter is `GATEWAY_LITE_LOG` (tracing's `EnvFilter` syntax, default `info`): it is
//! read here, as the one variable the gateway's configuration does not own, since it must
//! work before anything else runs.
//!
//! The CurveZMQ sockets' library (`rzmq`) logs routine socket life (a connecter task ending,
//! message counts at close) at warn and info; unless the filter names `rzmq` itself, only its
//! errors are shown.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// The variable holding the log filter.
pub const FILTER_VAR: &str = "GATEWAY_LITE_LOG";

/// The subscriber for `format`, filtered by `filter`, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Installs the process's subscriber: `format` on stderr, filtered by `GATEWAY_LITE_LOG`.
pub fn init(format: LogFormat) -> Result<(), tracing::subscriber::SetGlobalDefaultError> {
    let text = std::env::var(FILTER_VAR).unwrap_or_default();
    let filter = EnvFilter::try_new(filter_text(&text))
        .unwrap_or_else(|_| EnvFilter::new(filter_text("info")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr, ansi))
}

/// `text` (default `info`), with `rzmq=error` added unless it names `rzmq`.
fn filter_text(text: &str) -> String {
    let text = if text.trim().is_empty() { "info" } else { text };
    if text.contains("rzmq") {
        text.to_owned()
    } else {
        format!("{text},rzmq=error")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rzmq_is_quiet_unless_named() {
        assert_eq!(filter_text(""), "info,rzmq=error");
        assert_eq!(filter_text("debug"), "debug,rzmq=error");
        assert_eq!(filter_text("info,rzmq=debug"), "info,rzmq=debug");
        assert!(EnvFilter::try_new(filter_text("info,gateway_lite=debug")).is_ok());
    }

    fn logged(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let sub = subscriber(
            format,
            EnvFilter::new("info"),
            move || writer.clone(),
            false,
        );
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                target: "gateway_lite::access",
                method = "GET",
                path = "/api\n2000-01-01 INFO forged",
                status = 200u16,
                "request"
            );
            tracing::debug!("filtered out");
        });
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_is_one_flat_object_per_line() {
        let out = logged(LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["target"], "gateway_lite::access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/api\n2000-01-01 INFO forged");
    }

    #[test]
    fn text_escapes_string_fields() {
        let out = logged(LogFormat::Text);
        assert_eq!(
            out.lines().count(),
            1,
            "a newline in a value is escaped: {out}"
        );
        assert!(
            out.contains(r#"path="/api\n2000-01-01 INFO forged""#),
            "{out}"
        );
    }
}
