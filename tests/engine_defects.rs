//! End-to-end: defects of the engine on real clusters (issue 11), each
//! reproduced in the lab. A `kubectl rollout restart` of the canary
//! Deployment landing while a run is in flight, at several moments of it,
//! must neither fail the run nor end or shorten a stage.

mod support;

use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use secret_canary::config::Config;
use secret_canary::probe::cluster::RESTARTED_AT;
use secret_canary::probe::{Outcome, ProbeRunner, RunProgress, RunResult, Stage};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// When, during the run, the concurrent restart lands.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Right after the store write (before Reloader's patch, or right
    /// after the prober's own restart).
    Written,
    /// Once the trigger ended (mid-rollout).
    Triggered,
    /// Once the rollout ended (while the canaries are asked).
    RolledOut,
}

impl Moment {
    fn stage(self) -> Stage {
        match self {
            Moment::Written => Stage::StoreWrite,
            Moment::Triggered => Stage::ReloaderTrigger,
            Moment::RolledOut => Stage::Rollout,
        }
    }
}

/// `kubectl rollout restart deployment/<name>`: a strategic merge patch of
/// the pod template's `restartedAt`, as another field manager.
async fn kubectl_restart(api: &Api<Deployment>, name: &str) {
    let value = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}
    });
    let params = PatchParams {
        field_manager: Some("kubectl-rollout".into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Strategic(patch))
        .await
        .expect("kubectl rollout restart");
}

/// One run of `probe` with a restart of `deployment` landing at `moment`.
async fn run_with_restart(
    lab: &support::TestLab,
    config: &Config,
    probe: &str,
    deployment: &str,
    moment: Moment,
) -> Outcome {
    let probe_config = config.probe(probe).expect("probe").clone();
    let cancel = CancellationToken::new();
    let runner = ProbeRunner::start(probe_config, lab.client(), cancel.clone())
        .await
        .expect("runner");
    support::wait_for(Duration::from_secs(20), "watchers ready", || {
        let ready = runner.is_ready();
        async move { ready }
    })
    .await;
    let (tx, mut rx) = watch::channel(RunProgress::default());
    let api: Api<Deployment> = Api::namespaced(lab.client(), "canary");
    let name = deployment.to_string();
    let restarter = tokio::spawn(async move {
        let stage = moment.stage();
        let reached = rx
            .wait_for(|p| {
                p.stages
                    .iter()
                    .any(|s| s.stage == stage && s.completed_at.is_some())
            })
            .await
            .is_ok();
        if reached {
            kubectl_restart(&api, &name).await;
        }
        reached
    });
    let outcome = runner
        .run_observed(format!("restart-{moment:?}"), CancellationToken::new(), &tx)
        .await;
    drop(tx);
    let restarted = restarter.await.expect("restarter");
    eprintln!(
        "{probe} restart at {moment:?} (landed: {restarted}): {}",
        serde_json::to_string(&outcome).unwrap()
    );
    cancel.cancel();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_restart_at_any_moment_of_a_run_does_not_fail_it() {
    let lab = support::start_lab(None).await;
    lab.wait_rolled_out(
        "canary",
        &["canary-env", "canary-bankvaults"],
        Duration::from_secs(90),
    )
    .await;
    let config = Config::load(lab.prober_config.as_ref().expect("prober config"))
        .expect("the lab's prober config is valid");
    let cases = [
        ("eso-reloader-env", "canary-env", Moment::Written),
        ("eso-reloader-env", "canary-env", Moment::Triggered),
        ("eso-reloader-env", "canary-env", Moment::RolledOut),
        ("bankvaults-restart", "canary-bankvaults", Moment::Written),
        ("bankvaults-restart", "canary-bankvaults", Moment::Triggered),
    ];
    let mut failed = Vec::new();
    for (probe, deployment, moment) in cases {
        let o = run_with_restart(&lab, &config, probe, deployment, moment).await;
        if o.result != RunResult::Success {
            failed.push(format!(
                "{probe} at {moment:?}: {:?} {:?}",
                o.failure, o.detail
            ));
        }
        // Let the restart's own rollout settle before the next case.
        lab.wait_rolled_out("canary", &[deployment], Duration::from_secs(60))
            .await;
    }
    lab.stop().await;
    assert!(failed.is_empty(), "runs failed: {failed:#?}");
}

// The other issue-11 behaviours are rows of the fault matrix
// (`tests/fault_matrix.rs`, `issue_11_rows_on_the_env_and_restart_chains`
// and the changed crash-loop and API-outage rows): a restart mid-run through
// the real binary, eso-clock-skew ±2 s against the ground truth, the watch
// recovered after an API outage, a 403 on the prober's own patch
// (`api-forbidden`), webhook fail-open, the crash loop with the upstream
// back-off, SecretSyncedError ended by `blocked_for` with
// `secret_canary_stage_blocked` set meanwhile.
// TODO(lead): graceful deletion has no dedicated assertion yet (every lab
// rollout now keeps old Pods Terminating and Ready through preStop and every
// matrix run passes through that, but no test checks that a Terminating Pod
// is never asked).
