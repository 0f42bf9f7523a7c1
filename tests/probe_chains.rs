//! End-to-end: one probe run per chain variant through the whole lab (real
//! OpenBao, the loopback API server, ESO, Reloader, Deployment controller,
//! kubelet running real canaries, Bank-Vaults resolution), each stage's
//! measured end compared with the lab's ground truth.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use secret_canary::config::Config;
use secret_canary::probe::{Outcome, ProbeRunner, RunResult, Stage};
use secret_canary_lab::truth::{step, TruthRecord};
use tokio_util::sync::CancellationToken;

/// How far a measured milestone may be from the ground truth.
const TOLERANCE_MS: i64 = 50;

fn end(o: &Outcome, s: Stage) -> DateTime<Utc> {
    o.stages
        .iter()
        .find(|t| t.stage == s)
        .and_then(|t| t.completed_at)
        .unwrap_or_else(|| panic!("stage {s} did not complete: {o:#?}"))
}

fn close(what: &str, measured: DateTime<Utc>, truth: DateTime<Utc>) -> i64 {
    let diff = (measured - truth).num_microseconds().unwrap_or(i64::MAX);
    eprintln!(
        "{what:<40} measured {measured}  truth {truth}  diff {:+.1} ms",
        diff as f64 / 1000.0
    );
    assert!(
        diff.abs() <= TOLERANCE_MS * 1000,
        "{what}: measured {measured} vs truth {truth} ({} ms apart)",
        diff / 1000
    );
    diff
}

/// The first record of `step` for `name` at or after `after`.
fn first_after(
    records: &[TruthRecord],
    st: &str,
    name: &str,
    after: DateTime<Utc>,
) -> DateTime<Utc> {
    records
        .iter()
        .find(|r| r.step == st && r.name == name && r.ts >= after)
        .map(|r| r.ts)
        .unwrap_or_else(|| panic!("no ground truth {st} for {name} after {after}"))
}

fn first_digest(records: &[TruthRecord], st: &str, digest: &str) -> DateTime<Utc> {
    records
        .iter()
        .find(|r| r.step == st && r.digest.as_deref() == Some(digest))
        .map(|r| r.ts)
        .unwrap_or_else(|| panic!("no ground truth {st} with the run's digest"))
}

/// OpenBao's `created_time` of the path's current version.
async fn created_time(lab: &support::TestLab, path: &str) -> DateTime<Utc> {
    let meta = lab.bao.kv_metadata(path).await.expect("metadata");
    let meta = meta.get("data").unwrap_or(&meta);
    let current = meta["current_version"]
        .as_u64()
        .expect("current_version")
        .to_string();
    let t = meta["versions"][&current]["created_time"]
        .as_str()
        .expect("created_time");
    DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
}

