//! The fault matrix (issue 5): every fault of the delivery pipeline, injected
//! through the lab's switches or the real OpenBao's API while the real
//! `secret-canary run` binary probes on a 1 s interval. Each row asserts the
//! failed run's stage and reason (or no failure), that the process stays up
//! with `/healthz` answering 200 throughout, and that the first run started
//! after the fault cleared (and the pipeline settled) succeeds. Each test
//! prints its rows as a Markdown table; `docs/reliability.md` quotes them.
//!
//! Run: `cargo test --test fault_matrix -- --nocapture` (the leak test is
//! `leak_flat_over_200_faulty_runs`).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use reqwest::Method;
use secret_canary::config::{Config, ProbeConfig, StoreAuth};
use secret_canary_lab::faults::{Fault, Knob, Latency};
use support::prober::{resources, LoggedRun, ProberProcess, Resources};
use support::TestLab;

/// One measured row of the matrix.
struct Row {
    fault: String,
    probe: String,
    expected: String,
    observed: String,
    detail: String,
    /// From injection to the failed (or passing) run's end.
    seen_after: f64,
    /// Failed runs between clearing and the first success.
    failed_in_between: usize,
    /// From clearing the fault to the end of the first successful run.
    recovered_after: f64,
}

fn secs(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

fn print_rows(title: &str, rows: &[Row]) {
    let mut out = format!(
        "\n### {title}\n\n| fault | probe | expected | observed | seen after (s) | recovered? | failed runs after clear | time to recover (s) | detail |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | yes | {} | {:.1} | {} |\n",
            r.fault,
            r.probe,
            r.expected,
            r.observed,
            r.seen_after,
            r.failed_in_between,
            r.recovered_after,
            r.detail
                .replace('|', "/")
                .chars()
                .take(140)
                .collect::<String>()
        ));
    }
    println!("{out}");
}

/// A prober config derived from the lab's: the named probes (renamed), on
/// a 1 s interval, with `tweak` applied. Written into the lab's directory.
fn derive_config(
    lab: &TestLab,
    file: &str,
    pick: &[(&str, &str)],
    tweak: impl Fn(&mut ProbeConfig),
) -> PathBuf {
    let mut c = Config::load(lab.prober_config.as_ref().expect("lab prober config")).unwrap();
    c.probes = pick
        .iter()
        .map(|(from, to)| {
            let mut p = c.probe(from).expect("lab probe").clone();
            p.name = to.to_string();
            p.interval = Some(Duration::from_secs(1));
            p.schedule = None;
            p.slo.clear();
            p.store.timeout = Some(Duration::from_millis(1500));
            tweak(&mut p);
            p
        })
        .collect();
    let path = lab.lab.dir.join(file);
    std::fs::write(&path, serde_norway::to_string(&c).unwrap()).unwrap();
    path
}

/// The first run of `probe` started at or after `after`: it must end with
/// one of `expected` (`stage/reason` or `success`).
async fn expect_verdict(
    p: &ProberProcess,
    probe: &str,
    after: DateTime<Utc>,
    expected: &[&str],
    limit: Duration,
) -> LoggedRun {
    let r = p.wait_run(probe, after, limit).await;
    eprintln!(
        "[{probe}] {} after fault: {} ({})",
        r.run_id,
        r.verdict(),
        r.detail.as_deref().unwrap_or("")
    );
    assert!(
        expected.contains(&r.verdict().as_str()),
        "{probe}: expected {expected:?}, got {} ({:?})",
        r.verdict(),
        r.detail
    );
    r
}

/// After the fault cleared at `cleared` (and the pipeline settled at
/// `settled`): the first run started after `settled` succeeds. Returns the
/// number of failed runs between `cleared` and that success, and the time
/// from `cleared` to the success's end.
async fn expect_recovery(
    p: &ProberProcess,
    probe: &str,
    cleared: DateTime<Utc>,
    settled: DateTime<Utc>,
    limit: Duration,
) -> (usize, f64) {
    let ok = p.wait_run(probe, settled, limit).await;
    assert!(
        ok.succeeded(),
        "{probe}: first run after recovery did not succeed: {} ({:?})",
        ok.verdict(),
        ok.detail
    );
    // The earliest success after clearing may precede `settled`.
    let runs: Vec<LoggedRun> = p
        .runs()
        .into_iter()
        .filter(|r| r.probe == probe && r.started >= cleared && r.finished.is_some())
        .collect();
    let first_ok = runs.iter().find(|r| r.succeeded()).unwrap_or(&ok);
    let failed = runs
        .iter()
        .filter(|r| r.started < first_ok.started && !r.succeeded())
        .count();
    (failed, secs(cleared, first_ok.finished.unwrap()))
}

