//! The host's integration tests, one binary so linking happens once.

mod cli;
mod edge;
mod pipeline;
mod plugins;
mod runtime;
mod sandbox;
mod serve;
