//! One module per capability a step can be granted: the WIT interface's host
//! implementation and the policy that narrows it.

pub mod artifacts;
pub mod cache;
pub mod connect;
pub mod egress;
pub mod http;
pub mod log;
pub mod process;
pub mod secrets;
