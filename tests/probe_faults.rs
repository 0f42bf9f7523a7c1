//! End-to-end: faults switched on in the lab yield the right failing stage
//! and reason, watch disruptions do not fail runs, cancellation aborts at
//! once, and the next run succeeds once the fault clears.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use secret_canary::config::{Config, ProbeConfig, StoreAuth, TokenSource};
use secret_canary::probe::{Outcome, ProbeRunner, Reason, RunResult, Stage};
use secret_canary_lab::faults::Fault;
use tokio_util::sync::CancellationToken;

fn probe(config: &Config, name: &str, deadline: Duration) -> ProbeConfig {
    let mut p = config.probe(name).expect("probe").clone();
    p.deadline = Some(deadline);
    p
}

async fn runner(lab: &support::TestLab, p: ProbeConfig) -> ProbeRunner {
    let r = ProbeRunner::start(p, lab.client(), CancellationToken::new())
        .await
        .expect("runner");
    support::wait_for(Duration::from_secs(20), "watchers ready", || {
        let ready = r.is_ready();
        async move { ready }
    })
    .await;
    r
}

async fn once(r: &ProbeRunner, tag: &str) -> Outcome {
    let o = r.run(tag.to_string(), CancellationToken::new()).await;
    eprintln!(
        "{tag}: {:?} {:?} {}",
        o.result,
        o.failure,
        o.detail.as_deref().unwrap_or("")
    );
    o
}

fn failed(o: &Outcome, stage: Stage, reason: Reason) {
    assert_eq!(o.result, RunResult::Failure, "{o:#?}");
    let f = o.failure.expect("failure");
    assert_eq!((f.stage, f.reason), (stage, reason), "{o:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_attributed_and_runs_recover() {
    let lab =
        support::start_rolled_out(&support::CANARY_DEPLOYMENTS, Duration::from_secs(90)).await;
    let config = Config::load(lab.prober_config.as_ref().unwrap()).unwrap();

    // Watch streams cut over and over: the watchers resume and the run succeeds.
    let volume = runner(&lab, probe(&config, "eso-volume", Duration::from_secs(30))).await;
    lab.knobs.set_fault(Fault::WatchDrop, true);
    let o = once(&volume, "watch-drop").await;
    lab.knobs.set_fault(Fault::WatchDrop, false);
    assert_eq!(o.result, RunResult::Success, "{o:#?}");

    // ESO cannot read the store: eso_sync / sync_error, then recovery.
    let volume = runner(&lab, probe(&config, "eso-volume", Duration::from_secs(5))).await;
    lab.knobs.set_fault(Fault::EsoError, true);
    let o = once(&volume, "eso-error").await;
    lab.knobs.set_fault(Fault::EsoError, false);
    failed(&o, Stage::EsoSync, Reason::SyncError);
    let volume = runner(&lab, probe(&config, "eso-volume", Duration::from_secs(30))).await;
    let o = once(&volume, "eso-recovered").await;
    assert_eq!(o.result, RunResult::Success, "{o:#?}");

    // Reloader absent: the template never changes.
    let env = runner(
        &lab,
        probe(&config, "eso-reloader-env", Duration::from_secs(4)),
    )
    .await;
    lab.knobs.set_fault(Fault::ReloaderAbsent, true);
    let o = once(&env, "reloader-absent").await;
    failed(&o, Stage::ReloaderTrigger, Reason::Timeout);
    assert!(o.duration(Stage::SecretUpdate).is_some(), "{o:#?}");

    // Cancelled mid-run: aborted at once, on the stage in progress.
    let env = runner(
        &lab,
        probe(&config, "eso-reloader-env", Duration::from_secs(60)),
    )
    .await;
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c2.cancel();
    });
    let t = Instant::now();
    let o = env.run("aborted".into(), cancel).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "abort took {:?}",
        t.elapsed()
    );
    assert_eq!(o.result, RunResult::Aborted, "{o:#?}");
    assert_eq!(o.failure.unwrap().reason, Reason::Aborted);
    lab.knobs.set_fault(Fault::ReloaderAbsent, false);

    // Canaries crash at start: the restart's rollout never completes.
    let bv = runner(
        &lab,
        probe(&config, "bankvaults-restart", Duration::from_secs(8)),
    )
    .await;
    lab.knobs.set_fault(Fault::CanaryCrash, true);
    let o = once(&bv, "canary-crash").await;
    lab.knobs.set_fault(Fault::CanaryCrash, false);
    failed(&o, Stage::Rollout, Reason::CanaryCrashing);
    let bv = runner(
        &lab,
        probe(&config, "bankvaults-restart", Duration::from_secs(60)),
    )
    .await;
    let o = once(&bv, "crash-recovered").await;
    assert_eq!(o.result, RunResult::Success, "{o:#?}");

    // Store credentials: a missing token file is the prober's problem; a
    // wrong token is an auth error.
    let mut p = probe(&config, "eso-volume", Duration::from_secs(10));
    p.store.auth = StoreAuth::Token(TokenSource::File(PathBuf::from(
        "/nonexistent/prober.token",
    )));
    let o = once(&runner(&lab, p.clone()).await, "no-token-file").await;
    failed(&o, Stage::StoreWrite, Reason::ProberError);
    let bad = lab.lab.dir.join("bad.token");
    std::fs::write(&bad, "s.not-a-token").unwrap();
    p.store.auth = StoreAuth::Token(TokenSource::File(bad));
    let o = once(&runner(&lab, p).await, "bad-token").await;
    failed(&o, Stage::StoreWrite, Reason::AuthError);

    lab.stop().await;
}
