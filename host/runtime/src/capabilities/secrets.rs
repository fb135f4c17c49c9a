//! The `secrets` interface: a step reads only the secrets it was granted.

use crate::bindings::skiff::step::secrets as wit;
use crate::state::StepState;

impl wit::Host for StepState {
    fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        let value = self.secrets.get(&name).cloned();
        if value.is_none() {
            self.log.system(format!(
                "the step asked for secret `{name}`, which was not granted to it; grant it with `permissions: {{ secrets: [{name}] }}`"
            ));
        }
        Ok(value)
    }

    fn names(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.secrets.keys().cloned().collect())
    }
}
