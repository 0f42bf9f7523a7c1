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
    std::fs::write(&path, serde_yaml::to_string(&c).unwrap()).unwrap();
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

#[allow(clippy::too_many_arguments)]
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

/// Wait until the ExternalSecret reports Ready=True (ESO healthy again).
async fn wait_es_ready(lab: &TestLab, name: &str) {
    let api = external_secrets(lab);
    support::wait_for(Duration::from_secs(30), "ExternalSecret Ready", || {
        let api = api.clone();
        async move {
            let Ok(es) = api.get(name).await else {
                return false;
            };
            es.data
                .pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        }
    })
    .await;
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
