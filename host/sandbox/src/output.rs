//! Splitting a process's output into lines, capturing it, and capping its total size.

use super::Stream;

/// Lines longer than this are delivered in pieces, so one endless line cannot grow memory.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// One stream's state: the unfinished line and what was captured.
#[derive(Debug)]
pub(super) struct Pump {
    stream: Stream,
    pending: Vec<u8>,
    pub captured: Vec<u8>,
    pub eof: bool,
}

/// What both streams share: the caps and the counters.
#[derive(Debug)]
pub(super) struct Budget {
    pub log: bool,
    pub capture_limit: u64,
    pub max_output: u64,
    pub total: u64,
    pub truncated: bool,
    pub limit_reached: bool,
}

impl Pump {
    pub fn new(stream: Stream) -> Self {
        Self { stream, pending: Vec::new(), captured: Vec::new(), eof: false }
    }

    /// Takes one chunk read from the pipe. Returns true when this chunk crossed the output cap.
    pub fn feed(&mut self, chunk: &[u8], budget: &mut Budget, on_line: &(dyn Fn(Stream, &str) + Send + Sync)) -> bool {
        let before = budget.total;
        budget.total += chunk.len() as u64;
        if budget.limit_reached {
            return false;
        }
        let allowed = budget.max_output.saturating_sub(before);
        let crossed = budget.max_output > 0 && chunk.len() as u64 > allowed;
        let chunk = if crossed { &chunk[..allowed as usize] } else { chunk };

        let room = (budget.capture_limit as usize).saturating_sub(self.captured.len());
        if chunk.len() > room {
            budget.truncated = true;
        }
        self.captured.extend_from_slice(&chunk[..chunk.len().min(room)]);

        if budget.log {
            let mut rest = chunk;
            while let Some(i) = rest.iter().position(|&b| b == b'\n') {
                self.pending.extend_from_slice(&rest[..i]);
                self.emit(on_line);
                rest = &rest[i + 1..];
            }
            self.pending.extend_from_slice(rest);
            while self.pending.len() >= MAX_LINE {
                let tail = self.pending.split_off(MAX_LINE);
                self.emit(on_line);
                self.pending = tail;
            }
        }
        if crossed {
            budget.limit_reached = true;
            budget.truncated = true;
            self.finish(on_line);
        }
        crossed
    }

    /// Delivers the unfinished last line, if any (at end of stream).
    pub fn finish(&mut self, on_line: &(dyn Fn(Stream, &str) + Send + Sync)) {
        if !self.pending.is_empty() {
            self.emit(on_line);
        }
    }

    fn emit(&mut self, on_line: &(dyn Fn(Stream, &str) + Send + Sync)) {
        let line = self.pending.strip_suffix(b"\r").unwrap_or(&self.pending);
        on_line(self.stream, &String::from_utf8_lossy(line));
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn budget(max_output: u64, capture_limit: u64) -> Budget {
        Budget { log: true, capture_limit, max_output, total: 0, truncated: false, limit_reached: false }
    }

    #[test]
    fn splits_lines_across_chunks_and_caps() {
        let lines = Mutex::new(Vec::new());
        let on = |_: Stream, l: &str| lines.lock().unwrap().push(l.to_string());
        let mut p = Pump::new(Stream::Stdout);
        let mut b = budget(12, 4);
        assert!(!p.feed(b"ab\r\ncd", &mut b, &on));
        assert!(!p.feed(b"e\nf", &mut b, &on));
        assert!(p.feed(b"ghijklmn\n", &mut b, &on));
        assert!(!p.feed(b"dropped\n", &mut b, &on));
        assert_eq!(*lines.lock().unwrap(), ["ab", "cde", "fghi"]);
        assert_eq!(p.captured, b"ab\r\n");
        assert!(b.truncated && b.limit_reached);
        assert_eq!(b.total, 6 + 3 + 9 + 8);
    }
}
