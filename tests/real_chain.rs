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
use secret_canary_lab::real::RealOptions;

use support::real::{once, real_binaries, score_against_audit_truth, CHAINS};

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
