//! Source positions for the nodes of a YAML document.
//!
//! serde_norway (the parser whose values we use) reports a position only for
//! the first error. To report every unknown key and bad expression with its
//! line and column we index the same text once with yaml-rust2's event
//! parser: path → position of the key and of the value.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path into the document.
pub type YPath = Vec<Seg>;

/// Builds a path from keys and indexes: `ypath!["jobs", "build", "steps", 0]`.
#[macro_export]
#[doc(hidden)]
macro_rules! ypath {
    ($($s:expr),* $(,)?) => {{
        let path: $crate::source::YPath = Vec::from([$($crate::source::IntoSeg::into_seg($s)),*]);
        path
    }};
}

/// Converts keys and indexes into [`Seg`].
pub trait IntoSeg {
    /// The segment.
    fn into_seg(self) -> Seg;
}
impl IntoSeg for &str {
    fn into_seg(self) -> Seg {
        Seg::Key(self.to_string())
    }
}
impl IntoSeg for &String {
    fn into_seg(self) -> Seg {
        Seg::Key(self.clone())
    }
}
impl IntoSeg for String {
    fn into_seg(self) -> Seg {
        Seg::Key(self)
    }
}
impl IntoSeg for usize {
    fn into_seg(self) -> Seg {
        Seg::Index(self)
    }
}

/// Where a scalar value's text starts, for pointing inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValuePos {
    /// Position of the value (of the `|`/`>` indicator for a block scalar).
    pub pos: Pos,
    /// A block scalar, whose text starts on the next line.
    pub block: bool,
    /// A quoted scalar, whose text starts one column later.
    pub quoted: bool,
}

/// Positions of keys and values by path.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    keys: HashMap<YPath, Pos>,
    values: HashMap<YPath, ValuePos>,
    /// Indentation of every line, for pointing into block scalars.
    indents: Vec<usize>,
}

