//! The files a script writes to talk back: `$SKIFF_OUTPUT`, `$SKIFF_ENV` (the
//! formats of GitHub's `$GITHUB_OUTPUT` / `$GITHUB_ENV`) and `$SKIFF_PATH`.
//!
//! Plain functions over text, so they are tested natively.

/// A malformed line, with its 1-based line number and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses `NAME=VALUE` lines and `NAME<<DELIMITER` ... `DELIMITER` blocks, in order.
///
/// As in GitHub's runner: empty lines are skipped; whichever of `=` and `<<` comes
/// first decides the form; a value runs to the end of its line (it may contain `=`);
/// a heredoc's lines are joined with `\n` and end at a line equal to the delimiter;
/// `\r\n` line ends are accepted. A later value for a name replaces an earlier one.
pub fn parse_key_values(text: &str) -> Result<Vec<(String, String)>, ParseError> {
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    // A trailing newline leaves one empty last element, which is skipped like any empty line.
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let number = i + 1;
        i += 1;
        if line.is_empty() {
            continue;
        }
        let err = |message: String| ParseError { line: number, message };
        let eq = line.find('=');
        let heredoc = line.find("<<");
        match (eq, heredoc) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                let (key, value) = (&line[..e], &line[e + 1..]);
                if key.is_empty() {
                    return Err(err(format!("`{line}` has no name before `=`: write NAME=VALUE")));
                }
                out.push((key.to_string(), value.to_string()));
            }
            (_, Some(h)) => {
                let (key, delimiter) = (&line[..h], &line[h + 2..]);
                if key.is_empty() || delimiter.is_empty() {
                    return Err(err(format!(
                        "`{line}` needs a name and a delimiter: write NAME<<EOF, the value's lines, then EOF"
                    )));
                }
                let start = i;
                let end = (start..lines.len()).find(|&j| lines[j] == delimiter).ok_or_else(|| {
                    err(format!("no line `{delimiter}` closes the value of `{key}` opened by `{line}`"))
                })?;
                out.push((key.to_string(), lines[start..end].join("\n")));
                i = end + 1;
            }
            _ => {
                return Err(err(format!("`{line}` is neither NAME=VALUE nor NAME<<DELIMITER")));
            }
        }
    }
    Ok(out)
}

/// One directory per non-empty line, in order.
pub fn parse_path(text: &str) -> Vec<String> {
    text.lines().map(str::trim_end).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        parse_key_values(text).unwrap()
    }
    fn pair(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn simple_values() {
        assert_eq!(kv("a=1\nb=x=y\n\nc=\n"), [pair("a", "1"), pair("b", "x=y"), pair("c", "")]);
        assert_eq!(kv(""), []);
        assert_eq!(kv("a=1"), [pair("a", "1")]);
        assert_eq!(kv("a=1\r\nb=2\r\n"), [pair("a", "1"), pair("b", "2")]);
        assert_eq!(kv("a = 1 \n"), [pair("a ", " 1 ")]);
    }

    #[test]
    fn heredoc_values() {
        let text = "json<<EOF\n{\n  \"a\": 1\n}\nEOF\nafter=yes\n";
        assert_eq!(kv(text), [pair("json", "{\n  \"a\": 1\n}"), pair("after", "yes")]);
        assert_eq!(kv("e<<X\nX\n"), [pair("e", "")]);
        assert_eq!(kv("e<<X\n\nX\n"), [pair("e", "")]);
        assert_eq!(kv("e<<X\na\n\nb\nX\n"), [pair("e", "a\n\nb")]);
        assert_eq!(kv("m<<EOF\r\nl1\r\nl2\r\nEOF\r\n"), [pair("m", "l1\nl2")]);
        // A line holding only part of the delimiter does not close it.
        assert_eq!(kv("m<<EOF\n EOF\nEOF \nEOF\n"), [pair("m", " EOF\nEOF ")]);
        // Lines inside a heredoc are not parsed.
        assert_eq!(kv("m<<END\nx=1\ny<<Z\nEND\n"), [pair("m", "x=1\ny<<Z")]);
    }

    #[test]
    fn first_marker_decides_the_form() {
        assert_eq!(kv("a=b<<c\n"), [pair("a", "b<<c")]);
        assert_eq!(kv("a<<=\nv\n=\n"), [pair("a", "v")]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_key_values("a=1\njunk\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("neither"));
        assert_eq!(parse_key_values("=v").unwrap_err().line, 1);
        assert!(parse_key_values("k<<\n").is_err());
        assert!(parse_key_values("<<EOF\nEOF\n").is_err());
        let e = parse_key_values("a=1\nk<<EOF\nnever closed\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("closes"), "{e}");
    }

    #[test]
    fn later_values_come_later() {
        assert_eq!(kv("a=1\na=2\n"), [pair("a", "1"), pair("a", "2")]);
    }

    #[test]
    fn path_lines() {
        assert_eq!(parse_path("/opt/a/bin\n\n/opt/b\r\n"), ["/opt/a/bin", "/opt/b"]);
        assert!(parse_path("").is_empty());
    }
}
