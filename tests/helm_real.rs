//! `helm install` of charts/secret-canary on the real cluster tier, as a
//! platform team would run it: the image built by scripts/build-image.sh
//! (the binary cargo built for these tests, in an OCI image assembled by
//! crane) and pushed to the real lab's loopback registry; the node agent
//! pulls it and runs its entrypoint in the image's rootfs; the prober runs
//! in the cluster as the chart deploys it, with only the chart's Role, and
//! authenticates to OpenBao with its ServiceAccount token.
//!
//! One real lab, several releases in turn, each in its own namespace:
//! - default values (the real tier has no monitoring CRDs, so this is also
//!   "a cluster without the Prometheus Operator"; ESO v0.16.2 serves only
//!   external-secrets.io/v1beta1, so the API version is detected), on an
//!   empty store path as a platform team's first install is: `install
//!   --wait` succeeds (the canary waits for its Secret until the prober's
//!   first run, at start, writes the value), that first run passes without
//!   a rollout stage, `helm test` (`secret-canary check`, asking the
//!   running prober's /probes; it writes nothing) passes, `helm upgrade`
//!   with a changed probe rolls the prober, `helm uninstall` leaves
//!   nothing in the namespace;
//! - one release per scenario, each in its own namespace: a
//!   ClusterSecretStore, a custom path prefix (these two side by side, on
//!   different store paths), then two replicas with leader election:
//!   install, probe passing (on the leader), `helm test --logs` (the node
//!   agent serves container logs to the API server, as a kubelet does);
//! - an image the registry does not have: ErrImagePull / ImagePullBackOff.
//!
//! Needs the real binaries (scripts/build-real.sh, with helm and
//! go-containerregistry); without them: SKIP, loudly, unless
//! SECRET_CANARY_REQUIRE_REAL is set.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use secret_canary_lab::real::bins::{self, Binaries, Binary};
use secret_canary_lab::real::lab::RealLab;
use secret_canary_lab::real::RealOptions;
use serde_json::Value;

