//! Limits on what a ZeroMQ peer may make us hold: a watcher of the ZMTP 3.x byte stream a
//! kernel sends, which says "stop" as soon as a frame or a message would exceed its bounds.
//!
//! A kernel runs its user's code, so the bytes on its channels are attacker-controlled: code
//! in a kernel can close ipykernel's sockets and bind its own listener on the same port, and
//! a container kernel owns its whole network stack. The ZMTP decoders gateway-lite uses trust
//! a frame's length field: `zeromq` reserves a buffer of the announced size before the bytes
//! arrive (a long frame announcing 2^62 bytes fails that allocation, which aborts the whole
//! process), and both it and `rzmq` keep every frame of a multipart message until the last
//! one, with no bound on their count or total size. [`FrameGuard`] reads the same stream
//! first, byte-exactly and in O(1) state: it follows the greeting and each frame's header,
//! skips bodies without keeping them, and reports a [`LimitError`] from the header of the
//! first frame that breaks a [`FrameLimits`] bound, before its body has been read.
//!
//! Stream layout (ZeroMQ RFC 23, ZMTP 3.0; RFC 37, ZMTP 3.1, keeps it):
//!
//! ```text
//! greeting   64 bytes (see [`crate::zmtp`])
//! frame      flags (1 byte: bit 0 MORE, bit 1 LONG, bit 2 COMMAND, the rest reserved),
//!            size (1 byte, or 8 bytes big-endian when LONG), body (size bytes)
//! ```
//!
//! Commands (the handshake's READY, HELLO, WELCOME, INITIATE; PING and PONG; CurveZMQ's
//! MESSAGE) are single frames: each must fit the message bound by itself. The parts of a
//! clear-text multipart message are counted together until the part without MORE. Under
//! CurveZMQ the MORE flag travels encrypted inside each MESSAGE command, so there each part is
//! bounded, not their number: the guard sees no message boundaries it could count.
//!
//! Interop: libzmq and JeroMQ set no reserved flag bits, but the RFC's "shall be zero" is not
//! enforced here (the decoders behind the guard judge the protocol; the guard only bounds
//! memory), and a short frame may carry the LONG flag. A peer speaking ZMTP 1.0 or 2.0 (a
//! different greeting) is outside what the guard follows; no kernel in use sends it.

use crate::zmtp::GREETING_LEN;

/// Bounds on one peer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most bytes in one message: the sum of a multipart message's parts, and the size of
    /// any single frame (a command or one CurveZMQ part).
    pub max_message_bytes: u64,
    /// Most parts in one multipart message.
    pub max_parts: u64,
}

/// Why a stream was stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// One frame announced more bytes than a message may have.
    #[error("a ZMTP frame of {size} bytes exceeds the limit of {max} bytes per message")]
    Frame {
        /// The frame's announced size.
        size: u64,
        /// [`FrameLimits::max_message_bytes`].
        max: u64,
    },
    /// The parts of a multipart message added up to more than a message may have.
    #[error("a multipart message reached {size} bytes, over the limit of {max} bytes")]
    Message {
        /// The parts' sizes so far, including the one that broke the bound.
        size: u64,
        /// [`FrameLimits::max_message_bytes`].
        max: u64,
    },
    /// A multipart message has more parts than allowed.
    #[error("a multipart message has more than {max} parts")]
    Parts {
        /// [`FrameLimits::max_parts`].
        max: u64,
    },
}

/// Where in the stream the guard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Inside the greeting; this many of its bytes are still to come.
    Greeting(usize),
    /// Before a frame's flags byte.
    Flags,
    /// Inside a frame's size field.
    Size {
        /// The frame's flags.
        flags: u8,
        /// Bytes of the size field still to come.
        left: u8,
        /// The size read so far (big-endian, most significant first).
        value: u64,
    },
    /// Inside a frame's body; this many bytes still to come.
    Body(u64),
}

const MORE: u8 = 0b001;
const LONG: u8 = 0b010;
const COMMAND: u8 = 0b100;

