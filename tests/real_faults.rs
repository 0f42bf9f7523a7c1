//! Faults made by real means on the real cluster (`up --cluster real`),
//! through `secret_canary_lab::real::faults` (what `secret-canary-lab fault
//! --dir DIR NAME on|off` runs): one driver over a table of rows. Each row:
//! fault on, one `once` (the stage and reason the prober reports, or
//! success where the system heals itself; the process exits normally with
//! its report), fault off, and the first `once` after recovery succeeds.
//! Then rows through a long-running `secret-canary run` (OpenBao sealed,
//! ESO stopped, the API server restarted mid-run): `/healthz` stays 200 and
//! the first run after recovery succeeds.
//! Without the built binaries the test says SKIP and passes, unless
//! `SECRET_CANARY_REQUIRE_REAL` is set. `SECRET_CANARY_FAULT_ROWS=a,b`
//! runs only those rows and skips the `run` rows (to work on one row).

mod support;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secret_canary::config::Config;
use secret_canary_lab::real::lab::{RealLab, RealLabInfo};
use secret_canary_lab::real::{faults, Binaries, Binary, RealOptions};
use serde_json::Value;
use support::prober::{LoggedRun, Prober};

struct Row {
    fault: &'static str,
    probe: &'static str,
    /// `Some((stage, reason))`: the failure expected (the sim's fault
    /// matrix's for the same fault); `None`: success.
    expect: Option<(&'static str, &'static str)>,
    /// Deployments that must be rolled out again before the recovery run.
    settle: &'static [&'static str],
    /// Probe as the prober's least-privilege identity (the chart's Role).
    least_privilege: bool,
}

const fn row(
    fault: &'static str,
    probe: &'static str,
    expect: Option<(&'static str, &'static str)>,
) -> Row {
    Row {
        fault,
        probe,
        expect,
        settle: &[],
        least_privilege: false,
    }
}

const ENV: &str = "eso-reloader-env";
const BV: &str = "bankvaults-restart";

const ROWS: &[Row] = &[
    // SIGSTOP: nothing syncs (sim: `eso-stall`).
    row("eso-stop", ENV, Some(("eso_sync", "timeout"))),
    // ESO (Owner policy) recreates the Secret: the system heals itself.
    row("secret-delete", ENV, None),
    // OpenBao refuses ESO's login: ESO's real SecretSyncedError, Ready=False
    // (sim: `eso-error`).
    row("eso-token-revoke", ENV, Some(("eso_sync", "sync_error"))),
    // Nobody patches the Deployment (sim: `reloader-absent`).
    row("reloader-stop", ENV, Some(("reloader_trigger", "timeout"))),
    // The canary exits 2 at start (an env var it rejects); the node agent
    // restarts it at once, then backs off: CrashLoopBackOff in the new Pod's
    // status (sim: `canary-crash`).
    Row {
        settle: &["canary-env"],
        ..row("canary-crash", ENV, Some(("rollout", "canary_crashing")))
    },
    // ErrImagePull from the node agent; the real controller-manager sets
    // ProgressDeadlineExceeded after 5 s (sim: `rollout-stuck`).
    Row {
        settle: &["canary-env"],
        ..row("image-unpullable", ENV, Some(("rollout", "rollout_stuck")))
    },
    // Admitted unmutated under `failurePolicy: Ignore`: the Pod's value is
    // the literal reference (sim: `webhook-fail-open`).
    Row {
        settle: &["canary-bankvaults"],
        ..row(
            "webhook-down",
            BV,
            Some(("canary_observe", "unresolved_reference")),
        )
    },
    // Under `failurePolicy: Fail` the API server refuses the new Pods: the
    // ReplicaSet reports ReplicaFailure/FailedCreate, which the prober
    // exports at once and ends the run with after `blocked_for` (the sim
    // has no such row; this is the real cluster's answer).
    Row {
        settle: &["canary-bankvaults"],
        ..row("webhook-down-fail", BV, Some(("rollout", "rollout_stuck")))
    },
    // The prober's own restart patch is forbidden (sim: `api-forbidden`).
    Row {
        least_privilege: true,
        ..row(
            "prober-role-no-patch",
            BV,
            Some(("reloader_trigger", "prober_error")),
        )
    },
];

async fn rolled_out(kubeconfig: &Path, names: &[&str]) {
    use k8s_openapi::api::apps::v1::Deployment;
    let client = secret_canary_lab::lab::client_from_kubeconfig(kubeconfig)
        .await
        .unwrap();
    let api: kube::Api<Deployment> = kube::Api::namespaced(client, "canary");
    for name in names {
        let api = &api;
        support::wait_for(
            Duration::from_secs(90),
            &format!("Deployment canary/{name} rolled out"),
            || async move {
                matches!(api.get_opt(name).await, Ok(Some(d)) if secret_canary_lab::real::lab::rolled_out(&d))
            },
        )
        .await;
    }
}

