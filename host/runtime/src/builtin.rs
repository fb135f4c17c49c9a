//! Built-in steps: components from `steps/*`, compiled by the build script and
//! embedded in the binary.

include!(concat!(env!("OUT_DIR"), "/builtin_steps.rs"));

/// The bytes of built-in step `name` (also accepted as `builtin://name`).
pub fn get(name: &str) -> Option<&'static [u8]> {
    let name = name.strip_prefix("builtin://").unwrap_or(name);
    BUILTIN_STEPS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The names of all built-in steps.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN_STEPS.iter().map(|(n, _)| *n)
}
