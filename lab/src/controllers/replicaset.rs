//! Simulated ReplicaSet controller: keeps `spec.replicas` Pods (created from
//! the template with `generateName: <rs>-`, deleted not-ready-first), and
//! writes the ReplicaSet status the Deployment controller sums up. Works from
//! informer caches with the real controller's expectations, so a cache that
//! has not caught up with its own creates and deletes never makes it act
//! twice. A Pod create the API server rejects (e.g. the Bank-Vaults webhook
//! being down) becomes a `ReplicaFailure`/`FailedCreate` condition and is
//! retried with back-off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::SelectorExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::api::{key_of, kube_call, Backoffs, Key, KubeError};
use super::workload::{
    all_refs, controller_uid, drive, now_time, owner_events, owner_ref, pod_active, pod_available,
    pod_ready_since, selector, trigger_stream, workqueue_delay, Error, Expectations, OwnerState,
};
use super::Context;
use crate::faults::Knob;
use crate::truth::step;

/// Most Pods created in one pass (the real controller's burst is 500).
const BURST: i32 = 500;

struct State {
    ctx: Context,
    backoff: Backoffs,
    /// Pods created or deleted, per ReplicaSet, not yet seen in the cache.
    expectations: Expectations,
    /// The Pod informer cache.
    pods: Store<Pod>,
    /// Set once the Pod cache holds its first full list.
    pods_synced: AtomicBool,
}

/// The ReplicaSet controlling a Pod.
fn owner_key(pod: &Pod) -> Option<Key> {
    let o = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "ReplicaSet")?;
    Some((pod.namespace().unwrap_or_default(), o.name.clone()))
}

fn rs_ref(key: &Key) -> ObjectRef<ReplicaSet> {
    ObjectRef::new(&key.1).within(&key.0)
}

/// Which Pods the cache holds, to tell a Pod's first appearance (a creation
/// the expectations wait for) from an update. Mirrors the store's keys,
/// including its atomic swap at the end of a relist.
#[derive(Default)]
struct Seen {
    known: HashMap<Key, Option<Key>>,
    relist: Option<HashMap<Key, Option<Key>>>,
}

impl Seen {
    /// Feed one event; returns the owners of Pods that newly appeared.
    fn apply(&mut self, ev: &watcher::Event<Pod>) -> Vec<Key> {
        match ev {
            watcher::Event::Apply(p) => {
                let fresh = self.known.insert(key_of(p), owner_key(p)).is_none();
                owner_key(p).filter(|_| fresh).into_iter().collect()
            }
            watcher::Event::Delete(p) => {
                self.known.remove(&key_of(p));
                Vec::new()
            }
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(p) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(key_of(p), owner_key(p));
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let fresh = listed
                    .iter()
                    .filter(|(k, _)| !self.known.contains_key(*k))
                    .filter_map(|(_, owner)| owner.clone())
                    .collect();
                self.known = listed;
                fresh
            }
        }
    }
}

/// Run the ReplicaSet controller until `cancel` fires.
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (replicasets, rs_writer) = reflector::store::<ReplicaSet>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let state = Arc::new(State {
        ctx,
        backoff: Backoffs::new(workqueue_delay),
        expectations: Expectations::default(),
        pods,
        pods_synced: AtomicBool::new(false),
    });
    let rs_triggers = trigger_stream(
        Api::<ReplicaSet>::all(client.clone()),
        rs_writer,
        owner_events(state.clone(), replicasets.clone()),
    );
    let pod_triggers = {
        let (st, store) = (state.clone(), replicasets.clone());
        let mut seen = Seen::default();
        trigger_stream(Api::<Pod>::all(client), pod_writer, move |ev| {
            // Runs after the store applied the event: an expectation is met
            // only once the cache shows the Pod.
            for owner in seen.apply(ev) {
                st.expectations.creation_observed(&owner);
            }
            match ev {
                watcher::Event::Apply(p) | watcher::Event::Delete(p) => {
                    owner_key(p).iter().map(rs_ref).collect()
                }
                watcher::Event::InitDone => {
                    st.pods_synced.store(true, Ordering::SeqCst);
                    all_refs(&store)
                }
                watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
            }
        })
    };
    drive(
        "ReplicaSet",
        replicasets,
        vec![rs_triggers, pod_triggers],
        reconcile,
        state,
        cancel,
    )
    .await;
    Ok(())
}

impl OwnerState for State {
    fn ctx(&self) -> &Context {
        &self.ctx
    }
    fn backoff(&self) -> &Backoffs {
        &self.backoff
    }
    fn expectations(&self) -> &Expectations {
        &self.expectations
    }
}

