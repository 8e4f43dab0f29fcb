//! Limits on what a ZeroMQ peer may make us hold: a filter of the ZMTP 3.x byte stream a
//! kernel sends, which drops every message over its bounds as it passes, before its bytes
//! are kept anywhere.
//!
//! A kernel runs its user's code, so the bytes on its channels are attacker-controlled: code
//! in a kernel can close ipykernel's sockets and bind its own listener on the same port, and
//! a container kernel owns its whole network stack. The ZMTP decoders gateway-lite uses trust
//! a frame's length field: `zeromq` reserves a buffer of the announced size before the bytes
//! arrive (a long frame announcing 2^62 bytes fails that allocation, which aborts the whole
//! process), and both it and `rzmq` keep every part of a multipart message until the last
//! one, with no bound on their count or total size. [`FrameGuard`] reads the same stream
//! first, in O(1) state, and writes what may pass:
//!
//! - a message whose parts stay within [`FrameLimits`] passes byte for byte;
//! - a message that breaks them is dropped from the header of the part that breaks them: that
//!   part and the rest of the message are skipped unread (nothing is buffered), and when some
//!   of its parts had already passed, an empty last part is written in place of the rest, so
//!   the decoder behind sees a complete (truncated) message, whose signature then fails, and
//!   the stream stays in step. Each drop is reported with its [`LimitError`];
//! - a command (the handshake's READY and the like, PING, PONG) larger than a message may be
//!   is an error: no peer sends one, and the connection should be closed.
//!
//! Stream layout (ZeroMQ RFC 23, ZMTP 3.0; RFC 37, ZMTP 3.1, keeps it):
//!
//! ```text
//! greeting   64 bytes (see [`crate::zmtp`])
//! frame      flags (1 byte: bit 0 MORE, bit 1 LONG, bit 2 COMMAND, the rest reserved),
//!            size (1 byte, or 8 bytes big-endian when LONG), body (size bytes)
//! ```
//!
//! The filter's output, filtered again with the same limits, passes unchanged (the truncating
//! empty part counts within [`FrameLimits::max_parts`]). It follows clear-text streams only:
//! under CurveZMQ each part travels as an encrypted MESSAGE command with its MORE flag inside.
//!
//! Interop: libzmq and JeroMQ set no reserved flag bits, but the RFC's "shall be zero" is not
//! enforced here (the decoder behind judges the protocol; the filter only bounds memory), and
//! a short frame may carry the LONG flag. A peer speaking ZMTP 1.0 or 2.0 (a different
//! greeting) is outside what the filter follows; no kernel in use sends it.

use crate::zmtp::GREETING_LEN;

/// Bounds on the messages of one peer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most bytes in one message (the sum of its parts' bodies), and in one command.
    pub max_message_bytes: u64,
    /// Most parts in one message.
    pub max_parts: u64,
}

/// A message dropped, or a command refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// A command frame larger than a message may be (the connection should be closed).
    #[error("a ZMTP command of {size} bytes exceeds the limit of {max} bytes")]
    Command {
        /// The command's announced size.
        size: u64,
        /// [`FrameLimits::max_message_bytes`].
        max: u64,
    },
    /// A message whose parts add up to more bytes than allowed (dropped).
    #[error("a message of at least {size} bytes exceeds the limit of {max} bytes")]
    Bytes {
        /// Its parts' sizes up to and including the one that broke the bound.
        size: u64,
        /// [`FrameLimits::max_message_bytes`].
        max: u64,
    },
    /// A message with more parts than allowed (dropped).
    #[error("a message of more than {max} parts exceeds the limit")]
    Parts {
        /// [`FrameLimits::max_parts`].
        max: u64,
    },
}

/// Where in the stream the filter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Inside the greeting; this many of its bytes are still to come.
    Greeting(usize),
    /// Before a frame's flags byte.
    Flags,
    /// Inside a frame's size field: its flags, the bytes of the field still to come, and the
    /// size read so far (big-endian).
    Size { flags: u8, left: u8, value: u64 },
    /// Inside a frame's body: bytes still to come, and whether they pass.
    Body { left: u64, pass: bool },
}

const MORE: u8 = 0b001;
const LONG: u8 = 0b010;
const COMMAND: u8 = 0b100;

/// The empty last part written in place of a dropped message's rest.
const TERMINATOR: [u8; 2] = [0, 0];

/// Filters one direction of a ZMTP 3.x connection from its first byte. See the module notes.
#[derive(Debug, Clone)]
pub struct FrameGuard {
    limits: FrameLimits,
    place: Place,
    /// Body bytes of the open message's parts that passed.
    message_bytes: u64,
    /// Parts of the open message that passed.
    parts: u64,
    /// The open message is being dropped: its remaining parts are skipped.
    dropping: bool,
    /// The current frame's header, held until it is complete and judged.
    header: [u8; 9],
    header_len: usize,
    /// Set once a command broke the bound: nothing more passes.
    broken: Option<LimitError>,
}

