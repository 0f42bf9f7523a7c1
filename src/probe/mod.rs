//! One probe run: write a fresh value to the store, then follow it through
//! the cluster to the canary, ending as exactly one [`Outcome`].

pub mod canary;
pub mod cluster;
pub mod outcome;
pub mod store;

pub use outcome::{Failure, Outcome, Reason, RunResult, Stage, StageTiming};

use tokio_util::sync::CancellationToken;

use crate::config::ProbeConfig;

/// When something happened: a monotonic instant for durations and the wall
/// clock for timestamps, taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Monotonic time (durations are differences of these).
    pub at: std::time::Instant,
    /// Wall-clock time (RFC 3339 timestamps, comparable with the lab's truth).
    pub wall: chrono::DateTime<chrono::Utc>,
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        Stamp {
            at: std::time::Instant::now(),
            wall: chrono::Utc::now(),
        }
    }
}

/// Why a probe could not be set up (bad config the validator could not catch,
/// no API server). Failures of a run are [`Outcome`]s, never errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the engine lands.
    #[error("probe {probe}: not implemented yet")]
    NotImplemented {
        /// The probe's name.
        probe: String,
    },
}

/// A configured probe with its long-lived watchers; runs are started on it.
pub struct ProbeRunner {
    config: ProbeConfig,
}

impl ProbeRunner {
    /// Start the probe's shared watchers (they stop when `cancel` fires).
    pub async fn start(
        config: ProbeConfig,
        client: kube::Client,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let _ = (client, cancel);
        Ok(ProbeRunner { config })
    }

    /// The probe's configuration.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// True once every watcher has completed its initial list.
    pub fn is_ready(&self) -> bool {
        false
    }

    /// One run, bounded by the probe's deadline; `cancel` aborts it (the
    /// outcome is then `aborted`). Never panics, never returns an error.
    pub async fn run(&self, run_id: String, cancel: CancellationToken) -> Outcome {
        let _ = cancel;
        let now = chrono::Utc::now();
        Outcome {
            probe: self.config.name.clone(),
            run_id,
            digest: None,
            started_at: now,
            finished_at: now,
            stages: Vec::new(),
            failure: Some(Failure {
                stage: Stage::StoreWrite,
                reason: Reason::ProberError,
            }),
            result: RunResult::Failure,
            detail: Some("probe engine not implemented".into()),
        }
    }
}