async fn run_probe(lab: &support::TestLab, config: &Config, name: &str) -> Outcome {
    let probe = config
        .probe(name)
        .expect("probe in the lab's config")
        .clone();
    let cancel = CancellationToken::new();
    let runner = ProbeRunner::start(probe, lab.client(), cancel.clone())
        .await
        .expect("runner");
    support::wait_for(Duration::from_secs(20), "watchers ready", || {
        let ready = runner.is_ready();
        async move { ready }
    })
    .await;
    let outcome = runner
        .run(format!("test-{name}"), CancellationToken::new())
        .await;
    eprintln!("{}", serde_json::to_string_pretty(&outcome).unwrap());
    cancel.cancel();
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chain_variant_matches_the_ground_truth() {
    let lab =
        support::start_rolled_out(&support::CANARY_DEPLOYMENTS, Duration::from_secs(90)).await;
    let config = Config::load(
        lab.prober_config
            .as_ref()
            .expect("reference scenario has a prober config"),
    )
    .expect("the lab's prober config is valid");

    // ESO + Reloader (env-vars) + env.
    let o = run_probe(&lab, &config, "eso-reloader-env").await;
    assert_eq!(o.result, RunResult::Success, "{o:#?}");
    let d = o.digest.clone().unwrap();
    let truth = lab.truth.records();
    close(
        "eso-env store_write",
        end(&o, Stage::StoreWrite),
        created_time(&lab, "canary/eso-env").await,
    );
    let written = first_digest(&truth, step::ESO_SECRET_WRITTEN, &d);
    close(
        "eso-env secret_update",
        end(&o, Stage::SecretUpdate),
        written,
    );
    close(
        "eso-env eso_sync",
        end(&o, Stage::EsoSync),
        first_digest(&truth, step::ESO_STATUS_SYNCED, &d),
    );
    let patched = first_after(&truth, step::RELOADER_PATCHED, "canary-env", written);
    close(
        "eso-env reloader_trigger",
        end(&o, Stage::ReloaderTrigger),
        patched,
    );
    let complete = first_after(&truth, step::ROLLOUT_COMPLETE, "canary-env", patched);
    close("eso-env rollout", end(&o, Stage::Rollout), complete);
    // Env canaries hold the value from process start: observed right after the rollout.
    close(
        "eso-env canary_observe",
        end(&o, Stage::CanaryObserve),
        complete,
    );
    assert_eq!(end(&o, Stage::EndToEnd), end(&o, Stage::CanaryObserve));

    // ESO + Secret volume: no rollout, the kubelet refreshes the file.
    let o = run_probe(&lab, &config, "eso-volume").await;
    assert_eq!(o.result, RunResult::Success, "{o:#?}");
    assert!(o.duration(Stage::Rollout).is_none() && o.duration(Stage::ReloaderTrigger).is_none());
    let d = o.digest.clone().unwrap();
    // The kubelet logs its volume step just after the atomic swap the canary
    // already saw: give that record a moment to land before reading the log.
    support::wait_for(
        Duration::from_secs(5),
        "the kubelet's volume truth record",
        || {
            let found = lab
                .truth
                .first_with_digest(step::VOLUME_UPDATED, &d)
                .is_some();
            async move { found }
        },
    )
    .await;
    let truth = lab.truth.records();
    close(
        "eso-volume store_write",
        end(&o, Stage::StoreWrite),
        created_time(&lab, "canary/eso-volume").await,
    );
    close(
        "eso-volume secret_update",
        end(&o, Stage::SecretUpdate),
        first_digest(&truth, step::ESO_SECRET_WRITTEN, &d),
    );
    close(
        "eso-volume eso_sync",
        end(&o, Stage::EsoSync),
        first_digest(&truth, step::ESO_STATUS_SYNCED, &d),
    );
    close(
        "eso-volume canary_observe",
        end(&o, Stage::CanaryObserve),
        first_digest(&truth, step::VOLUME_UPDATED, &d),
    );

    // Bank-Vaults: the prober restarts the Deployment; vault-env resolves at Pod start.
    let o = run_probe(&lab, &config, "bankvaults-restart").await;
    assert_eq!(o.result, RunResult::Success, "{o:#?}");
    assert!(o.duration(Stage::EsoSync).is_none() && o.duration(Stage::SecretUpdate).is_none());
    let d = o.digest.clone().unwrap();
    let truth = lab.truth.records();
    let write_end = end(&o, Stage::StoreWrite);
    close(
        "bankvaults store_write",
        write_end,
        created_time(&lab, "canary/bankvaults").await,
    );
    let changed = first_after(
        &truth,
        step::DEPLOYMENT_TEMPLATE_CHANGED,
        "canary-bankvaults",
        write_end,
    );
    close(
        "bankvaults reloader_trigger",
        end(&o, Stage::ReloaderTrigger),
        changed,
    );
    let complete = first_after(&truth, step::ROLLOUT_COMPLETE, "canary-bankvaults", changed);
    close("bankvaults rollout", end(&o, Stage::Rollout), complete);
    close(
        "bankvaults canary_observe",
        end(&o, Stage::CanaryObserve),
        complete,
    );
    // The new Pod really resolved the new value at start.
    first_digest(&truth, step::VAULT_ENV_RESOLVED, &d);

    lab.stop().await;
}

/// Many probes on the same chain objects open one watch per object at the
/// API server (counted by the server, for the probes' own user), list each
/// once at start-up and never again while runs go; the watches stop when no
/// probe holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_on_the_same_objects_share_one_watch_each() {
    use secret_canary::probe::cluster::Watches;
    use std::collections::BTreeSet;

    const COPIES: usize = 4;
    let lab =
        support::start_rolled_out(&support::CANARY_DEPLOYMENTS, Duration::from_secs(90)).await;
    let config = Config::load(lab.prober_config.as_ref().expect("prober config"))
        .expect("the lab's prober config is valid");

    // The probes' own identity, so the lab's controllers are not counted.
    let user = "system:serviceaccount:canary:watch-sharing";
    let token = lab.server.issue_token("canary", "watch-sharing");
    let kubeconfig = lab.dir.path().join("watch-sharing.kubeconfig");
    std::fs::write(
        &kubeconfig,
        secret_canary_lab::lab::kubeconfig_yaml(&lab.api_url, &token),
    )
    .expect("kubeconfig");
    let client = secret_canary_lab::lab::client_from_kubeconfig(&kubeconfig)
        .await
        .expect("client");

    // The distinct objects the reference chains follow.
    let (mut es, mut secrets, mut deployments, mut pods) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for p in &config.probes {
        let c = &p.chain;
        let ns = c.namespace.clone();
        es.extend(c.external_secret.clone().map(|n| (ns.clone(), n)));
        secrets.extend(c.secret.as_ref().map(|s| (ns.clone(), s.name.clone())));
        deployments.extend(
            c.rollout
                .as_ref()
                .map(|r| (ns.clone(), r.deployment.clone())),
        );
        pods.insert((ns, c.canary.selector.clone()));
    }
    let expected = [
        ("externalsecrets", es.len() as u64),
        ("secrets", secrets.len() as u64),
        ("deployments", deployments.len() as u64),
        ("pods", pods.len() as u64),
    ];
    let objects: u64 = expected.iter().map(|(_, n)| n).sum();

    let cancel = CancellationToken::new();
    let watches = Watches::new(client, cancel.clone());
    let mut runners = Vec::new();
    for _ in 0..COPIES {
        for p in &config.probes {
            let r = ProbeRunner::start_shared(p.clone(), &watches, cancel.clone())
                .await
                .expect("runner");
            runners.push((p.name.clone(), r));
        }
    }
    support::wait_for(
        Duration::from_secs(30),
        "every probe's watchers synced",
        || {
            let ready = runners.iter().all(|(_, r)| r.is_ready());
            async move { ready }
        },
    )
    .await;
    assert_eq!(watches.running() as u64, objects);
    // A watcher is synced once its initial list is in; its watch request
    // follows.
    support::wait_for(Duration::from_secs(10), "every watch request", || {
        let n = lab.server.request_counts_of(user).verb("watch");
        async move { n >= objects }
    })
    .await;
    let at_start = lab.server.request_counts_of(user);
    eprintln!("{} probes: {at_start:?}", runners.len());
    for (resource, n) in expected {
        assert_eq!(
            at_start.get("watch", resource),
            n,
            "{} probes on {n} {resource} must open one watch each: {at_start:?}",
            runners.len()
        );
        assert_eq!(
            at_start.get("list", resource),
            n,
            "one initial list per shared watch of {resource}: {at_start:?}"
        );
    }

    // A run goes on the shared watches: nothing is listed or watched anew.
    let first = runners
        .iter()
        .find(|(n, _)| n == "eso-reloader-env")
        .map(|(_, r)| r)
        .expect("eso-reloader-env");
    let outcome = first.run("share-1".into(), CancellationToken::new()).await;
    assert_eq!(outcome.result, RunResult::Success, "{outcome:#?}");
    let after = lab.server.request_counts_of(user).since(&at_start);
    assert_eq!(after.verb("list"), 0, "no LIST after start-up: {after:?}");
    assert_eq!(
        after.verb("watch"),
        0,
        "no new watch after start-up: {after:?}"
    );

    // Dropping every probe stops the shared watches.
    drop(runners);
    assert_eq!(watches.running(), 0);
    cancel.cancel();
    lab.stop().await;
}

