//! Logging into the step log. Lines are masked by the host before anyone sees them.
//!
//! ```no_run
//! skiff_step_sdk::info!("uploaded {} files", 3);
//! skiff_step_sdk::log::summary("### Uploaded\n- 3 files");
//! ```

pub use crate::bindings::skiff::step::log::Level;

/// Writes `message` at `level`.
pub fn write(level: Level, message: &str) {
    crate::bindings::skiff::step::log::write(level, message);
}

/// Appends markdown to the step's summary on the run page.
pub fn summary(markdown: &str) {
    crate::bindings::skiff::step::log::summary(markdown);
}

/// Logs at debug level, `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &format!($($arg)*)) };
}

/// Logs at info level, `format!`-style.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &format!($($arg)*)) };
}

/// Logs at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &format!($($arg)*)) };
}

/// Logs at error level, `format!`-style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &format!($($arg)*)) };
}
