//! The WebSocket ⇄ ZeroMQ bridge against a real ipykernel: messages kept while no client is
//! connected, stdin routing between two clients, iopub to every client, binary buffers in
//! both framings, and bad input from the browser side (oversized and malformed frames, a
//! client that never reads).

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{self, Gateway, KernelClient, Options, WAIT, v1_encode, wait_no_processes};

/// Waits until the kernel model reports `n` connections (the gateway has finished with the
/// closed ones, including keeping their messages).
async fn wait_connections(gw: &Gateway, kernel_id: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, model) = gw
            .json("GET", &format!("/api/kernels/{kernel_id}"), None)
            .await;
        if model["connections"] == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections never became {n}: {model}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `path` exists (the kernel's cell got that far).
async fn wait_file(path: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Python that blocks until `go` exists, prints `text`, then creates `done`.
fn gated_cell(go: &Path, done: &Path, text: &str) -> String {
    format!(
        "import os, time\nwhile not os.path.exists({go:?}): time.sleep(0.02)\nprint({text:?}, flush=True)\nopen({done:?}, 'w').close()",
        go = go.to_str().unwrap(),
        done = done.to_str().unwrap(),
    )
}

/// Starts `code` on `c` and waits until the kernel runs it; returns the request id.
async fn start_cell(c: &mut KernelClient, code: &str) -> String {
    let id = c
        .send(
            "shell",
            "execute_request",
            json!({"code": code, "silent": false, "allow_stdin": false}),
        )
        .await;
    loop {
        let m = c.recv().await.expect("the cell starts");
        if m.parent_id() == id && m.msg_type() == "execute_input" {
            return id;
        }
    }
}

/// Starts a cell gated on file `go` through `c`, disconnects, lets the cell print `text`
/// and finish (it writes `done`) while no client is connected; returns the cell's id.
async fn finish_while_away(
    gw: &Gateway,
    id: &str,
    mut c: KernelClient,
    go: &Path,
    done: &Path,
    text: &str,
) -> String {
    let cell = start_cell(&mut c, &gated_cell(go, done, text)).await;
    c.ws.close(None).await.unwrap();
    drop(c);
    wait_connections(gw, id, 0).await;
    std::fs::write(go, b"").unwrap();
    wait_file(done).await;
    // Not needed for correctness (messages arriving after the reconnect come through the
    // handed-over sockets too); gives the reply time to land in the backlog.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cell
}

/// The `gateway_lite_kept_bytes` gauge.
async fn kept_bytes(gw: &Gateway) -> u64 {
    let (status, _, body) = gw.http("GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("gateway_lite_kept_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gateway_lite_kept_bytes in {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_are_kept_for_the_same_session_while_disconnected() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;

    // Same session: output and reply produced while nobody is connected arrive on reconnect.
    for v1 in [false, true] {
        let go = gw.dir.join(format!("go-{v1}"));
        let done = gw.dir.join(format!("done-{v1}"));
        let session = format!("same-{v1}");
        let c = gw.connect_as(&id, &session, v1).await;
        let cell = finish_while_away(&gw, &id, c, &go, &done, "late output").await;
        assert!(
            kept_bytes(&gw).await > 0,
            "the kept output shows in /metrics"
        );
        let mut c = gw.connect_as(&id, &session, v1).await;
        let out = c.collect(&cell).await;
        assert_eq!(
            (out.text.as_str(), out.status.as_str()),
            ("late output\n", "ok"),
            "{out:?}"
        );
        // Let go right after the replay, by the relay task: poll, do not race it.
        let deadline = tokio::time::Instant::now() + WAIT;
        while kept_bytes(&gw).await != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replayed messages are never let go"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The connection is an ordinary one afterwards.
        assert_eq!(c.execute("6*7").await.text, "42");
        c.ws.close(None).await.unwrap();
        wait_connections(&gw, &id, 0).await;
    }

    // Another session: nothing old is delivered.
    let go = gw.dir.join("go-other");
    let done = gw.dir.join("done-other");
    let c = gw.connect_as(&id, "first", false).await;
    let cell = finish_while_away(&gw, &id, c, &go, &done, "not for you").await;
    let mut c = gw.connect_as(&id, "second", false).await;
    let probe = c
        .send(
            "shell",
            "execute_request",
            json!({"code": "1+1", "silent": false}),
        )
        .await;
    // Kept messages would be replayed before anything live, so before the probe's reply.
    loop {
        let m = c.recv().await.expect("socket open");
        assert_ne!(
            m.parent_id(),
            cell,
            "old message delivered to another session: {m:?}"
        );
        if m.parent_id() == probe && m.msg_type() == "execute_reply" {
            break;
        }
    }
    assert!(
        gw.log().lines().any(
            |l| l.contains("discarding messages kept for another session") && l.contains("first")
        ),
        "{}",
        gw.log()
    );

    // Shutting the kernel down while messages are kept cleans up.
    drop(c);
    wait_connections(&gw, &id, 0).await;
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(wait_no_processes(&id).await, Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_goes_to_the_asking_client_and_iopub_to_all() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    let mut a = gw.connect_as(&id, "asker", true).await;
    let mut b = gw.connect_as(&id, "bystander", false).await;

    let ask = a
        .execute_with(
            json!({"code": "print('got', input('name? '))", "silent": false, "allow_stdin": true}),
        )
        .await;
    loop {
        let m = a.recv().await.expect("input_request");
        if m.channel == "stdin" && m.msg_type() == "input_request" {
            assert_eq!(m.parent_id(), ask);
            break;
        }
    }
    a.send("stdin", "input_reply", json!({"value": "ada"}))
        .await;
    assert_eq!(a.collect(&ask).await.text, "got ada\n");

    // The bystander saw the asker's output on iopub, and no input_request.
    let probe = b
        .send(
            "shell",
            "execute_request",
            json!({"code": "'probe'", "silent": false}),
        )
        .await;
    let mut saw_output = false;
    loop {
        let m = b.recv().await.expect("socket open");
        assert_ne!(m.channel, "stdin", "stdin reached the other client: {m:?}");
        if m.parent_id() == ask && m.msg_type() == "stream" {
            saw_output |= m.content["text"] == "got ada\n";
        }
        if m.parent_id() == probe && m.msg_type() == "execute_reply" {
            break;
        }
    }
    assert!(saw_output, "iopub reaches every connection of the kernel");
}

/// A received frame with its binary buffers.
#[derive(Debug)]
struct Raw {
    channel: String,
    header: Value,
    content: Value,
    buffers: Vec<Vec<u8>>,
}

fn le(b: &[u8], i: usize) -> usize {
    u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()) as usize
}

fn be(b: &[u8], i: usize) -> usize {
    u32::from_be_bytes(b[4 * i..4 * i + 4].try_into().unwrap()) as usize
}

async fn recv_raw(c: &mut KernelClient) -> Raw {
    loop {
        let frame = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("message in time")
            .expect("socket open")
            .expect("frame");
        let (v, buffers) = match frame {
            Message::Text(t) => (serde_json::from_str::<Value>(t.as_str()).unwrap(), vec![]),
            Message::Binary(b) if c.v1 => {
                let n = le(&b, 0);
                let offs: Vec<usize> = (1..=n).map(|i| le(&b, i)).collect();
                let part = |i: usize| &b[offs[i]..offs[i + 1]];
                let json = |i: usize| serde_json::from_slice::<Value>(part(i)).unwrap();
                let v = json!({"channel": String::from_utf8(part(0).to_vec()).unwrap(),
                    "header": json(1), "content": json(4)});
                (v, (5..n - 1).map(|i| part(i).to_vec()).collect())
            }
            Message::Binary(b) => {
                let n = be(&b, 0);
                let mut offs: Vec<usize> = (1..=n).map(|i| be(&b, i)).collect();
                offs.push(b.len());
                let parts: Vec<Vec<u8>> = offs.windows(2).map(|w| b[w[0]..w[1]].to_vec()).collect();
                let v: Value = serde_json::from_slice(&parts[0]).unwrap();
                assert!(
                    v.get("buffers").is_none(),
                    "legacy binary JSON has no buffers key"
                );
                (v, parts[1..].to_vec())
            }
            _ => continue,
        };
        return Raw {
            channel: v["channel"].as_str().unwrap().to_owned(),
            header: v["header"].clone(),
            content: v["content"].clone(),
            buffers,
        };
    }
}

/// Sends a shell message with binary buffers in the client's framing.
async fn send_with_buffers(
    c: &mut KernelClient,
    msg_type: &str,
    content: Value,
    buffers: &[&[u8]],
) {
    let header = json!({"msg_id": uuid::Uuid::new_v4().to_string(), "msg_type": msg_type,
        "username": "it", "session": c.session, "date": "2026-01-01T00:00:00.000000Z", "version": "5.3"});
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let frame = if c.v1 {
        pieces.push(header.to_string().into_bytes());
        pieces.push(b"{}".to_vec());
        pieces.push(b"{}".to_vec());
        pieces.push(content.to_string().into_bytes());
        pieces.extend(buffers.iter().map(|b| b.to_vec()));
        v1_encode("shell", &pieces)
    } else {
        let m = json!({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"});
        pieces.push(m.to_string().into_bytes());
        pieces.extend(buffers.iter().map(|b| b.to_vec()));
        let n = pieces.len();
        let mut off = 4 * (n + 1);
        let mut out = (n as u32).to_be_bytes().to_vec();
        for p in &pieces {
            out.extend_from_slice(&(off as u32).to_be_bytes());
            off += p.len();
        }
        out.extend(pieces.concat());
        out
    };
    c.ws.send(Message::Binary(frame.into())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_buffers_round_trip_through_a_comm() {
    let gw = Gateway::start(Options::default());
    let id = gw.start_kernel("py").await;
    for v1 in [true, false] {
        let mut c = gw.connect_as(&id, &format!("buffers-{v1}"), v1).await;
        // A kernel-side comm: its comm_open carries one buffer; it answers every comm_msg
        // with the received buffers reversed, plus their lengths in the data.
        let target = format!("gl_it_{v1}");
        let code = format!(
            "from ipykernel.comm import Comm\n\
             def _echo(msg):\n    \
                 bufs = [bytes(b) for b in msg['buffers']]\n    \
                 _c.send({{'lengths': [len(b) for b in bufs]}}, buffers=[b[::-1] for b in bufs])\n\
             _c = Comm(target_name='{target}', data={{}}, buffers=[b'\\x00\\x01\\xffopen'])\n\
             _c.on_msg(_echo)\n"
        );
        let run = c
            .send(
                "shell",
                "execute_request",
                json!({"code": code, "silent": false}),
            )
            .await;
        let comm_id = loop {
            let m = recv_raw(&mut c).await;
            if m.channel == "iopub" && m.header["msg_type"] == "comm_open" {
                assert_eq!(m.content["target_name"], target.as_str());
                assert_eq!(m.buffers, vec![b"\x00\x01\xffopen".to_vec()]);
                break m.content["comm_id"].as_str().unwrap().to_owned();
            }
        };
        let out = c.collect(&run).await;
        assert_eq!(out.status, "ok", "{out:?}");

        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent: [&[u8]; 3] = [b"\x00\x00\xff\xfe", b"", &big];
        send_with_buffers(
            &mut c,
            "comm_msg",
            json!({"comm_id": comm_id, "data": {}}),
            &sent,
        )
        .await;
        let echo = loop {
            let m = recv_raw(&mut c).await;
            if m.channel == "iopub"
                && m.header["msg_type"] == "comm_msg"
                && m.content["comm_id"] == comm_id.as_str()
            {
                break m;
            }
        };
        assert_eq!(
            echo.content["data"]["lengths"],
            json!([4, 0, 100_000]),
            "{echo:?}"
        );
        let reversed: Vec<Vec<u8>> = sent
            .iter()
            .map(|b| b.iter().rev().copied().collect())
            .collect();
        assert_eq!(echo.buffers, reversed);
    }
}

/// Reads until the server closes; returns its close code (None: closed without a frame).
async fn close_code(c: &mut KernelClient) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn v1_frame(count: u64, offsets: &[u64], body: &[u8]) -> Vec<u8> {
    let mut out = count.to_le_bytes().to_vec();
    for o in offsets {
        out.extend_from_slice(&o.to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_frames() {
    let gw = Gateway::start(Options {
        max_message_bytes: 64 * 1024,
        ..Options::default()
    });
    let id = gw.start_kernel("py").await;
    let mut other = gw.connect_as(&id, "other", false).await;

    // Oversized, in both framings: 1009, and the kernel still serves another client.
    for v1 in [false, true] {
        let mut c = gw.connect_as(&id, &format!("big-{v1}"), v1).await;
        assert_eq!(c.execute("1+1").await.text, "2");
        // Raw, because the gateway may close before the client has written it all.
        let big = json!({"header": {"msg_id": "big", "msg_type": "execute_request"},
            "content": {"code": "x".repeat(100 * 1024)}, "channel": "shell"});
        let frame = if v1 {
            Message::Binary(big.to_string().into_bytes().into())
        } else {
            Message::Text(big.to_string().into())
        };
        let _ = c.ws.send(frame).await;
        assert_eq!(close_code(&mut c).await, Some(CloseCode::Size));
        assert_eq!(other.execute("2+2").await.text, "4");
    }

    // Malformed v1 frames are dropped; the connection keeps working after each.
    let header = br#"{"msg_id":"x","msg_type":"execute_request","session":"s","username":"u","version":"5.3"}"#;
    let parts: Vec<&[u8]> = vec![
        b"shell",
        header,
        b"{}",
        b"{}",
        br#"{"code":"_bad = globals().get('_bad', 0) + 1"}"#,
    ];
    let body = parts.concat();
    let mut ends = Vec::new();
    let table = 8 * (1 + parts.len() as u64 + 1);
    let mut at = table;
    ends.push(at);
    for p in &parts {
        at += p.len() as u64;
        ends.push(at);
    }
    let valid = v1_frame(ends.len() as u64, &ends, &body);
    let mut decreasing = ends.clone();
    decreasing.swap(2, 3);
    let mut past_end = ends.clone();
    *past_end.last_mut().unwrap() += 1;
    let mut into_table = ends.clone();
    into_table[0] = 8;
    let bad_v1: Vec<(&str, Vec<u8>)> = vec![
        ("zero parts", v1_frame(0, &[], b"")),
        ("one offset", v1_frame(1, &[16], b"")),
        ("count past the frame", v1_frame(1 << 40, &[16], &body)),
        ("count u64::MAX", v1_frame(u64::MAX, &[], b"")),
        (
            "offset past the end",
            v1_frame(ends.len() as u64, &past_end, &body),
        ),
        ("offset u64::MAX", v1_frame(2, &[24, u64::MAX], &body)),
        (
            "offsets decreasing",
            v1_frame(ends.len() as u64, &decreasing, &body),
        ),
        (
            "offset inside the table",
            v1_frame(ends.len() as u64, &into_table, &body),
        ),
        ("truncated table", valid[..20].to_vec()),
        (
            "four parts",
            v1_frame(5, &ends[..5], &body[..(ends[4] - table) as usize]),
        ),
        ("channel iopub", {
            let mut p = parts.clone();
            p[0] = b"iopub";
            let mut e = vec![table];
            for x in &p {
                e.push(e.last().unwrap() + x.len() as u64);
            }
            v1_frame(e.len() as u64, &e, &p.concat())
        }),
        ("channel not UTF-8", {
            let mut p = parts.clone();
            p[0] = b"\xff\xfe";
            let mut e = vec![table];
            for x in &p {
                e.push(e.last().unwrap() + x.len() as u64);
            }
            v1_frame(e.len() as u64, &e, &p.concat())
        }),
        ("text frame on v1 that is not JSON", Vec::new()),
    ];
    let mut c = gw.connect_as(&id, "malformed-v1", true).await;
    for (what, frame) in bad_v1 {
        let m = if frame.is_empty() {
            Message::Text("not json".into())
        } else {
            Message::Binary(frame.into())
        };
        c.ws.send(m).await.unwrap();
        assert_eq!(c.execute("1+1").await.text, "2", "after {what}");
    }
    // None of them ran; the well-formed original does.
    assert_eq!(c.execute("globals().get('_bad', 0)").await.text, "0");
    c.ws.send(Message::Binary(valid.into())).await.unwrap();
    assert_eq!(c.execute("globals().get('_bad', 0)").await.text, "1");

    // Malformed legacy frames (text and binary).
    let mut c = gw.connect_as(&id, "malformed-legacy", false).await;
    let deep = format!(
        "{{\"header\":{}1{}}}",
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    let bad_text = [
        r#"{"parent_header":{},"content":{},"channel":"shell"}"#.to_owned(),
        r#"{"header":[],"content":{},"channel":"shell"}"#.to_owned(),
        r#"{"header":"{}","content":{},"channel":"shell"}"#.to_owned(),
        r#"{"header":{},"content":{}}"#.to_owned(),
        r#"{"header":{},"content":{},"channel":"iopub"}"#.to_owned(),
        r#"{"header":{},"content":{},"channel":7}"#.to_owned(),
        r#"[1,2,3]"#.to_owned(),
        String::new(),
        deep,
    ];
    for t in bad_text {
        c.ws.send(Message::Text(t.clone().into())).await.unwrap();
        assert_eq!(c.execute("1+1").await.text, "2", "after {:.60}", t);
    }
    let json = br#"{"header":{},"content":{},"channel":"shell"}"#;
    let mut bad_bin: Vec<Vec<u8>> = vec![
        vec![],
        0u32.to_be_bytes().to_vec(),
        [2u32.to_be_bytes(), 12u32.to_be_bytes(), 8u32.to_be_bytes()].concat(),
        [1u32.to_be_bytes(), 9999u32.to_be_bytes()].concat(),
        [u32::MAX.to_be_bytes(), 8u32.to_be_bytes()].concat(),
    ];
    bad_bin.push([&1u32.to_be_bytes()[..], &8u32.to_be_bytes(), b"{not json"].concat());
    bad_bin.push([&1u32.to_be_bytes()[..], &4u32.to_be_bytes(), json].concat());
    for b in bad_bin {
        c.ws.send(Message::Binary(b.clone().into())).await.unwrap();
        assert_eq!(c.execute("1+1").await.text, "2", "after {b:?}");
    }
    let warnings = gw
        .log()
        .matches("ignored a malformed websocket message")
        .count();
    // Every one was refused (the log level in these tests includes debug), and each
    // connection stopped warning after the first few.
    assert!(warnings >= 29, "{warnings} refusals logged:\n{}", gw.log());
    let log = gw.log();
    let warned = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("ignored a malformed websocket message"))
        .count();
    assert_eq!(warned, 20, "10 warnings per connection:\n{log}");
    assert_eq!(other.execute("3+3").await.text, "6");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_is_back_pressured() {
    const FLOOD_MB: usize = 256;
    const BOUND_MB: u64 = 200;
    // Each stream message is 1 MiB of text plus its JSON: under the message limit.
    let gw = Gateway::start(Options {
        max_message_bytes: 4 << 20,
        ..Options::default()
    });
    let id = gw.start_kernel("py").await;
    let pid = gw.pid() as i32;
    let mut hog = gw.connect_as(&id, "hog", false).await;
    let mut reader = gw.connect_as(&id, "reader", true).await;
    assert_eq!(reader.execute("1").await.text, "1");
    // The hog starts a flood of 1 MiB stream messages and then never reads. (Fewer messages
    // than the kernel PUB socket's high-water mark of 1000, so the kernel drops nothing for
    // the reader, which keeps up; the hog's share waits in the kernel's queue, not ours.)
    let flood = hog
        .send(
            "shell",
            "execute_request",
            json!({"code": format!(
                "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range({FLOOD_MB}):\n    sys.stdout.write(chunk)\n    sys.stdout.flush()"
            ), "silent": false}),
        )
        .await;
    // The reader sees the whole flood and keeps working.
    let mut bytes = 0usize;
    let mut idle = false;
    while !idle {
        let m = reader.recv().await.expect("socket open");
        if m.parent_id() == flood {
            if m.msg_type() == "stream" {
                bytes += m.content["text"].as_str().unwrap_or("").len();
            }
            idle = m.msg_type() == "status" && m.content["execution_state"] == "idle";
        }
    }
    assert_eq!(bytes, FLOOD_MB << 20, "the reading client lost output");
    assert_eq!(reader.execute("2+3").await.text, "5");
    let peak_mb = support::status_kb(pid, "VmHWM").expect("VmHWM") / 1024;
    assert!(
        peak_mb < BOUND_MB,
        "gateway peak RSS {peak_mb} MB with a {FLOOD_MB} MB flood to a non-reading client"
    );

    // Back-pressured, not dropped: once it reads again, the hog's connection works.
    let probe = hog
        .send(
            "shell",
            "execute_request",
            json!({"code": "'alive'", "silent": false}),
        )
        .await;
    let out = hog.collect(&probe).await;
    assert_eq!(out.text, "'alive'", "{out:?}");
    eprintln!("gateway peak RSS {peak_mb} MB with a {FLOOD_MB} MiB flood");
}

/// A kernel message over `--max-message-bytes` is not passed on (nor held): the client sees
/// a note on stderr in the cell that produced it, and the kernel carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_message_over_the_limit_is_dropped_with_a_note() {
    let gw = Gateway::start(Options {
        max_message_bytes: 64 * 1024,
        ..Options::default()
    });
    let id = gw.start_kernel("py").await;
    let mut c = gw.connect(&id, false).await;
    let out = c.execute("print('y' * 100_000); print('small')").await;
    assert!(
        out.text.contains("larger than --max-message-bytes (65536)"),
        "{out:?}"
    );
    assert!(
        !out.text.contains(&"y".repeat(1000)),
        "the big message passed"
    );
    assert_eq!(c.execute("6*7").await.text, "42");
    gw.wait_log("larger than --max-message-bytes").await;
}

/// A client that connects right after the 201, to a kernel that binds its ports only after
/// the gateway's first ZeroMQ connect has timed out (10 s): the bridge connects again, and
/// the client's kernel_info_request, sent before any of that, is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_of_a_slow_kernel_is_served_once_it_listens() {
    let specs = std::env::temp_dir().join(format!("gl-slow-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(specs.join("slow")).unwrap();
    let py = crate::support::python();
    let argv = json!([
        "/bin/sh",
        "-c",
        format!("sleep 12; exec {py} -m ipykernel_launcher -f \"$0\""),
        "{connection_file}"
    ]);
    std::fs::write(
        specs.join("slow/kernel.json"),
        json!({"argv": argv, "display_name": "slow", "language": "python"}).to_string(),
    )
    .unwrap();
    let gw = Gateway::start(Options {
        args: vec![
            "--kernelspec-dir".into(),
            specs.to_string_lossy().into_owned(),
        ],
        ..Options::default()
    });
    let id = gw.start_kernel("slow").await;
    let mut c = gw.connect(&id, false).await;
    let asked = c.send("shell", "kernel_info_request", json!({})).await;
    let reply = tokio::time::timeout(WAIT, async {
        loop {
            let m = c.recv().await.expect("socket open");
            if m.msg_type() == "kernel_info_reply" && m.parent_id() == asked {
                return m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no kernel_info_reply on the first WebSocket\n{}", gw.log()));
    assert_eq!(reply.content["status"], "ok");
    assert_eq!(c.execute("1+1").await.text, "2");
    let (status, _, _) = gw.http("DELETE", &format!("/api/kernels/{id}"), None).await;
    assert_eq!(status, 204);
    assert!(wait_no_processes(&id).await.is_empty());
    let _ = std::fs::remove_dir_all(specs);
}