/// A fresh install on an empty store path, as a platform team's first
/// `helm install` is: the ExternalSecret cannot sync, its Secret does not
/// exist, and the canary Pods wait for it (CreateContainerConfigError, as a
/// kubelet reports a missing secretKeyRef Secret). The probe's first run
/// writes the value; ESO creates the Secret; the waiting Pods start with it;
/// Reloader does not act on a Secret's creation (upstream's
/// `--reload-on-create` is off by default), so no rollout follows and the
/// run has no rollout stage to wait for: it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_delivery_on_an_empty_store_path_passes_without_a_rollout() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Secret};
    use kube::api::{ListParams, PostParams};
    use kube::Api;

    let lab = support::start_lab(None).await;
    let client = lab.client();
    // The reference eso-env chain under new names, on a path nobody wrote.
    let es: serde_json::Value = serde_json::json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": "first-env", "namespace": "canary"},
        "spec": {"refreshInterval": "2s", "secretStoreRef": {"name": "openbao", "kind": "SecretStore"},
            "target": {"name": "first-env", "creationPolicy": "Owner"},
            "data": [{"secretKey": "value", "remoteRef": {"key": "canary/first-env", "property": "value"}}]}
    });
    let gvk = kube::api::GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret");
    let ar = kube::api::ApiResource::from_gvk(&gvk);
    let ess: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "canary", &ar);
    ess.create(&PostParams::default(), &serde_json::from_value(es).unwrap())
        .await
        .expect("ExternalSecret created");
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "first-env", "namespace": "canary",
            "annotations": {"reloader.stakater.com/auto": "true"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "first-env"}},
            "template": {"metadata": {"labels": {"app": "first-env"}}, "spec": {"containers": [{
                "name": "canary", "image": "secret-canary:latest", "command": ["secret-canary", "canary"],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "SECRET_CANARY_LISTEN", "value": "$(POD_IP):8080"},
                    {"name": "SECRET_CANARY_FROM_ENV", "value": "CANARY_VALUE"},
                    {"name": "CANARY_VALUE", "valueFrom": {"secretKeyRef": {"name": "first-env", "key": "value"}}}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1}}]}}}
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "canary");
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .expect("Deployment created");

    // Both canary Pods wait for the Secret, as a kubelet makes them.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "canary");
    support::wait_for(
        Duration::from_secs(30),
        "two first-env Pods in CreateContainerConfigError",
        || {
            let pods = pods.clone();
            async move {
                let Ok(list) = pods
                    .list(&ListParams::default().labels("app=first-env"))
                    .await
                else {
                    return false;
                };
                list.items.len() == 2
                    && list.items.iter().all(|p| {
                        p.status
                            .iter()
                            .flat_map(|s| s.container_statuses.iter().flatten())
                            .any(|c| {
                                c.state
                                    .as_ref()
                                    .and_then(|s| s.waiting.as_ref())
                                    .and_then(|w| w.reason.as_deref())
                                    == Some("CreateContainerConfigError")
                            })
                    })
            }
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "canary");
    assert!(
        secrets.get_opt("first-env").await.unwrap().is_none(),
        "no Secret before the first write"
    );
    let generation = deployments
        .get("first-env")
        .await
        .unwrap()
        .metadata
        .generation;

    let text = std::fs::read_to_string(lab.prober_config.as_ref().unwrap())
        .unwrap()
        .replace("canary/eso-env", "canary/first-env")
        .replace("canary-env", "first-env");
    let config = Config::from_yaml(&text, "first-env.yaml").expect("config");
    let o = run_probe(&lab, &config, "eso-reloader-env").await;
    assert_eq!(o.result, RunResult::Success, "{o:#?}");
    assert!(
        o.duration(Stage::Rollout).is_none() && o.duration(Stage::ReloaderTrigger).is_none(),
        "a first delivery has no rollout stage: {o:#?}"
    );
    assert!(o.duration(Stage::EsoSync).is_some() && o.duration(Stage::CanaryObserve).is_some());
    // Reloader did not act on the Secret's creation: the same template,
    // the Pods that waited are the ones that started.
    assert!(
        !lab.truth
            .records()
            .iter()
            .any(|r| r.step == step::RELOADER_PATCHED && r.name == "first-env"),
        "Reloader patched first-env on the Secret's creation"
    );
    assert_eq!(
        deployments
            .get("first-env")
            .await
            .unwrap()
            .metadata
            .generation,
        generation
    );
    lab.stop().await;
}
