//! A log line as the console shows it: colours become spans with classes, and nothing else of
//! what a step printed survives as anything but text.
//!
//! The line is first made inert by [`skiff_pipeline::inert::terminal_text`] (the same rules as
//! `skiff runs logs`): a carriage return keeps what a terminal would show after it, and every
//! escape sequence but a colour (SGR) and every other control character is removed. The SGR
//! sequences left are then read into a style, and the text between them is cut into
//! [`Segment`]s. The segments are text: [`to_html`] escapes every character that HTML gives a
//! meaning to, and the browser script builds nodes from them with `textContent`.

use std::fmt::Write as _;

/// A run of text in one style: the CSS classes of the style (`fg-1 b`) and the text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// Space-separated classes (`fg-N`/`bg-N` for the 16 colours, `b`, `dim`, `i`, `u`); empty
    /// for the default style.
    pub class: String,
    /// The text, as printed (not escaped).
    pub text: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    fg: Option<u8>,
    bg: Option<u8>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

impl Style {
    fn class(&self) -> String {
        let mut c = String::new();
        let mut add = |s: &str| {
            if !c.is_empty() {
                c.push(' ');
            }
            c.push_str(s);
        };
        if let Some(f) = self.fg {
            add(&format!("fg-{f}"));
        }
        if let Some(b) = self.bg {
            add(&format!("bg-{b}"));
        }
        if self.bold {
            add("b");
        }
        if self.dim {
            add("dim");
        }
        if self.italic {
            add("i");
        }
        if self.underline {
            add("u");
        }
        c
    }

    /// Applies the parameters of one `ESC [ … m`. 256-colour and true-colour choices are read
    /// (so their numbers are not taken for other codes) and shown as the default colour,
    /// except the first 16 of the 256.
    fn apply(&mut self, params: &str) {
        let codes: Vec<u16> = params.split([';', ':']).map(|p| p.parse().unwrap_or(0)).collect();
        let mut i = 0;
        while i < codes.len() {
            match codes[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => (self.bold, self.dim) = (false, false),
                23 => self.italic = false,
                24 => self.underline = false,
                c @ 30..=37 => self.fg = Some((c - 30) as u8),
                39 => self.fg = None,
                c @ 40..=47 => self.bg = Some((c - 40) as u8),
                49 => self.bg = None,
                c @ 90..=97 => self.fg = Some((c - 90 + 8) as u8),
                c @ 100..=107 => self.bg = Some((c - 100 + 8) as u8),
                c @ (38 | 48) => {
                    let colour = match codes.get(i + 1) {
                        Some(5) => {
                            let n = codes.get(i + 2).copied();
                            i += 2;
                            n.filter(|n| *n < 16).map(|n| n as u8)
                        }
                        Some(2) => {
                            i += 4;
                            None
                        }
                        _ => None,
                    };
                    if c == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// One line of a log as styled segments; empty segments are left out.
pub fn segments(line: &str) -> Vec<Segment> {
    let clean = skiff_pipeline::inert::terminal_text(line, true);
    let mut out: Vec<Segment> = Vec::new();
    let mut style = Style::default();
    let mut rest: &str = &clean;
    let mut push = |style: &Style, text: &str| {
        if text.is_empty() {
            return;
        }
        let class = style.class();
        match out.last_mut() {
            Some(last) if last.class == class => last.text.push_str(text),
            _ => out.push(Segment { class, text: text.to_string() }),
        }
    };
    // `terminal_text` left only `ESC [ params m`, in the 7-bit form.
    while let Some(start) = rest.find('\u{1b}') {
        push(&style, &rest[..start]);
        let after = &rest[start..];
        match after.strip_prefix("\u{1b}[").and_then(|s| s.find('m').map(|end| (&s[..end], &s[end + 1..]))) {
            Some((params, tail)) => {
                style.apply(params);
                rest = tail;
            }
            None => {
                // Not a colour after all: dropped, as a terminal would not print it.
                rest = &after['\u{1b}'.len_utf8()..];
            }
        }
    }
    push(&style, rest);
    out
}

/// Escapes text for HTML content and attribute values alike.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// One line of a log as HTML: a `<span class="…">` per styled segment, plain text otherwise.
pub fn to_html(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    for s in segments(line) {
        if s.class.is_empty() {
            escape(&s.text, &mut out);
        } else {
            let _ = write!(out, "<span class=\"{}\">", s.class);
            escape(&s.text, &mut out);
            out.push_str("</span>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn colours_become_classes() {
        assert_eq!(to_html("\u{1b}[1;31merror\u{1b}[0m: bad"), "<span class=\"fg-1 b\">error</span>: bad");
        assert_eq!(to_html("\u{1b}[38;5;10mok\u{1b}[39m"), "<span class=\"fg-10\">ok</span>");
        assert_eq!(to_html("\u{1b}[38;2;1;2;3mrgb\u{1b}[4mu"), "rgb<span class=\"u\">u</span>");
    }

    #[test]
    fn markup_is_text() {
        assert_eq!(
            to_html("<script>alert(1)</script> & \"x\" 'y'"),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; &#39;y&#39;"
        );
    }

    #[test]
    fn titles_cursor_moves_and_overwrites_are_removed() {
        assert_eq!(to_html("\u{1b}]0;pwned\u{7}visible\u{1b}[2J\u{1b}[10;1H!"), "visible!");
        assert_eq!(to_html("progress 10%\rprogress 100%"), "progress 100%");
        assert_eq!(to_html("a\u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\b"), "alinkb");
    }

    proptest! {
        /// Whatever a step prints, no `<` of it reaches the page as markup, no escape or control
        /// character survives, and the only tags are the renderer's own spans.
        #[test]
        fn output_is_inert(line in "(\\PC|[\u{1b}\u{7}\r\n\t\u{9b}\u{9c}<>&\"';\\[\\]0-9mH])*") {
            let html = to_html(&line);
            prop_assert!(!html.chars().any(|c| c.is_control() && c != '\t'), "control left in {html:?}");
            let without_spans = html.replace("</span>", "");
            let mut rest = without_spans.as_str();
            while let Some(i) = rest.find('<') {
                let tag = &rest[i..];
                prop_assert!(tag.starts_with("<span class=\""), "unexpected markup in {html:?}");
                let end = tag.find('>').unwrap();
                let class = &tag["<span class=\"".len()..end - 1];
                prop_assert!(class.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ' '));
                rest = &tag[end + 1..];
            }
            // The text of the segments is the text of the HTML once unescaped.
            let text: String = segments(&line).into_iter().map(|s| s.text).collect();
            prop_assert!(!text.contains('\u{1b}'), "escape left in the text");
        }
    }
}
