//! A byte relay between one clear-text ZeroMQ socket and its kernel, which keeps a kernel
//! from making the gateway hold a message over its bounds.
//!
//! The `zeromq` crate decodes whatever a peer sends: it reserves a buffer of a frame's
//! announced size before the bytes come (a header announcing 2^62 bytes aborts the process on
//! the failed allocation) and keeps the parts of a multipart message without limit. A kernel
//! runs its user's code, and that code can close ipykernel's sockets and bind its own listener
//! on the same port (a container kernel owns its whole network stack), so one user could stop
//! the gateway of everybody. The crate has no option to bound either, so the socket does not
//! talk to the kernel directly: it connects to a Unix socket of this relay, in a directory only
//! the gateway's user can enter, and the relay carries the bytes to and from the kernel's TCP
//! port. What the kernel sends passes a [`FrameGuard`], which drops each message over the
//! bounds from the header of the part that breaks them, without reading its body into memory,
//! and keeps the stream in step (see [`protocol::frame_guard`]); the rest passes byte for byte.
//! A dropped message that had parts pass already reaches the socket truncated and fails its
//! signature there. What the gateway sends passes unchanged. Only a command over the bounds
//! (no kernel sends one) closes the connection.
//!
//! Interop: the socket's own connect retries only while its connection is refused, and the
//! relay always accepts; so the relay retries the kernel's port (every 20 ms, up to the
//! socket's connect timeout) before it answers, and a kernel that has not bound its ports yet
//! is waited for as before. The relay costs one local hop each way (see the README's
//! channel-latency figures).
//!
//! CurveZMQ sockets (`rzmq`) do not pass through it: their parts are encrypted end to end, and
//! `rzmq` bounds each part itself (`MAXMSGSIZE`), set from the same limits.

use std::path::PathBuf;
use std::time::Duration;

use protocol::frame_guard::{FrameGuard, FrameLimits};
use protocol::wire::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;

/// How often the kernel's port is tried while it refuses connections.
const RETRY: Duration = Duration::from_millis(20);
/// Most bytes one read takes, each way (the filtered copy of a kernel-side read is at most this
/// plus a few bytes); larger messages take more reads.
const BUFFER: usize = 64 * 1024;

/// One running relay: a Unix socket for one ZeroMQ socket, carried to one kernel port. Ends
/// (its connections closed, its directory removed) when dropped.
#[derive(Debug)]
pub struct Relay {
    endpoint: String,
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts a relay to the kernel's `channel` port `target` (host, port). Connecting to
    /// the kernel is tried for at most `connect_timeout` per accepted connection.
    pub fn start(
        target: (String, u16),
        limits: FrameLimits,
        connect_timeout: Duration,
        channel: Channel,
    ) -> std::io::Result<Relay> {
        let dir = private_dir()?;
        let path = dir.join("s");
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let endpoint = format!("ipc://{}", path.display());
        let task = tokio::spawn(serve(listener, target, limits, connect_timeout, channel));
        Ok(Relay {
            endpoint,
            dir,
            task,
        })
    }

    /// The endpoint the ZeroMQ socket connects to (`ipc://...`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection's pump.
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks at start-up that relays can be made: a private directory in the temporary
/// directory, and a Unix socket in it. A gateway that cannot would start, then fail every
/// kernel's connection; the error names the directory and the fix.
pub fn check_temp_dir() -> Result<(), TempDirError> {
    let fail = |source| TempDirError {
        dir: std::env::temp_dir(),
        source,
    };
    let dir = private_dir().map_err(fail)?;
    let bound = std::os::unix::net::UnixListener::bind(dir.join("s"));
    let _ = std::fs::remove_dir_all(&dir);
    bound.map(drop).map_err(fail)
}

/// The temporary directory cannot hold relays.
#[derive(Debug, thiserror::Error)]
#[error(
    "the temporary directory {} cannot hold the Unix sockets of kernel relays ({source}); set \
     TMPDIR to a directory gateway-lite's user can write (its container images have a \
     world-writable /tmp)", .dir.display()
)]
pub struct TempDirError {
    dir: PathBuf,
    source: std::io::Error,
}

