//! Snapshots of every `once` report format from fixed outcomes (a pass, a
//! failure, an SLO breach, a comparison with a regression), and the JUnit
//! file read by a real JUnit consumer (the PyPI package `junitparser`).
//!
//! `UPDATE_SNAPSHOTS=1 cargo test --test report_formats` rewrites the files
//! in `tests/snapshots/`; review the diff before committing it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secret_canary::config::Config;
use secret_canary::probe::{Failure, Outcome, Reason, RunResult, Stage, StageTiming, SyncTrigger};
use secret_canary::report::{self, Baseline, Format, Thresholds};
use support::fixtures::ThreeChains;

/// The three chains, every minute, with SLOs on eso-env and eso-volume.
fn config_yaml() -> String {
    ThreeChains {
        address: "https://vault.example:8200",
        eso_auth: "{kubernetes: {role: canary}}",
        cadence: ["interval: 1m"; 3],
        env_slo: "{eso_sync: 5s, end_to_end: 30s}",
        volume_slo: Some("{secret_update: 1s}"),
        bv_deployment: "canary-bankvaults",
    }
    .yaml()
}

fn config() -> Config {
    Config::from_yaml(&config_yaml(), "t.yaml").unwrap()
}

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + chrono::Duration::milliseconds(ms)
}

/// Stages back to back from `t(0)`; `None` = started, not completed.
fn chain(stages: &[(Stage, Option<i64>)]) -> Vec<StageTiming> {
    let mut at = 0;
    let mut out = Vec::new();
    for &(stage, ms) in stages {
        out.push(StageTiming {
            stage,
            started_at: t(at),
            completed_at: ms.map(|ms| t(at + ms)),
            duration: ms.map(|ms| Duration::from_millis(ms as u64)),
        });
        if let Some(ms) = ms {
            at += ms;
        }
    }
    out
}

fn outcome(probe: &str, stages: Vec<StageTiming>, end_ms: i64) -> Outcome {
    Outcome {
        probe: probe.into(),
        run_id: format!("{probe}-run"),
        digest: Some("ab".repeat(32)),
        started_at: t(-5),
        finished_at: t(end_ms),
        stages,
        failure: None,
        result: RunResult::Success,
        detail: None,
        sync_trigger: None,
        watch_gaps: Vec::new(),
    }
}

/// eso-env passes (rollout is the slow hop), eso-volume breaks its
/// secret_update SLO, bank-vaults fails its rollout.
fn outcomes(eso_sync_ms: i64) -> Vec<Outcome> {
    let mut env = outcome(
        "eso-env",
        chain(&[
            (Stage::StoreWrite, Some(12)),
            (Stage::EsoSync, Some(eso_sync_ms)),
            (Stage::ReloaderTrigger, Some(40)),
            (Stage::Rollout, Some(900)),
            (Stage::CanaryObserve, Some(30)),
        ]),
        982 + eso_sync_ms,
    );
    // secret_update runs beside eso_sync (both start at the write).
    env.stages.insert(
        2,
        StageTiming {
            stage: Stage::SecretUpdate,
            started_at: t(12),
            completed_at: Some(t(12 + eso_sync_ms - 5)),
            duration: Some(Duration::from_millis(eso_sync_ms as u64 - 5)),
        },
    );
    env.sync_trigger = Some(SyncTrigger::Forced);

    let mut volume = outcome(
        "eso-volume",
        chain(&[
            (Stage::StoreWrite, Some(9)),
            (Stage::EsoSync, Some(1500)),
            (Stage::CanaryObserve, Some(600)),
        ]),
        2109,
    );
    volume.stages.insert(
        2,
        StageTiming {
            stage: Stage::SecretUpdate,
            started_at: t(9),
            completed_at: Some(t(1504)),
            duration: Some(Duration::from_millis(1495)),
        },
    );
    volume.stages.swap(1, 2);
    volume.stages.swap(1, 2);
    volume.sync_trigger = Some(SyncTrigger::Natural);

    let mut bv = outcome(
        "bank-vaults",
        chain(&[
            (Stage::StoreWrite, Some(15)),
            (Stage::ReloaderTrigger, Some(25)),
            (Stage::Rollout, None),
        ]),
        3040,
    );
    bv.result = RunResult::Failure;
    bv.failure = Some(Failure {
        stage: Stage::Rollout,
        reason: Reason::CanaryCrashing,
    });
    bv.detail = Some("Pod canary-bankvaults-7d9f-x2 CrashLoopBackOff: vault-env: secret \"canary/bv\" <missing key>".into());
    vec![env, volume, bv]
}

fn snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let got = path.with_extension("new");
        std::fs::write(&got, actual).unwrap();
        panic!(
            "snapshot {} differs; got {} (diff them; UPDATE_SNAPSHOTS=1 accepts)",
            path.display(),
            got.display()
        );
    }
}

fn baseline() -> Baseline {
    let before = report::render(&config(), &outcomes(1200), Format::Json);
    Baseline::from_json(&before, "before.json").unwrap()
}

#[test]
fn table_snapshot() {
    let out = report::render(&config(), &outcomes(1200), Format::Table);
    snapshot("table.txt", &out);
}

#[test]
fn json_snapshot() {
    let out = report::render(&config(), &outcomes(1200), Format::Json);
    snapshot("report.json", &out);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["probes"][0]["sync_trigger"], "forced");
}

