//! The one vocabulary of states for runs, jobs and steps, kept in the store and shown by the
//! API as the same lowercase words.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The state of a run, a job or a step. Serialized (and stored) as its lowercase name.
///
/// A run goes `queued` → `running` → one of the four ends; jobs and steps are stored from
/// `running` on (or straight as `skipped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(description = "A run's state, as the run list filters it.")]
pub enum RunStatus {
    /// Waiting for a slot.
    #[default]
    Queued,
    /// Running.
    Running,
    /// A job waiting before its first step (for an approval of its environment); its reason
    /// says what for. Jobs only: their run is `running`.
    Waiting,
    /// Succeeded.
    Success,
    /// Failed.
    Failure,
    /// Cancelled.
    Cancelled,
    /// Not run: the pipeline's `on:` does not take the event (for a run), or its condition was
    /// false (for a job or step).
    Skipped,
}

impl RunStatus {
    /// Every state, in the order above.
    pub const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Success,
        RunStatus::Failure,
        RunStatus::Cancelled,
        RunStatus::Skipped,
    ];

    /// The lowercase name, as stored and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Success => "success",
            RunStatus::Failure => "failure",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }

    /// Whether it is over: nothing more will change.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Success | RunStatus::Failure | RunStatus::Cancelled | RunStatus::Skipped)
    }

    /// Whether it ended badly (failed or cancelled): what a rerun of the failed jobs runs again.
    pub fn is_failed(self) -> bool {
        matches!(self, RunStatus::Failure | RunStatus::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for RunStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl From<skiff_pipeline::Status> for RunStatus {
    fn from(s: skiff_pipeline::Status) -> Self {
        match s {
            skiff_pipeline::Status::Success => RunStatus::Success,
            skiff_pipeline::Status::Failure => RunStatus::Failure,
            skiff_pipeline::Status::Cancelled => RunStatus::Cancelled,
            skiff_pipeline::Status::Skipped => RunStatus::Skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_is_its_lowercase_name_in_json_and_back() {
        for st in RunStatus::ALL {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), st);
            assert_eq!(st.as_str().parse::<RunStatus>(), Ok(st));
        }
        assert!("bogus".parse::<RunStatus>().is_err());
    }
}
