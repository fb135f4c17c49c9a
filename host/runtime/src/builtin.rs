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

#[cfg(test)]
mod tests {
    /// The pipeline crate knows built-in names without the bytes (it has no wasmtime); the two
    /// lists must not drift apart, or `uses: NAME` validates and then finds nothing to run.
    #[test]
    fn the_pipeline_s_builtin_names_are_the_embedded_ones() {
        let mut embedded: Vec<&str> = super::names().collect();
        let mut known: Vec<&str> = skiff_pipeline::compat::BUILTINS.to_vec();
        embedded.sort_unstable();
        known.sort_unstable();
        assert_eq!(known, embedded, "host/pipeline/src/compat.rs BUILTINS and host/runtime/build.rs BUILTIN differ");
    }
}
