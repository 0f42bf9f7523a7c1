//! The lab end to end through kube-rs watchers: a value written to OpenBao
//! travels store -> ESO -> Secret -> Reloader -> rollout -> new Pods ready ->
//! canary digest, and what the watchers see agrees with the ground truth.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::watcher::{self, Event};
use kube::Api;
use secret_canary_lab::truth::{digest, step};
use tokio::sync::mpsc;

/// A watched change: what it was and when its event arrived.
#[derive(Debug)]
enum Seen {
    Secret(Option<String>, DateTime<Utc>),
    Deployment(Deployment, DateTime<Utc>),
    Pod(Pod),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_travels_the_whole_env_chain_in_agreement_with_ground_truth() {
    let lab =
        support::start_rolled_out(&support::CANARY_DEPLOYMENTS, Duration::from_secs(60)).await;
    let client = lab.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "canary");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "canary");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "canary");
    let start_generation = deploys.get("canary-env").await.unwrap().metadata.generation;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let t1 = tx.clone();
    let w1 = tokio::spawn(
        watcher::watcher(
            secrets.clone(),
            watcher::Config::default().fields("metadata.name=canary-env"),
        )
        .for_each(move |e| {
            if let Ok(Event::Apply(s)) = e {
                let d = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("value"))
                    .map(|v| digest(&v.0));
                let _ = t1.send(Seen::Secret(d, Utc::now()));
            }
            futures::future::ready(())
        }),
    );
    let t2 = tx.clone();
    let w2 = tokio::spawn(
        watcher::watcher(
            deploys.clone(),
            watcher::Config::default().fields("metadata.name=canary-env"),
        )
        .for_each(move |e| {
            if let Ok(Event::Apply(d)) = e {
                let _ = t2.send(Seen::Deployment(d, Utc::now()));
            }
            futures::future::ready(())
        }),
    );
    let t3 = tx.clone();
    let w3 = tokio::spawn(
        watcher::watcher(
            pods.clone(),
            watcher::Config::default().labels("app=canary-env"),
        )
        .for_each(move |e| {
            if let Ok(Event::Apply(p)) = e {
                let _ = t3.send(Seen::Pod(p));
            }
            futures::future::ready(())
        }),
    );
    // Let the watchers finish their initial lists before the write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while rx.try_recv().is_ok() {}

    let value = format!("rotation-{}", rand_hex());
    let want = digest(value.as_bytes());
    lab.bao
        .kv_put("canary/eso-env", &serde_json::json!({ "value": value }))
        .await
        .unwrap();

    let mut secret_seen: Option<DateTime<Utc>> = None;
    let mut template_changed: Option<DateTime<Utc>> = None;
    let mut rolled_out: Option<DateTime<Utc>> = None;
    let mut new_hash: Option<String> = None;
    let mut ready_new_pods: BTreeMap<String, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while rolled_out.is_none() {
        let seen = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the rotation reached the rollout within 60 s")
            .unwrap();
        match seen {
            Seen::Secret(Some(d), at) if d == want && secret_seen.is_none() => {
                secret_seen = Some(at)
            }
            Seen::Deployment(d, at) => {
                if d.metadata.generation != start_generation && template_changed.is_none() {
                    template_changed = Some(at);
                }
                if template_changed.is_some() && support::rolled_out(&d) {
                    rolled_out = Some(at);
                }
            }
            Seen::Pod(p) => {
                let hash = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"))
                    .cloned();
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
                if let (true, Some(h), Some(ip)) = (ready, hash, ip) {
                    if template_changed.is_some() {
                        new_hash.get_or_insert(h.clone());
                        if new_hash.as_deref() == Some(h.as_str()) {
                            ready_new_pods.insert(p.metadata.name.clone().unwrap_or_default(), ip);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let secret_seen = secret_seen.expect("the Secret carried the new value");
    let template_changed = template_changed.expect("Reloader changed the template");
    assert!(
        secret_seen <= template_changed,
        "Secret before the template change"
    );
    assert_eq!(
        ready_new_pods.len(),
        2,
        "both replicas of the new ReplicaSet became ready"
    );

    // Every new Pod's canary reports the digest of the value written, and never the value.
    let http = reqwest::Client::new();
    for ip in ready_new_pods.values() {
        let body = http
            .get(format!("http://{ip}:8080/digest"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains(&want),
            "canary at {ip} reports the new digest: {body}"
        );
        assert!(!body.contains(&value), "the canary never serves the value");
    }

    // Ground truth agrees with what the watchers saw (events arrive within a few ms).
    // A controller logs its step once its write returns, and the watch event
    // of that write can arrive a moment before the reply: allow a little
    // negative skew, never a blur.
    let close = |what: &str, truth: DateTime<Utc>, seen: DateTime<Utc>| {
        let delta = (seen - truth).num_milliseconds();
        assert!(
            (-20..50).contains(&delta),
            "{what}: watch event {seen} vs ground truth {truth} ({delta} ms)"
        );
    };
    let written = lab
        .truth
        .first_with_digest(step::ESO_SECRET_WRITTEN, &want)
        .expect("truth: ESO wrote the Secret");
    close("Secret written", written.ts, secret_seen);
    let patched = lab
        .truth
        .first_with_digest(step::RELOADER_PATCHED, &want)
        .expect("truth: Reloader patched the template");
    close("template patched", patched.ts, template_changed);
    let complete = lab
        .truth
        .find(step::ROLLOUT_COMPLETE, "canary", "canary-env")
        .into_iter()
        .find(|r| r.ts >= patched.ts)
        .expect("truth: rollout complete");
    close(
        "rollout complete",
        complete.ts,
        rolled_out.unwrap_or(complete.ts),
    );
    let truth_text = std::fs::read_to_string(lab.dir.path().join("truth.jsonl")).unwrap();
    assert!(
        !truth_text.contains(&value),
        "the truth log holds digests only"
    );

    for w in [w1, w2, w3] {
        w.abort();
    }
    lab.stop().await;
}

fn rand_hex() -> String {
    use rand::Rng;
    format!("{:016x}", rand::rng().random::<u64>())
}