fn row(
    fault: &str,
    probe: &str,
    expected: &str,
    injected: DateTime<Utc>,
    run: &LoggedRun,
    recovery: (usize, f64),
) -> Row {
    Row {
        fault: fault.into(),
        probe: probe.into(),
        expected: expected.into(),
        observed: run.verdict(),
        detail: run.detail.clone().unwrap_or_default(),
        seen_after: secs(injected, run.finished.unwrap()),
        failed_in_between: recovery.0,
        recovered_after: recovery.1,
    }
}

fn assert_alive(p: &mut ProberProcess) {
    assert!(p.is_running(), "the prober process exited");
    let (bad, total) = p.health();
    assert_eq!(bad, 0, "/healthz failed {bad} of {total} checks");
}

async fn patch_deployment(lab: &TestLab, name: &str, patch: serde_json::Value) {
    let api: Api<Deployment> = Api::namespaced(lab.client(), "canary");
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn external_secrets(lab: &TestLab) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "external-secrets.io",
        "v1",
        "ExternalSecret",
    ));
    Api::namespaced_with(lab.client(), "canary", &ar)
}

fn unseal_key(lab: &TestLab) -> String {
    let log = std::fs::read_to_string(lab.lab.dir.join("logs/openbao.log")).unwrap();
    log.lines()
        .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
        .expect("dev unseal key in the OpenBao log")
        .trim()
        .to_string()
}

async fn start_lab(deployments: &[&str]) -> TestLab {
    let lab = support::start_lab(None).await;
    lab.wait_rolled_out("canary", deployments, Duration::from_secs(90))
        .await;
    lab
}

