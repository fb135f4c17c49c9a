//! Logs are data: a step's text made inert before a terminal shows it.
//!
//! A step controls every byte of its log. Left alone, it could clear the screen, print a fake
//! `✓ run 99 success` over the real status, set the window title or a hyperlink, ring the bell,
//! or go back over its own `[job/step]` prefix with a carriage return or backspaces. What a
//! terminal shows of a log line is therefore rebuilt here: printable text, tabs, and (only when
//! asked for) colours, the SGR form `ESC [ … m`. Every other escape sequence (CSI, OSC, DCS,
//! APC, PM, SOS and two-byte escapes) and every other control character, C0 and C1, is removed;
//! bidirectional overrides, which reorder what is shown, become U+FFFD.
//!
//! A carriage return is what progress bars use to redraw a line: as a terminal would show
//! it, only the text after the last carriage return is kept.

use std::borrow::Cow;

const ESC: char = '\u{1b}';
const BEL: char = '\u{7}';

/// `text` as a terminal may show it: colours kept when `colours`, everything else inert.
pub fn terminal_text(text: &str, colours: bool) -> Cow<'_, str> {
    let text = text.strip_suffix("\r\n").or_else(|| text.strip_suffix('\n')).unwrap_or(text);
    if text.chars().all(|c| !needs_care(c)) {
        return Cow::Borrowed(text);
    }
    // The line as shown: after the last carriage return (that is not the end of the line).
    let shown = match text.trim_end_matches('\r').rfind('\r') {
        Some(i) => &text[i + 1..],
        None => text,
    };
    let mut out = String::with_capacity(shown.len());
    let chars: Vec<char> = shown.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == ESC || c == '\u{9b}' {
            let (len, sgr) = escape_len(&chars[i..]);
            if sgr && colours {
                // Re-emit in the 7-bit form, whatever form it came in.
                out.push(ESC);
                out.push('[');
                let start = if c == ESC { 2 } else { 1 };
                out.extend(&chars[i + start..i + len]);
            }
            i += len;
            continue;
        }
        if c == '\t' {
            out.push(c);
        } else if is_bidi_control(c) {
            out.push('\u{fffd}');
        } else if !c.is_control() {
            out.push(c);
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether colours may go to standard output: a terminal, and `NO_COLOR` unset or empty.
pub fn colours_on_stdout() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn needs_care(c: char) -> bool {
    (c.is_control() && c != '\t') || is_bidi_control(c)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

/// The length of the escape sequence at the start of `s` (which starts with ESC or the 8-bit
/// CSI), and whether it is a colour (SGR) sequence. An unfinished sequence runs to the end.
fn escape_len(s: &[char]) -> (usize, bool) {
    let (body, start) = if s[0] == '\u{9b}' {
        ('[', 1)
    } else {
        match s.get(1) {
            None => return (1, false),
            Some(&c) => (c, 2),
        }
    };
    match body {
        // CSI: parameters and intermediates, then one final byte in @..~.
        '[' => {
            let mut k = start;
            let mut plain = true;
            while let Some(&c) = s.get(k) {
                if ('@'..='~').contains(&c) {
                    return (k + 1, c == 'm' && plain);
                }
                if !(c.is_ascii_digit() || c == ';' || c == ':') {
                    plain = false;
                }
                if c.is_control() && c != ESC {
                    // A control inside a sequence ends it, unshown.
                    return (k, false);
                }
                k += 1;
            }
            (s.len(), false)
        }
        // OSC, DCS, SOS, PM, APC: a string up to BEL or ST (ESC \).
        ']' | 'P' | 'X' | '^' | '_' => {
            let mut k = start;
            while let Some(&c) = s.get(k) {
                if c == BEL || c == '\u{9c}' {
                    return (k + 1, false);
                }
                if c == ESC {
                    return (if s.get(k + 1) == Some(&'\\') { k + 2 } else { k }, false);
                }
                k += 1;
            }
            (s.len(), false)
        }
        // Two-byte escapes, with any intermediates (`ESC ( B`, `ESC c`, `ESC 7`).
        _ => {
            let mut k = 1;
            while s.get(k).is_some_and(|c| (' '..='/').contains(c)) {
                k += 1;
            }
            (if s.get(k).is_some() { k + 1 } else { k }, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(terminal_text("hello\tworld ✓", false), Cow::Borrowed("hello\tworld ✓")));
    }

    #[test]
    fn colours_are_kept_only_when_asked() {
        let red = "\u{1b}[31mred\u{1b}[0m";
        assert_eq!(terminal_text(red, true), red);
        assert_eq!(terminal_text(red, false), "red");
        assert_eq!(terminal_text("\u{9b}1;32mok", true), "\u{1b}[1;32mok");
    }

    #[test]
    fn everything_else_is_removed() {
        // Clear screen, cursor home, a fake status, a title, a hyperlink, the bell.
        let attack = "\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}\u{1b}]8;;http://evil\u{1b}\\click\u{1b}]8;;\u{1b}\\\u{7}✓ run 99 success";
        assert_eq!(terminal_text(attack, true), "click✓ run 99 success");
        assert_eq!(terminal_text("a\u{8}\u{8}\u{8}b\u{7f}", true), "ab");
        assert_eq!(terminal_text("\u{1b}[?1049h\u{1b}(Bx\u{1b}c", true), "x");
        assert_eq!(terminal_text("\u{1b}P+q\u{1b}\\y\u{90}", true), "y");
        assert_eq!(terminal_text("abc\u{202e}fed", true), "abc\u{fffd}fed");
        assert_eq!(terminal_text("unfinished \u{1b}[31", true), "unfinished ");
        assert_eq!(terminal_text("unfinished \u{1b}]0;title", true), "unfinished ");
    }

    #[test]
    fn a_carriage_return_redraws_the_line_and_never_the_prefix() {
        assert_eq!(terminal_text("10%\r50%\r100%", false), "100%");
        assert_eq!(terminal_text("line\r\n", false), "line");
        assert_eq!(terminal_text("\r[build/test] ✓ fake", false), "[build/test] ✓ fake");
    }

    proptest::proptest! {
        #[test]
        fn nothing_but_colours_and_tabs_survives(s in "\\PC*|[\\x00-\\x20\\x7f-\\x9f\\[\\]m0-9;a-z\u{202e}]*") {
            for colours in [false, true] {
                let out = terminal_text(&s, colours);
                let mut plain = String::new();
                let mut rest = out.as_ref();
                while let Some(i) = rest.find('\u{1b}') {
                    proptest::prop_assert!(colours, "an escape survived without colours: {out:?}");
                    plain.push_str(&rest[..i]);
                    let after = &rest[i + 1..];
                    proptest::prop_assert!(after.starts_with('['), "{out:?}");
                    let end = after.find('m').expect("an SGR ends in m");
                    proptest::prop_assert!(after[1..end].chars().all(|c| c.is_ascii_digit() || c == ';' || c == ':'), "{out:?}");
                    rest = &after[end + 1..];
                }
                plain.push_str(rest);
                proptest::prop_assert!(
                    !plain.chars().any(|c| (c.is_control() && c != '\t') || is_bidi_control(c)),
                    "a control survived: {out:?}"
                );
            }
        }
    }
}
