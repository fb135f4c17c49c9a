//! `script`: the built-in step behind `script:`. It runs a JavaScript step in the
//! style of google/zx inside the step's own Wasm sandbox, with a pure-Rust
//! JavaScript engine (boa) compiled into the component, so a script has exactly
//! the capabilities its step was granted and nothing else.
//!
//! Inputs: `script` (the source, run as an ES module: top-level `await` works)
//! and `origin` (`FILE:LINE:COL` where the script starts in the pipeline file, so
//! that syntax errors and stack traces point there). Every other input is read
//! with `core.getInput`.
//!
//! The API (`prelude.js`): `` $`cmd ${arg}` `` runs a program through the
//! `process` capability without a shell (each interpolated value is one
//! argument, see [`argv`]); `cd`, `within`, `sleep`, `echo`, `retry`; `fs`
//! (workspace only, see [`paths`]); `fetch` (the step's allowlisted hosts);
//! `process.env`/`cwd`/`exit`; `console.*`; `core.getInput`/`setOutput`/
//! `getSecret`/`exportVariable`/`addPath`/`setFailed`/`summary`/`info`/`warning`/
//! `error`; `setTimeout`/`setInterval`; `path`.
//!
//! The manifest asks for no capability: `$` without `permissions: { process: true }`
//! fails when called, with the host's message naming the missing grant.

pub mod argv;
pub mod engine;
pub mod host;
pub mod paths;
pub mod position;

#[cfg(test)]
mod engine_tests;

use std::path::PathBuf;
use std::rc::Rc;

use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError};

use crate::engine::Config;
use crate::host::SdkHost;
use crate::position::Origin;

struct Script;

impl Step for Script {
    fn describe() -> Manifest {
        Manifest::new("script", "Runs a zx-style JavaScript step in the step's sandbox.")
            .input("script", "The JavaScript to run, as an ES module (top-level await allowed)", true, None)
            .input(
                "origin",
                "FILE:LINE:COL where the script starts in the pipeline file, for error positions",
                false,
                None,
            )
    }

    fn run(ctx: Context) -> Result<Outputs, StepError> {
        let script = ctx.required("script")?.to_string();
        let origin = match ctx.input("origin").filter(|o| !o.is_empty()) {
            Some(o) => Origin::parse(o).map_err(StepError::InvalidInput)?,
            None => Origin::default(),
        };
        let config = Config {
            script,
            origin,
            inputs: ctx.inputs.clone(),
            env: std::env::vars().collect(),
            root: PathBuf::from(paths::WORKSPACE),
        };
        match engine::run(config, Rc::new(SdkHost)) {
            Ok(outputs) => {
                let mut out = Outputs::new();
                for (k, v) in outputs {
                    out.insert(k, v);
                }
                Ok(out)
            }
            Err(f) if f.denied => Err(StepError::Denied(f.message)),
            Err(f) => Err(StepError::Failed(f.message)),
        }
    }
}

skiff_step_sdk::export!(Script);
