//! The kernel's WebSocket (`/api/kernels/{id}/channels`): Jupyter messages out, and the
//! kernel's messages in, decoded.
//!
//! The legacy framing is used (JSON text frames; binary frames when a message carries
//! buffers), because every gateway speaks it: Enterprise Gateway 3.3.0, gateway-lite, and
//! Jupyter Server's own gateway client uses nothing else. Binary frames are decoded with the
//! `protocol` crate's framing code, the same the gateway uses on its side; their buffers are
//! dropped (they belong to widgets' comms, which a batch run has no use for). Incoming
//! frames are bounded by [`MAX_MESSAGE_BYTES`].

use futures_util::{SinkExt, StreamExt};
use protocol::wsframe::{self, Framing};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::http::{Gateway, HttpError, Stream};

/// Largest message accepted from the gateway (a big image or dataframe fits).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The Jupyter messaging protocol version the client speaks.
const PROTOCOL_VERSION: &str = "5.3";

/// What went wrong on the WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// No connection.
    #[error(transparent)]
    Connect(#[from] HttpError),
    /// The WebSocket handshake or a later exchange failed.
    #[error("kernel WebSocket: {0}")]
    Socket(String),
    /// The gateway closed the WebSocket.
    #[error("the gateway closed the kernel's WebSocket{0}")]
    Closed(String),
}

/// A message from the kernel.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// `shell`, `iopub`, `stdin`, `control`.
    pub channel: String,
    /// `header.msg_type`.
    pub msg_type: String,
    /// `parent_header.msg_id`, if any.
    pub parent_id: Option<String>,
    /// `header.date`, verbatim (nbclient records these in the cell's execution metadata).
    pub date: Option<String>,
    /// `content`.
    pub content: Value,
}

/// An open WebSocket to one kernel.
pub struct KernelChannel {
    ws: WebSocketStream<Stream>,
    session: String,
}

impl KernelChannel {
    /// Opens the WebSocket of kernel `id`.
    pub async fn open(gw: &Gateway, id: &str) -> Result<KernelChannel, ChannelError> {
        let session = uuid::Uuid::new_v4().to_string();
        let url = gw.ws_url(&format!("api/kernels/{id}/channels?session_id={session}"));
        let mut req = url
            .into_client_request()
            .map_err(|e| ChannelError::Socket(e.to_string()))?;
        if let Some(a) = gw.authorization() {
            let v = a.parse().map_err(|_| {
                ChannelError::Socket("the token is not a valid header value".into())
            })?;
            req.headers_mut().insert("Authorization", v);
        }
        let stream = gw.connect().await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let handshake = tokio_tungstenite::client_async_with_config(req, stream, Some(config));
        let (ws, _) = tokio::time::timeout(super::http::CALL_TIMEOUT, handshake)
            .await
            .map_err(|_| ChannelError::Socket("no WebSocket handshake in time".into()))?
            .map_err(|e| ChannelError::Socket(format!("handshake: {e}")))?;
        Ok(KernelChannel { ws, session })
    }

    /// Sends a `msg_type` request with `content` on `channel`; returns its msg_id.
    pub async fn send(
        &mut self,
        channel: &str,
        msg_type: &str,
        content: Value,
    ) -> Result<String, ChannelError> {
        let msg_id = uuid::Uuid::new_v4().to_string();
        let msg = json!({
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "gateway-lite-run",
                "session": self.session,
                "date": now_iso(),
                "version": PROTOCOL_VERSION,
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "buffers": [],
            "channel": channel,
        });
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| ChannelError::Socket(e.to_string()))?;
        Ok(msg_id)
    }

    /// The next kernel message (frames that are not messages are skipped).
    pub async fn recv(&mut self) -> Result<Incoming, ChannelError> {
        loop {
            let frame = match self.ws.next().await {
                None => return Err(ChannelError::Closed(String::new())),
                Some(Err(e)) => return Err(ChannelError::Socket(e.to_string())),
                Some(Ok(f)) => f,
            };
            let decoded = match frame {
                Message::Text(t) => decode_text(t.as_str()),
                Message::Binary(b) => decode_binary(&b),
                Message::Close(c) => {
                    let why = c
                        .map(|c| format!(" ({} {})", u16::from(c.code), c.reason))
                        .unwrap_or_default();
                    return Err(ChannelError::Closed(why));
                }
                _ => continue,
            };
            match decoded {
                Some(m) => return Ok(m),
                None => tracing::debug!("skipped a frame that is not a kernel message"),
            }
        }
    }

    /// Closes the WebSocket politely (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.ws.close(None)).await;
    }
}

fn decode_text(text: &str) -> Option<Incoming> {
    let v: Value = serde_json::from_str(text).ok()?;
    let channel = v.get("channel")?.as_str()?.to_owned();
    incoming(
        channel,
        v.get("header")?,
        v.get("parent_header"),
        v.get("content").cloned().unwrap_or(Value::Null),
    )
}

fn decode_binary(bytes: &[u8]) -> Option<Incoming> {
    let m = wsframe::decode_binary(Framing::Legacy, bytes).ok()?;
    let header: Value = serde_json::from_slice(&m.msg.header).ok()?;
    let parent: Value = serde_json::from_slice(&m.msg.parent_header).ok()?;
    let content: Value = serde_json::from_slice(&m.msg.content).ok()?;
    incoming(
        m.channel.as_str().to_owned(),
        &header,
        Some(&parent),
        content,
    )
}

fn incoming(
    channel: String,
    header: &Value,
    parent: Option<&Value>,
    content: Value,
) -> Option<Incoming> {
    Some(Incoming {
        channel,
        msg_type: header.get("msg_type")?.as_str()?.to_owned(),
        parent_id: parent
            .and_then(|p| p.get("msg_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        date: header
            .get("date")
            .and_then(Value::as_str)
            .map(str::to_owned),
        content,
    })
}

/// Now, as ISO 8601 in UTC with microseconds (`2026-01-02T03:04:05.123456Z`), as the
/// gateway stamps its own messages.
pub fn now_iso() -> String {
    crate::channels::timestamp(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_decode_to_messages() {
        let m = decode_text(r#"{"channel":"iopub","header":{"msg_type":"stream","date":"D"},"parent_header":{"msg_id":"p"},"content":{"name":"stdout","text":"x"}}"#).unwrap();
        assert_eq!(
            (m.channel.as_str(), m.msg_type.as_str()),
            ("iopub", "stream")
        );
        assert_eq!(m.parent_id.as_deref(), Some("p"));
        assert_eq!(m.date.as_deref(), Some("D"));
        assert!(decode_text("[1]").is_none());
        assert!(decode_text("not json").is_none());
        assert!(now_iso().ends_with('Z'));
    }
}
