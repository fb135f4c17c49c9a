//! The pipeline language and engine: the YAML format (and Serverless-cd's),
//! `${{ }}` expressions in CEL, validation with positions, the plan, and the
//! engine that runs a plan's steps through a [`StepExecutor`].
//!
//! `load_file` → [`Plan`] (or every problem as [`Diagnostics`]) →
//! [`run_pipeline`] → [`RunReport`], with [`RunEvent`]s to a [`RunObserver`].

pub mod compat;
pub mod component_ref;
pub mod engine;
pub mod executor;
pub mod expr;
pub mod inert;
pub mod load;
pub mod lock;
pub mod mask;
pub mod model;
pub mod plan;
pub mod schema;
pub mod script;
pub mod source;

pub use engine::{
    GateRequest, JobDispatch, JobGate, JobReport, JobSetup, JobTicket, Refusal, RunEvent, RunObserver, RunOptions,
    RunReport, Status, StepReport, run_job, run_pipeline,
};
pub use executor::{Grants, Level, LogLine, StepExecutor, StepOutcome, StepRef, StepRequest, StepResult, Usage};
pub use load::{Diagnostic, Diagnostics, load_file, load_str};
pub use plan::Plan;
