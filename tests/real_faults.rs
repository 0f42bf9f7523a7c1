//! Faults made by real means on the real cluster (`up --cluster real`),
//! through `secret_canary_lab::real::faults` (what `secret-canary-lab fault
//! --dir DIR NAME on|off` runs): one driver over a table of rows. Each row:
//! fault on, one `once` (the stage and reason the prober reports, or
//! success where the system heals itself; the process exits normally with
//! its report), fault off, and the first `once` after recovery succeeds.
//! Without the built binaries the test says SKIP and passes, unless
//! `SECRET_CANARY_REQUIRE_REAL` is set.

mod support;

use std::path::Path;
use std::time::Duration;

use secret_canary_lab::real::lab::{RealLab, RealLabInfo};
use secret_canary_lab::real::{faults, Binaries, Binary, RealOptions};
use serde_json::Value;

struct Row {
    fault: &'static str,
    probe: &'static str,
    /// `Some((stage, reason))`: the failure expected; `None`: success.
    expect: Option<(&'static str, &'static str)>,
}

const ROWS: &[Row] = &[
    Row {
        fault: "eso-stop",
        probe: "eso-reloader-env",
        expect: Some(("eso_sync", "timeout")),
    },
    Row {
        fault: "secret-delete",
        probe: "eso-reloader-env",
        expect: None,
    },
];

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

    let mut table = vec!["| fault | probe | reported | exit | after recovery |".to_string()];
    let mut wrong = Vec::new();
    for row in ROWS {
        faults::set(&info, row.fault, true).await.expect("fault on");
        let (code, p) = once(&config, row.probe).await;
        faults::set(&info, row.fault, false)
            .await
            .expect("fault off");
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
        let (rcode, rp) = once(&config, row.probe).await;
        if rcode != Some(0) {
            wrong.push(format!(
                "{}: first run after recovery failed: {rp}",
                row.fault
            ));
        }
        table.push(format!(
            "| {} | {} | {reported} | {code:?} | {} |",
            row.fault,
            row.probe,
            rp["result"].as_str().unwrap_or("?")
        ));
    }
    eprintln!("\n{}\n", table.join("\n"));
    lab.stop().await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