impl SourceMap {
    /// Indexes `text`. A text that does not parse gives an empty map (serde_norway reports the error).
    pub fn new(text: &str) -> Self {
        let mut b = Builder { map: SourceMap::default(), stack: Vec::new(), path: Vec::new() };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut b, false);
        b.map.indents = text.lines().map(|l| l.chars().take_while(|c| *c == ' ').count()).collect();
        b.map
    }

    /// The position of the key at `path` (its last segment), else of the value, else of the nearest parent.
    pub fn key(&self, path: &[Seg]) -> Pos {
        if let Some(p) = self.keys.get(path) {
            return *p;
        }
        self.value(path)
    }

    /// The position of the value at `path`, else of the nearest parent.
    pub fn value(&self, path: &[Seg]) -> Pos {
        let mut p = path;
        loop {
            if let Some(v) = self.values.get(p) {
                return v.pos;
            }
            if let Some(k) = self.keys.get(p) {
                return *k;
            }
            match p.split_last() {
                Some((_, parent)) => p = parent,
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// The position of a character inside the string value at `path`.
    pub fn inside(&self, path: &[Seg], text: &str, char_offset: usize) -> Pos {
        let Some(v) = self.values.get(path) else { return self.value(path) };
        let before: String = text.chars().take(char_offset).collect();
        let newlines = before.matches('\n').count();
        let last_line_len = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0);
        if v.block {
            // The indentation of a block scalar is not in its text: take it from the source line.
            let line = v.pos.line + 1 + newlines;
            let indent = self.indents.get(v.pos.line).copied().unwrap_or(0);
            Pos { line, column: indent + 1 + last_line_len }
        } else if newlines == 0 {
            Pos { line: v.pos.line, column: v.pos.column + usize::from(v.quoted) + last_line_len }
        } else {
            Pos { line: v.pos.line + newlines, column: 1 }
        }
    }
}

enum Frame {
    Map { key_next: bool },
    Seq { index: usize },
}

struct Builder {
    map: SourceMap,
    stack: Vec<Frame>,
    path: YPath,
}

fn pos(m: Marker) -> Pos {
    Pos { line: m.line(), column: m.col() + 1 }
}

impl Builder {
    /// Called for every node; returns the path of the node, or `None` for a mapping key.
    fn node(&mut self, mark: Marker, key_text: Option<&str>, style: Option<TScalarStyle>) -> Option<YPath> {
        let block = matches!(style, Some(TScalarStyle::Literal) | Some(TScalarStyle::Folded));
        // yaml-rust2 marks a block scalar where it ends; its text starts on the line after
        // the indicator, which is the key's line (or, in a sequence, is counted back from the end).
        let back = key_text.map(|t| t.matches('\n').count()).unwrap_or(0);
        let key_line = match (&self.stack.last(), block) {
            (Some(Frame::Map { key_next: false }), true) => self.map.keys.get(&self.path).map(|p| p.line),
            _ => None,
        };
        let vp = |p: Pos| {
            let pos = match (block, key_line) {
                (true, Some(line)) => Pos { line, column: p.column },
                (true, None) => Pos { line: p.line.saturating_sub(back + 1).max(1), column: p.column },
                _ => p,
            };
            ValuePos {
                pos,
                block,
                quoted: matches!(style, Some(TScalarStyle::SingleQuoted) | Some(TScalarStyle::DoubleQuoted)),
            }
        };
        match self.stack.last_mut() {
            None => {
                self.map.values.insert(Vec::new(), vp(pos(mark)));
                Some(Vec::new())
            }
            Some(Frame::Map { key_next }) => {
                if *key_next {
                    *key_next = false;
                    let k = key_text.unwrap_or("?").to_string();
                    self.path.push(Seg::Key(k));
                    self.map.keys.insert(self.path.clone(), pos(mark));
                    None
                } else {
                    *key_next = true;
                    let p = self.path.clone();
                    self.map.values.insert(p.clone(), vp(pos(mark)));
                    self.path.pop();
                    Some(p)
                }
            }
            Some(Frame::Seq { index }) => {
                let mut p = self.path.clone();
                p.push(Seg::Index(*index));
                *index += 1;
                self.map.values.insert(p.clone(), vp(pos(mark)));
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, ..) => {
                self.node(mark, Some(&text), Some(style));
            }
            Event::Alias(..) => {
                self.node(mark, None, None);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A collection used as a key (rare) is indexed as the key `?`.
                if let Some(p) = self.node(mark, None, None) {
                    self.path = p;
                    self.stack.push(if is_map { Frame::Map { key_next: true } } else { Frame::Seq { index: 0 } });
                } else {
                    let p = self.path.clone();
                    self.stack.push(if is_map { Frame::Map { key_next: true } } else { Frame::Seq { index: 0 } });
                    self.path = p;
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                // Back to the parent: a map value's path ends with its key, which the parent pops.
                match self.stack.last_mut() {
                    Some(Frame::Map { key_next }) => {
                        *key_next = true;
                        self.path.pop();
                    }
                    Some(Frame::Seq { .. }) => {
                        self.path.pop();
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_values() {
        let src = "name: x\njobs:\n  build:\n    steps:\n      - run: |\n          echo hi\n        stpes: 1\n      - {uses: diag}\n";
        let m = SourceMap::new(src);
        assert_eq!(m.key(&ypath!["name"]), Pos { line: 1, column: 1 });
        assert_eq!(m.key(&ypath!["jobs", "build"]), Pos { line: 3, column: 3 });
        assert_eq!(m.key(&ypath!["jobs", "build", "steps", 0, "stpes"]), Pos { line: 7, column: 9 });
        assert_eq!(m.value(&ypath!["jobs", "build", "steps", 1]), Pos { line: 8, column: 9 });
        assert_eq!(m.key(&ypath!["jobs", "build", "steps", 1, "uses"]), Pos { line: 8, column: 10 });
        assert_eq!(m.inside(&ypath!["jobs", "build", "steps", 0, "run"], "echo hi\n", 5), Pos { line: 6, column: 16 });
    }
}
