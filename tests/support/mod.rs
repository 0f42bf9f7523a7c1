//! The end-to-end tests' one harness: start a lab (real OpenBao, the
//! loopback API server, every controller, the reference scenario) in a
//! temporary directory, wait for conditions with deadlines, run the prober
//! ([`prober::Prober`], the only wrapper of the binary's `run`), and the
//! shared fixtures ([`fixtures`]).
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use secret_canary_lab::lab::{Lab, LabOptions};

/// A lab in its own temporary directory (removed on drop unless
/// `KEEP_LAB_DIR` is set, for post-mortems).
pub struct TestLab {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

/// The product binary, built by cargo for integration tests.
pub fn canary_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secret-canary"))
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,secret_canary=info,secret_canary_lab=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Start a lab with the reference scenario (or `scenario`, a file).
pub async fn start_lab(scenario: Option<PathBuf>) -> TestLab {
    init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("secret-canary-lab-")
        .tempdir()
        .expect("temp dir");
    let mut opts = LabOptions::new(dir.path(), canary_bin());
    opts.scenario = scenario;
    let lab = Lab::start(opts).await.expect("lab starts");
    TestLab { lab, dir }
}

/// The reference scenario's canary Deployments (namespace `canary`).
pub const CANARY_DEPLOYMENTS: [&str; 3] = ["canary-env", "canary-volume", "canary-bankvaults"];

/// Start a lab with the reference scenario and wait until `deployments`
/// (in `canary`) are rolled out, within `limit`.
pub async fn start_rolled_out(deployments: &[&str], limit: Duration) -> TestLab {
    let lab = start_lab(None).await;
    lab.wait_rolled_out("canary", deployments, limit).await;
    lab
}

impl TestLab {
    /// Stop the lab and every process it started.
    pub async fn stop(self) {
        let TestLab { lab, dir } = self;
        lab.stop().await;
        if std::env::var_os("KEEP_LAB_DIR").is_some() {
            let kept = dir.keep();
            eprintln!("lab dir kept: {}", kept.display());
        }
    }

    /// Wait until every Deployment in `namespace` is fully rolled out.
    pub async fn wait_rolled_out(&self, namespace: &str, names: &[&str], limit: Duration) {
        let api: Api<Deployment> = Api::namespaced(self.client(), namespace);
        wait_for(limit, &format!("deployments {names:?} rolled out"), || {
            let api = api.clone();
            async move {
                for n in names {
                    let Ok(d) = api.get(n).await else {
                        return false;
                    };
                    if !rolled_out(&d) {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }
}

/// `kubectl rollout status`'s success condition.
pub fn rolled_out(d: &Deployment) -> bool {
    let Some(st) = &d.status else {
        return false;
    };
    let want = d.spec.replicas.unwrap_or(1);
    st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
}

/// Poll `check` every 50 ms until it holds or `limit` passes (then panic
/// naming `what`). For test set-up only: the product never polls.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
pub mod fixtures;
pub mod prober;
pub mod real;
pub mod truth_score;
