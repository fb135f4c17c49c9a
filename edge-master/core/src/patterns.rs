//! Branch, tag, path and type patterns: GitHub's glob lists and Serverless-cd's structured form.

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of patterns a name (branch, tag, path, event type) is matched against.
///
/// Written in one of two forms:
///
/// - GitHub's: a glob or a list of globs. `*` matches within one path segment, `**` across
///   segments, `?` one character, `[abc]` a class; a pattern starting with `!` excludes what
///   it matches. The last pattern that matches a name decides, so `["release/*",
///   "!release/old"]` takes `release/new` but not `release/old`. A `**` that is not a whole
///   segment (`**.js`, `docs/**.md`) lets every `*` of that pattern cross `/`, as on GitHub.
/// - Serverless-cd's structured form: `{ precise: [...], prefix: [...], exclude: [...] }`. A
///   name matches if it equals a `precise` entry or starts with a `prefix` entry (or if both
///   are empty), and matches no `exclude` glob.
///
/// ```
/// use skiff_edge_core::Patterns;
///
/// let globs: Patterns = serde_json::from_str(r#"["main", "release/**", "!release/old"]"#).unwrap();
/// assert!(globs.matches("release/1.x/fix"));
/// assert!(!globs.matches("release/old"));
/// assert!(!globs.matches("dev"));
///
/// let structured: Patterns =
///     serde_json::from_str(r#"{ "precise": ["master"], "prefix": ["feat-"], "exclude": ["feat-wip"] }"#).unwrap();
/// assert!(structured.matches("feat-login"));
/// assert!(!structured.matches("feat-wip"));
/// assert_eq!(structured.to_string(), "precise [master], prefix [feat-], exclude [feat-wip]");
/// ```
#[derive(Clone)]
pub struct Patterns {
    form: Form,
    rules: Rules,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
enum Form {
    Globs(Vec<String>),
    Structured {
        #[serde(skip_serializing_if = "Vec::is_empty")]
        precise: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        prefix: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
}

#[derive(Clone)]
enum Rules {
    Globs(Vec<(GlobMatcher, bool)>),
    Structured { precise: Vec<String>, prefix: Vec<String>, exclude: Vec<GlobMatcher> },
}

/// A pattern that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pattern `{pattern}` is not a valid glob: {message}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub message: String,
}

fn compile(pattern: &str) -> Result<GlobMatcher, PatternError> {
    let crosses = has_partial_double_star(pattern);
    GlobBuilder::new(pattern)
        .literal_separator(!crosses)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| PatternError { pattern: pattern.to_owned(), message: e.kind().to_string() })
}

/// Whether the pattern has a `**` that is not a whole path segment.
fn has_partial_double_star(pattern: &str) -> bool {
    pattern.match_indices("**").any(|(i, _)| {
        let before_ok = i == 0 || pattern.as_bytes()[i - 1] == b'/';
        let after = i + 2;
        let after_ok = after == pattern.len() || pattern.as_bytes()[after] == b'/';
        !(before_ok && after_ok)
    })
}

impl Patterns {
    /// GitHub-style globs, in order; `!` excludes.
    ///
    /// ```
    /// let p = skiff_edge_core::Patterns::globs(["v*", "!v0.*"]).unwrap();
    /// assert!(p.matches("v1.0.0") && !p.matches("v0.9.0"));
    /// ```
    pub fn globs<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let source: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let rules = source
            .iter()
            .map(|p| match p.strip_prefix('!') {
                Some(rest) => compile(rest).map(|g| (g, true)),
                None => compile(p).map(|g| (g, false)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Patterns { form: Form::Globs(source), rules: Rules::Globs(rules) })
    }

    /// Serverless-cd's structured form.
    ///
    /// ```
    /// let p = skiff_edge_core::Patterns::structured(vec![], vec!["feat-".into()], vec![]).unwrap();
    /// assert!(p.matches("feat-x") && !p.matches("main"));
    /// ```
    pub fn structured(precise: Vec<String>, prefix: Vec<String>, exclude: Vec<String>) -> Result<Self, PatternError> {
        let exclude_rules = exclude.iter().map(|p| compile(p)).collect::<Result<_, _>>()?;
        Ok(Patterns {
            rules: Rules::Structured { precise: precise.clone(), prefix: prefix.clone(), exclude: exclude_rules },
            form: Form::Structured { precise, prefix, exclude },
        })
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        match &self.rules {
            Rules::Globs(rules) => {
                let mut selected = false;
                for (glob, negated) in rules {
                    if glob.is_match(name) {
                        selected = !negated;
                    }
                }
                selected
            }
            Rules::Structured { precise, prefix, exclude } => {
                let included = (precise.is_empty() && prefix.is_empty())
                    || precise.iter().any(|p| p == name)
                    || prefix.iter().any(|p| name.starts_with(p.as_str()));
                included && !exclude.iter().any(|g| g.is_match(name))
            }
        }
    }

    /// Whether any of `names` is selected.
    pub fn matches_any<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        names.into_iter().any(|n| self.matches(n))
    }
}