fn real_binaries() -> Option<Binaries> {
    bins::pinned_or_skip(
        "helm install on the real cluster",
        &[Binary::Helm, Binary::Registry, Binary::Crane],
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Helm {
    /// Run helm; returns (success, stdout+stderr).
    async fn run(&self, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .kill_on_drop(true)
            .output()
            .await
            .expect("helm runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("$ helm {}\n{text}", args.join(" "));
        (out.status.success(), text)
    }
}

/// Poll `check` until it returns `Some`, or panic naming `what`.
async fn wait<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > limit => panic!("{what}: not after {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The answers of every prober Pod in `ns` to `GET path` (port 9850, by
/// Pod IP); Pods without an IP or an answer are left out.
async fn prober_get(client: &kube::Client, ns: &str, path: &str) -> Result<Vec<String>, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=prober"))
        .await
        .map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for p in list.items {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        if let Ok(r) = http.get(format!("http://{ip}:9850{path}")).send().await {
            if let Ok(text) = r.text().await {
                out.push(text);
            }
        }
    }
    Ok(out)
}

/// `/probes` of every prober Pod in `ns`.
async fn probes(client: &kube::Client, ns: &str) -> Result<Vec<Value>, String> {
    Ok(prober_get(client, ns, "/probes")
        .await?
        .iter()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect())
}

/// Wait until some prober Pod reports a passed run of `probe`.
async fn wait_probe_passes(client: &kube::Client, ns: &str, probe: &str, limit: Duration) {
    let what = format!("a passed run of {probe} in {ns}/probes");
    let view = wait(limit, &what, || async {
        let views = probes(client, ns).await?;
        for v in &views {
            for p in v["probes"].as_array().into_iter().flatten() {
                if p["name"] == probe && p["last_run"]["passed"] == true {
                    return Ok(p.clone());
                }
            }
        }
        Err(format!("{views:?}"))
    })
    .await;
    eprintln!(
        "{ns}: {probe} passed in the cluster: {}",
        serde_json::to_string(&view["last_run"]["stages"]).unwrap_or_default()
    );
}

/// Waiting reasons the canary containers showed (see [`waiting_reasons`]).
static WAITING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Record every waiting reason of the canary containers in `ns` until aborted.
async fn waiting_reasons(client: kube::Client, ns: &'static str) {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let lp = ListParams::default().labels("app.kubernetes.io/component=canary");
    loop {
        if let Ok(list) = pods.list(&lp).await {
            for p in list.items {
                for c in p
                    .status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
                {
                    if let Some(r) = c
                        .state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.clone())
                    {
                        WAITING.lock().unwrap().insert(r);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `secret_canary_runs_total{probe, result}` of one prober Pod, by result.
async fn run_counts(client: &kube::Client, ns: &str, probe: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for text in prober_get(client, ns, "/metrics").await.unwrap() {
        for line in text.lines() {
            if line.starts_with("secret_canary_runs_total{")
                && line.contains(&format!("probe=\"{probe}\""))
            {
                let result = line
                    .split("result=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("")
                    .to_string();
                let value = line.rsplit(' ').next().unwrap_or("").to_string();
                out.push((result, value));
            }
        }
    }
    out
}

/// The prober's FIRST run of `probe` passes: wait for its first completed
/// run, then require it passed and that the counters show exactly one run,
/// a success. `first_delivery`: the run started with no Secret and no ready
/// canary, so it has no rollout stage (Reloader does not act on a Secret's
/// creation).
async fn first_run_passes(client: &kube::Client, ns: &str, probe: &str, first_delivery: bool) {
    let t = Instant::now();
    let what = format!("a completed run of {probe} in {ns}/probes");
    let run = wait(Duration::from_secs(300), &what, || async {
        let views = probes(client, ns).await?;
        for v in &views {
            for p in v["probes"].as_array().into_iter().flatten() {
                if p["name"] == probe && p["last_run"].is_object() {
                    return Ok(p["last_run"].clone());
                }
            }
        }
        Err(format!("{views:?}"))
    })
    .await;
    assert_eq!(
        run["passed"], true,
        "{ns}: the prober's first run of {probe} did not pass: {run:#}"
    );
    let counts = run_counts(client, ns, probe).await;
    let n = |r: &str| {
        counts
            .iter()
            .filter(|(result, _)| result == r)
            .map(|(_, v)| v.parse::<f64>().unwrap_or(-1.0))
            .sum::<f64>()
    };
    assert_eq!(
        (n("success"), n("failure"), n("skipped")),
        (1.0, 0.0, 0.0),
        "{ns}: the passed run is not the prober's first: runs_total {counts:?}"
    );
    let stages: Vec<&str> = run["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    if first_delivery {
        assert!(
            !stages.contains(&"rollout"),
            "{ns}: a first delivery has no rollout stage: {stages:?}"
        );
        // Reloader did not act on the Secret's creation: the canary
        // Deployment still has its first ReplicaSet only, and its Pod (the
        // one that waited for the Secret) never restarted.
        let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
        let rs = rss
            .list(&ListParams::default().labels("app.kubernetes.io/component=canary"))
            .await
            .unwrap();
        assert_eq!(
            rs.items.len(),
            1,
            "{ns}: one canary ReplicaSet (no rollout): {:?}",
            rs.items
                .iter()
                .map(|r| r.metadata.name.clone())
                .collect::<Vec<_>>()
        );
    }
    eprintln!(
        "{ns}: the first run of {probe} passed ({:.1} s after install --wait returned): {}",
        t.elapsed().as_secs_f64(),
        serde_json::to_string(&run["stages"]).unwrap_or_default()
    );
}

async fn prober_pods(client: &kube::Client, ns: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels("app.kubernetes.io/component=prober"))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Build the image from the binary cargo built for these tests and push it.
async fn push_image(b: &Binaries, registry: &str) -> String {
    let crane = b.require(Binary::Crane).unwrap();
    let out = tokio::process::Command::new(repo().join("scripts/build-image.sh"))
        .arg("--binary")
        .arg(support::canary_bin())
        .arg("--crane")
        .arg(&crane)
        .arg(format!(
            "{registry}/secret-canary:{}",
            env!("CARGO_PKG_VERSION")
        ))
        .output()
        .await
        .expect("build-image.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "build-image.sh failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The `helm test` Pod's output, from the node agent's container log file
/// (for a failure message when `helm test --logs` itself failed).
fn test_log(lab: &RealLab, ns: &str) -> String {
    let f = lab
        .dir
        .join("pods")
        .join(ns)
        .join("secret-canary-test/check.log");
    format!(
        "\n--- {}\n{}",
        f.display(),
        std::fs::read_to_string(&f).unwrap_or_default()
    )
}

/// Everything namespaced the chart could have left in `ns`.
async fn leftovers(kubectl: &Path, kubeconfig: &Path, ns: &str) -> Vec<String> {
    let kinds = "deployments,replicasets,pods,services,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies,poddisruptionbudgets,leases,externalsecrets,secretstores";
    let out = tokio::process::Command::new(kubectl)
        .args(["--kubeconfig"])
        .arg(kubeconfig)
        .args(["get", kinds, "-n", ns, "-o", "name"])
        .output()
        .await
        .expect("kubectl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        // What every namespace has.
        .filter(|l| l != "configmap/kube-root-ca.crt" && l != "serviceaccount/default")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_on_the_real_cluster() {
    let Some(bins) = real_binaries() else { return };
    support::init_tracing();
    let dir = tempfile::Builder::new()
        .prefix("secret-canary-helm-")
        .tempdir()
        .expect("temp dir");
    let mut opts = RealOptions::new(dir.path());
    opts.canary_bin = Some(support::canary_bin());
    // The chart's chains only: no Bank-Vaults webhook.
    opts.webhook_failure_policy = None;
    let t = Instant::now();
    let lab = RealLab::start(opts).await.expect("the real lab starts");
    eprintln!("real lab ready in {:.1} s", t.elapsed().as_secs_f64());
    let registry = lab.registry.clone().expect("the real lab runs a registry");

    let t = Instant::now();
    let by_digest = push_image(&bins, &registry).await;
    eprintln!(
        "image {by_digest} built and pushed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let digest = by_digest.rsplit('@').next().unwrap().to_string();

    let helm = Helm {
        bin: bins.require(Binary::Helm).unwrap(),
        kubeconfig: lab.cluster.kubeconfig.clone(),
        home: dir.path().join("helm"),
    };
    let kubectl = bins.require(Binary::Kubectl).unwrap();
    let client = lab.cluster.client();
    let chart = repo().join("charts/secret-canary");
    let chart = chart.to_str().unwrap();
    let vault = lab.vault.addr.clone();

    // OpenBao: each release's prober may write its prefix, its canaries'
    // ESO store may read it; Kubernetes auth bound to their ServiceAccounts.
    let grant = |prefix: &str, ns: &str, release: &str, empty: bool| {
        let (prefix, ns, release) = (prefix.to_string(), ns.to_string(), release.to_string());
        let bao = &lab.bao;
        async move {
            let w = format!("write-{ns}");
            let r = format!("read-{ns}");
            bao.put_policy(&w, &format!(
                "path \"secret/data/{prefix}/*\" {{\n  capabilities = [\"create\", \"update\", \"read\"]\n}}\npath \"secret/metadata/{prefix}/*\" {{\n  capabilities = [\"read\", \"update\"]\n}}\n"
            )).await.unwrap();
            bao.put_policy(
                &r,
                &format!("path \"secret/data/{prefix}/*\" {{\n  capabilities = [\"read\"]\n}}\n"),
            )
            .await
            .unwrap();
            bao.put_kubernetes_role(&format!("{ns}-prober"), &release, &ns, &w)
                .await
                .unwrap();
            bao.put_kubernetes_role(&format!("{ns}-eso"), &format!("{release}-canary"), &ns, &r)
                .await
                .unwrap();
            // A platform team installs on an empty store path: ESO cannot
            // sync, the Secret does not exist and the canaries wait for it
            // until the prober's first run (at start) writes the value. The
            // real lab's own reference scenario seeded `canary/eso-env`:
            // remove it (every version) so that the path is empty again.
            if empty {
                bao.call(
                    reqwest::Method::DELETE,
                    &format!("secret/metadata/{prefix}/eso-env"),
                    None,
                )
                .await
                .unwrap();
                assert!(
                    bao.kv_metadata(&format!("{prefix}/eso-env")).await.is_err(),
                    "{prefix}/eso-env is empty before the install"
                );
            }
        }
    };

    let mut failures: Vec<String> = Vec::new();

    // --- 1. default values ---------------------------------------------------
    let ns = "sc-default";
    let release = "secret-canary";
    grant("canary", ns, release, true).await;
    let common = |ns: &str| {
        vec![
            format!("image.registry={registry}"),
            "image.repository=secret-canary".to_string(),
            format!("store.address={vault}"),
            format!("store.auth.kubernetes.role={ns}-prober"),
            format!("secretStore.role={ns}-eso"),
            // The default interval (1m): a first run that failed would be
            // followed by a second before the first-run assertion reads the
            // counters, and `helm test` (`secret-canary check`) waits for
            // the next run when the last one is older than tests.within.
            "variants.esoEnv.interval=1m".to_string(),
        ]
    };
    let sets = |v: &[String]| {
        v.iter()
            .flat_map(|s| ["--set".to_string(), s.clone()])
            .collect::<Vec<_>>()
    };
    let mut args: Vec<String> = [
        "install",
        release,
        chart,
        "-n",
        ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        "4m",
    ]
    .map(String::from)
    .to_vec();
    args.extend(sets(&common(ns)));
    // What the canary Pods wait with while the Secret does not exist yet.
    let waiting = tokio::spawn(waiting_reasons(client.clone(), ns));
    let t = Instant::now();
    let (ok, text) = helm
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    waiting.abort();
    assert!(ok, "helm install (default values) failed:\n{text}");
    eprintln!(
        "helm install --wait (default values): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The chart's image reference is the one the node agent pulled.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deploys.get(release).await.unwrap();
    let d = serde_json::to_value(&d).unwrap();
    let image = d["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(
        image,
        format!("{registry}/secret-canary:{}", env!("CARGO_PKG_VERSION")).as_str()
    );
    // Installed on an empty store path: the prober's first run delivers the
    // first value and passes, without a Reloader rollout to wait for.
    first_run_passes(&client, ns, "eso-env", true).await;
    let seen = WAITING.lock().unwrap().clone();
    assert!(
        seen.contains("CreateContainerConfigError"),
        "the canary did not wait for its Secret as a kubelet does: {seen:?}"
    );

    let (ok, text) = helm
        .run(&["test", release, "-n", ns, "--timeout", "4m", "--logs"])
        .await;
    if !ok || !text.contains("POD LOGS: secret-canary-test") || !text.contains("eso-env  passed") {
        failures.push(format!(
            "helm test --logs (default values):\n{text}{}",
            test_log(&lab, ns)
        ));
    }

    // helm upgrade with a changed probe: the prober rolls.
    let before = prober_pods(&client, ns).await;
    let mut args: Vec<String> = [
        "upgrade",
        release,
        chart,
        "-n",
        ns,
        "--wait",
        "--timeout",
        "4m",
    ]
    .map(String::from)
    .to_vec();
    let mut values = common(ns);
    values.push("variants.esoEnv.slo.end_to_end=3m".into());
    // ...and by digest this time: the reference the registry resolves.
    values.push(format!("image.digest={digest}"));
    args.extend(sets(&values));
    let (ok, text) = helm
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(ok, "helm upgrade failed:\n{text}");
    let after = wait(Duration::from_secs(120), "the prober rolled", || async {
        let now = prober_pods(&client, ns).await;
        if !now.is_empty() && now.iter().all(|p| !before.contains(p)) {
            Ok(now)
        } else {
            Err(format!("before {before:?}, now {now:?}"))
        }
    })
    .await;
    eprintln!("prober rolled: {before:?} -> {after:?}");
    wait_probe_passes(&client, ns, "eso-env", Duration::from_secs(240)).await;

    let (ok, text) = helm
        .run(&["uninstall", release, "-n", ns, "--wait", "--timeout", "3m"])
        .await;
    assert!(ok, "helm uninstall failed:\n{text}");
    // Helm never deletes test hooks on uninstall (pkg/action/uninstall.go
    // runs only the delete hooks); the chart keeps its test Pod until the
    // next `helm test` (before-hook-creation) so that `helm test --logs`
    // can read it. The chart README says so; everything else must go.
    let test_pod = format!("pod/{release}-test");
    let left = wait(
        Duration::from_secs(90),
        "nothing left after helm uninstall",
        || async {
            let mut l = leftovers(&kubectl, &lab.cluster.kubeconfig, ns).await;
            l.retain(|x| *x != test_pod);
            if l.is_empty() {
                Ok(l)
            } else {
                Err(format!("{l:?}"))
            }
        },
    )
    .await;
    assert!(left.is_empty());

    // --- 2. one release per scenario, each in its own namespace -------------
    // ClusterSecretStore and a custom path prefix side by side (different
    // store paths, so their probers never write the same value), then two
    // replicas with leader election (the default prefix again).
    let scenario = |ns: &'static str, prefix: &'static str, extra: Vec<String>| {
        let (helm, client, grant, common, sets) = (&helm, &client, &grant, &common, &sets);
        async move {
            // The custom prefix is a path nobody wrote; the others reuse
            // `canary`, which the default release's prober wrote.
            grant(prefix, ns, release, false).await;
            let mut values = common(ns);
            values.push(format!("store.pathPrefix={prefix}"));
            values.extend(extra);
            let mut args: Vec<String> = [
                "install",
                release,
                chart,
                "-n",
                ns,
                "--create-namespace",
                "--wait",
                "--timeout",
                "4m",
            ]
            .map(String::from)
            .to_vec();
            args.extend(sets(&values));
            let (ok, text) = helm
                .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .await;
            if !ok {
                return Err(format!("helm install ({ns}):\n{text}"));
            }
            if prefix == "teams/payments/canary" {
                // Also an empty store path: the first run passes.
                first_run_passes(client, ns, "eso-env", true).await;
            } else {
                wait_probe_passes(client, ns, "eso-env", Duration::from_secs(240)).await;
            }
            let replicas = prober_pods(client, ns).await.len();
            // `--logs`: the node agent serves the test Pod's log to the API
            // server (its kubelet API), as a kubelet does.
            let (ok, text) = helm
                .run(&["test", release, "-n", ns, "--timeout", "4m", "--logs"])
                .await;
            let _ = helm.run(&["uninstall", release, "-n", ns, "--wait"]).await;
            if !ok
                || !text.contains("POD LOGS: secret-canary-test")
                || !text.contains("eso-env  passed")
            {
                return Err(format!("helm test --logs ({ns}):\n{text}"));
            }
            Ok(replicas)
        }
    };
    let (css, prefixed) = futures::join!(
        scenario(
            "sc-css",
            "canary",
            vec![
                "secretStore.kind=ClusterSecretStore".to_string(),
                "secretStore.name=sc-css-store".to_string(),
            ]
        ),
        scenario("sc-prefix", "teams/payments/canary", vec![]),
    );
    let ha = scenario(
        "sc-ha",
        "canary",
        vec![
            "replicaCount=2".to_string(),
            "leaderElection.enabled=true".to_string(),
        ],
    )
    .await;
    for r in [&css, &prefixed] {
        if let Err(e) = r {
            failures.push(e.clone());
        }
    }
    match ha {
        Ok(2) => {}
        Ok(n) => failures.push(format!("two replicas: {n} prober Pods")),
        Err(e) => failures.push(e),
    }

    // --- 3. an image the registry does not have --------------------------------
    let ns = "sc-noimage";
    let mut values = common(ns);
    values.push("image.tag=does-not-exist".into());
    let mut args: Vec<String> = [
        "install",
        "secret-canary",
        chart,
        "-n",
        ns,
        "--create-namespace",
    ]
    .map(String::from)
    .to_vec();
    args.extend(sets(&values));
    let (ok, text) = helm
        .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(ok, "{text}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let reason = wait(Duration::from_secs(60), "ErrImagePull", || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=prober"))
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .flat_map(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.container_statuses.iter().flatten())
            })
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .collect();
        reasons
            .iter()
            .find(|r| *r == "ErrImagePull" || *r == "ImagePullBackOff")
            .cloned()
            .ok_or(format!("{reasons:?}"))
    })
    .await;
    eprintln!("missing image: {reason}");

    lab.stop().await;
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!(
            "{}\nlab dir kept: {}",
            failures.join("\n\n"),
            kept.display()
        );
    }
}