/// A fresh directory only this user can enter (mode 0700), under the temporary directory.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(std::io::Error::other)?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("gateway-lite-relay-{name}"));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    // A Unix socket path has at most 107 bytes; say so rather than fail obscurely.
    if dir.as_os_str().len() + 2 > 107 {
        let _ = std::fs::remove_dir(&dir);
        return Err(std::io::Error::other(format!(
            "the temporary directory {} is too long for a Unix socket path; set TMPDIR to a \
             shorter one",
            std::env::temp_dir().display()
        )));
    }
    Ok(dir)
}

/// Accepts the socket's connections (one at a time in practice; a reconnect makes another)
/// and carries each to the kernel. The pumps belong to this task.
async fn serve(
    listener: UnixListener,
    target: (String, u16),
    limits: FrameLimits,
    connect_timeout: Duration,
    channel: Channel,
) {
    let mut pumps = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((local, _)) => {
                    pumps.spawn(pump(local, target.clone(), limits, connect_timeout, channel));
                }
                Err(e) => {
                    tracing::warn!(channel = channel.as_str(), "accepting on the relay's socket: {e}");
                    tokio::time::sleep(RETRY).await;
                }
            },
            Some(_) = pumps.join_next(), if !pumps.is_empty() => {}
        }
    }
}

/// Connects to the kernel, retrying while it refuses, for at most `timeout`.
async fn connect(target: &(String, u16), timeout: Duration) -> Option<TcpStream> {
    let give_up = tokio::time::Instant::now() + timeout;
    loop {
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, TcpStream::connect((target.0.as_str(), target.1))).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(_)) if tokio::time::Instant::now() + RETRY < give_up => {
                tokio::time::sleep(RETRY).await;
            }
            _ => return None,
        }
    }
}