/// Follows one direction of a ZMTP 3.x connection from its first byte. See the module notes.
#[derive(Debug, Clone)]
pub struct FrameGuard {
    limits: FrameLimits,
    place: Place,
    /// Bytes of the open multipart message's parts so far.
    message_bytes: u64,
    /// Parts of the open multipart message so far.
    parts: u64,
    /// Set once a bound was broken: the stream is not followed any further.
    broken: Option<LimitError>,
}

impl FrameGuard {
    /// A guard at the start of a connection (before the peer's greeting).
    pub fn new(limits: FrameLimits) -> Self {
        FrameGuard {
            limits,
            place: Place::Greeting(GREETING_LEN),
            message_bytes: 0,
            parts: 0,
            broken: None,
        }
    }

    /// Reads the next bytes of the stream, in any chunking. `Err` from the first chunk that
    /// shows a broken bound on (that chunk and everything after it must not be passed on).
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), LimitError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        while !bytes.is_empty() {
            match self.step(&mut bytes) {
                Ok(()) => {}
                Err(e) => {
                    self.broken = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Consumes what it can of `bytes` in the current place.
    fn step(&mut self, bytes: &mut &[u8]) -> Result<(), LimitError> {
        match self.place {
            Place::Greeting(left) => {
                let n = left.min(bytes.len());
                *bytes = &bytes[n..];
                self.place = if n == left {
                    Place::Flags
                } else {
                    Place::Greeting(left - n)
                };
            }
            Place::Flags => {
                let flags = bytes[0];
                *bytes = &bytes[1..];
                self.place = Place::Size {
                    flags,
                    left: if flags & LONG != 0 { 8 } else { 1 },
                    value: 0,
                };
            }
            Place::Size { flags, left, value } => {
                let value = (value << 8) | u64::from(bytes[0]);
                *bytes = &bytes[1..];
                self.place = if left > 1 {
                    Place::Size {
                        flags,
                        left: left - 1,
                        value,
                    }
                } else {
                    self.header(flags, value)?;
                    if value == 0 {
                        Place::Flags
                    } else {
                        Place::Body(value)
                    }
                };
            }
            Place::Body(left) => {
                let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                *bytes = &bytes[n..];
                // n <= left: it came from min(left, len).
                let rest = left - n as u64;
                self.place = if rest == 0 {
                    Place::Flags
                } else {
                    Place::Body(rest)
                };
            }
        }
        Ok(())
    }

    /// Judges a complete frame header: `flags` and the announced `size`.
    fn header(&mut self, flags: u8, size: u64) -> Result<(), LimitError> {
        let max = self.limits.max_message_bytes;
        if size > max {
            return Err(LimitError::Frame { size, max });
        }
        if flags & COMMAND != 0 {
            return Ok(());
        }
        let total = self.message_bytes.saturating_add(size);
        if total > max {
            return Err(LimitError::Message { size: total, max });
        }
        let parts = self.parts.saturating_add(1);
        if parts > self.limits.max_parts {
            return Err(LimitError::Parts {
                max: self.limits.max_parts,
            });
        }
        if flags & MORE != 0 {
            self.message_bytes = total;
            self.parts = parts;
        } else {
            self.message_bytes = 0;
            self.parts = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_message_bytes: 1000,
        max_parts: 4,
    };

    /// A frame as libzmq writes it: short below 256 bytes, long from there.
    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        if body.len() < 256 {
            f.push(flags);
            f.push(body.len() as u8);
        } else {
            f.push(flags | LONG);
            f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
        f.extend_from_slice(body);
        f
    }

    fn greeting() -> Vec<u8> {
        crate::zmtp::greeting(&crate::zmtp::Mechanism::Null, false).to_vec()
    }

    /// A greeting, READY, then `frames`.
    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut s = greeting();
        s.extend(frame(
            COMMAND,
            b"\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER",
        ));
        for f in frames {
            s.extend_from_slice(f);
        }
        s
    }

    /// A Jupyter message of `n` parts, `each` bytes per part.
    fn message(n: usize, each: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| frame(if i + 1 < n { MORE } else { 0 }, &vec![b'x'; each]))
            .collect()
    }

    #[test]
    fn messages_within_bounds_pass() {
        let mut frames = message(4, 250);
        frames.extend(message(1, 1000));
        frames.extend(message(3, 0));
        frames.push(frame(COMMAND, &[0; 1000]));
        let mut g = FrameGuard::new(LIMITS);
        assert_eq!(g.check(&stream(&frames)), Ok(()));
        assert_eq!(g.place, Place::Flags);
    }

    #[test]
    fn a_huge_announced_frame_is_stopped_at_its_header() {
        let mut s = stream(&[]);
        s.push(LONG);
        s.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let mut g = FrameGuard::new(LIMITS);
        assert_eq!(
            g.check(&s),
            Err(LimitError::Frame {
                size: 1 << 62,
                max: 1000
            })
        );
        // And stays stopped.
        assert!(g.check(b"more").is_err());
    }

    #[test]
    fn a_multipart_message_is_bounded_in_bytes_and_parts() {
        let mut g = FrameGuard::new(LIMITS);
        assert_eq!(
            g.check(&stream(&message(3, 400))),
            Err(LimitError::Message {
                size: 1200,
                max: 1000
            })
        );
        let mut g = FrameGuard::new(LIMITS);
        assert_eq!(
            g.check(&stream(&message(5, 0))),
            Err(LimitError::Parts { max: 4 })
        );
        // Commands in between neither count nor reset the open message.
        let mut frames = message(2, 400);
        frames.insert(1, frame(COMMAND, b"\x04PING\x00\x00"));
        frames[2] = frame(MORE, &[0; 400]);
        frames.push(frame(0, &[0; 300]));
        let mut g = FrameGuard::new(LIMITS);
        assert!(matches!(
            g.check(&stream(&frames)),
            Err(LimitError::Message { size: 1100, .. })
        ));
    }

    #[test]
    fn a_command_is_bounded_alone() {
        let mut g = FrameGuard::new(LIMITS);
        assert!(matches!(
            g.check(&stream(&[frame(COMMAND, &[0; 1001])])),
            Err(LimitError::Frame { size: 1001, .. })
        ));
    }

    #[test]
    fn long_size_of_a_short_frame_is_read() {
        let mut s = stream(&[]);
        s.push(LONG);
        s.extend_from_slice(&3u64.to_be_bytes());
        s.extend_from_slice(b"abc");
        s.extend(frame(0, b"def"));
        let mut g = FrameGuard::new(LIMITS);
        assert_eq!(g.check(&s), Ok(()));
        assert_eq!(g.place, Place::Flags);
    }

    proptest! {
        /// Any chunking of any bytes gives the verdict of the whole, and never panics.
        #[test]
        fn chunking_does_not_matter(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = FrameGuard::new(LIMITS).check(&bytes);
            let mut g = FrameGuard::new(LIMITS);
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut verdict = Ok(());
            for c in cuts.into_iter().chain([bytes.len()]) {
                verdict = g.check(&bytes[at..c]);
                at = c;
                if verdict.is_err() {
                    break;
                }
            }
            prop_assert_eq!(verdict, whole);
        }

        /// Well-formed streams of messages within the bounds always pass, in any chunking.
        #[test]
        fn well_formed_streams_pass(
            sizes in proptest::collection::vec((1usize..=4, 0usize..=250), 0..6),
            chunk in 1usize..97,
        ) {
            let frames: Vec<Vec<u8>> = sizes.iter().flat_map(|&(n, each)| message(n, each)).collect();
            let s = stream(&frames);
            let mut g = FrameGuard::new(LIMITS);
            for c in s.chunks(chunk) {
                prop_assert_eq!(g.check(c), Ok(()));
            }
        }
    }
}
