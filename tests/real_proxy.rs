//! `once` from outside the cluster network, on the real cluster tier: the
//! lab advertises Pods at addresses this host cannot reach
//! (`unroutable_pods`), and kube-apiserver reaches them through the lab's
//! egress proxy (EgressSelectorConfiguration, HTTP CONNECT over a unix
//! socket, konnectivity's mode). With `canary.access: direct` the run fails
//! and its error says the Pod IP could not be connected to and names
//! `canary.access: proxy`; with `proxy` and with `auto` every reference
//! chain passes through the API server's Pod proxy, every stage of the
//! proxy runs scored against the audit-log truth as in tests/real_chain.rs
//! (p99 bound `REAL_PROXY_ACCURACY_P99_MS`, default 150 ms). `kubectl logs`
//! of a canary reaches the node agent's kubelet API the same way.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use secret_canary_lab::real::lab::RealLab;
use secret_canary_lab::real::{Binaries, Binary, RealOptions};

use support::real::{once, real_binaries, score_within, CHAINS};

/// `prober.yaml` with `access: ACCESS` on every probe's canary.
fn config_with_access(lab_config: &Path, access: &str) -> PathBuf {
    let text = std::fs::read_to_string(lab_config).expect("prober.yaml");
    let mut out = String::new();
    let mut n = 0;
    for line in text.lines() {
        match line.trim_start().strip_prefix("canary: {") {
            Some(_) if line.trim_end().ends_with('}') => {
                let l = line.trim_end();
                out.push_str(&l[..l.len() - 1]);
                out.push_str(&format!(", access: {access}}}\n"));
                n += 1;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert_eq!(
        n,
        CHAINS.len(),
        "one `canary: {{..}}` line per probe in:\n{text}"
    );
    let path = lab_config.with_file_name(format!("prober-{access}.yaml"));
    std::fs::write(&path, out).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_reaches_unroutable_canaries_through_the_pod_proxy() {
    let Some(_) = real_binaries() else { return };
    support::init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("secret-canary-real-")
        .tempdir()
        .expect("temp dir");
    let mut opts = RealOptions::new(dir.path());
    opts.canary_bin = Some(support::canary_bin());
    opts.unroutable_pods = true;
    let started = Instant::now();
    let lab = match RealLab::start(opts).await {
        Ok(l) => l,
        Err(e) => panic!("the real lab did not start: {e}"),
    };
    eprintln!(
        "real lab (unroutable Pods) ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();

    // The canaries' advertised addresses are not loopback ones.
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.cluster.client(), "canary");
    let list = pods.list(&Default::default()).await.expect("list Pods");
    for p in &list.items {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        if !ip.starts_with("100::") {
            failed.push(format!(
                "Pod {:?} advertises {ip:?}, not 100::*",
                p.metadata.name
            ));
        }
    }

    // `kubectl logs`: the API server asks the node agent's kubelet API
    // (HTTPS, its CA-checked certificate) through the egress proxy.
    if let Ok(kubectl) = Binaries::pinned().require(Binary::Kubectl) {
        let running = list
            .items
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        let name = running
            .and_then(|p| p.metadata.name.clone())
            .expect("a running canary Pod");
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::process::Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", lab.cluster.kubeconfig.display()))
                .args(["-n", "canary", "logs", &name, "--tail=5"])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("kubectl logs within 60 s")
        .expect("kubectl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "kubectl logs {name} -> {:?}\n{text}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !text.contains("canary serving") {
            failed.push(format!(
                "kubectl logs {name}: {:?}: {text}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    let config = lab.prober_config.clone().expect("prober.yaml");
    // Direct: the Pod IP cannot be connected to; the error says so and
    // names the proxy option.
    let direct = config_with_access(&config, "direct");
    let (out, report) = once(&direct, CHAINS[0].0).await;
    let said = report["probes"][0].to_string();
    if out.status.success()
        || !said.contains("could not connect to the Pod IP")
        || !said.contains("canary.access: proxy")
    {
        failed.push(format!(
            "direct: expected a failure naming the Pod IP and `canary.access: proxy`, got {:?}: {said}",
            out.status.code()
        ));
    }

    // Proxy and auto: every chain passes; the proxy runs' stages scored
    // (an `auto` run's first canary answer comes after its failed direct
    // connect, up to 1 s late: it is checked to pass, not scored).
    let mut runs = Vec::new();
    for access in ["proxy", "auto"] {
        let cfg = config_with_access(&config, access);
        for (probe, kind, deployment, path) in CHAINS {
            let (out, report) = once(&cfg, probe).await;
            if !out.status.success() {
                failed.push(format!("{access} {probe}: {}", report["probes"][0]));
                continue;
            }
            if access == "auto" {
                continue;
            }
            let meta = lab.bao.kv_metadata(path).await.unwrap_or_default();
            runs.push((kind, deployment, report["probes"][0].clone(), meta));
        }
    }
    if failed.is_empty() {
        // Through the Pod proxy an answer crosses the API server (TLS,
        // authorization, a Pod read, the audit log, the egress tunnel):
        // canary_observe carries that round trip (measured 40-75 ms on the
        // loaded 2-core CI machine, against ~1 ms direct), hence its own bound.
        if let Err(e) = score_within(&lab, &runs, "REAL_PROXY_ACCURACY_P99_MS", 150.0).await {
            failed.push(e);
        }
    }
    if !failed.is_empty() {
        let keep = dir.keep();
        lab.stop().await;
        panic!(
            "once from outside the Pod network failed:\n{}\nlab dir kept: {}",
            failed.join("\n"),
            keep.display()
        );
    }
    lab.stop().await;
}