async fn once(config: &Path, probe: &str) -> (Option<i32>, Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(support::canary_bin())
            .args(["once", "--config"])
            .arg(config)
            .args(["--probe", probe, "--output", "json"])
            .env("CI", "true")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("once finishes")
    .expect("the binary runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report["probes"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_faults_are_reported_by_stage_and_reason() {
    let b = Binaries::pinned();
    if b.require(Binary::ExternalSecrets).is_err() || b.require(Binary::KubeApiserver).is_err() {
        assert!(
            std::env::var_os("SECRET_CANARY_REQUIRE_REAL").is_none(),
            "real binaries not built"
        );
        eprintln!("\nSKIP (real cluster): run scripts/build-real.sh\n");
        return;
    }
    support::init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("secret-canary-realfaults-")
        .tempdir()
        .unwrap();
    let mut opts = RealOptions::new(dir.path());
    opts.canary_bin = Some(support::canary_bin());
    let lab = RealLab::start(opts).await.expect("the real lab starts");
    let info: RealLabInfo =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("lab.json")).unwrap())
            .unwrap();
    // A shorter deadline than the reference's 60 s, so a stall row is quick.
    let text = std::fs::read_to_string(lab.prober_config.as_ref().unwrap()).unwrap();
    let config = dir.path().join("prober-faults.yaml");
    std::fs::write(&config, text.replace("deadline: 60s", "deadline: 15s")).unwrap();

    // The same probes as the prober's least-privilege identity.
    let least = dir.path().join("prober-faults-rbac.yaml");
    std::fs::write(
        &least,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(&info.kubeconfig, &info.prober_kubeconfig),
    )
    .unwrap();
    let kubeconfig = Path::new(&info.kubeconfig);

    let mut table = vec![
        "| fault | probe | reported | exit | after recovery | detail |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let mut wrong = Vec::new();
    let only = std::env::var("SECRET_CANARY_FAULT_ROWS").ok();
    let chosen = |f: &str| only.as_ref().is_none_or(|o| o.split(',').any(|n| n == f));
    for row in ROWS.iter().filter(|r| chosen(r.fault)) {
        let config = if row.least_privilege { &least } else { &config };
        let started = std::time::Instant::now();
        faults::set(&info, row.fault, true).await.expect("fault on");
        let (code, p) = once(config, row.probe).await;
        faults::set(&info, row.fault, false)
            .await
            .expect("fault off");
        rolled_out(kubeconfig, row.settle).await;
        let reported = match p["result"].as_str() {
            Some("success") => "success".to_string(),
            _ => format!(
                "{}/{}",
                p["failure"]["stage"].as_str().unwrap_or("?"),
                p["failure"]["reason"].as_str().unwrap_or("?")
            ),
        };
        let want = row
            .expect
            .map(|(s, r)| format!("{s}/{r}"))
            .unwrap_or_else(|| "success".into());
        if reported != want || code.is_none() {
            wrong.push(format!(
                "{}: reported {reported}, want {want}: {p}",
                row.fault
            ));
        }
        let (rcode, rp) = once(config, row.probe).await;
        if rcode != Some(0) {
            wrong.push(format!(
                "{}: first run after recovery failed: {rp}",
                row.fault
            ));
        }
        let detail: String = p["detail"]
            .as_str()
            .unwrap_or("")
            .replace('|', "/")
            .chars()
            .take(160)
            .collect();
        eprintln!(
            "[{}] {reported} ({:.1} s with recovery): {detail}",
            row.fault,
            started.elapsed().as_secs_f64()
        );
        table.push(format!(
            "| {} | {} | {reported} | {code:?} | {} | {detail} |",
            row.fault,
            row.probe,
            rp["result"].as_str().unwrap_or("?")
        ));
    }
    eprintln!("\n{}\n", table.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    if only.is_some() {
        lab.stop().await;
        return;
    }

    // The same kind of faults under a long-running `secret-canary run`.
    let run_table = through_run(&lab, &info, &config).await;
    eprintln!("\n{}\n", run_table.join("\n"));
    lab.stop().await;
}

/// Waits up to `limit` for a finished run of `probe` started at or after
/// `after`.
async fn run_after(p: &Prober, probe: &str, after: DateTime<Utc>, limit: Duration) -> LoggedRun {
    p.wait_run(probe, after, limit).await
}

/// Rows through a long-running `secret-canary run` (the env chain, a run
/// every 2 s): OpenBao sealed, ESO stopped, and the API server restarted
/// mid-run. Each: the failed run's stage and reason, `/healthz` 200
/// throughout, the process up, and the first run started after recovery
/// succeeds (after the API-server restart: no failed run beyond the one in
/// flight, i.e. the prober's watches recovered).
async fn through_run(lab: &RealLab, info: &RealLabInfo, config: &Path) -> Vec<String> {
    let mut c = Config::load(config).unwrap();
    c.probes.retain(|p| p.name == ENV);
    for p in &mut c.probes {
        p.interval = Some(Duration::from_secs(2));
        p.schedule = None;
        p.slo.clear();
        p.store.timeout = Some(Duration::from_millis(1500));
    }
    let run_config = lab.dir.join("prober-run.yaml");
    std::fs::write(&run_config, serde_norway::to_string(&c).unwrap()).unwrap();
    let mut prober = Prober::start(
        &run_config,
        &lab.dir.join("logs/prober-run.log"),
        Duration::from_secs(3),
    )
    .await;
    let ok = run_after(&prober, ENV, Utc::now(), Duration::from_secs(60)).await;
    assert!(ok.succeeded(), "first run: {ok:?}");

    let mut table = vec![
        "| fault (through `run`) | reported | failed runs after recovery | recovered after (s) |"
            .to_string(),
        "|---|---|---|---|".to_string(),
    ];
    let unseal_key = std::fs::read_to_string(lab.dir.join("logs/openbao.log"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("Unseal Key: ").map(str::to_string))
        .expect("dev unseal key in the OpenBao log");
    for (fault, want) in [
        ("openbao-sealed", "store_write/store_error"),
        ("eso-stop", "eso_sync/timeout"),
    ] {
        match fault {
            "openbao-sealed" => {
                lab.bao
                    .call(reqwest::Method::PUT, "sys/seal", None)
                    .await
                    .expect("seal");
            }
            f => faults::set(info, f, true).await.expect("fault on"),
        }
        let injected = Utc::now();
        let r = run_after(&prober, ENV, injected, Duration::from_secs(40)).await;
        match fault {
            "openbao-sealed" => {
                lab.bao
                    .call(
                        reqwest::Method::PUT,
                        "sys/unseal",
                        Some(serde_json::json!({ "key": unseal_key })),
                    )
                    .await
                    .expect("unseal");
            }
            f => faults::set(info, f, false).await.expect("fault off"),
        }
        let cleared = Utc::now();
        assert_eq!(r.verdict(), want, "{fault} through run: {r:?}");
        let rec = run_after(&prober, ENV, cleared, Duration::from_secs(60)).await;
        assert!(
            rec.succeeded(),
            "{fault}: first run after recovery: {rec:?}"
        );
        assert!(prober.is_running(), "the prober exited");
        let failed = failed_between(&prober, cleared, rec.started);
        table.push(format!(
            "| {fault} | {} | {failed} | {:.1} |",
            r.verdict(),
            (rec.finished.unwrap() - cleared).num_milliseconds() as f64 / 1000.0
        ));
    }

    // The API server restarted with the same flags while a run is in
    // flight: only that run may fail; the watches recover by themselves.
    let inflight = prober
        .wait_in_flight(ENV, Utc::now(), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    faults::set(info, "apiserver-down", true)
        .await
        .expect("API server down");
    faults::set(info, "apiserver-down", false)
        .await
        .expect("API server up");
    let back = Utc::now();
    let disrupted = run_after(&prober, ENV, inflight.started, Duration::from_secs(60)).await;
    let rec = run_after(&prober, ENV, back, Duration::from_secs(60)).await;
    assert!(
        rec.succeeded(),
        "first run after the API server restart: {rec:?}"
    );
    let failed_after = failed_between(&prober, back, rec.started);
    assert_eq!(
        failed_after,
        0,
        "failed runs started after the API server was back: {:#?}",
        prober.runs()
    );
    table.push(format!(
        "| apiserver restart (mid-run) | run in flight: {} | {failed_after} | {:.1} |",
        disrupted.verdict(),
        (rec.finished.unwrap() - back).num_milliseconds() as f64 / 1000.0
    ));

    assert!(prober.is_running(), "the prober exited");
    let (bad, total) = prober.health();
    assert_eq!(bad, 0, "/healthz failed {bad} of {total} checks");
    assert!(prober.stop().await.is_some_and(|s| s.success()));
    table
}

/// Finished runs that failed, started in `[from, to)`.
fn failed_between(p: &Prober, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    p.runs()
        .into_iter()
        .filter(|r| r.probe == ENV && r.started >= from && r.started < to)
        .filter(|r| r.finished.is_some() && !r.succeeded())
        .count()
}
