//! The `process` interface: native programs in the OS sandbox, for steps granted `process`.

use crate::runtime::bindings::skiff::step::process as wit;
use crate::runtime::state::StepState;

/// What a step may do with processes.
#[derive(Debug, Clone, Default)]
pub struct ProcessGrant {
    /// The pipeline granted `process`.
    pub allowed: bool,
    /// Processes may use the network (all or nothing: the OS sandbox cannot filter by host).
    pub network: bool,
}

impl wit::Host for StepState {
    async fn run(&mut self, cmd: wit::Command) -> wasmtime::Result<Result<wit::Outcome, wit::Error>> {
        if !self.process.allowed {
            let msg = format!(
                "the step tried to run `{}`, but it was not granted `process`: add `permissions: {{ process: true }}` to the step",
                cmd.program
            );
            self.log.system(msg.clone());
            return Ok(Err(wit::Error::Denied(msg)));
        }
        Ok(Err(wit::Error::Unavailable("the process sandbox is not built into this host yet".into())))
    }
}
