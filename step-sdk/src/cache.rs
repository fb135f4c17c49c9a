//! The app's cache: workspace paths kept between runs under a key, archived and restored by
//! the host (the step never sees where entries are kept). A run reads its own branch's entries
//! (then the default branch's), and a pull request its base branch's after its own; it writes
//! only its own.
//!
//! ```no_run
//! use skiff_step_sdk::cache;
//!
//! let paths = vec!["node_modules".to_string()];
//! let hit = cache::restore("npm-1f2e", &["npm-".to_string()], &paths).unwrap();
//! if hit.as_deref() != Some("npm-1f2e") {
//!     // ... build node_modules, then:
//!     cache::save("npm-1f2e", &paths).unwrap();
//! }
//! ```

use crate::bindings::skiff::step::cache as wit;

/// Restores the entry saved under `key` for `paths`, else the newest whose key starts with
/// one of `restore_keys`, in order. Returns the key restored (`key` itself on an exact hit), or
/// `None` on a miss.
pub fn restore(key: &str, restore_keys: &[String], paths: &[String]) -> Result<Option<String>, String> {
    wit::restore(key, restore_keys, paths)
}

/// Saves `paths` of the workspace under `key` in this run's scope; returns the bytes stored (0
/// when none of the paths exists or the key is taken already).
pub fn save(key: &str, paths: &[String]) -> Result<u64, String> {
    wit::save(key, paths)
}
