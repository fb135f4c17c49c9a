//! The `secrets` interface: a step reads only the secrets it was granted.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::log::LogPipe;
use crate::bindings::skiff::step::secrets as wit;

/// What the `secrets` interface of one step holds: the secrets it was granted.
pub struct SecretsHost {
    /// Granted secrets by name.
    pub secrets: BTreeMap<String, String>,
    /// Where refusals are explained.
    pub log: Arc<LogPipe>,
}

impl SecretsHost {
    /// Adds the interface to a linker whose store data holds a `SecretsHost`.
    pub fn add_to_linker<T: 'static>(linker: &mut Linker<T>, get: fn(&mut T) -> &mut Self) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<Self>>(linker, get)
    }
}

impl wit::Host for SecretsHost {
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
