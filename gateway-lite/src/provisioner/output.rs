//! Launcher output: one bounded line reader for every provisioner, and the tail kept for
//! error messages.
//!
//! A launcher's stdout and stderr reach the gateway through a pipe (local launchers), an ssh
//! session (remote ones) or the Docker Engine's log stream (containers). All three go through
//! [`LineSplitter`]: bytes in, complete lines out, a line longer than [`MAX_LINE`] cut into
//! pieces, so a launcher (or the kernel behind it) that writes without newlines cannot grow
//! the gateway's memory. Each line goes to the gateway's log (target `kernel`) and, for
//! stderr, into the [`LogTail`] that launch errors quote.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept whole; longer ones are split.
pub const MAX_LINE: usize = 8 * 1024;

/// Splits a byte stream into bounded lines (sans-IO: the caller feeds the bytes).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes`; returns the lines they complete (without the newline, trailing
    /// whitespace trimmed, blank lines skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut lines = Vec::new();
        loop {
            let head = &self.buf[..self.buf.len().min(MAX_LINE)];
            let cut = head
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| p + 1)
                .or_else(|| (self.buf.len() >= MAX_LINE).then_some(MAX_LINE));
            let Some(n) = cut else { break };
            let line: Vec<u8> = self.buf.drain(..n).collect();
            lines.extend(text(&line));
        }
        lines
    }

    /// The last, unterminated line, if any (at the end of the stream).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        text(&rest)
    }
}

fn text(line: &[u8]) -> Option<String> {
    let t = String::from_utf8_lossy(line).trim_end().to_owned();
    (!t.is_empty()).then_some(t)
}

/// Reads `stream` to its end, handing each bounded line to `each`.
pub async fn read_lines(mut stream: impl AsyncRead + Unpin, mut each: impl FnMut(String)) {
    let mut splitter = LineSplitter::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in splitter.push(&chunk[..n]) {
            each(line);
        }
    }
    if let Some(line) = splitter.finish() {
        each(line);
    }
}

/// Logs one line of kernel `kernel_id`'s launcher, keeping it in `tail` if given.
pub fn log_line(kernel_id: &str, line: String, tail: Option<&LogTail>) {
    tracing::info!(target: "kernel", kernel_id, "{line}");
    if let Some(t) = tail {
        t.push(line);
    }
}

/// The last lines a launcher wrote, for error messages: kept in memory when the output
/// streams through the gateway, read back from the end of the file when it goes to a file.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    file: Option<PathBuf>,
}

impl LogTail {
    /// Lines kept.
    pub const LINES: usize = 20;

    /// A tail read from `path` on demand.
    pub fn file(path: PathBuf) -> Self {
        LogTail {
            lines: Arc::default(),
            file: Some(path),
        }
    }

    /// Appends a line, dropping the oldest beyond [`Self::LINES`].
    pub fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == Self::LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    /// Replaces the kept lines with `lines` (the last [`Self::LINES`] of them).
    pub fn replace(&self, lines: Vec<String>) {
        if let Ok(mut l) = self.lines.lock() {
            l.clear();
            let skip = lines.len().saturating_sub(Self::LINES);
            l.extend(lines.into_iter().skip(skip));
        }
    }

    /// The kept lines, joined with newlines.
    pub fn text(&self) -> String {
        if let Some(path) = &self.file {
            return file_tail(path, Self::LINES);
        }
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// The last `lines` lines of `path` (at most the last 64 KiB are read).
fn file_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(MAX).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"one\n\npar"), vec!["one"]);
        assert_eq!(s.push(b"tial\r\n"), vec!["partial"]);
        let long = vec![b'x'; MAX_LINE + 10];
        let lines = s.push(&long);
        assert_eq!(lines, vec!["x".repeat(MAX_LINE)]);
        assert_eq!(s.push(b"\ntail"), vec!["x".repeat(10)]);
        assert_eq!(s.finish().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
    }

    #[tokio::test]
    async fn reader_feeds_every_line() {
        let data = format!("a\n{}\nb", "y".repeat(MAX_LINE * 2 + 1));
        let mut got = Vec::new();
        read_lines(data.as_bytes(), |l| got.push(l.len())).await;
        assert_eq!(got, vec![1, MAX_LINE, MAX_LINE, 1, 1]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let t = LogTail::default();
        for i in 0..25 {
            t.push(i.to_string());
        }
        assert!(t.text().starts_with("5\n") && t.text().ends_with("\n24"));
        t.replace(vec!["x".into()]);
        assert_eq!(t.text(), "x");
    }
}
