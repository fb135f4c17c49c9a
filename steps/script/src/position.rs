//! Where the script sits in the pipeline file, and the rewriting of the engine's
//! positions (`at line L, col C` in syntax errors, `(<script>:L:C)` in stack
//! traces) into positions in that file.

/// The path the engine gives the user's script; stack frames name it.
pub const SCRIPT_PATH: &str = "<script>";
/// The path of Skiff's own JavaScript (the API); its frames are dropped from traces.
pub const PRELUDE_PATH: &str = "<skiff>";

/// Where the script text starts: input `origin`, `FILE:LINE:COL` (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: u32,
    pub col: u32,
}

impl Default for Origin {
    /// Positions relative to the script itself, for a step run without `origin`.
    fn default() -> Self {
        Self { file: "script".into(), line: 1, col: 1 }
    }
}

impl Origin {
    /// Parses `FILE:LINE:COL`; the file may itself contain `:` (a Windows drive, a URL).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("input `origin` is `{text}`: write it as FILE:LINE:COL, like `.skiff.yaml:12:15`");
        let (rest, col) = text.rsplit_once(':').ok_or_else(bad)?;
        let (file, line) = rest.rsplit_once(':').ok_or_else(bad)?;
        let line: u32 = line.parse().map_err(|_| bad())?;
        let col: u32 = col.parse().map_err(|_| bad())?;
        if file.is_empty() || line == 0 || col == 0 {
            return Err(bad());
        }
        Ok(Self { file: file.into(), line, col })
    }

    /// Script line `line`, column `col` (1-based) as `FILE:LINE:COL` in the pipeline file.
    /// Every line is shifted sideways by where the first starts: a multi-line script is a
    /// YAML block (`script: |`), whose lines all start at that column.
    pub fn locate(&self, line: u32, col: u32) -> String {
        let file_line = self.line + line.saturating_sub(1);
        let file_col = col + self.col - 1;
        format!("{}:{file_line}:{file_col}", self.file)
    }

    /// Rewrites an engine message: every `at line L, col C` (syntax errors) and every
    /// `<script>:L:C` (stack frames) becomes a position in the pipeline file, and frames of
    /// Skiff's own JavaScript are dropped.
    /// Frames of the engine's own native functions are dropped too, and a run of identical
    /// frames (deep recursion) is cut to one line and a count.
    pub fn rewrite(&self, text: &str) -> String {
        let prelude = format!("({PRELUDE_PATH}:");
        let mut kept: Vec<String> = Vec::new();
        let mut repeats = 0;
        for line in text.lines() {
            let frame = line.trim_start().starts_with("at ");
            if frame && (line.contains(&prelude) || line.ends_with("(native)")) {
                continue;
            }
            if frame && kept.last().is_some_and(|l| l == line) {
                repeats += 1;
                continue;
            }
            if repeats > 0 {
                kept.push(format!("    ... the frame above {repeats} more time(s)"));
                repeats = 0;
            }
            kept.push(line.to_string());
        }
        if repeats > 0 {
            kept.push(format!("    ... the frame above {repeats} more time(s)"));
        }
        let text = kept.join("\n");
        let text = replace_positions(&text, " at line ", ", col ", |l, c| format!(" at {}", self.locate(l, c)));
        let text = replace_positions(&text, &format!("{SCRIPT_PATH}:"), ":", |l, c| self.locate(l, c));
        // A frame the engine has no position for still names the file.
        text.replace(&format!("{SCRIPT_PATH}:?:?"), &self.file)
    }
}

/// Replaces each `{prefix}L{middle}C` (L and C decimal numbers) with `with(L, C)`.
fn replace_positions(text: &str, prefix: &str, middle: &str, with: impl Fn(u32, u32) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at]);
        let after = &rest[at + prefix.len()..];
        let parsed = number(after).and_then(|(line, tail)| {
            let tail = tail.strip_prefix(middle)?;
            let (col, tail) = number(tail)?;
            Some((line, col, tail))
        });
        match parsed {
            Some((line, col, tail)) => {
                out.push_str(&with(line, col));
                rest = tail;
            }
            None => {
                out.push_str(prefix);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::parse(".skiff.yaml:12:15").unwrap()
    }

    #[test]
    fn parses_origins() {
        assert_eq!(origin(), Origin { file: ".skiff.yaml".into(), line: 12, col: 15 });
        assert_eq!(Origin::parse("C:/ci/p.yaml:3:1").unwrap().file, "C:/ci/p.yaml");
        for bad in ["", "x", "f:1", "f:a:1", ":1:1", "f:0:1", "f:1:0"] {
            assert!(Origin::parse(bad).unwrap_err().contains("FILE:LINE:COL"), "{bad}");
        }
    }

    #[test]
    fn first_line_shifts_the_column_later_lines_do_not() {
        let o = origin();
        assert_eq!(o.locate(1, 1), ".skiff.yaml:12:15");
        assert_eq!(o.locate(1, 7), ".skiff.yaml:12:21");
        assert_eq!(o.locate(3, 7), ".skiff.yaml:14:21");
        assert_eq!(Origin::default().locate(2, 4), "script:2:4");
    }

    #[test]
    fn rewrites_syntax_errors_and_stack_frames() {
        let o = origin();
        assert_eq!(
            o.rewrite("SyntaxError: expected token ';', got 'x' at line 2, col 5"),
            "SyntaxError: expected token ';', got 'x' at .skiff.yaml:13:19"
        );
        let trace = "Error: boom\n    at f (<script>:1:20)\n    at run (<skiff>:80:3)\n    at <main> (<script>:3:1)\n    at  (native)";
        assert_eq!(o.rewrite(trace), "Error: boom\n    at f (.skiff.yaml:12:34)\n    at <main> (.skiff.yaml:14:15)");
        let deep = "RangeError: too deep\n    at r (<script>:2:3)\n    at r (<script>:2:3)\n    at r (<script>:2:3)\n    at <main> (<script>:3:1)";
        assert_eq!(
            o.rewrite(deep),
            "RangeError: too deep\n    at r (.skiff.yaml:13:17)\n    ... the frame above 2 more time(s)\n    at <main> (.skiff.yaml:14:15)"
        );
        // Text that only looks like a position is left alone.
        assert_eq!(o.rewrite("at line x, col 1 and <script>:a"), "at line x, col 1 and <script>:a");
        assert_eq!(o.rewrite("E\n    at <main> (<script>:?:?)"), "E\n    at <main> (.skiff.yaml)");
    }
}
