//! Server-Sent Events parsing for the API client (`skiff runs logs --follow`), with no
//! dependencies beyond `std` so that the fuzz crate can include this file on its own.

/// A minimal Server-Sent Events parser: `event:` and `data:` lines, blank line ends an event.
#[derive(Default)]
pub struct SseParser {
    /// Bytes of the line not yet ended: a character split between two chunks is decoded whole.
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events completed, as (event name, data).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[start..start + i]);
            start += i + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let name =
                        if self.event.is_empty() { "message".to_string() } else { std::mem::take(&mut self.event) };
                    out.push((name, self.data.join("\n")));
                    self.data.clear();
                }
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        self.buf.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_and_data_lines_joined() {
        let mut p = SseParser::default();
        assert_eq!(p.feed(b"event: log\ndata: {\"a\":1}\n"), vec![]);
        assert_eq!(
            p.feed(b"\r\ndata: x\ndata:y\n\n: comment\n\n"),
            vec![("log".to_string(), "{\"a\":1}".to_string()), ("message".to_string(), "x\ny".to_string())]
        );
    }

    /// Found by fuzzing (fuzz/seeds/sse/utf8-split): each chunk was decoded on its own, so a
    /// character cut by the network became two U+FFFD.
    #[test]
    fn a_character_split_between_chunks_stays_whole() {
        let mut p = SseParser::default();
        let text = "data: wörld ✓\n\n".as_bytes();
        let cut = text.iter().position(|b| *b == 0xc3).unwrap() + 1;
        assert_eq!(p.feed(&text[..cut]), vec![]);
        assert_eq!(p.feed(&text[cut..]), vec![("message".to_string(), "wörld ✓".to_string())]);
    }
}
