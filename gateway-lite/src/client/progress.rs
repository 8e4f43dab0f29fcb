//! Progress of a run on stdout: on a terminal, one line redrawn in place (a bar, cell i of n,
//! elapsed time, the running cell's first line); otherwise one plain line per cell start and
//! end, which logs and CI consoles keep readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A redrawn line (stdout is a terminal).
    Bar,
    /// Plain lines.
    Lines,
    /// Nothing (`--no-progress`).
    Off,
}

/// Width of the bar itself, in characters.
const BAR: usize = 20;

/// The progress display.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    total: usize,
    done: usize,
    started: Instant,
    current: Option<(usize, String, Instant)>,
    drawn: bool,
}

impl Progress {
    /// A display for `total` code cells; a bar if stdout is a terminal and `enabled`.
    pub fn new(total: usize, enabled: bool) -> Progress {
        let mode = if !enabled {
            Mode::Off
        } else if std::io::stdout().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            total,
            done: 0,
            started: Instant::now(),
            current: None,
            drawn: false,
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Code cell `i` (1-based) starts; `source` is its code.
    pub fn cell_started(&mut self, i: usize, source: &str) {
        let first = source
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_owned();
        if self.mode == Mode::Lines {
            println!("[{i}/{}] {}", self.total, clip(&first, 100));
        }
        self.current = Some((i, first, Instant::now()));
        self.tick();
    }

    /// The running cell ended.
    pub fn cell_finished(&mut self) {
        self.done += 1;
        if let Some((i, _, t)) = self.current.take()
            && self.mode == Mode::Lines
        {
            println!("[{i}/{}] done in {}", self.total, fmt_duration(t.elapsed()));
        }
        self.tick();
    }

    /// Redraws the bar (on a terminal; a no-op otherwise).
    pub fn tick(&mut self) {
        if self.mode != Mode::Bar {
            return;
        }
        let filled = (self.done * BAR).checked_div(self.total).unwrap_or(BAR);
        let (i, first) = match &self.current {
            Some((i, f, _)) => (*i, f.as_str()),
            None => (self.done, ""),
        };
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(80);
        let head = format!(
            "[{}{}] {i}/{} {}",
            "#".repeat(filled),
            "-".repeat(BAR - filled),
            self.total,
            fmt_duration(self.started.elapsed())
        );
        let room = width.saturating_sub(head.chars().count() + 4);
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{head}  {}", clip(first, room));
        let _ = out.flush();
        self.drawn = true;
    }

    /// Prints `line` (on stdout) without garbling the bar.
    pub fn println(&mut self, line: &str) {
        self.clear_line();
        println!("{line}");
        self.tick();
    }

    /// A progress note (a line, unless progress is off).
    pub fn note(&mut self, line: &str) {
        if self.mode != Mode::Off {
            self.println(line);
        }
    }

    /// Ends the display with a summary line.
    pub fn finish(&mut self, summary: &str) {
        self.clear_line();
        self.drawn = false;
        if self.mode != Mode::Off {
            println!("{summary} ({})", fmt_duration(self.started.elapsed()));
        }
    }

    fn clear_line(&mut self) {
        if self.mode == Mode::Bar && self.drawn {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }
}

/// `s` cut to `n` characters, with an ellipsis if cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
    c.push('…');
    c
}

/// mm:ss, or h:mm:ss from an hour; under a minute with tenths.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{:02}:{:02}", s / 60, s % 60)
    } else {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_clipping_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_secs(75)), "01:15");
        assert_eq!(fmt_duration(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
