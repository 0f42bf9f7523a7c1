//! The reference chains on the real cluster (`up --cluster real`: etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler and ESO built from
//! their Go modules, the lab's node agent and Reloader as clients with their
//! own credentials), then `secret-canary once --config DIR/prober.yaml`.
//!
//! The lab is started in-process with the same call `up --cluster real`
//! makes, so the product binary cargo built for this package is the one the
//! node agent runs. Needs the built binaries in the cache
//! (`scripts/build-real.sh`); without them the test says SKIP loudly and
//! passes, unless `SECRET_CANARY_REQUIRE_REAL` is set: then it fails.

mod support;

use std::time::{Duration, Instant};

use secret_canary_lab::real::lab::{RealLab, RealLabInfo};
use secret_canary_lab::real::{Binaries, Binary, RealOptions};
use serde_json::Value;

fn real_binaries() -> Option<Binaries> {
    let b = Binaries::pinned();
    let missing: Vec<String> = [
        Binary::Etcd,
        Binary::KubeApiserver,
        Binary::KubeControllerManager,
        Binary::KubeScheduler,
        Binary::ExternalSecrets,
    ]
    .into_iter()
    .filter_map(|x| b.require(x).err().map(|e| e.path))
    .collect();
    if missing.is_empty() {
        return Some(b);
    }
    let msg = format!(
        "the real cluster's binaries are not built: {}; run scripts/build-real.sh",
        missing.join(", ")
    );
    if std::env::var_os("SECRET_CANARY_REQUIRE_REAL").is_some() {
        panic!("{msg} (SECRET_CANARY_REQUIRE_REAL is set)");
    }
    eprintln!("\n********************************************************************");
    eprintln!("SKIP (real cluster): {msg}");
    eprintln!("********************************************************************\n");
    None
}

use support::truth_score::{self, Kind};

/// The reference chains: probe, kind, Deployment, store path.
const CHAINS: [(&str, Kind, &str, &str); 3] = [
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

/// Every run's stages against `truth.jsonl` (the audit log's and the node
/// agent's records): |error| per chain and stage, printed; the median within
/// a bound (`REAL_ACCURACY_P99_MS`, default 50 ms) and every sample within
/// five times it. A systematic error (a stage stamped at a poll, at the wrong
/// event) breaks the median; one sample delayed by a loaded 2-core machine
/// must not fail the test (one of 3 runs was seen 74 ms off at load 8). The
/// issue's 5 ms p99 target is measured by the benchmark (bench/results.md).
async fn score_against_audit_truth(
    lab: &RealLab,
    runs: &[(Kind, &str, Value, Value)],
) -> Result<(), String> {
    let bound: f64 = std::env::var("REAL_ACCURACY_P99_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50.0);
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

async fn once(config: &std::path::Path, probe: &str) -> (std::process::Output, Value) {
    let mut cmd = tokio::process::Command::new(support::canary_bin());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eso_reloader_env_chain_passes_once_on_the_real_cluster() {
    let Some(_) = real_binaries() else { return };
    support::init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("secret-canary-real-")
        .tempdir()
        .expect("temp dir");
    let mut opts = RealOptions::new(dir.path());
    opts.canary_bin = Some(support::canary_bin());
    let started = Instant::now();
    let lab = match RealLab::start(opts).await {
        Ok(l) => l,
        Err(e) => panic!("the real lab did not start: {e}"),
    };
    eprintln!(
        "real lab ready in {:.1} s (control plane {:.1} s; measured {:.1} s)",
        lab.ready_after.as_secs_f64(),
        lab.cluster.ready_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // Ready (every canary Deployment rolled out) within 20 s on an idle
    // 2-core machine (measured 10.7-11.9 s); a generous bound here, as CI
    // machines are shared.
    assert!(
        lab.ready_after < Duration::from_secs(60),
        "ready after {:?}",
        lab.ready_after
    );

    // The DIR contract of the simulated lab.
    for f in [
        "kubeconfig",
        "vault.env",
        "prober.yaml",
        "truth.jsonl",
        "lab.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let info: RealLabInfo =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("lab.json")).unwrap())
            .unwrap();
    assert_eq!(info.cluster, "real");
    assert!(info.components.iter().any(|c| c.name == "external-secrets"));
    for t in ["bank-vaults-webhook", "node-agent", "reloader"] {
        assert!(info.tasks.iter().any(|x| x == t), "{t} in {:?}", info.tasks);
    }

    // The node agent registered as a real kubelet does.
    let client = lab.cluster.client();
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let node = nodes.get("lab-node").await.expect("the Node exists");
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "the Node is Ready");

    // Each reference chain, one `once` each: ESO + Reloader + env, ESO +
    // Secret volume (the node's 1 s sync period), Bank-Vaults through the
    // admission webhook with a restart trigger.
    let config = lab.prober_config.clone().expect("prober.yaml");
    let mut failed = Vec::new();
    // Then a few more rounds, every run scored against the audit-log truth.
    let rounds: usize = std::env::var("REAL_ACCURACY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut runs = Vec::new();
    for _ in 0..rounds.max(1) {
        for (probe, kind, deployment, path) in CHAINS {
            let (out, report) = once(&config, probe).await;
            if !out.status.success() {
                failed.push(format!("{probe}: {}", report["probes"][0]));
                continue;
            }
            let meta = lab.bao.kv_metadata(path).await.unwrap_or_default();
            runs.push((kind, deployment, report["probes"][0].clone(), meta));
        }
        if !failed.is_empty() {
            break;
        }
    }
    if failed.is_empty() {
        if let Err(e) = score_against_audit_truth(&lab, &runs).await {
            failed.push(e);
        }
    }
    if !failed.is_empty() {
        let keep = dir.keep();
        lab.stop().await;
        panic!(
            "once failed on the real cluster:\n{}\nlab dir kept: {}",
            failed.join("\n"),
            keep.display()
        );
    }
    lab.stop().await;
}
