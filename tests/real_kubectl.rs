//! The real kubectl (built with the control plane, `scripts/build-real.sh`)
//! against the real cluster of `up --cluster real`: `get -w` sees a Secret
//! change after a store write, `rollout restart` and `rollout status` of a
//! canary Deployment, and `get` with the server's tables (the API server's
//! columns, the CRD's printer columns). Without the built binaries the test
//! says SKIP loudly and passes, unless `SECRET_CANARY_REQUIRE_REAL` is set.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secret_canary_lab::real::bins::{self, Binary};
use secret_canary_lab::real::lab::RealLab;
use secret_canary_lab::real::RealOptions;
use tokio::io::{AsyncBufReadExt, BufReader};

fn real_kubectl() -> Option<PathBuf> {
    bins::pinned_or_skip("real cluster", &[Binary::Kubectl])?
        .require(Binary::Kubectl)
        .ok()
}

async fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(bin)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl finishes within 90 s")
    .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kubectl {} ->\n{text}", args.join(" "));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_kubectl_watches_rolls_and_prints_server_tables() {
    let Some(k) = real_kubectl() else { return };
    support::init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("secret-canary-realkubectl-")
        .tempdir()
        .expect("temp dir");
    let mut opts = RealOptions::new(dir.path());
    opts.canary_bin = Some(support::canary_bin());
    let lab = RealLab::start(opts).await.expect("the real lab starts");
    let kc = lab.cluster.kubeconfig.clone();

    // Server-side tables: the API server's columns for built-in kinds, the
    // CRD's printer columns for ExternalSecrets, the node's name for Pods.
    let (ok, t) = kubectl(&k, &kc, &["get", "deployments", "-n", "canary"]).await;
    assert!(ok, "{t}");
    let header = t.lines().next().unwrap_or_default();
    for col in ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] {
        assert!(header.contains(col), "{col} in {header}");
    }
    assert!(t.contains("canary-env") && t.contains("2/2"), "{t}");
    let (ok, t) = kubectl(&k, &kc, &["get", "externalsecrets", "-n", "canary"]).await;
    assert!(ok, "{t}");
    let header = t.lines().next().unwrap_or_default();
    for col in ["STORE", "REFRESH INTERVAL", "STATUS", "READY"] {
        assert!(header.contains(col), "{col} in {header}");
    }
    assert!(t.contains("SecretSynced"), "{t}");
    let (ok, t) = kubectl(&k, &kc, &["get", "pods", "-n", "canary", "-o", "wide"]).await;
    assert!(ok && t.contains("NODE") && t.contains("lab-node"), "{t}");

    // get -w sees the Secret change after a store write (a list's watch, so
    // none is lost between kubectl's GET and its watch; resource versions
    // only: never a value).
    let mut watch = tokio::process::Command::new(&k)
        .arg(format!("--kubeconfig={}", kc.display()))
        .args([
            "get",
            "secrets",
            "--field-selector=metadata.name=canary-env",
            "-n",
            "canary",
            "-w",
            "-o",
            "jsonpath={.metadata.resourceVersion}{\"\\n\"}",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl get -w runs");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("get -w prints the current Secret")
        .unwrap()
        .expect("a line");
    let value = format!("kubectl-{}", uuid::Uuid::new_v4());
    lab.bao
        .kv_put("canary/eso-env", &serde_json::json!({"value": value}))
        .await
        .expect("store write");
    let t0 = Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("get -w sees the change within 30 s (ESO refreshes every 2 s)")
        .unwrap()
        .expect("a line");
    assert_ne!(first.trim(), next.trim());
    eprintln!(
        "get -w: resourceVersion {first} -> {next} {:?} after the store write",
        t0.elapsed()
    );
    let _ = watch.kill().await;

    // rollout restart, then rollout status until done.
    let (ok, t) = kubectl(
        &k,
        &kc,
        &[
            "rollout",
            "restart",
            "deployment/canary-volume",
            "-n",
            "canary",
        ],
    )
    .await;
    assert!(ok && t.contains("restarted"), "{t}");
    let (ok, t) = kubectl(
        &k,
        &kc,
        &[
            "rollout",
            "status",
            "deployment/canary-volume",
            "-n",
            "canary",
            "--timeout=90s",
        ],
    )
    .await;
    assert!(ok && t.contains("successfully rolled out"), "{t}");

    lab.stop().await;
}
