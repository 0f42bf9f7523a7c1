//! One probe: its long-lived watchers, its store and canary clients, and the
//! runs started on it, each ending as exactly one [`Outcome`].
//!
//! ```text
//! plan      which hops the chain has (read once from the config)
//! store     write the fresh value to KV v2 (vaultrs; login, renewal)
//! cluster   shared watchers: ExternalSecret, Secret, Deployment, canary Pods
//! canary    client of the canary Pods' /digest long-poll
//! events    a run's subscriptions to the watchers, its baseline and facts
//! poll      the run's canary pollers, one per target Pod
//! tracker   stage bookkeeping (the stage table), no I/O
//!   attribution  why a stage did not complete: Reason + typed Cause
//! run       the driver: write, nudge, follow, conclude
//! ```
//!
//! What a run produces (Stage, Reason, Outcome) is [`crate::vocab`],
//! re-exported here.
//!
//! Inside `probe`, top to bottom (each uses only those below it):
//! `run` -> `events`, `poll` -> `tracker` -> `plan`, `store`, `cluster`,
//! `canary` (and [`crate::vocab`], [`crate::config`] below them all).

pub mod canary;
pub mod cluster;
pub mod events;
pub mod plan;
pub mod poll;
pub mod run;
pub mod store;
pub mod tracker;

pub use crate::vocab::{
    Failure, Outcome, Reason, RunProgress, RunResult, Stage, StageTiming, SyncTrigger,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// Why a probe could not be set up. Nothing in the config makes this fail
/// today: problems a run meets (bad credentials path, bad selector) are
/// reported by every run as `prober_error`, so they show on the metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The probe is configured in a way the engine cannot run.
    #[error("probe {probe}: {message}")]
    Config {
        /// The probe's name.
        probe: String,
        /// What is wrong.
        message: String,
    },
}

/// A configured probe with its long-lived watchers; runs are started on it.
/// Dropping it stops its watchers.
pub struct ProbeRunner {
    config: ProbeConfig,
    plan: plan::Plan,
    store: store::Store,
    cluster: cluster::Cluster,
    /// The canary client, or why it could not be built (reported by runs).
    canary: Result<canary::CanaryClient, Arc<canary::CanaryError>>,
    /// The digest of the last value written, the "old" value of the next run
    /// when no Secret shows it.
    last_digest: Mutex<Option<String>>,
    /// What the cluster says blocks the run in flight (stage, reason),
    /// cleared when the run ends.
    blocked: tokio::sync::watch::Sender<Option<(Stage, Reason)>>,
    /// Watcher change-log overflows seen by runs, not yet taken.
    change_log_overflows: AtomicU64,
    stop: CancellationToken,
}

impl ProbeRunner {
    /// Start the probe's shared watchers (they stop when `cancel` fires or
    /// the runner is dropped).
    pub async fn start(
        config: ProbeConfig,
        client: kube::Client,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let stop = cancel.child_token();
        let cluster = cluster::Cluster::start(&config.chain, client.clone(), &stop);
        Self::with_cluster(config, cluster, client, stop)
    }

    /// Start the probe on the process's shared watchers: the watches other
    /// probes already follow are shared, the rest start now (they stop when
    /// `watches`' token fires or no runner holds them).
    pub async fn start_shared(
        config: ProbeConfig,
        watches: &cluster::Watches,
        cancel: CancellationToken,
    ) -> Result<Self, Error> {
        let cluster = cluster::Cluster::lease(&config.chain, watches);
        let client = watches.client().clone();
        Self::with_cluster(config, cluster, client, cancel.child_token())
    }

    fn with_cluster(
        config: ProbeConfig,
        cluster: cluster::Cluster,
        client: kube::Client,
        stop: CancellationToken,
    ) -> Result<Self, Error> {
        let canary =
            canary::CanaryClient::new(config.chain.canary.port, config.chain.canary.timeout)
                .map(|c| c.with_access(config.chain.canary.access, client, &config.chain.namespace))
                .map_err(Arc::new);
        Ok(ProbeRunner {
            plan: plan::Plan::of(&config.chain),
            store: store::Store::new(config.store.clone()),
            cluster,
            canary,
            last_digest: Mutex::new(None),
            blocked: tokio::sync::watch::Sender::new(None),
            change_log_overflows: AtomicU64::new(0),
            stop,
            config,
        })
    }

    /// The probe's configuration.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// True once every watcher has completed its initial list.
    pub fn is_ready(&self) -> bool {
        self.cluster.is_ready()
    }

    /// The stages this probe's chain has, in order (without `end_to_end`).
    pub fn stages(&self) -> Vec<Stage> {
        self.plan.stages()
    }

    /// One run, bounded by the probe's deadline; `cancel` aborts it (the
    /// outcome is then `aborted`). Never panics, never returns an error.
    pub async fn run(&self, run_id: String, cancel: CancellationToken) -> Outcome {
        let out = run::execute(self, run_id, cancel, None).await;
        self.blocked.send_replace(None);
        out
    }

    /// The cluster's signal that the run in flight is blocked: the stage
    /// and reason while it lasts, `None` otherwise (and after every run).
    pub fn blocked(&self) -> tokio::sync::watch::Receiver<Option<(Stage, Reason)>> {
        self.blocked.subscribe()
    }

    /// Watcher change-log overflows runs saw since the last call.
    pub fn take_change_log_overflows(&self) -> u64 {
        self.change_log_overflows.swap(0, Ordering::Relaxed)
    }

    /// [`ProbeRunner::run`], publishing the stages as they start and end
    /// on `progress` (for live displays; nothing waits on the receivers).
    pub async fn run_observed(
        &self,
        run_id: String,
        cancel: CancellationToken,
        progress: &tokio::sync::watch::Sender<RunProgress>,
    ) -> Outcome {
        let out = run::execute(self, run_id, cancel, Some(progress)).await;
        self.blocked.send_replace(None);
        out
    }
}

impl Drop for ProbeRunner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