/// Carries one connection until either side ends it or the kernel breaks the bounds.
async fn pump(
    local: UnixStream,
    target: (String, u16),
    limits: FrameLimits,
    connect_timeout: Duration,
    channel: Channel,
) {
    let Some(remote) = connect(&target, connect_timeout).await else {
        // Dropping `local` tells the socket; it tries again.
        return;
    };
    // The socket sets TCP_NODELAY on its own connections; small Jupyter messages must not
    // wait for Nagle here either.
    let _ = remote.set_nodelay(true);
    let (mut local_rx, mut local_tx) = local.into_split();
    let (mut remote_rx, mut remote_tx) = remote.into_split();
    // Buffers are reserved, not zeroed, and read into with `read_buf`: only the bytes a read
    // has written become resident, so a socket that only ever carries small messages costs a
    // page or two, not the whole buffer.
    let outbound = async {
        let mut buf = Vec::with_capacity(BUFFER);
        loop {
            buf.clear();
            if local_rx.read_buf(&mut buf).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
            remote_tx.write_all(&buf).await?;
        }
    };
    let inbound = async {
        let mut guard = FrameGuard::new(limits);
        let mut buf = Vec::with_capacity(BUFFER);
        let mut out = Vec::with_capacity(BUFFER);
        let mut drops = 0u64;
        loop {
            buf.clear();
            if remote_rx.read_buf(&mut buf).await? == 0 {
                return Ok::<u64, std::io::Error>(drops);
            }
            out.clear();
            guard
                .filter(&buf, &mut out, &mut |e| {
                    drops += 1;
                    // The first drop of a connection is a warning; a kernel sending many
                    // cannot fill the log with them.
                    if drops == 1 {
                        tracing::warn!(channel = channel.as_str(), host = %target.0, port = target.1, "dropped a message from the kernel: {e} (twice --max-message-bytes)");
                    } else {
                        tracing::debug!(channel = channel.as_str(), "dropped a message from the kernel: {e}");
                    }
                })
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            local_tx.write_all(&out).await?;
        }
    };
    tokio::select! {
        _ = outbound => {}
        r = inbound => match r {
            Ok(drops) if drops > 1 => {
                tracing::warn!(channel = channel.as_str(), host = %target.0, port = target.1, drops, "messages dropped from the kernel on this connection");
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(channel = channel.as_str(), host = %target.0, port = target.1, "the kernel broke the protocol's bounds ({e}); its connection is closed");
            }
            Err(_) => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const LIMITS: FrameLimits = FrameLimits {
        max_message_bytes: 1000,
        max_parts: 8,
    };

    fn path_of(r: &Relay) -> PathBuf {
        PathBuf::from(r.endpoint().trim_start_matches("ipc://"))
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_the_directory_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let kernel = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ("127.0.0.1".to_owned(), kernel.local_addr().unwrap().port());
        let relay = Relay::start(target, LIMITS, Duration::from_secs(5), Channel::Iopub).unwrap();
        let path = path_of(&relay);
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let mut local = UnixStream::connect(&path).await.unwrap();
        let (mut remote, _) = kernel.accept().await.unwrap();
        local.write_all(b"hello kernel").await.unwrap();
        let mut got = [0u8; 12];
        remote.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello kernel");
        // A greeting and a small frame come back unchanged.
        let mut from_kernel =
            protocol::zmtp::greeting(&protocol::zmtp::Mechanism::Null, false).to_vec();
        from_kernel.extend_from_slice(&[0, 3, b'a', b'b', b'c']);
        remote.write_all(&from_kernel).await.unwrap();
        let mut back = vec![0u8; from_kernel.len()];
        local.read_exact(&mut back).await.unwrap();
        assert_eq!(back, from_kernel);
        drop(relay);
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
        // The pump went with it: the kernel's side is closed.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), remote.read_to_end(&mut rest))
            .await
            .expect("the kernel's connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    /// A relay to a fresh kernel-side listener: (relay, socket side, kernel side).
    async fn connected() -> (Relay, UnixStream, tokio::net::TcpStream) {
        let kernel = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ("127.0.0.1".to_owned(), kernel.local_addr().unwrap().port());
        let relay = Relay::start(target, LIMITS, Duration::from_secs(5), Channel::Iopub).unwrap();
        let local = UnixStream::connect(path_of(&relay)).await.unwrap();
        let (remote, _) = kernel.accept().await.unwrap();
        (relay, local, remote)
    }

    fn greeting() -> Vec<u8> {
        protocol::zmtp::greeting(&protocol::zmtp::Mechanism::Null, false).to_vec()
    }

    #[tokio::test]
    async fn a_message_over_the_bounds_is_dropped_and_the_next_passes() {
        let (_relay, mut local, mut remote) = connected().await;
        let mut from_kernel = greeting();
        // 2000 bytes in one part (limit 1000), then a 3-byte message.
        from_kernel.push(0b010);
        from_kernel.extend_from_slice(&2000u64.to_be_bytes());
        from_kernel.extend_from_slice(&[b'x'; 2000]);
        from_kernel.extend_from_slice(&[0, 3, b'a', b'b', b'c']);
        remote.write_all(&from_kernel).await.unwrap();
        let mut want = greeting();
        want.extend_from_slice(&[0, 3, b'a', b'b', b'c']);
        let mut got = vec![0u8; want.len()];
        local.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        // A header announcing 2^62 bytes: dropped, nothing of it arrives, the line stays up.
        let mut huge = vec![0b010];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[0u8; 4096]);
        remote.write_all(&huge).await.unwrap();
        let mut b = [0u8; 1];
        let quiet = tokio::time::timeout(Duration::from_millis(300), local.read(&mut b)).await;
        assert!(quiet.is_err(), "nothing passes: {quiet:?}");
    }

    #[tokio::test]
    async fn an_oversized_command_closes_the_connection() {
        let (_relay, mut local, mut remote) = connected().await;
        let mut from_kernel = greeting();
        from_kernel.push(0b110);
        from_kernel.extend_from_slice(&5000u64.to_be_bytes());
        remote.write_all(&from_kernel).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), local.read_to_end(&mut got))
            .await
            .expect("the relay closes the socket's connection")
            .unwrap();
        // The greeting may have passed (when it came in a read of its own); the command not.
        assert!(got.len() <= protocol::zmtp::GREETING_LEN, "{}", got.len());
    }

    #[tokio::test]
    async fn a_kernel_not_listening_yet_is_waited_for() {
        // Reserve a port, free it, and bind it again only after the socket connected.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = ("127.0.0.1".to_owned(), port);
        let relay = Relay::start(
            target.clone(),
            LIMITS,
            Duration::from_secs(10),
            Channel::Shell,
        )
        .unwrap();
        let mut local = UnixStream::connect(path_of(&relay)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kernel = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (mut remote, _) = tokio::time::timeout(Duration::from_secs(5), kernel.accept())
            .await
            .expect("the relay reaches the kernel once it listens")
            .unwrap();
        local.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        remote.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
    }
}
