//! The real cluster tier's shared steps: the built binaries (or a loud
//! SKIP), `secret-canary once` with a JSON report, and scoring runs against
//! the audit-log truth.

use std::time::{Duration, Instant};

use secret_canary_lab::real::bins::{self, Binaries};
use secret_canary_lab::real::lab::RealLab;
use serde_json::Value;

use super::truth_score::{self, Kind};

/// The pinned binaries, or `None` after a loud SKIP (a failure when
/// `SECRET_CANARY_REQUIRE_REAL` is set).
pub fn real_binaries() -> Option<Binaries> {
    bins::pinned_or_skip("real cluster", &[])
}

/// Every run's stages against `truth.jsonl` (the audit log's and the node
/// agent's records): |error| per chain and stage, printed; the median within
/// a bound (`REAL_ACCURACY_P99_MS`, default 50 ms) and every sample within
/// five times it. A systematic error (a stage stamped at a poll, at the wrong
/// event) breaks the median; one sample delayed by a loaded 2-core machine
/// must not fail the test (one of 3 runs was seen 74 ms off at load 8). The
/// issue's 5 ms p99 target is measured by the benchmark (bench/results.md).
pub async fn score_against_audit_truth(
    lab: &RealLab,
    runs: &[(Kind, &str, Value, Value)],
) -> Result<(), String> {
    score_within(lab, runs, "REAL_ACCURACY_P99_MS", 50.0).await
}

/// [`score_against_audit_truth`] with the bound read from `bound_var`
/// (default `default_ms`).
pub async fn score_within(
    lab: &RealLab,
    runs: &[(Kind, &str, Value, Value)],
    bound_var: &str,
    default_ms: f64,
) -> Result<(), String> {
    let bound: f64 = std::env::var(bound_var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_ms);
    let path = lab.dir.join("truth.jsonl");
    let mut errors: std::collections::BTreeMap<(Kind, String), Vec<f64>> = Default::default();
    for (kind, deployment, probe, meta) in runs {
        let written = truth_score::created_time(meta, probe)
            .ok_or_else(|| format!("{kind:?}: no OpenBao created_time for the run"))?;
        // The audit tailer follows the log a few ms behind: wait for it.
        let deadline = Instant::now() + Duration::from_secs(15);
        let scored = loop {
            let truth = secret_canary_lab::truth::read_file(&path).map_err(|e| e.to_string())?;
            match truth_score::score(probe, *kind, deployment, written, &truth) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("{kind:?} run {}: {e}", probe["digest"]))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        for (stage, (measured, truth)) in scored {
            errors
                .entry((*kind, stage))
                .or_default()
                .push((measured - truth).abs() * 1000.0);
        }
    }
    eprintln!("\nreal cluster accuracy (|prober - audit-log truth|, ms)");
    eprintln!("| chain | stage | n | p50 | p99 | max |\n|---|---|---|---|---|---|");
    let mut over = Vec::new();
    for ((kind, stage), mut v) in errors {
        let n = v.len();
        let (p50, p99, max) = truth_score::percentiles(&mut v);
        eprintln!("| {kind:?} | {stage} | {n} | {p50:.2} | {p99:.2} | {max:.2} |");
        if p50 > bound || max > 5.0 * bound {
            over.push(format!(
                "{kind:?}/{stage}: p50 {p50:.1} ms (bound {bound}), max {max:.1} ms (bound {})",
                5.0 * bound
            ));
        }
    }
    if over.is_empty() {
        Ok(())
    } else {
        Err(over.join("; "))
    }
}

/// `once --config CONFIG --probe PROBE --output json`: the process output
/// and the parsed report (`Null` when stdout is not JSON).
pub async fn once(config: &std::path::Path, probe: &str) -> (std::process::Output, Value) {
    let mut cmd = tokio::process::Command::new(super::canary_bin());
    cmd.args(["once", "--config"])
        .arg(config)
        .args(["--probe", probe, "--output", "json", "--progress", "lines"])
        .env("CI", "true")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("once finishes within 120 s")
        .expect("the binary runs");
    eprintln!(
        "once --probe {probe} -> {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

/// The reference chains: probe, kind, Deployment, store path.
pub const CHAINS: [(&str, Kind, &str, &str); 3] = [
    (
        "eso-reloader-env",
        Kind::Env,
        "canary-env",
        "canary/eso-env",
    ),
    (
        "eso-volume",
        Kind::Volume,
        "canary-volume",
        "canary/eso-volume",
    ),
    (
        "bankvaults-restart",
        Kind::Bankvaults,
        "canary-bankvaults",
        "canary/bankvaults",
    ),
];
