//! The command line: one module per command, with its arguments.

pub mod client;
pub mod edge;
pub mod init;
pub mod out;
pub mod run;
pub mod serve;
pub mod step;
pub mod validate;
