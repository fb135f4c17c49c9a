//! How `${{ }}` reaches a script that runs as code (`run:`, or `with: script` of `uses: shell`).
//!
//! An expression's value is never spliced into the source: GitHub Actions does that, and a
//! commit message such as `x"; curl evil | sh; "` becomes code. Here every expression becomes an
//! environment variable `SKIFF_EXPR_n`, and the script refers to it in its own language, at
//! the place the expression stood: in code, or inside a string literal (the literal is split
//! around the reference, so `echo 'hi ${{ x }}'` and `print("hi ${{ x }}")` print the value).
//!
//! A small lexer per language tracks where the expression stands (quotes, comments,
//! here-documents). A place where no reference can work (a quoted here-document, a script
//! for an interpreter Skiff does not know) is an error that `skiff validate` shows.

/// The script languages whose references Skiff knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// bash, sh, dash, zsh, ksh.
    Posix,
    /// python, python3.
    Python,
    /// node.
    Node,
    /// pwsh, powershell.
    Pwsh,
}

impl Lang {
    /// The language of a `shell:` value (`bash`, `python`, or a command line with `{0}`).
    pub fn of_shell(shell: &str) -> Option<Lang> {
        let program = shell.split_whitespace().next().unwrap_or("bash");
        let name = program.rsplit('/').next().unwrap_or(program);
        let name = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        match name {
            "bash" | "sh" | "dash" | "zsh" | "ksh" => Some(Lang::Posix),
            "python" => Some(Lang::Python),
            // `js`: the sandboxed JavaScript engine of `script:` reads values as node does.
            "node" | "nodejs" | "js" => Some(Lang::Node),
            "pwsh" | "powershell" => Some(Lang::Pwsh),
            _ => None,
        }
    }
}

/// A piece of a script: source text, or the name of the variable holding an expression's value.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// Source text as written.
    Text(&'a str),
    /// An expression, held in this environment variable.
    Var(&'a str),
}

/// Why an expression cannot stand where it does; the index is the piece's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    /// The index of the [`Piece::Var`] in the pieces.
    pub piece: usize,
    /// What to do instead.
    pub message: String,
}

/// The script with each variable referenced in `lang` where it stands.
pub fn render(lang: Lang, pieces: &[Piece]) -> Result<String, Misplaced> {
    let mut out = String::new();
    let mut lexer = Lexer::new(lang);
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Text(t) => lexer.text(t, &mut out),
            Piece::Var(v) => lexer.var(v, &mut out).map_err(|message| Misplaced { piece: i, message })?,
        }
    }
    lexer.finish(&mut out);
    Ok(out)
}

/// Where the lexer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Code,
    /// To the end of the line.
    LineComment,
    /// `/* */` (Node) or `<# #>` (pwsh).
    BlockComment,
    /// A string literal. `start` is where it starts in the output (prefix included), `open` its
    /// opening (prefix and quotes), `close` its closing quotes; `split` once a reference was
    /// put inside (the literal is then wrapped in parentheses, closed after it).
    Str {
        start: usize,
        open: String,
        close: String,
        escapes: bool,
        split: bool,
    },
    /// A Node template literal (`${ }` inside it is code, counted by `depth` braces).
    Template,
    /// A POSIX here-document body up to the line `word`; `quoted` when nothing expands in it.
    Heredoc {
        word: String,
        strip_tabs: bool,
        quoted: bool,
        line: String,
    },
}

/// An escape character and what it escapes, taken as they are; how many characters that was.
fn escaped(ch: char, next: Option<char>, out: &mut String) -> usize {
    out.push(ch);
    match next {
        Some(n) => {
            out.push(n);
            2
        }
        None => 1,
    }
}

struct Lexer {
    lang: Lang,
    state: State,
    /// Node: the brace depths of `${ }` inside template literals, innermost last.
    template_exprs: Vec<usize>,
    depth: usize,
    /// POSIX: a here-document announced on this line, starting at the next.
    pending_heredoc: Option<(String, bool, bool)>,
    /// The last code character seen (for POSIX `#` at a word start).
    prev: char,
}

impl Lexer {
    fn new(lang: Lang) -> Self {
        Lexer { lang, state: State::Code, template_exprs: Vec::new(), depth: 0, pending_heredoc: None, prev: '\n' }
    }