/// The status of a ReplicaSet from its active Pods (`calculateStatus`).
pub fn compute_status(
    rs: &ReplicaSet,
    pods: &[&Pod],
    failure: Option<String>,
    now: i64,
) -> ReplicaSetStatus {
    let min_ready = rs.spec.min_ready_seconds.unwrap_or(0);
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = pods
        .iter()
        .filter(|p| {
            let l = p.metadata.labels.clone().unwrap_or_default();
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count();
    let ready = pods.iter().filter(|p| pod_ready_since(p).is_some()).count();
    let available = pods
        .iter()
        .filter(|p| pod_available(p, min_ready, now))
        .count();
    let prev = rs.status.clone().unwrap_or_default();
    let mut conds: Vec<ReplicaSetCondition> = prev.conditions.clone().unwrap_or_default();
    let existing = conds
        .iter()
        .position(|c| c.type_.as_deref() == Some("ReplicaFailure"));
    match (failure, existing) {
        (Some(msg), None) => conds.push(ReplicaSetCondition {
            type_: Some("ReplicaFailure".into()),
            status: Some("True".into()),
            reason: Some("FailedCreate".into()),
            message: Some(msg),
            last_transition_time: Some(now_time()),
        }),
        (None, Some(i)) => {
            conds.remove(i);
        }
        _ => {}
    }
    let n = |x: usize| i32::try_from(x).unwrap_or(i32::MAX);
    ReplicaSetStatus {
        replicas: n(pods.len()),
        fully_labeled_replicas: Some(n(fully_labeled)),
        ready_replicas: Some(n(ready)),
        available_replicas: Some(n(available)),
        observed_generation: rs.metadata.generation.or(prev.observed_generation),
        conditions: if conds.is_empty() { None } else { Some(conds) },
        terminating_replicas: prev.terminating_replicas,
    }
}

/// Which Pods to delete to get down to `keep`: not ready first, then the
/// newest (the real ranking, simplified to what matters here).
pub fn pods_to_delete<'a>(pods: &[&'a Pod], keep: usize) -> Vec<&'a Pod> {
    let mut ranked: Vec<&Pod> = pods.to_vec();
    ranked.sort_by_key(|p| {
        let ready = pod_ready_since(p).is_some();
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(0);
        (ready, std::cmp::Reverse(created))
    });
    let surplus = ranked.len().saturating_sub(keep);
    ranked.into_iter().take(surplus).collect()
}

/// Seconds until the first ready-but-not-yet-available Pod becomes available.
fn min_ready_requeue(pods: &[&Pod], min_ready: i32, now: i64) -> Option<Duration> {
    if min_ready <= 0 {
        return None;
    }
    pods.iter()
        .filter_map(|p| pod_ready_since(p).flatten())
        .map(|since| since + i64::from(min_ready) - now)
        .filter(|left| *left >= 0)
        .min()
        .map(|left| Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1))
}