/// Store faults through the real OpenBao (sealed, token revoked, down),
/// SIGTERM mid-run, then a short-lived Kubernetes-auth token the prober must
/// renew or replace by logging in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_sigterm_and_short_lived_tokens() {
    let lab = start_lab(&["canary-volume"]).await;
    let config = derive_config(
        &lab,
        "matrix-store.yaml",
        &[("eso-volume", "volume")],
        |p| {
            p.deadline = Some(Duration::from_secs(10));
        },
    );
    let mut prober = ProberProcess::start(
        &config,
        &lab.lab.dir.join("logs/prober-store.log"),
        Duration::from_secs(3),
    )
    .await;
    let probe = "volume";
    let mut rows = Vec::new();
    let t = Utc::now();
    expect_verdict(&prober, probe, t, &["success"], Duration::from_secs(30)).await;

    // OpenBao sealed through its API: the write gets 503.
    lab.bao
        .call(Method::PUT, "sys/seal", None)
        .await
        .expect("seal");
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        probe,
        injected,
        &["store_write/store_error"],
        Duration::from_secs(20),
    )
    .await;
    lab.bao
        .call(
            Method::PUT,
            "sys/unseal",
            Some(serde_json::json!({ "key": unseal_key(&lab) })),
        )
        .await
        .expect("unseal");
    let cleared = Utc::now();
    let rec = expect_recovery(&prober, probe, cleared, cleared, Duration::from_secs(30)).await;
    rows.push(row(
        "OpenBao sealed (sys/seal)",
        probe,
        "store_write/store_error",
        injected,
        &r,
        rec,
    ));
    assert_alive(&mut prober);

    // The prober's token revoked: 403; a fresh login re-reads the token file
    // and gets the same revoked token until the file is rotated.
    let token_file = lab.lab.dir.join("prober.token");
    let old = std::fs::read_to_string(&token_file).unwrap();
    lab.bao
        .call(
            Method::POST,
            "auth/token/revoke",
            Some(serde_json::json!({ "token": old.trim() })),
        )
        .await
        .expect("revoke");
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        probe,
        injected,
        &["store_write/auth_error"],
        Duration::from_secs(20),
    )
    .await;
    let fresh = lab
        .bao
        .create_token(&["write-canary"], "768h")
        .await
        .unwrap();
    std::fs::write(&token_file, fresh).unwrap();
    let cleared = Utc::now();
    let rec = expect_recovery(&prober, probe, cleared, cleared, Duration::from_secs(30)).await;
    rows.push(row(
        "token revoked (403)",
        probe,
        "store_write/auth_error",
        injected,
        &r,
        rec,
    ));

    // The prober's own problem, not the pipeline's: its credential file is
    // gone when it must log in again (the token revoked meanwhile).
    let current = std::fs::read_to_string(&token_file).unwrap();
    std::fs::remove_file(&token_file).unwrap();
    lab.bao
        .call(
            Method::POST,
            "auth/token/revoke",
            Some(serde_json::json!({ "token": current.trim() })),
        )
        .await
        .expect("revoke");
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        probe,
        injected,
        &["store_write/prober_error"],
        Duration::from_secs(20),
    )
    .await;
    let fresh = lab
        .bao
        .create_token(&["write-canary"], "768h")
        .await
        .unwrap();
    std::fs::write(&token_file, fresh).unwrap();
    let cleared = Utc::now();
    let rec = expect_recovery(&prober, probe, cleared, cleared, Duration::from_secs(30)).await;
    rows.push(row(
        "prober misconfigured: token file missing at re-login",
        probe,
        "store_write/prober_error",
        injected,
        &r,
        rec,
    ));
    assert_alive(&mut prober);

    // OpenBao down: the process frozen (SIGSTOP), so requests hang until the
    // store timeout (1.5 s here).
    let bao_pid = lab.vault.pid().expect("OpenBao pid").to_string();
    let kill = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &bao_pid])
            .status()
            .unwrap()
            .success())
    };
    kill("-STOP");
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        probe,
        injected,
        &["store_write/store_error"],
        Duration::from_secs(20),
    )
    .await;
    kill("-CONT");
    let cleared = Utc::now();
    let rec = expect_recovery(&prober, probe, cleared, cleared, Duration::from_secs(40)).await;
    rows.push(row(
        "OpenBao down (process stopped)",
        probe,
        "store_write/store_error",
        injected,
        &r,
        rec,
    ));
    assert_alive(&mut prober);

    // SIGTERM mid-run: ESO stalled keeps a run waiting in eso_sync; the
    // process exits within its grace period (3 s) and logs the run aborted.
    lab.knobs.set_fault(Fault::EsoStall, true);
    let injected = Utc::now();
    let inflight = prober
        .wait_in_flight(probe, injected, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (bad, total) = prober.health();
    assert_eq!(bad, 0, "/healthz failed {bad} of {total} checks");
    let term = Instant::now();
    prober.signal("TERM");
    let status = prober
        .wait_exit(Duration::from_secs(6))
        .await
        .expect("exited within the grace period");
    let exit_secs = term.elapsed().as_secs_f64();
    assert!(status.success(), "exit status {status:?}");
    assert!(exit_secs < 3.5, "exit took {exit_secs:.2}s");
    let aborted = prober
        .runs()
        .into_iter()
        .find(|r| r.run_id == inflight.run_id)
        .unwrap();
    assert_eq!(aborted.result.as_deref(), Some("aborted"), "{aborted:?}");
    assert_eq!(aborted.reason.as_deref(), Some("aborted"), "{aborted:?}");
    lab.knobs.set_fault(Fault::EsoStall, false);
    rows.push(Row {
        fault: "SIGTERM mid-run".into(),
        probe: probe.into(),
        expected: "exit within grace, run aborted".into(),
        observed: format!("{} (exit 0 after {exit_secs:.2} s)", aborted.verdict()),
        detail: aborted.detail.clone().unwrap_or_default(),
        seen_after: secs(injected, aborted.finished.unwrap()),
        failed_in_between: 0,
        recovered_after: 0.0,
    });
    drop(prober);

    // Short-lived tokens: Kubernetes auth with a 3 s TTL capped at 6 s; the
    // prober renews, then logs in again. Every run over 15 s must succeed.
    lab.bao
        .call(
            Method::POST,
            "auth/kubernetes/role/secret-canary-short",
            Some(serde_json::json!({
                "bound_service_account_names": ["secret-canary"],
                "bound_service_account_namespaces": ["canary"],
                "token_policies": ["write-canary"],
                "token_ttl": "3s",
                "token_max_ttl": "6s",
            })),
        )
        .await
        .unwrap();
    let jwt = lab.lab.dir.join("secret-canary.jwt");
    std::fs::write(&jwt, lab.server.issue_token("canary", "secret-canary")).unwrap();
    let config = derive_config(
        &lab,
        "matrix-token.yaml",
        &[("eso-volume", "volume-k8s-auth")],
        |p| {
            p.deadline = Some(Duration::from_secs(10));
            p.store.auth = StoreAuth::Kubernetes {
                role: "secret-canary-short".into(),
                mount: "kubernetes".into(),
                token_file: jwt.clone(),
            };
        },
    );
    let mut prober = ProberProcess::start(
        &config,
        &lab.lab.dir.join("logs/prober-token.log"),
        Duration::from_secs(3),
    )
    .await;
    let started = Utc::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let runs: Vec<LoggedRun> = prober
        .runs()
        .into_iter()
        .filter(|r| r.finished.is_some())
        .collect();
    assert!(runs.len() >= 6, "only {} runs in 15 s", runs.len());
    for r in &runs {
        assert!(r.succeeded(), "short-lived token run failed: {r:?}");
    }
    let span = secs(runs[0].started, runs.last().unwrap().finished.unwrap());
    assert!(
        span > 12.0,
        "runs span only {span:.1}s (> 2 x max TTL needed)"
    );
    assert_alive(&mut prober);
    rows.push(Row {
        fault: "short-lived token (TTL 3 s, max 6 s), renewal / re-login".into(),
        probe: "volume-k8s-auth".into(),
        expected: "no failure".into(),
        observed: format!(
            "{} of {} runs succeeded over {span:.1} s",
            runs.len(),
            runs.len()
        ),
        detail: String::new(),
        seen_after: secs(started, runs.last().unwrap().finished.unwrap()),
        failed_in_between: 0,
        recovered_after: 0.0,
    });
    assert!(prober.stop().await.is_some_and(|s| s.success()));

    print_rows("store faults, SIGTERM, short-lived tokens", &rows);
    lab.stop().await;
}