impl fmt::Display for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.form {
            Form::Globs(list) => write!(f, "[{}]", list.join(", ")),
            Form::Structured { precise, prefix, exclude } => {
                let mut parts = Vec::new();
                for (label, list) in [("precise", precise), ("prefix", prefix), ("exclude", exclude)] {
                    if !list.is_empty() {
                        parts.push(format!("{label} [{}]", list.join(", ")));
                    }
                }
                f.write_str(&parts.join(", "))
            }
        }
    }
}

impl fmt::Debug for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Patterns({self})")
    }
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.form == other.form
    }
}

impl Serialize for Patterns {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.form.serialize(serializer)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StructuredRaw {
    #[serde(default, deserialize_with = "one_or_many")]
    precise: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    prefix: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    exclude: Vec<String>,
}

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PatternsVisitor;
        impl<'de> Visitor<'de> for PatternsVisitor {
            type Value = Patterns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a glob, a list of globs, or a map of `precise`, `prefix` and `exclude` lists")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Patterns, E> {
                Patterns::globs([v]).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Patterns, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    list.push(item);
                }
                Patterns::globs(list).map_err(de::Error::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Patterns, A::Error> {
                let raw = StructuredRaw::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Patterns::structured(raw.precise, raw.prefix, raw.exclude).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(PatternsVisitor)
    }
}

/// Deserializes a string or a list of strings into a list.
pub(crate) fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut list = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                list.push(item);
            }
            Ok(list)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_glob_semantics() {
        let p = Patterns::globs(["feature/*"]).unwrap();
        assert!(p.matches("feature/x"));
        assert!(!p.matches("feature/x/y"));
        let p = Patterns::globs(["feature/**"]).unwrap();
        assert!(p.matches("feature/x/y"));
        let p = Patterns::globs(["**.js"]).unwrap();
        assert!(p.matches("a.js") && p.matches("src/deep/a.js") && !p.matches("a.rs"));
        let p = Patterns::globs(["docs/**"]).unwrap();
        assert!(p.matches("docs/a/b.md") && !p.matches("src/docs"));
        let p = Patterns::globs(["*", "!main"]).unwrap();
        assert!(p.matches("dev") && !p.matches("main"));
        let p = Patterns::globs(["!main", "*"]).unwrap();
        assert!(p.matches("main"), "the last matching pattern decides");
    }

    #[test]
    fn invalid_glob_is_explained() {
        let err = Patterns::globs(["feat/[z-a]"]).unwrap_err();
        assert!(err.to_string().starts_with("the pattern `feat/[z-a]` is not a valid glob"), "{err}");
        let err = serde_json::from_str::<Patterns>(r#"{"precise": ["a"], "prefixes": ["b"]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `prefixes`"), "{err}");
    }

    #[test]
    fn structured_with_only_exclude_takes_everything_else() {
        let p: Patterns = serde_json::from_str(r#"{"exclude": "tmp-*"}"#).unwrap();
        assert!(p.matches("main") && !p.matches("tmp-1"));
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"exclude":["tmp-*"]}"#);
    }
}
