//! The command line: one module per command, with its arguments.

pub mod client;
pub mod doctor;
pub mod edge;
pub mod init;
pub mod lock;
pub mod out;
pub mod provenance;
pub mod registry;
pub mod run;
pub mod serve;
pub mod step;
pub mod validate;

use clap::ValueEnum;

/// The server's log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends a server's `tracing` events (`skiff serve`, `skiff edge up`) to standard error,
/// filtered by `RUST_LOG`.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    // A second call (tests start several servers) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