/// A fault switched on, then its row measured: the first run started after
/// it ends with `expected`; after `clear` and `settle`, the first run
/// succeeds.
struct Phase<'a> {
    lab: &'a TestLab,
    prober: &'a ProberProcess,
    rows: Vec<Row>,
}

impl Phase<'_> {
    async fn lab_fault(
        &mut self,
        label: &str,
        probe: &str,
        fault: Fault,
        expected: &str,
        settle: &[&str],
    ) {
        self.lab.knobs.set_fault(fault, true);
        let injected = Utc::now();
        let r = expect_verdict(
            self.prober,
            probe,
            injected,
            &[expected],
            Duration::from_secs(30),
        )
        .await;
        self.lab.knobs.set_fault(fault, false);
        let cleared = Utc::now();
        self.settle(settle).await;
        let rec = expect_recovery(
            self.prober,
            probe,
            cleared,
            Utc::now(),
            Duration::from_secs(40),
        )
        .await;
        self.rows
            .push(row(label, probe, expected, injected, &r, rec));
    }

    /// Wait for Deployments to be rolled out again.
    async fn settle(&self, deployments: &[&str]) {
        if !deployments.is_empty() {
            self.lab
                .wait_rolled_out("canary", deployments, Duration::from_secs(60))
                .await;
        }
    }

    /// A disruption applied while a run is in flight: that run must succeed,
    /// and so must the next one.
    async fn mid_run(
        &mut self,
        label: &str,
        probe: &str,
        disrupt: impl FnOnce(),
        restore: impl FnOnce(),
    ) {
        let t = Utc::now();
        let inflight = self
            .prober
            .wait_in_flight(probe, t, Duration::from_secs(10))
            .await;
        // Into the chain (store written, ESO syncing) before disrupting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let injected = Utc::now();
        disrupt();
        let r = self
            .prober
            .wait_run(probe, inflight.started, Duration::from_secs(30))
            .await;
        assert_eq!(r.run_id, inflight.run_id);
        eprintln!("[{probe}] {label}: {} ({:?})", r.verdict(), r.detail);
        assert!(r.succeeded(), "{label}: run through the disruption: {r:?}");
        restore();
        let cleared = Utc::now();
        let rec = expect_recovery(
            self.prober,
            probe,
            cleared,
            cleared,
            Duration::from_secs(30),
        )
        .await;
        self.rows
            .push(row(label, probe, "success", injected, &r, rec));
    }
}

