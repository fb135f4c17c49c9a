//! `` $`cmd ${arg}` `` to an argument vector, without a shell.
//!
//! The literal parts of the template are split into words the way a shell splits
//! them: on unquoted whitespace, with `'…'`, `"…"` and `\` quoting, and `#` comments.
//! Each interpolated value is always exactly one argument (an array: one argument
//! per element), glued to literal text that touches it (`--name=${x}` is one
//! argument), and is never parsed: quotes, `;`, `$(…)`, backticks and spaces in a
//! value are just characters. Shell syntax in the literal parts (pipes, redirects,
//! `&&`, `;`, `$VAR`, subshells) is refused with an error that says how to get a
//! shell when one is wanted, because silently passing `|` to a program as an
//! argument would do something else than the author meant.

/// One piece of a `$` template, in order: literal text and interpolated values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    /// A value's arguments: one for a scalar, one per element for an array.
    Value(Vec<String>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

const HINT: &str = "`$` runs one program without a shell; for shell syntax pass the script as one argument, \
                    like $`bash -c ${'a | b'}`";

/// The argument vector of a `$` template; the first element is the program.
pub fn build(pieces: &[Piece]) -> Result<Vec<String>, String> {
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = Quote::None;
    for piece in pieces {
        match piece {
            Piece::Value(args) => {
                if quote != Quote::None {
                    word.get_or_insert_with(String::new).push_str(&args.join(" "));
                    continue;
                }
                let last = args.len().saturating_sub(1);
                for (i, arg) in args.iter().enumerate() {
                    word.get_or_insert_with(String::new).push_str(arg);
                    if i < last {
                        words.extend(word.take());
                    }
                }
            }
            Piece::Literal(text) => {
                let mut chars = text.chars().peekable();
                while let Some(c) = chars.next() {
                    match quote {
                        Quote::Single => {
                            if c == '\'' {
                                quote = Quote::None;
                            } else {
                                word.get_or_insert_with(String::new).push(c);
                            }
                        }
                        Quote::Double => match c {
                            '"' => quote = Quote::None,
                            '\\' => match chars.peek() {
                                Some(&n @ ('"' | '\\' | '$' | '`')) => {
                                    chars.next();
                                    word.get_or_insert_with(String::new).push(n);
                                }
                                Some('\n') => {
                                    chars.next();
                                }
                                _ => word.get_or_insert_with(String::new).push('\\'),
                            },
                            '`' => return Err(format!("a backtick in a command is shell syntax: {HINT}")),
                            '$' if starts_expansion(chars.peek()) => {
                                return Err(format!(
                                    "`${}` in a command would be expanded by a shell: use ${{process.env.NAME}} \
                                     in the template instead ({HINT})",
                                    chars.peek().copied().unwrap_or_default()
                                ));
                            }
                            _ => word.get_or_insert_with(String::new).push(c),
                        },
                        Quote::None => match c {
                            c if c.is_whitespace() => words.extend(word.take()),
                            '\'' => {
                                word.get_or_insert_with(String::new);
                                quote = Quote::Single;
                            }
                            '"' => {
                                word.get_or_insert_with(String::new);
                                quote = Quote::Double;
                            }
                            '\\' => match chars.next() {
                                Some('\n') | None => {}
                                Some(n) => word.get_or_insert_with(String::new).push(n),
                            },
                            '#' if word.is_none() => {
                                for n in chars.by_ref() {
                                    if n == '\n' {
                                        break;
                                    }
                                }
                            }
                            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '`' => {
                                return Err(format!("`{c}` in a command is shell syntax: {HINT}"));
                            }
                            '$' if starts_expansion(chars.peek()) => {
                                return Err(format!(
                                    "`${}` in a command would be expanded by a shell: use ${{process.env.NAME}} \
                                     in the template instead ({HINT})",
                                    chars.peek().copied().unwrap_or_default()
                                ));
                            }
                            _ => word.get_or_insert_with(String::new).push(c),
                        },
                    }
                }
            }
        }
    }
    if quote != Quote::None {
        let q = if quote == Quote::Single { '\'' } else { '"' };
        return Err(format!("a `{q}` in the command is never closed"));
    }
    words.extend(word.take());
    if words.is_empty() {
        return Err("`$` was given an empty command: write the program to run, like $`ls -la`".into());
    }
    Ok(words)
}

fn starts_expansion(next: Option<&char>) -> bool {
    matches!(next, Some(c) if c.is_ascii_alphanumeric() || matches!(c, '_' | '{' | '(' | '?' | '@' | '*' | '#' | '!' | '$'))
}

/// How an argument vector reads in a message: words quoted only where needed.
pub fn display(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Piece {
        Piece::Literal(s.into())
    }
    fn val(s: &[&str]) -> Piece {
        Piece::Value(s.iter().map(|s| s.to_string()).collect())
    }
    fn argv(pieces: &[Piece]) -> Vec<String> {
        build(pieces).unwrap()
    }

    #[test]
    fn literal_words() {
        assert_eq!(argv(&[lit("ls -la")]), ["ls", "-la"]);
        assert_eq!(argv(&[lit("  echo   a\tb\n c ")]), ["echo", "a", "b", "c"]);
        assert_eq!(argv(&[lit("echo 'a b' \"c d\" e\\ f ''")]), ["echo", "a b", "c d", "e f", ""]);
        assert_eq!(argv(&[lit(r#"echo "say \"hi\" \n" 'it''s'"#)]), ["echo", "say \"hi\" \\n", "its"]);
        assert_eq!(argv(&[lit("echo a # a comment\n b")]), ["echo", "a", "b"]);
        assert_eq!(argv(&[lit("echo a#b cost$ 5$")]), ["echo", "a#b", "cost$", "5$"]);
        assert_eq!(argv(&[lit("grep -e 'a|b;$HOME' x")]), ["grep", "-e", "a|b;$HOME", "x"]);
    }

    #[test]
    fn values_are_one_argument_each_and_never_parsed() {
        let evil = "`; touch INJECTED` ${process.exit} $(rm -rf /) 'x\" a b";
        assert_eq!(argv(&[lit("echo "), val(&[evil]), lit("")]), ["echo", evil]);
        assert_eq!(argv(&[lit("echo --name="), val(&["a b"]), lit(".txt done")]), ["echo", "--name=a b.txt", "done"]);
        assert_eq!(argv(&[lit("echo "), val(&[""])]), ["echo", ""]);
        assert_eq!(argv(&[lit("echo \"x "), val(&["a", "b"]), lit(" y\"")]), ["echo", "x a b y"]);
        assert_eq!(argv(&[lit("echo '"), val(&["it's"]), lit("'")]), ["echo", "it's"]);
    }

    #[test]
    fn arrays_are_several_arguments() {
        assert_eq!(argv(&[lit("ls "), val(&["a b", "c"]), lit(" -l")]), ["ls", "a b", "c", "-l"]);
        assert_eq!(argv(&[lit("x pre"), val(&["a", "b"]), lit("post")]), ["x", "prea", "bpost"]);
        assert_eq!(argv(&[lit("ls "), val(&[]), lit(" -l")]), ["ls", "-l"]);
        assert_eq!(argv(&[val(&["git"]), lit(" status")]), ["git", "status"]);
    }

    #[test]
    fn shell_syntax_is_refused_with_a_way_out() {
        for cmd in ["ls | wc", "a && b", "a; b", "cat < x", "echo > f", "echo $(id)", "echo `id`", "echo $HOME"] {
            let e = build(&[lit(cmd)]).unwrap_err();
            assert!(e.contains("bash -c"), "{cmd}: {e}");
        }
        assert!(build(&[lit("echo \"$HOME\"")]).is_err());
        assert!(build(&[lit("echo 'open")]).unwrap_err().contains("never closed"));
        assert!(build(&[lit("  ")]).unwrap_err().contains("empty command"));
        assert!(build(&[lit(" "), val(&[]), lit(" ")]).is_err());
    }

    #[test]
    fn display_quotes_what_needs_it() {
        let v: Vec<String> = ["ls", "-la", "a b", "it's", ""].iter().map(|s| s.to_string()).collect();
        assert_eq!(display(&v), r"ls -la 'a b' 'it'\''s' ''");
    }
}