impl FrameGuard {
    /// A filter at the start of a connection (before the peer's greeting).
    pub fn new(limits: FrameLimits) -> Self {
        FrameGuard {
            limits,
            place: Place::Greeting(GREETING_LEN),
            message_bytes: 0,
            parts: 0,
            dropping: false,
            header: [0; 9],
            header_len: 0,
            broken: None,
        }
    }

    /// Reads the next bytes of the stream, in any chunking, and appends what may pass to
    /// `out`. Each message dropped is reported to `dropped`. `Err` for a command over the
    /// bound: the connection should be closed (what came before it is in `out`).
    pub fn filter(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        dropped: &mut impl FnMut(LimitError),
    ) -> Result<(), LimitError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        while !input.is_empty() {
            if let Err(e) = self.step(&mut input, out, dropped) {
                self.broken = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Consumes what it can of `input` in the current place.
    fn step(
        &mut self,
        input: &mut &[u8],
        out: &mut Vec<u8>,
        dropped: &mut impl FnMut(LimitError),
    ) -> Result<(), LimitError> {
        match self.place {
            Place::Greeting(left) => {
                let n = left.min(input.len());
                out.extend_from_slice(&input[..n]);
                *input = &input[n..];
                self.place = if n == left {
                    Place::Flags
                } else {
                    Place::Greeting(left - n)
                };
            }
            Place::Flags => {
                let flags = input[0];
                *input = &input[1..];
                self.header[0] = flags;
                self.header_len = 1;
                self.place = Place::Size {
                    flags,
                    left: if flags & LONG != 0 { 8 } else { 1 },
                    value: 0,
                };
            }
            Place::Size { flags, left, value } => {
                let byte = input[0];
                *input = &input[1..];
                // header_len <= 8 here: one flags byte and at most 8 size bytes.
                self.header[self.header_len] = byte;
                self.header_len += 1;
                let value = (value << 8) | u64::from(byte);
                if left > 1 {
                    self.place = Place::Size {
                        flags,
                        left: left - 1,
                        value,
                    };
                } else {
                    let pass = self.judge(flags, value, out, dropped)?;
                    if pass {
                        out.extend_from_slice(&self.header[..self.header_len]);
                    }
                    self.place = if value == 0 {
                        Place::Flags
                    } else {
                        Place::Body { left: value, pass }
                    };
                }
            }
            Place::Body { left, pass } => {
                let n = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
                if pass {
                    out.extend_from_slice(&input[..n]);
                }
                *input = &input[n..];
                // n <= left: it came from min(left, len).
                let rest = left - n as u64;
                self.place = if rest == 0 {
                    Place::Flags
                } else {
                    Place::Body { left: rest, pass }
                };
            }
        }
        Ok(())
    }

    /// Judges a complete frame header (`flags`, announced `size`): whether the frame passes.
    fn judge(
        &mut self,
        flags: u8,
        size: u64,
        out: &mut Vec<u8>,
        dropped: &mut impl FnMut(LimitError),
    ) -> Result<bool, LimitError> {
        let max = self.limits.max_message_bytes;
        if flags & COMMAND != 0 {
            if size > max {
                return Err(LimitError::Command { size, max });
            }
            return Ok(true);
        }
        let more = flags & MORE != 0;
        if self.dropping {
            self.dropping = more;
            return Ok(false);
        }
        let total = self.message_bytes.saturating_add(size);
        // The part this header opens is number parts + 1; with MORE set at least one more
        // follows, and a truncated message needs room for its empty last part.
        let needed = self.parts.saturating_add(1).saturating_add(u64::from(more));
        let broken = if total > max {
            Some(LimitError::Bytes { size: total, max })
        } else if needed > self.limits.max_parts {
            Some(LimitError::Parts {
                max: self.limits.max_parts,
            })
        } else {
            None
        };
        if let Some(e) = broken {
            if self.parts > 0 {
                out.extend_from_slice(&TERMINATOR);
            }
            self.message_bytes = 0;
            self.parts = 0;
            self.dropping = more;
            dropped(e);
            return Ok(false);
        }
        if more {
            self.message_bytes = total;
            self.parts += 1;
        } else {
            self.message_bytes = 0;
            self.parts = 0;
        }
        Ok(true)
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

    fn ready() -> Vec<u8> {
        frame(COMMAND, b"\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER")
    }

    /// A greeting, READY, then `frames`.
    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut s = greeting();
        s.extend(ready());
        for f in frames {
            s.extend_from_slice(f);
        }
        s
    }

    /// A message of `n` parts, `each` bytes per part.
    fn message(n: usize, each: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| frame(if i + 1 < n { MORE } else { 0 }, &vec![b'x'; each]))
            .collect()
    }

    /// Filters `input` whole: what passed, the drops, and the verdict.
    fn run(input: &[u8]) -> (Vec<u8>, Vec<LimitError>, Result<(), LimitError>) {
        let mut out = Vec::new();
        let mut drops = Vec::new();
        let r = FrameGuard::new(LIMITS).filter(input, &mut out, &mut |e| drops.push(e));
        (out, drops, r)
    }

    #[test]
    fn messages_within_bounds_pass_unchanged() {
        let mut frames = message(4, 250);
        frames.extend(message(1, 1000));
        frames.extend(message(3, 0));
        frames.push(frame(COMMAND, &[0; 1000]));
        let s = stream(&frames);
        let (out, drops, r) = run(&s);
        assert_eq!((out, drops, r), (s, vec![], Ok(())));
    }

    #[test]
    fn a_huge_announced_frame_is_dropped_at_its_header_and_the_stream_goes_on() {
        let mut s = stream(&[]);
        s.push(LONG);
        s.extend_from_slice(&(1u64 << 62).to_be_bytes());
        s.extend_from_slice(&[7; 5000]);
        let mut g = FrameGuard::new(LIMITS);
        let mut out = Vec::new();
        let mut drops = Vec::new();
        g.filter(&s, &mut out, &mut |e| drops.push(e)).unwrap();
        assert_eq!(out, stream(&[]), "nothing of the frame passes");
        assert_eq!(
            drops,
            vec![LimitError::Bytes {
                size: 1 << 62,
                max: 1000
            }]
        );
        assert!(matches!(g.place, Place::Body { pass: false, .. }));
    }

    #[test]
    fn an_oversized_part_truncates_its_message_and_the_next_one_passes() {
        // Two parts pass (800 bytes), the third would make 1200: dropped from there, with an
        // empty last part in its place; the fourth part is skipped too.
        let mut frames = message(4, 400);
        let next = message(2, 10);
        frames.extend(next.clone());
        let (out, drops, r) = run(&stream(&frames));
        assert_eq!(r, Ok(()));
        assert_eq!(
            drops,
            vec![LimitError::Bytes {
                size: 1200,
                max: 1000
            }]
        );
        let mut want = stream(&frames[..2]);
        want.extend_from_slice(&TERMINATOR);
        for f in &next {
            want.extend_from_slice(f);
        }
        assert_eq!(out, want);
    }

    #[test]
    fn too_many_parts_truncate_within_the_part_limit() {
        let (out, drops, _) = run(&stream(&message(6, 1)));
        assert_eq!(drops, vec![LimitError::Parts { max: 4 }]);
        // Three parts with MORE pass, then the empty last part: four in all.
        let mut want = stream(&message(6, 1)[..3]);
        want.extend_from_slice(&TERMINATOR);
        assert_eq!(out, want);
        // Four parts exactly pass.
        let s = stream(&message(4, 1));
        assert_eq!(run(&s).0, s);
    }

    #[test]
    fn a_single_oversized_part_leaves_no_trace() {
        let mut frames = message(1, 1001);
        frames.extend(message(1, 3));
        let (out, drops, _) = run(&stream(&frames));
        assert_eq!(drops.len(), 1);
        assert_eq!(out, stream(&frames[1..]));
    }

    #[test]
    fn an_oversized_command_is_an_error() {
        let (out, _, r) = run(&stream(&[frame(COMMAND, &[0; 1001])]));
        assert_eq!(
            r,
            Err(LimitError::Command {
                size: 1001,
                max: 1000
            })
        );
        assert_eq!(out, stream(&[]));
    }

    #[test]
    fn long_size_of_a_short_frame_is_read() {
        let mut s = stream(&[]);
        s.push(LONG);
        s.extend_from_slice(&3u64.to_be_bytes());
        s.extend_from_slice(b"abc");
        s.extend(frame(0, b"def"));
        assert_eq!(run(&s).0, s);
    }

    fn chunked(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<LimitError>, Result<(), LimitError>) {
        let mut g = FrameGuard::new(LIMITS);
        let mut out = Vec::new();
        let mut drops = Vec::new();
        let mut at = 0;
        let mut verdict = Ok(());
        for &c in cuts.iter().chain([bytes.len()].iter()) {
            verdict = g.filter(&bytes[at..c], &mut out, &mut |e| drops.push(e));
            at = c;
            if verdict.is_err() {
                break;
            }
        }
        (out, drops, verdict)
    }

    proptest! {
        /// Any chunking of any bytes gives the output, drops and verdict of the whole.
        #[test]
        fn chunking_does_not_matter(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(chunked(&bytes, &cuts), run(&bytes));
        }

        /// What passed passes again unchanged, with nothing dropped.
        #[test]
        fn output_is_within_bounds(
            sizes in proptest::collection::vec((1usize..=7, 0usize..=400), 0..6),
        ) {
            let frames: Vec<Vec<u8>> = sizes.iter().flat_map(|&(n, each)| message(n, each)).collect();
            let (out, _, r) = run(&stream(&frames));
            prop_assert_eq!(r, Ok(()));
            let (again, drops, r) = run(&out);
            prop_assert_eq!(r, Ok(()));
            prop_assert!(drops.is_empty());
            prop_assert_eq!(again, out);
        }
    }
}
