//! The run vocabulary, below everything that speaks of runs (config,
//! probe, metrics, report): what one probe run produces, milestones per
//! stage or the first stage that did not complete and why. The fixed enums
//! here are the only label values the metrics ever see for `stage`,
//! `reason` and `result`; the chain's stage list and the run deadline's
//! default are defined here and nowhere else.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A run's deadline when the probe sets none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// A hop of the delivery chain. A probe whose chain lacks a hop never reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The prober writes the fresh test value to the store.
    StoreWrite,
    /// ESO reports a sync that read the new value (ExternalSecret status).
    EsoSync,
    /// The Kubernetes Secret holds the new value (digest matches).
    SecretUpdate,
    /// The workload's pod template changed (Reloader, or the prober's restart).
    ReloaderTrigger,
    /// The new ReplicaSet is fully rolled out and available.
    Rollout,
    /// Every canary Pod of the current ReplicaSet reports the new digest.
    CanaryObserve,
    /// From the store write starting to the canary observing the value.
    EndToEnd,
}

impl Stage {
    /// The hops in chain order (without `end_to_end`).
    pub const CHAIN: [Stage; 6] = [
        Stage::StoreWrite,
        Stage::EsoSync,
        Stage::SecretUpdate,
        Stage::ReloaderTrigger,
        Stage::Rollout,
        Stage::CanaryObserve,
    ];

    /// The stages of a chain, in chain order (without `end_to_end`): every
    /// chain writes and observes; the other hops depend on what it has.
    /// The one definition of "which stages a probe reports", shared by the
    /// config, the engine, the metrics and the report.
    pub fn chain(eso: bool, secret: bool, rolls: bool) -> Vec<Stage> {
        Stage::CHAIN
            .into_iter()
            .filter(|s| match s {
                Stage::StoreWrite | Stage::CanaryObserve => true,
                Stage::EsoSync => eso,
                Stage::SecretUpdate => secret,
                Stage::ReloaderTrigger | Stage::Rollout => rolls,
                Stage::EndToEnd => false,
            })
            .collect()
    }

    /// The snake_case label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::StoreWrite => "store_write",
            Stage::EsoSync => "eso_sync",
            Stage::SecretUpdate => "secret_update",
            Stage::ReloaderTrigger => "reloader_trigger",
            Stage::Rollout => "rollout",
            Stage::CanaryObserve => "canary_observe",
            Stage::EndToEnd => "end_to_end",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stage did not complete. Fixed and small: never an error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The stage's (or the run's) deadline passed first.
    Timeout,
    /// The store answered with an error or could not be reached.
    StoreError,
    /// The store refused our credentials (401/403, login failed).
    AuthError,
    /// ESO reported `Ready=False` (SecretSyncedError).
    SyncError,
    /// An object the chain needs does not exist (Secret, ExternalSecret, Deployment).
    NotFound,
    /// The Kubernetes API server failed our requests.
    ApiError,
    /// The Deployment reported ProgressDeadlineExceeded or could not create Pods.
    RolloutStuck,
    /// Canary containers keep crashing (CrashLoopBackOff / repeated restarts).
    CanaryCrashing,
    /// A canary Pod could not be reached on its port.
    CanaryUnreachable,
    /// A canary answered with a digest other than the value written.
    ValueMismatch,
    /// The prober was shut down while the run was in flight.
    Aborted,
    /// The prober itself is misconfigured or hit a bug (pages the prober's
    /// owners, not the pipeline's).
    ProberError,
}

impl Reason {
    /// The snake_case label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::StoreError => "store_error",
            Reason::AuthError => "auth_error",
            Reason::SyncError => "sync_error",
            Reason::NotFound => "not_found",
            Reason::ApiError => "api_error",
            Reason::RolloutStuck => "rollout_stuck",
            Reason::CanaryCrashing => "canary_crashing",
            Reason::CanaryUnreachable => "canary_unreachable",
            Reason::ValueMismatch => "value_mismatch",
            Reason::Aborted => "aborted",
            Reason::ProberError => "prober_error",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage's timing: when it started and, if it did, completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage.
    pub stage: Stage,
    /// Wall clock at the start (RFC 3339, nanoseconds in JSON).
    pub started_at: DateTime<Utc>,
    /// Wall clock at completion; `None` if it did not complete.
    pub completed_at: Option<DateTime<Utc>>,
    /// Monotonic duration from start to completion.
    #[serde(with = "opt_secs", default, rename = "duration_seconds")]
    pub duration: Option<Duration>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Every stage completed.
    Success,
    /// A stage did not complete.
    Failure,
    /// The tick found the previous run still going.
    Skipped,
    /// The prober shut down mid-run.
    Aborted,
}

impl RunResult {
    /// The snake_case label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Failure => "failure",
            RunResult::Skipped => "skipped",
            RunResult::Aborted => "aborted",
        }
    }
}

/// The first stage that did not complete, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The stage.
    pub stage: Stage,
    /// The bounded reason.
    pub reason: Reason,
}

/// Everything one probe run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The probe's configured name.
    pub probe: String,
    /// A unique id for this run (also the tracing span's and exemplars' id).
    pub run_id: String,
    /// SHA-256 (hex) of the value written; never the value.
    pub digest: Option<String>,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run ended.
    pub finished_at: DateTime<Utc>,
    /// Stages in chain order, each started; the last may be incomplete.
    pub stages: Vec<StageTiming>,
    /// Set when the run did not succeed.
    pub failure: Option<Failure>,
    /// Success, failure or aborted (skipped runs produce no Outcome).
    pub result: RunResult,
    /// A human-readable detail of the failure for logs and reports (never a
    /// label, never a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// What made ESO sync this run's value (`None`: the chain has no ESO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_trigger: Option<SyncTrigger>,
}

/// What made ESO sync a run's value: its own schedule, or the prober's
/// `force-sync` annotation. Forced runs measure the pipeline without the
/// refreshInterval wait, so the metrics keep them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncTrigger {
    /// ESO's refreshInterval (the production path).
    Natural,
    /// The prober annotated the ExternalSecret right after the store write.
    Forced,
}

impl SyncTrigger {
    /// The snake_case value.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncTrigger::Natural => "natural",
            SyncTrigger::Forced => "forced",
        }
    }
}

/// What a run in flight has done so far, published on a `watch` channel
/// (progress displays); the finished run's [`Outcome`] is the final word.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunProgress {
    /// The stages started so far, as in [`Outcome::stages`] (incomplete
    /// ones have no `completed_at`), without `end_to_end`.
    pub stages: Vec<StageTiming>,
    /// Set once the sync trigger is known (after the store write).
    pub sync_trigger: Option<SyncTrigger>,
}

impl Outcome {
    /// The completed duration of a stage, if it completed in this run.
    pub fn duration(&self, stage: Stage) -> Option<Duration> {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .and_then(|s| s.duration)
    }
}

mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let v: Option<f64> = Option::deserialize(d)?;
        v.map(|s| Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