/// ESO, Reloader, rollout, stale canary and API server faults on the
/// ESO -> Secret -> Reloader -> rollout -> env chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_and_api_faults_on_the_reloader_chain() {
    let lab = start_lab(&["canary-env"]).await;
    // ProgressDeadlineExceeded within a run's deadline.
    patch_deployment(
        &lab,
        "canary-env",
        serde_json::json!({"spec": {"progressDeadlineSeconds": 3}}),
    )
    .await;
    let config = derive_config(
        &lab,
        "matrix-env.yaml",
        &[("eso-reloader-env", "env")],
        |p| {
            p.deadline = Some(Duration::from_secs(6));
        },
    );
    let mut prober = ProberProcess::start(
        &config,
        &lab.lab.dir.join("logs/prober-env.log"),
        Duration::from_secs(3),
    )
    .await;
    let probe = "env";
    expect_verdict(
        &prober,
        probe,
        Utc::now(),
        &["success"],
        Duration::from_secs(30),
    )
    .await;
    let mut ph = Phase {
        lab: &lab,
        prober: &prober,
        rows: Vec::new(),
    };

    ph.lab_fault(
        "ESO stalled",
        probe,
        Fault::EsoStall,
        "eso_sync/timeout",
        &[],
    )
    .await;
    ph.lab_fault(
        "ESO SecretSyncedError",
        probe,
        Fault::EsoError,
        "eso_sync/sync_error",
        &[],
    )
    .await;
    ph.lab_fault(
        "Reloader absent",
        probe,
        Fault::ReloaderAbsent,
        "reloader_trigger/timeout",
        &[],
    )
    .await;
    ph.lab_fault(
        "rollout stuck (ProgressDeadlineExceeded)",
        probe,
        Fault::RolloutStuck,
        "rollout/rollout_stuck",
        &["canary-env"],
    )
    .await;
    ph.lab_fault(
        "canary serves a stale value",
        probe,
        Fault::CanaryStale,
        "canary_observe/value_mismatch",
        &["canary-env"],
    )
    .await;

    let (knobs, server) = (lab.knobs.clone(), lab.server.clone());
    let (k2, s2) = (knobs.clone(), server.clone());
    ph.mid_run(
        "watch stream dropped mid-run",
        probe,
        || k2.set_fault(Fault::WatchDrop, true),
        || knobs.set_fault(Fault::WatchDrop, false),
    )
    .await;
    let k3 = lab.knobs.clone();
    ph.mid_run(
        "410 Gone mid-run",
        probe,
        // Every watch is cut and each resume from its resourceVersion gets
        // an in-stream 410 Expired (as after an etcd compaction), once.
        move || {
            k3.set_fault(Fault::WatchExpire, true);
            s2.reset_watches();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                k3.set_fault(Fault::WatchExpire, false);
            });
        },
        || {},
    )
    .await;
    let s3 = lab.server.clone();
    ph.mid_run(
        "lab API server restarted (all watches reset)",
        probe,
        move || s3.reset_watches(),
        || {},
    )
    .await;

    // The API server answers 500 to everything and has cut the watches: the
    // prober's watchers cannot resume, ESO cannot write.
    lab.knobs.set_fault(Fault::ApiErrors, true);
    lab.server.reset_watches();
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        probe,
        injected,
        &["eso_sync/api_error"],
        Duration::from_secs(30),
    )
    .await;
    lab.knobs.set_fault(Fault::ApiErrors, false);
    let cleared = Utc::now();
    // kube-rs watchers back off (growing delays) through a long API outage;
    // give them time to re-establish before the run that must succeed. The
    // recovery time is still measured from `cleared`. (Next: a watcher error
    // seen before a run starts should not fail it if the watch recovers.)
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled = Utc::now();
    let rec = expect_recovery(&prober, probe, cleared, settled, Duration::from_secs(60)).await;
    ph.rows.push(row(
        "API server answers 500 (watches cut)",
        probe,
        "eso_sync/api_error",
        injected,
        &r,
        rec,
    ));

    let rows = std::mem::take(&mut ph.rows);
    assert_alive(&mut prober);
    assert!(prober.stop().await.is_some_and(|s| s.success()));
    print_rows(
        "ESO, Reloader, rollout, canary and API faults (env chain)",
        &rows,
    );
    lab.stop().await;
}