    fn text(&mut self, t: &str, out: &mut String) {
        let chars: Vec<char> = t.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            i += self.step(&chars[i..], out);
        }
    }

    /// Consumes at least one character of `c`; returns how many.
    fn step(&mut self, c: &[char], out: &mut String) -> usize {
        let ch = c[0];
        let next = c.get(1).copied();
        let escape = self.escape_char();
        match &mut self.state {
            State::LineComment => {
                out.push(ch);
                if ch == '\n' {
                    self.state = State::Code;
                    self.newline();
                }
                1
            }
            State::BlockComment => {
                let end = if self.lang == Lang::Pwsh { ('#', '>') } else { ('*', '/') };
                if ch == end.0 && next == Some(end.1) {
                    out.push(ch);
                    out.push(end.1);
                    self.state = State::Code;
                    return 2;
                }
                out.push(ch);
                1
            }
            State::Heredoc { word, strip_tabs, line, .. } => {
                out.push(ch);
                if ch == '\n' {
                    let l = if *strip_tabs { line.trim_start_matches('\t') } else { line.as_str() };
                    if l == word.as_str() {
                        self.state = State::Code;
                        self.prev = '\n';
                    } else {
                        line.clear();
                    }
                } else {
                    line.push(ch);
                }
                1
            }
            State::Str { close, escapes, split, .. } => {
                if *escapes && ch == escape {
                    return escaped(ch, next, out);
                }
                let close_chars: Vec<char> = close.chars().collect();
                if c.starts_with(&close_chars) {
                    // pwsh doubles a quote to escape it inside single quotes.
                    if self.lang == Lang::Pwsh && close == "'" && next == Some('\'') {
                        out.push_str("''");
                        return 2;
                    }
                    out.push_str(close);
                    if *split {
                        out.push(')');
                    }
                    self.state = State::Code;
                    self.prev = ch;
                    return close_chars.len();
                }
                out.push(ch);
                1
            }
            State::Template => {
                if ch == '\\' {
                    return escaped(ch, next, out);
                }
                if ch == '`' {
                    out.push(ch);
                    self.state = State::Code;
                    return 1;
                }
                if ch == '$' && next == Some('{') {
                    out.push_str("${");
                    self.template_exprs.push(self.depth);
                    self.depth += 1;
                    self.state = State::Code;
                    return 2;
                }
                out.push(ch);
                1
            }
            State::Code => self.code(c, out),
        }
    }

    fn escape_char(&self) -> char {
        if self.lang == Lang::Pwsh { '`' } else { '\\' }
    }

    fn newline(&mut self) {
        self.prev = '\n';
        if let Some((word, strip_tabs, quoted)) = self.pending_heredoc.take() {
            self.state = State::Heredoc { word, strip_tabs, quoted, line: String::new() };
        }
    }

    fn open_str(&mut self, out: &mut String, open: String, close: String, escapes: bool) -> usize {
        let start = out.len();
        out.push_str(&open);
        let n = open.chars().count();
        self.state = State::Str { start, open, close, escapes, split: false };
        n
    }

    fn code(&mut self, c: &[char], out: &mut String) -> usize {
        let ch = c[0];
        let next = c.get(1).copied();
        let at = |k: usize| c.get(k).copied();
        match self.lang {
            Lang::Posix => {
                if ch == '\\' {
                    out.push(ch);
                    if let Some(n) = next {
                        out.push(n);
                        self.prev = n;
                        if n == '\n' {
                            self.prev = ' ';
                        }
                        return 2;
                    }
                    return 1;
                }
                if ch == '#' && (self.prev.is_whitespace() || matches!(self.prev, ';' | '&' | '|' | '(' | ')')) {
                    out.push(ch);
                    self.state = State::LineComment;
                    return 1;
                }
                if ch == '\'' {
                    // `$'…'` holds backslash escapes.
                    let escapes = self.prev == '$';
                    return self.open_str(out, "'".into(), "'".into(), escapes);
                }
                if ch == '"' {
                    return self.open_str(out, "\"".into(), "\"".into(), true);
                }
                if ch == '<' && next == Some('<') && at(2) != Some('<') {
                    return self.heredoc(c, out);
                }
                out.push(ch);
                self.prev = ch;
                if ch == '\n' {
                    self.newline();
                }
                1
            }
            Lang::Python => {
                if ch == '#' {
                    out.push(ch);
                    self.state = State::LineComment;
                    return 1;
                }
                // A string literal, with its prefix (r, b, f, u and their pairs).
                let mut k = 0;
                if !(self.prev.is_alphanumeric() || self.prev == '_') {
                    while k < 2 && at(k).is_some_and(|p| "rRbBuUfF".contains(p)) {
                        k += 1;
                    }
                }
                if let Some(q) = at(k).filter(|q| *q == '\'' || *q == '"') {
                    let prefix: String = c[..k].iter().collect();
                    let raw = prefix.contains(['r', 'R']);
                    let triple = at(k + 1) == Some(q) && at(k + 2) == Some(q);
                    let quote: String = if triple { [q, q, q].iter().collect() } else { q.to_string() };
                    return self.open_str(out, format!("{prefix}{quote}"), quote, !raw);
                }
                if k > 0 {
                    // An identifier that starts like a prefix (`rb`, `f`): code.
                    let word: String = c[..k].iter().collect();
                    out.push_str(&word);
                    self.prev = c[k - 1];
                    return k;
                }
                out.push(ch);
                self.prev = ch;
                1
            }
            Lang::Node => {
                if ch == '/' && next == Some('/') {
                    out.push_str("//");
                    self.state = State::LineComment;
                    return 2;
                }
                if ch == '/' && next == Some('*') {
                    out.push_str("/*");
                    self.state = State::BlockComment;
                    return 2;
                }
                if ch == '\'' || ch == '"' {
                    return self.open_str(out, ch.to_string(), ch.to_string(), true);
                }
                if ch == '`' {
                    out.push(ch);
                    self.state = State::Template;
                    return 1;
                }
                if ch == '{' {
                    self.depth += 1;
                }
                if ch == '}' {
                    self.depth = self.depth.saturating_sub(1);
                    if self.template_exprs.last() == Some(&self.depth) {
                        self.template_exprs.pop();
                        out.push(ch);
                        self.state = State::Template;
                        return 1;
                    }
                }
                out.push(ch);
                self.prev = ch;
                1
            }
            Lang::Pwsh => {
                if ch == '<' && next == Some('#') {
                    out.push_str("<#");
                    self.state = State::BlockComment;
                    return 2;
                }
                if ch == '#' {
                    out.push(ch);
                    self.state = State::LineComment;
                    return 1;
                }
                if ch == '`' {
                    return escaped(ch, next, out);
                }
                if ch == '\'' {
                    return self.open_str(out, "'".into(), "'".into(), false);
                }
                if ch == '"' {
                    return self.open_str(out, "\"".into(), "\"".into(), true);
                }
                out.push(ch);
                self.prev = ch;
                1
            }
        }
    }

    /// `<<WORD`, `<<-WORD`, `<<'WORD'`, `<<"WORD"`: the body starts on the next line.
    fn heredoc(&mut self, c: &[char], out: &mut String) -> usize {
        let mut k = 2;
        let strip_tabs = c.get(k) == Some(&'-');
        if strip_tabs {
            k += 1;
        }
        while c.get(k).is_some_and(|x| *x == ' ' || *x == '\t') {
            k += 1;
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&x) = c.get(k) {
            if x == '\'' || x == '"' || x == '\\' {
                quoted = true;
                k += 1;
                continue;
            }
            if x.is_whitespace() || matches!(x, ';' | '&' | '|' | '<' | '>' | '(' | ')') {
                break;
            }
            word.push(x);
            k += 1;
        }
        let taken: String = c[..k].iter().collect();
        out.push_str(&taken);
        if !word.is_empty() {
            self.pending_heredoc = Some((word, strip_tabs, quoted));
        }
        self.prev = ' ';
        k
    }

    fn var(&mut self, var: &str, out: &mut String) -> Result<(), String> {
        match (&mut self.state, self.lang) {
            (State::LineComment | State::BlockComment, _) => {
                out.push_str(var);
                Ok(())
            }
            (State::Heredoc { quoted: true, .. }, _) => Err(format!(
                "`${{{{ }}}}` cannot stand in a quoted here-document: nothing expands there. Unquote its word \
                 (`<<EOF`), or use `${var}` in an unquoted one"
            )),
            (State::Heredoc { .. }, _) => {
                out.push_str(&format!("${{{var}}}"));
                Ok(())
            }
            (State::Code, Lang::Posix) => {
                out.push_str(&format!("\"${{{var}}}\""));
                self.prev = '"';
                Ok(())
            }
            (State::Code, Lang::Python) => {
                out.push_str(&format!("__import__('os').environ['{var}']"));
                self.prev = ')';
                Ok(())
            }
            (State::Code, Lang::Node) => {
                out.push_str(&format!("process.env.{var}"));
                self.prev = 'x';
                Ok(())
            }
            (State::Code | State::Template, Lang::Pwsh) => {
                out.push_str(&format!("$env:{var}"));
                Ok(())
            }
            (State::Template, _) => {
                out.push_str(&format!("${{process.env.{var}}}"));
                Ok(())
            }
            (State::Str { start, open, close, split, escapes }, lang) => {
                match lang {
                    // Double quotes expand a variable; single quotes are closed around one.
                    Lang::Posix if close == "\"" => out.push_str(&format!("${{{var}}}")),
                    Lang::Posix => {
                        let reopen = if *escapes { "$'" } else { "'" };
                        out.push_str(&format!("'\"${{{var}}}\"{reopen}"))
                    }
                    Lang::Pwsh if close == "\"" => out.push_str(&format!("$env:{var}")),
                    Lang::Pwsh => {
                        return Err(format!(
                            "`${{{{ }}}}` cannot stand inside a single-quoted PowerShell string; use double \
                             quotes, or `$env:{var}`"
                        ));
                    }
                    Lang::Python => {
                        let lower = open.to_ascii_lowercase();
                        if lower.contains('f') {
                            // An f-string takes a replacement field; quote the key unlike the literal.
                            let q = if close.starts_with('\'') { '"' } else { '\'' };
                            out.push_str(&format!("{{__import__({q}os{q}).environ[{q}{var}{q}]}}"));
                            return Ok(());
                        }
                        let value = if lower.contains('b') {
                            format!("__import__('os').environb[b'{var}']")
                        } else {
                            format!("__import__('os').environ['{var}']")
                        };
                        if !*split {
                            out.insert(*start, '(');
                            *split = true;
                        }
                        out.push_str(&format!("{close} + {value} + {open}"));
                    }
                    Lang::Node => {
                        if !*split {
                            out.insert(*start, '(');
                            *split = true;
                        }
                        out.push_str(&format!("{close} + process.env.{var} + {open}"));
                    }
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self, out: &mut String) {
        // An unclosed literal is the interpreter's error to report; keep parentheses balanced.
        if let State::Str { split: true, .. } = self.state {
            out.push(')');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lang: Lang, parts: &[&str]) -> String {
        let pieces: Vec<Piece> =
            parts.iter().map(|p| if p.starts_with("$V") { Piece::Var(&p[1..]) } else { Piece::Text(p) }).collect();
        render(lang, &pieces).unwrap()
    }

    #[test]
    fn posix_references_follow_the_quotes() {
        assert_eq!(r(Lang::Posix, &["echo ", "$V1"]), "echo \"${V1}\"");
        assert_eq!(r(Lang::Posix, &["echo \"a ", "$V1", " b\""]), "echo \"a ${V1} b\"");
        assert_eq!(r(Lang::Posix, &["echo 'a ", "$V1", " b'"]), "echo 'a '\"${V1}\"' b'");
        assert_eq!(r(Lang::Posix, &["echo $'a\\'", "$V1", "'"]), "echo $'a\\''\"${V1}\"$''");
        assert_eq!(r(Lang::Posix, &["echo it\\'s ", "$V1"]), "echo it\\'s \"${V1}\"");
        assert_eq!(r(Lang::Posix, &["# it's ", "$V1", "\necho '", "$V1", "'"]), "# it's V1\necho ''\"${V1}\"''");
        assert_eq!(
            r(Lang::Posix, &["cat <<EOF\nit's ", "$V1", "\nEOF\necho '", "$V1", "'"]),
            "cat <<EOF\nit's ${V1}\nEOF\necho ''\"${V1}\"''"
        );
        let e = render(Lang::Posix, &[Piece::Text("cat <<'EOF'\n"), Piece::Var("V1")]).unwrap_err();
        assert!(e.message.contains("quoted here-document"), "{e:?}");
    }

    #[test]
    fn python_and_node_split_their_literals() {
        assert_eq!(r(Lang::Python, &["print(", "$V1", ")"]), "print(__import__('os').environ['V1'])");
        assert_eq!(
            r(Lang::Python, &["print(\"a ", "$V1", " b\")"]),
            "print((\"a \" + __import__('os').environ['V1'] + \" b\"))"
        );
        assert_eq!(
            r(Lang::Python, &["print(f'{x} ", "$V1", "')"]),
            "print(f'{x} {__import__(\"os\").environ[\"V1\"]}')"
        );
        assert_eq!(r(Lang::Node, &["console.log('a ", "$V1", "')"]), "console.log(('a ' + process.env.V1 + ''))");
        assert_eq!(r(Lang::Node, &["console.log(`a ${1} ", "$V1", "`)"]), "console.log(`a ${1} ${process.env.V1}`)");
        assert_eq!(r(Lang::Node, &["// '", "$V1", "\nx = ", "$V1"]), "// 'V1\nx = process.env.V1");
    }

    #[test]
    fn languages_of_shells() {
        assert_eq!(Lang::of_shell("bash"), Some(Lang::Posix));
        assert_eq!(Lang::of_shell("/usr/bin/python3.11 -u {0}"), Some(Lang::Python));
        assert_eq!(Lang::of_shell("node {0}"), Some(Lang::Node));
        assert_eq!(Lang::of_shell("perl {0}"), None);
    }
    /// Runs `script` with `interpreter`, the value in `SKIFF_EXPR_1`; returns standard output.
    fn run(interpreter: &[&str], script: &str, value: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("script");
        std::fs::write(&file, script).unwrap();
        let out = std::process::Command::new(interpreter[0])
            .args(&interpreter[1..])
            .arg(&file)
            .current_dir(dir.path())
            .env("SKIFF_EXPR_1", value)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs it)", interpreter[0]));
        assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 8, ..Default::default() })]

        /// Whatever a value holds (quotes, `$(…)`, backticks, `${}`), real interpreters print it
        /// and run none of it, wherever in the script the expression stands.
        #[test]
        fn interpreters_receive_values_and_never_run_them(
            value in r#"[a-z '"`$(){};|&\\\n#*]{0,24}"#,
        ) {
            let bash: &[&str] = &["bash", "--noprofile", "--norc", "-eo", "pipefail"];
            let cases: &[(&[&str], Lang, &[&str])] = &[
                (bash, Lang::Posix, &["printf '%s' ", "$V", ""]),
                (bash, Lang::Posix, &["printf '%s' '", "$V", "'"]),
                (bash, Lang::Posix, &["printf '%s' \"", "$V", "\""]),
                (&["sh", "-e"], Lang::Posix, &["cat <<EOF\n", "$V", "\nEOF"]),
                (&["python3"], Lang::Python, &["import sys\nsys.stdout.write(\"", "$V", "\")"]),
                (&["python3"], Lang::Python, &["import sys\nsys.stdout.write('''", "$V", "''')"]),
                (&["python3"], Lang::Python, &["import sys\nsys.stdout.write(f'{\"\"}", "$V", "')"]),
                (&["python3"], Lang::Python, &["import sys\nsys.stdout.write(", "$V", ")"]),
                (&["node"], Lang::Node, &["process.stdout.write('", "$V", "')"]),
                (&["node"], Lang::Node, &["process.stdout.write(`", "$V", "`)"]),
                (&["node"], Lang::Node, &["process.stdout.write(", "$V", ")"]),
            ];
            for (interpreter, lang, parts) in cases {
                let pieces: Vec<Piece> = parts
                    .iter()
                    .map(|p| if *p == "$V" { Piece::Var("SKIFF_EXPR_1") } else { Piece::Text(p) })
                    .collect();
                let script = render(*lang, &pieces).unwrap();
                let expected = if parts[0].starts_with("cat <<") { format!("{value}\n") } else { value.clone() };
                proptest::prop_assert_eq!(run(interpreter, &script, &value), expected, "{}", script);
            }
        }
    }
}