async fn reconcile(rs: Arc<ReplicaSet>, st: Arc<State>) -> Result<Action, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let key = (ns.clone(), name.clone());
    if let Some(wait) = st.backoff.remaining(&key, "") {
        return Ok(Action::requeue(wait));
    }
    // Everything below reads the informer caches; the Pod cache's first full
    // list triggers every ReplicaSet.
    if !st.pods_synced.load(Ordering::SeqCst) || rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let sel = match selector(&rs.spec.selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(namespace = %ns, replicaset = %name, error = %e, "skipping ReplicaSet");
            return Ok(Action::await_change());
        }
    };
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(st.ctx.client.clone(), &ns);
    // `rsNeedsSync`: only act on the Pod cache once it shows every create and
    // delete this controller issued for the ReplicaSet; until then its Pod
    // count is stale and acting on it would create or delete again. The
    // watch event that meets the expectation brings the next pass.
    let cached_pod = |n: &str| {
        st.pods
            .get(&ObjectRef::new(n).within(&ns))
            .map(|p| p.metadata.deletion_timestamp.is_none())
    };
    let pending = st.expectations.pending(&key, cached_pod);
    let cached: Vec<Arc<Pod>> = st.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && controller_uid(&p.metadata, "ReplicaSet").as_deref() == Some(uid.as_str())
            && sel.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default()))
            && pod_active(p)
    });
    let active: Vec<&Pod> = cached.iter().map(|p| p.as_ref()).collect();
    let desired = rs.spec.replicas.unwrap_or(1).max(0);
    let diff = i32::try_from(active.len()).unwrap_or(i32::MAX) - desired;
    let mut failure: Option<Error> = None;
    if pending.is_some() {
        tracing::debug!(namespace = %ns, replicaset = %name, "waiting for the Pod cache");
    } else if diff < 0 {
        let n = (-diff).min(BURST);
        // Raised before the first create: its watch event may arrive before
        // the create call returns.
        st.expectations
            .expect_creations(&key, u32::try_from(n).unwrap_or(0));
        for i in 0..n {
            st.ctx.knobs.delay(Knob::DeploymentLatency).await;
            match create_pod(&pods_api, &rs).await {
                Ok(pod) => {
                    st.ctx
                        .truth
                        .record(step::POD_CREATED, &ns, &pod.name_any(), None);
                }
                Err(e) => {
                    tracing::info!(namespace = %ns, replicaset = %name, error = %e, "Pod create failed");
                    // Neither this Pod nor the skipped ones will ever show up.
                    for _ in i..n {
                        st.expectations.creation_observed(&key);
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
    } else if diff > 0 {
        let victims = pods_to_delete(&active, usize::try_from(desired).unwrap_or(0));
        for pod in &victims {
            st.expectations.expect_deleted(&key, &pod.name_any());
        }
        for pod in victims {
            st.ctx.knobs.delay(Knob::DeploymentLatency).await;
            let pod_name = pod.name_any();
            if let Err(e) = kube_call(
                "delete Pod",
                pods_api.delete(&pod_name, &DeleteParams::default()),
            )
            .await
            {
                st.expectations.lower(&key, &pod_name);
                if e.api_code() != Some(404) {
                    failure = Some(e.into());
                    break;
                }
            }
        }
    }
    let now = now_time().0.as_second();
    let create_failure = match &failure {
        Some(Error::Kube(e @ KubeError::Failed { what, .. })) if what == "create Pod" => {
            Some(e.to_string())
        }
        _ => None,
    };
    // Like the real controller, the status is the cache's view at the start
    // of the pass; the events of this pass's creates and deletes bring the
    // next one.
    let status = compute_status(&rs, &active, create_failure, now);
    if Some(&status) != rs.status.as_ref() {
        // Merge patch: `conditions: null` clears a resolved ReplicaFailure.
        let mut body = serde_json::to_value(&status).unwrap_or_default();
        if status.conditions.is_none() {
            body["conditions"] = serde_json::Value::Null;
        }
        let rs_api: Api<ReplicaSet> = Api::namespaced(st.ctx.client.clone(), &ns);
        kube_call(
            "patch ReplicaSet status",
            rs_api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": body })),
            ),
        )
        .await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    st.backoff.reset(&key);
    let min_ready = min_ready_requeue(&active, rs.spec.min_ready_seconds.unwrap_or(0), now);
    Ok(match (min_ready, pending) {
        (Some(a), Some(b)) => Action::requeue(a.min(b)),
        (Some(a), None) | (None, Some(a)) => Action::requeue(a),
        (None, None) => Action::await_change(),
    })
}

async fn create_pod(pods: &Api<Pod>, rs: &ReplicaSet) -> Result<Pod, Error> {
    let template = rs.spec.template.clone().unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: owner_ref(rs).map(|o| vec![o]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    kube_call("create Pod", pods.create(&PostParams::default(), &pod))
        .await
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn pod(name: &str, created: i64, ready_since: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: ready_since.map(|s| PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(Timestamp::from_second(s).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn owned(name: &str, owner: &str) -> Pod {
        let mut p = pod(name, 1, None);
        p.metadata.namespace = Some("ns".into());
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "ReplicaSet".into(),
                name: owner.into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        p
    }

    #[test]
    fn seen_reports_first_appearances_only() {
        use watcher::Event;
        let key = |o: &str| ("ns".to_string(), o.to_string());
        let mut s = Seen::default();
        let (a, b, c) = (owned("a", "x"), owned("b", "x"), owned("c", "y"));
        assert_eq!(s.apply(&Event::Apply(a.clone())), vec![key("x")]);
        assert!(s.apply(&Event::Apply(a.clone())).is_empty(), "an update");
        assert!(s.apply(&Event::Apply(pod("bare", 1, None))).is_empty());
        // A relist reports the Pods it brings that the cache did not have,
        // only once complete (when the store swaps in the new list).
        assert!(s.apply(&Event::Init).is_empty());
        assert!(s.apply(&Event::InitApply(a.clone())).is_empty());
        assert!(s.apply(&Event::InitApply(b)).is_empty());
        assert!(s.apply(&Event::InitApply(c)).is_empty());
        let mut fresh = s.apply(&Event::InitDone);
        fresh.sort();
        assert_eq!(fresh, vec![key("x"), key("y")]);
        // Gone and back: a new appearance.
        assert!(s.apply(&Event::Delete(a.clone())).is_empty());
        assert_eq!(s.apply(&Event::Apply(a)), vec![key("x")]);
    }

    #[test]
    fn deletes_not_ready_then_newest() {
        let (a, b, c) = (
            pod("a", 1, Some(5)),
            pod("b", 2, None),
            pod("c", 3, Some(6)),
        );
        let pods = [&a, &b, &c];
        let names: Vec<String> = pods_to_delete(&pods, 1)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, vec!["b", "c"]);
        assert!(pods_to_delete(&pods, 3).is_empty());
    }

    #[test]
    fn status_counts_and_failure_condition() {
        let mut rs = ReplicaSet::default();
        rs.metadata.generation = Some(4);
        rs.spec.min_ready_seconds = Some(10);
        let (a, b, c) = (
            pod("a", 1, Some(100)),
            pod("b", 2, Some(95)),
            pod("c", 3, None),
        );
        let s = compute_status(&rs, &[&a, &b, &c], Some("webhook down".into()), 106);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.fully_labeled_replicas, Some(3));
        assert_eq!(s.observed_generation, Some(4));
        let c0 = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(c0.reason.as_deref(), Some("FailedCreate"));
        rs.status = Some(s);
        let s2 = compute_status(&rs, &[&a], None, 106);
        assert!(s2.conditions.is_none());
        assert_eq!(
            min_ready_requeue(&[&a, &b], 10, 106),
            Some(Duration::from_secs(5))
        );
    }
}