/// Canary, Secret-deletion and API faults on the volume chain and the
/// Bank-Vaults restart chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secret_and_api_faults_on_volume_and_restart_chains() {
    let lab = start_lab(&["canary-volume", "canary-bankvaults"]).await;
    // Crashed containers restart soon (the kubelet's 10 s back-off, shortened).
    lab.knobs.set_latency(
        Knob::CrashBackoff,
        Latency::Fixed(Duration::from_millis(200)),
    );
    let config = derive_config(
        &lab,
        "matrix-canary.yaml",
        &[("eso-volume", "volume"), ("bankvaults-restart", "bv")],
        |p| p.deadline = Some(Duration::from_secs(6)),
    );
    let mut prober = ProberProcess::start(
        &config,
        &lab.lab.dir.join("logs/prober-canary.log"),
        Duration::from_secs(3),
    )
    .await;
    let now = Utc::now();
    expect_verdict(
        &prober,
        "volume",
        now,
        &["success"],
        Duration::from_secs(30),
    )
    .await;
    expect_verdict(&prober, "bv", now, &["success"], Duration::from_secs(30)).await;
    let mut ph = Phase {
        lab: &lab,
        prober: &prober,
        rows: Vec::new(),
    };

    ph.lab_fault(
        "canary unreachable",
        "volume",
        Fault::CanaryUnreachable,
        "canary_observe/canary_unreachable",
        &["canary-volume", "canary-bankvaults"],
    )
    .await;
    ph.lab_fault(
        "canary crash-looping",
        "bv",
        Fault::CanaryCrash,
        "rollout/canary_crashing",
        &["canary-bankvaults"],
    )
    .await;

    // The target Secret deleted mid-run while ESO is healthy: ESO (Owner
    // policy) recreates it with the current value, so the run succeeds.
    let secrets: Api<Secret> = Api::namespaced(lab.client(), "canary");
    let t = Utc::now();
    let inflight = prober
        .wait_in_flight("volume", t, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let injected = Utc::now();
    secrets
        .delete("canary-volume", &DeleteParams::default())
        .await
        .unwrap();
    let r = prober
        .wait_run("volume", inflight.started, Duration::from_secs(30))
        .await;
    assert!(r.succeeded(), "Secret deleted, ESO recreates it: {r:?}");
    let rec = expect_recovery(
        &prober,
        "volume",
        injected,
        injected,
        Duration::from_secs(30),
    )
    .await;
    ph.rows.push(row(
        "target Secret deleted (ESO recreates it)",
        "volume",
        "success",
        injected,
        &r,
        rec,
    ));

    // Deleted and not recreated: ESO syncs (Ready=True) but writes no
    // Secret (`creationPolicy: None`).
    let es = external_secrets(&lab);
    let policy = |p: &str| serde_json::json!({"spec": {"target": {"creationPolicy": p}}});
    es.patch(
        "canary-volume",
        &PatchParams::default(),
        &Patch::Merge(&policy("None")),
    )
    .await
    .unwrap();
    let patched_at = Utc::now();
    secrets
        .delete("canary-volume", &DeleteParams::default())
        .await
        .unwrap();
    // Let ESO take the new policy in (a sync that started after the patch)
    // before the measured run, so a loaded machine cannot blur the row.
    support::wait_for(
        Duration::from_secs(30),
        "ESO synced under creationPolicy None",
        || {
            let es = es.clone();
            async move {
                let Ok(o) = es.get("canary-volume").await else {
                    return false;
                };
                let st = &o.data["status"];
                let after_patch = st["refreshTime"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.timestamp() > patched_at.timestamp());
                let ready = st["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                after_patch && ready
            }
        },
    )
    .await;
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        "volume",
        injected,
        &["secret_update/not_found"],
        Duration::from_secs(30),
    )
    .await;
    es.patch(
        "canary-volume",
        &PatchParams::default(),
        &Patch::Merge(&policy("Owner")),
    )
    .await
    .unwrap();
    let cleared = Utc::now();
    support::wait_for(Duration::from_secs(30), "Secret recreated", || {
        let s = secrets.clone();
        async move { matches!(s.get_opt("canary-volume").await, Ok(Some(_))) }
    })
    .await;
    let rec = expect_recovery(
        &prober,
        "volume",
        cleared,
        Utc::now(),
        Duration::from_secs(30),
    )
    .await;
    ph.rows.push(row(
        "target Secret deleted, not recreated (creationPolicy None)",
        "volume",
        "secret_update/not_found",
        injected,
        &r,
        rec,
    ));

    // 500s from the API server: the prober's own restart patch fails.
    lab.knobs.set_fault(Fault::ApiErrors, true);
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        "bv",
        injected,
        &["reloader_trigger/api_error"],
        Duration::from_secs(30),
    )
    .await;
    lab.knobs.set_fault(Fault::ApiErrors, false);
    let cleared = Utc::now();
    let rec = expect_recovery(&prober, "bv", cleared, cleared, Duration::from_secs(40)).await;
    ph.rows.push(row(
        "API server answers 500 (restart patch)",
        "bv",
        "reloader_trigger/api_error",
        injected,
        &r,
        rec,
    ));

    // A slow API server (every request +300 ms, watches re-opened through
    // it): slower stages, no failure.
    lab.knobs
        .set_latency(Knob::ApiLatency, Latency::Fixed(Duration::from_millis(300)));
    lab.knobs.set_fault(Fault::ApiSlow, true);
    lab.server.reset_watches();
    let injected = Utc::now();
    let r = expect_verdict(
        &prober,
        "volume",
        injected,
        &["success"],
        Duration::from_secs(30),
    )
    .await;
    lab.knobs.set_fault(Fault::ApiSlow, false);
    let cleared = Utc::now();
    let rec = expect_recovery(&prober, "volume", cleared, cleared, Duration::from_secs(30)).await;
    ph.rows.push(row(
        "API server slow (+300 ms per request)",
        "volume",
        "success",
        injected,
        &r,
        rec,
    ));

    let rows = std::mem::take(&mut ph.rows);
    // Every probe is healthy at the end.
    let now = Utc::now();
    expect_verdict(&prober, "bv", now, &["success"], Duration::from_secs(30)).await;
    assert_alive(&mut prober);
    assert!(prober.stop().await.is_some_and(|s| s.success()));
    print_rows(
        "canary, Secret and API faults (volume and restart chains)",
        &rows,
    );
    lab.stop().await;
}

