//! A WebSocket kernel client as a notebook frontend uses one: legacy JSON or
//! `v1.kernel.websocket.jupyter.org` frames, send a request, read messages, run a cell.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

/// A message as the test sees it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub channel: String,
    pub header: Value,
    pub parent: Value,
    pub content: Value,
}

impl Msg {
    pub fn msg_type(&self) -> &str {
        self.header["msg_type"].as_str().unwrap_or("")
    }
    pub fn parent_id(&self) -> &str {
        self.parent["msg_id"].as_str().unwrap_or("")
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct KernelClient {
    pub ws: Ws,
    pub v1: bool,
    pub session: String,
}

/// A `v1.kernel.websocket.jupyter.org` frame: channel, then message parts and buffers.
pub fn v1_encode(channel: &str, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut pieces: Vec<&[u8]> = vec![channel.as_bytes()];
    pieces.extend(parts.iter().map(Vec::as_slice));
    let n = pieces.len() + 1;
    let mut off = 8 * (n + 1);
    let mut out = (n as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&(off as u64).to_le_bytes());
    for p in &pieces {
        off += p.len();
        out.extend_from_slice(&(off as u64).to_le_bytes());
    }
    for p in pieces {
        out.extend_from_slice(p);
    }
    out
}

fn v1_decode(b: &[u8]) -> Msg {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let offs: Vec<usize> = (0..n)
        .map(|i| u64::from_le_bytes(b[8 * (i + 1)..8 * (i + 2)].try_into().unwrap()) as usize)
        .collect();
    let part = |i: usize| &b[offs[i]..offs[i + 1]];
    let json = |i: usize| serde_json::from_slice::<Value>(part(i)).unwrap();
    Msg {
        channel: String::from_utf8(part(0).to_vec()).unwrap(),
        header: json(1),
        parent: json(2),
        content: json(4),
    }
}

impl KernelClient {
    pub async fn send(&mut self, channel: &str, msg_type: &str, content: Value) -> String {
        self.try_send(channel, msg_type, content)
            .await
            .expect("websocket send")
    }

    /// Like [`KernelClient::send`], but a closed socket is an error, not a panic.
    pub async fn try_send(
        &mut self,
        channel: &str,
        msg_type: &str,
        content: Value,
    ) -> Result<String, tokio_tungstenite::tungstenite::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        let header = json!({"msg_id": id, "msg_type": msg_type, "username": "it", "session": self.session,
            "date": "2026-01-01T00:00:00.000000Z", "version": "5.3"});
        if self.v1 {
            let parts = vec![
                header.to_string().into_bytes(),
                b"{}".to_vec(),
                b"{}".to_vec(),
                content.to_string().into_bytes(),
            ];
            self.ws
                .send(Message::Binary(v1_encode(channel, &parts).into()))
                .await?;
        } else {
            let m = json!({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": channel});
            self.ws.send(Message::Text(m.to_string().into())).await?;
        }
        Ok(id)
    }

    /// The next kernel message, or `None` when the socket closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("kernel message in time")?;
            match frame {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    return Some(Msg {
                        channel: v["channel"].as_str().unwrap().to_owned(),
                        header: v["header"].clone(),
                        parent: v["parent_header"].clone(),
                        content: v["content"].clone(),
                    });
                }
                Ok(Message::Binary(b)) if self.v1 => return Some(v1_decode(&b)),
                Ok(Message::Binary(_)) => panic!("unexpected binary frame in the legacy protocol"),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Starts `time.sleep(60)` and returns its request id once the kernel runs it.
    ///
    /// The cell is sent with `stop_on_error: false`. With `true` (ipykernel's default), the
    /// KeyboardInterrupt of an interrupt test makes ipykernel abort queued execute requests, and
    /// it clears that state on a later event-loop turn (`call_later(stop_on_error_timeout)`),
    /// after `idle` is already out: a request sent as soon as `idle` arrives can come back
    /// `aborted` on a loaded machine. That is ipykernel's behaviour, not the gateway's.
    pub async fn start_sleep(&mut self) -> String {
        self.try_start_sleep(60)
            .await
            .expect("the sleep cell starts")
    }

    /// Starts a cell that prints a line, then sleeps `secs`; returns its request id once the
    /// line arrives, so the cell's code is running. Waiting for `execute_input` is not
    /// enough: a SIGINT between `execute_input` and the cell's code can end ipykernel's
    /// handler without a `KeyboardInterrupt` (seen on loaded CI machines).
    pub async fn try_start_sleep(&mut self, secs: u32) -> Result<String, String> {
        let id = self
            .try_send(
                "shell",
                "execute_request",
                json!({"code": format!("print('sleeping', flush=True)\nimport time\ntime.sleep({secs})"),
                    "silent": false, "stop_on_error": false}),
            )
            .await
            .map_err(|e| format!("sending the sleep cell: {e}"))?;
        loop {
            let m = self
                .recv()
                .await
                .ok_or("the socket closed before the sleep cell ran")?;
            if m.parent_id() == id
                && m.msg_type() == "stream"
                && m.content["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("sleeping"))
            {
                return Ok(id);
            }
        }
    }

    /// Sends a request with custom content and collects its outcome.
    pub async fn execute_with(&mut self, content: Value) -> String {
        self.send("shell", "execute_request", content).await
    }

    /// Runs `code`; returns (text of execute_result/stream output, error ename, reply status).
    pub async fn execute(&mut self, code: &str) -> Outcome {
        self.try_execute(code)
            .await
            .expect("socket open while executing")
    }

    /// Like [`KernelClient::execute`], but `None` when the socket is or gets closed first.
    pub async fn try_execute(&mut self, code: &str) -> Option<Outcome> {
        let id = self
            .try_send(
                "shell",
                "execute_request",
                json!({"code": code, "silent": false, "store_history": true,
            "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}),
            )
            .await
            .ok()?;
        self.try_collect(&id).await
    }

    pub async fn collect(&mut self, id: &str) -> Outcome {
        self.try_collect(id)
            .await
            .expect("socket open while executing")
    }

    /// Like [`KernelClient::collect`], but `None` when the socket closes first.
    pub async fn try_collect(&mut self, id: &str) -> Option<Outcome> {
        let mut out = Outcome::default();
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            let m = self.recv().await?;
            if m.parent_id() != id {
                continue;
            }
            match (m.channel.as_str(), m.msg_type()) {
                ("shell", "execute_reply") => {
                    replied = true;
                    out.status = m.content["status"].as_str().unwrap_or("").to_owned();
                }
                ("iopub", "status") if m.content["execution_state"] == "idle" => idle = true,
                ("iopub", "execute_result") => out
                    .text
                    .push_str(m.content["data"]["text/plain"].as_str().unwrap_or("")),
                ("iopub", "stream") => out.text.push_str(m.content["text"].as_str().unwrap_or("")),
                ("iopub", "error") => {
                    out.ename = m.content["ename"].as_str().unwrap_or("").to_owned()
                }
                _ => {}
            }
        }
        Some(out)
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub text: String,
    pub ename: String,
    pub status: String,
}
