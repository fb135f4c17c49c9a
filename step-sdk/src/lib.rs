//! The crate Skiff step authors use.
//!
//! A step is a WebAssembly component (target `wasm32-wasip2`) of the `step`
//! world in `wit/step.wit`. This crate narrows that world to a small trait:
//! implement [`Step`], call [`export!`], and build with
//! `cargo build --target wasm32-wasip2 --release`.
//!
//! ```no_run
//! use skiff_step_sdk::{Context, Manifest, Outputs, Step, StepError};
//!
//! struct Hello;
//!
//! impl Step for Hello {
//!     fn describe() -> Manifest {
//!         Manifest::new("hello", "Greets someone.").input("who", "Whom to greet", false, Some("world"))
//!     }
//!     fn run(ctx: Context) -> Result<Outputs, StepError> {
//!         let who = ctx.input_or("who", "world");
//!         skiff_step_sdk::info!("hello, {who}");
//!         Ok(Outputs::new().set("greeting", format!("hello, {who}")))
//!     }
//! }
//!
//! skiff_step_sdk::export!(Hello);
//! ```
//!
//! A step sees only what its pipeline granted: the workspace (the current
//! directory), declared environment variables, granted secrets ([`secret`]),
//! allowlisted hosts ([`http`]), and, when granted, OS processes ([`process`]). Every step may
//! keep artifacts ([`upload_artifact`], [`download_artifacts`]) and use the app's [`cache`].
#![deny(missing_docs)]
#![allow(unsafe_code)] // wit-bindgen's generated glue is unsafe by nature.

#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        // A copy of the repository's `wit/` (checked byte for byte by the host's tests), so
        // the packaged crate is self-contained.
        path: "wit",
        world: "step",
        pub_export_macro: true,
        export_macro_name: "__export_step",
        default_bindings_module: "skiff_step_sdk::bindings",
    });
}

pub mod cache;
mod context;
pub mod files;
pub mod http;
pub mod log;
pub mod process;

pub use context::{Context, Manifest, Outputs, StepError};

/// A pipeline step. Implement it and pass the type to [`export!`].
pub trait Step {
    /// What the step takes, returns and asks for; shown by `skiff step inspect`.
    fn describe() -> Manifest;
    /// Runs the step once, in a fresh sandbox.
    fn run(ctx: Context) -> Result<Outputs, StepError>;
}

/// The value of secret `name`, if the pipeline granted it to this step.
///
/// ```no_run
/// let token = skiff_step_sdk::secret("GITHUB_TOKEN").unwrap_or_default();
/// ```
pub fn secret(name: &str) -> Option<String> {
    bindings::skiff::step::secrets::get(name)
}

/// The names of the secrets granted to this step.
pub fn secret_names() -> Vec<String> {
    bindings::skiff::step::secrets::names()
}

/// Stores workspace file `path` as artifact `name` of the run; returns its size.
///
/// ```no_run
/// skiff_step_sdk::upload_artifact("report", "target/report.html").unwrap();
/// ```
pub fn upload_artifact(name: &str, path: &str) -> Result<u64, String> {
    bindings::skiff::step::artifacts::upload(name, path)
}

/// Copies the artifacts stored by the jobs this job needs (directly or through others) into
/// workspace folder `path`: only `name` when given, else all of them. Returns the names written.
///
/// ```no_run
/// let got = skiff_step_sdk::download_artifacts(Some("report.txt"), "reports").unwrap();
/// assert_eq!(got, ["report.txt"]);
/// ```
pub fn download_artifacts(name: Option<&str>, path: &str) -> Result<Vec<String>, String> {
    bindings::skiff::step::artifacts::download(name, path)
}

#[doc(hidden)]
pub fn __describe<S: Step>() -> bindings::skiff::step::types::Manifest {
    S::describe().into_wit()
}

#[doc(hidden)]
pub fn __run<S: Step>(
    invocation: bindings::skiff::step::types::Invocation,
) -> Result<bindings::skiff::step::types::StepOutput, bindings::skiff::step::types::StepError> {
    let ctx = Context::from_wit(invocation);
    S::run(ctx).map(Outputs::into_wit).map_err(StepError::into_wit)
}

/// Exports a [`Step`] implementation as the component's `step` world.
///
/// ```ignore
/// skiff_step_sdk::export!(MyStep);
/// ```
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        impl $crate::bindings::Guest for $ty {
            fn describe() -> $crate::bindings::skiff::step::types::Manifest {
                $crate::__describe::<$ty>()
            }
            fn run(
                invocation: $crate::bindings::skiff::step::types::Invocation,
            ) -> ::core::result::Result<
                $crate::bindings::skiff::step::types::StepOutput,
                $crate::bindings::skiff::step::types::StepError,
            > {
                $crate::__run::<$ty>(invocation)
            }
        }
        $crate::bindings::__export_step!($ty with_types_in $crate::bindings);
    };
}