/// Mean of a quarter of the samples.
fn quarter_stats(samples: &[Resources], first: bool) -> (f64, u64, u64, u64) {
    let q = (samples.len() / 4).max(1);
    let part = if first {
        &samples[..q]
    } else {
        &samples[samples.len() - q..]
    };
    let mean_rss = part.iter().map(|s| s.rss_kib as f64).sum::<f64>() / part.len() as f64;
    (
        mean_rss,
        part.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        part.iter().map(|s| s.threads).max().unwrap_or(0),
        part.iter().map(|s| s.fds).max().unwrap_or(0),
    )
}

/// Over 200 runs of three probes with faults toggled every 3 s (ESO
/// errors, crashing canaries, API 500s, dropped watches), the prober's
/// resident memory, threads and open fds stay flat: the last quarter of the
/// samples against the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_flat_over_200_faulty_runs() {
    const RUNS: usize = 200;
    let lab = start_lab(&["canary-env", "canary-volume", "canary-bankvaults"]).await;
    lab.knobs.set_latency(
        Knob::CrashBackoff,
        Latency::Fixed(Duration::from_millis(200)),
    );
    let config = derive_config(
        &lab,
        "matrix-leak.yaml",
        &[
            ("eso-reloader-env", "env"),
            ("eso-volume", "volume"),
            ("bankvaults-restart", "bv"),
        ],
        |p| p.deadline = Some(Duration::from_secs(3)),
    );
    let mut prober = ProberProcess::start(
        &config,
        &lab.lab.dir.join("logs/prober-leak.log"),
        Duration::from_secs(3),
    )
    .await;
    let pid = prober.pid();
    let cycle = [
        None,
        Some(Fault::EsoError),
        None,
        Some(Fault::CanaryCrash),
        None,
        Some(Fault::ApiErrors),
        None,
        Some(Fault::WatchDrop),
    ];
    let start = Instant::now();
    let mut samples: Vec<Resources> = Vec::new();
    let mut step = 0usize;
    let mut last_switch = Instant::now();
    let mut current: Option<Fault> = None;
    loop {
        let finished = prober
            .runs()
            .iter()
            .filter(|r| r.finished.is_some())
            .count();
        if finished >= RUNS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(330),
            "only {finished} runs after {:?}",
            start.elapsed()
        );
        if last_switch.elapsed() >= Duration::from_secs(3) {
            if let Some(f) = current {
                lab.knobs.set_fault(f, false);
            }
            step += 1;
            current = cycle[step % cycle.len()];
            if let Some(f) = current {
                lab.knobs.set_fault(f, true);
            }
            last_switch = Instant::now();
        }
        samples.push(resources(pid).expect("prober /proc entry"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(f) = current {
        lab.knobs.set_fault(f, false);
    }
    let elapsed = start.elapsed();
    let runs = prober.runs();
    let mut verdicts = std::collections::BTreeMap::<String, usize>::new();
    for r in runs.iter().filter(|r| r.finished.is_some()) {
        *verdicts.entry(r.verdict()).or_default() += 1;
    }
    let (rss1, rss1_max, thr1, fd1) = quarter_stats(&samples, true);
    let (rss4, rss4_max, thr4, fd4) = quarter_stats(&samples, false);
    let report = format!(
        "\n### leak test\n\n{} runs in {:.0} s ({} samples of /proc/{pid})\n\n| | first quarter | last quarter |\n|---|---|---|\n| VmRSS mean (KiB) | {rss1:.0} | {rss4:.0} |\n| VmRSS max (KiB) | {rss1_max} | {rss4_max} |\n| Threads max | {thr1} | {thr4} |\n| open fds max | {fd1} | {fd4} |\n\nverdicts: {verdicts:?}\n",
        runs.len(),
        elapsed.as_secs_f64(),
        samples.len(),
    );
    println!("{report}");
    assert!(
        rss4 <= rss1 * 1.25 + 4096.0,
        "RSS grew: {rss1:.0} KiB -> {rss4:.0} KiB"
    );
    assert!(thr4 <= thr1 + 2, "threads grew: {thr1} -> {thr4}");
    assert!(fd4 <= fd1 + 8, "open fds grew: {fd1} -> {fd4}");
    assert!(
        verdicts.get("success").copied().unwrap_or(0) > RUNS / 10,
        "too few successes: {verdicts:?}"
    );
    // Faults cleared: every probe recovers, the process and /metrics are fine.
    let now = Utc::now();
    for probe in ["env", "volume", "bv"] {
        expect_verdict(&prober, probe, now, &["success"], Duration::from_secs(60)).await;
    }
    let metrics = prober.metrics().await;
    assert!(metrics.contains("secret_canary_runs_total"), "{metrics}");
    // After all those failures, exactly the series the config predicts: no
    // label value ever came from an error, a Pod or a resource version.
    let loaded = secret_canary::config::Config::load(&config).expect("the derived config");
    assert_eq!(
        secret_canary::metrics::count_samples(&metrics),
        secret_canary::metrics::expected_series(&loaded),
        "series on /metrics after {RUNS} faulty runs"
    );
    assert_alive(&mut prober);
    assert!(prober.stop().await.is_some_and(|s| s.success()));
    lab.stop().await;
}
