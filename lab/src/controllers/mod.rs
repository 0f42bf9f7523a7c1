//! Simulated controllers: small clients of the lab's API server that behave
//! like the real ESO, Reloader, Deployment controller and kubelet, each with
//! latency knobs and fault switches, each recording ground truth.

pub mod api;
pub mod bankvaults;
pub mod deployment;
pub mod eso;
pub mod kubelet;
pub mod reloader;
pub mod replicaset;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;

use crate::faults::Knobs;
use crate::truth::Truth;

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    /// A kube-rs client for the lab's API server (as a controller's ServiceAccount).
    pub client: kube::Client,
    /// Faults and latencies.
    pub knobs: Arc<Knobs>,
    /// The ground-truth log.
    pub truth: Arc<Truth>,
    /// The lab's working directory (Pod volumes, process logs).
    pub dir: PathBuf,
    /// The `secret-canary` binary: containers whose command is `secret-canary`
    /// run this file.
    pub canary_bin: PathBuf,
    /// OpenBao's address, `http://127.0.0.1:PORT`.
    pub vault_addr: String,
}

/// Start every simulated controller, ESO with `eso_workers` reconcile
/// workers ([`eso::run_with_workers`]); each runs until `cancel` fires.
/// Returns the tasks, named, so the lab can wait for them on stop.
pub fn spawn_all(
    ctx: Context,
    eso_workers: usize,
    cancel: tokio_util::sync::CancellationToken,
) -> Vec<(&'static str, tokio::task::JoinHandle<()>)> {
    let mut tasks = Vec::new();
    macro_rules! start {
        ($name:literal, $run:path) => {{
            let (ctx, cancel) = (ctx.clone(), cancel.clone());
            tasks.push((
                $name,
                tokio::spawn(async move {
                    if let Err(e) = $run(ctx, cancel).await {
                        tracing::error!(controller = $name, error = %e, "lab controller stopped");
                    }
                }),
            ));
        }};
    }
    {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        tasks.push((
            "eso",
            tokio::spawn(async move {
                if let Err(e) = eso::run_with_workers(ctx, eso_workers, cancel).await {
                    tracing::error!(controller = "eso", error = %e, "lab controller stopped");
                }
            }),
        ));
    }
    start!("reloader", reloader::run);
    start!("deployment", deployment::run);
    start!("replicaset", replicaset::run);
    start!("kubelet", kubelet::run);
    tasks
}