#[test]
fn markdown_snapshot() {
    let out = report::render(&config(), &outcomes(1200), Format::Markdown);
    snapshot("report.md", &out);
}

#[test]
fn comparison_snapshots() {
    let config = config();
    let slower =
        report::build_compared(&config, &outcomes(4200), &baseline(), Thresholds::default());
    let c = slower.comparison.as_ref().unwrap();
    assert!(c.regressed);
    snapshot(
        "compare_table.txt",
        &report::render_report(&slower, Format::Table),
    );
    snapshot(
        "compare.md",
        &report::render_report(&slower, Format::Markdown),
    );

    // +300 ms is under the absolute threshold: no regression.
    let close =
        report::build_compared(&config, &outcomes(1500), &baseline(), Thresholds::default());
    assert!(!close.comparison.as_ref().unwrap().regressed);
    // The same change is a regression with tighter thresholds.
    let tight = Thresholds {
        relative: 0.1,
        absolute: Duration::from_millis(100),
    };
    let strict = report::build_compared(&config, &outcomes(1500), &baseline(), tight);
    let regressed: Vec<_> = strict
        .comparison
        .as_ref()
        .unwrap()
        .stages
        .iter()
        .filter(|s| s.change.is_regression())
        .map(|s| format!("{}/{}", s.probe, s.stage))
        .collect();
    assert_eq!(
        regressed,
        [
            "eso-env/eso_sync",
            "eso-env/secret_update",
            "eso-env/end_to_end"
        ]
    );
}

/// Read a JUnit file with junitparser (a real consumer, from PyPI) and
/// return what it understood as JSON.
fn junitparser(path: &Path) -> serde_json::Value {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = r#"
import json, sys
from junitparser import JUnitXml, Failure, Error, Skipped
xml = JUnitXml.fromfile(sys.argv[1])
suites = []
for suite in xml:
    cases = []
    for case in suite:
        results = [{"kind": type(r).__name__, "type": r.type, "message": r.message, "text": r.text} for r in case.result]
        cases.append({"name": case.name, "classname": case.classname, "time": case.time,
                      "passed": case.is_passed, "results": results, "system_out": case.system_out})
    suites.append({"name": suite.name, "tests": suite.tests, "failures": suite.failures,
                   "errors": suite.errors, "cases": cases})
print(json.dumps(suites))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", python.display()));
    assert!(
        out.status.success(),
        "junitparser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn junit_is_read_by_a_real_junit_consumer() {
    let config = config();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.xml");
    let slower =
        report::build_compared(&config, &outcomes(4200), &baseline(), Thresholds::default());
    std::fs::write(&path, report::render_report(&slower, Format::Junit)).unwrap();
    let suites = junitparser(&path);
    let suite = &suites[0];
    assert_eq!(suite["tests"], 3, "{suites}");
    assert_eq!(suite["failures"], 3, "{suites}");
    assert_eq!(suite["errors"], 0, "{suites}");
    let cases = suite["cases"].as_array().unwrap();
    let names: Vec<_> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["eso-env", "eso-volume", "bank-vaults"]);

    // eso-env passed its SLOs but eso_sync regressed against the baseline.
    let env = &cases[0]["results"][0];
    assert_eq!(env["kind"], "Failure");
    assert_eq!(env["type"], "regression");
    assert!(
        env["message"].as_str().unwrap().contains("eso_sync SLOWER"),
        "{env}"
    );
    // eso-volume broke its secret_update SLO.
    let vol = &cases[1]["results"][0];
    assert_eq!(vol["type"], "slo_breached");
    assert!(
        vol["message"]
            .as_str()
            .unwrap()
            .contains("secret_update took 1.495s (SLO 1.000s)"),
        "{vol}"
    );
    // bank-vaults failed: the failure names the stage and the reason, and
    // the detail (with its quotes and angle brackets) survives escaping.
    let bv = &cases[2]["results"][0];
    assert_eq!(bv["type"], "canary_crashing");
    assert_eq!(bv["message"], "rollout: canary_crashing");
    assert!(
        bv["text"]
            .as_str()
            .unwrap()
            .contains("\"canary/bv\" <missing key>"),
        "{bv}"
    );
    assert!(
        (cases[0]["time"].as_f64().unwrap() - 5.182).abs() < 1e-9,
        "{}",
        cases[0]
    );
    assert!(cases[0]["system_out"]
        .as_str()
        .unwrap()
        .contains("ESO sync forced"));

    // Without the comparison eso-env is a passing test case.
    std::fs::write(
        &path,
        report::render(&config, &outcomes(1200), Format::Junit),
    )
    .unwrap();
    let suites = junitparser(&path);
    assert_eq!(suites[0]["cases"][0]["passed"], true, "{suites}");
    assert_eq!(suites[0]["failures"], 2, "{suites}");
}

#[test]
fn report_file_formats_follow_the_extension() {
    assert_eq!(
        Format::from_extension(Path::new("r.json")),
        Some(Format::Json)
    );
    assert_eq!(
        Format::from_extension(Path::new("summary.md")),
        Some(Format::Markdown)
    );
    assert_eq!(
        Format::from_extension(Path::new("junit.XML")),
        Some(Format::Junit)
    );
    assert_eq!(Format::from_extension(Path::new("report")), None);
}
