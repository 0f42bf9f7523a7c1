//! Simulated ReplicaSet controller: keeps `spec.replicas` Pods (created from
//! the template with `generateName: <rs>-`, deleted not-ready-first), and
//! writes the ReplicaSet status the Deployment controller sums up. A Pod
//! create the API server rejects (e.g. the Bank-Vaults webhook being down)
//! becomes a `ReplicaFailure`/`FailedCreate` condition and is retried with
//! back-off.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::SelectorExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::deployment::{
    controller_uid, kube_call, now_time, owner_ref, pod_active, pod_available, pod_ready_since,
    selector, Backoffs, Error,
};
use super::Context;
use crate::faults::Knob;
use crate::truth::step;

/// Most Pods created in one pass (the real controller's burst is 500).
const BURST: i32 = 500;

struct State {
    ctx: Context,
    backoff: Backoffs,
}

/// Run the ReplicaSet controller until `cancel` fires.
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    let client = ctx.client.clone();
    let state = Arc::new(State {
        ctx,
        backoff: Backoffs::default(),
    });
    let knob_state = state.clone();
    let knob_changes = futures::stream::unfold(knob_state, |st| async move {
        st.ctx.knobs.changed().await;
        st.backoff.clear();
        Some(((), st))
    });
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Pod>::all(client),
        watcher::Config::default(),
        |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            pod.metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o.controller == Some(true) && o.kind == "ReplicaSet")
                .map(move |o| ObjectRef::<ReplicaSet>::new(&o.name).within(&ns))
        },
    )
    .reconcile_all_on(knob_changes)
    .graceful_shutdown_on(cancel.cancelled_owned())
    .run(reconcile, error_policy, state)
    .for_each(|res| async move {
        match res {
            Ok(_) => {}
            Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                tracing::warn!(replicaset = %obj, error = %e, "ReplicaSet reconcile failed")
            }
            Err(e) => tracing::debug!(error = %e, "ReplicaSet controller event"),
        }
    })
    .await;
    Ok(())
}

fn error_policy(rs: Arc<ReplicaSet>, _e: &Error, st: Arc<State>) -> Action {
    Action::requeue(
        st.backoff
            .next((rs.namespace().unwrap_or_default(), rs.name_any())),
    )
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

async fn reconcile(cached: Arc<ReplicaSet>, st: Arc<State>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let key = (ns.clone(), name.clone());
    if let Some(wait) = st.backoff.remaining(&key) {
        return Ok(Action::requeue(wait));
    }
    // Read it fresh: a Pod event can trigger this before the cache has the
    // Deployment controller's last scale, and acting on a stale
    // `spec.replicas` would overshoot maxSurge.
    let rs_api: Api<ReplicaSet> = Api::namespaced(st.ctx.client.clone(), &ns);
    let Some(rs) = kube_call("get ReplicaSet", rs_api.get_opt(&name)).await? else {
        return Ok(Action::await_change());
    };
    if rs.metadata.deletion_timestamp.is_some() {
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
    let listed = kube_call(
        "list Pods",
        pods_api.list(&ListParams::default().labels_from(&sel)),
    )
    .await?;
    let active: Vec<&Pod> = listed
        .items
        .iter()
        .filter(|p| controller_uid(&p.metadata, "ReplicaSet").as_deref() == Some(uid.as_str()))
        .filter(|p| sel.matches(p.metadata.labels.as_ref().unwrap_or(&Default::default())))
        .filter(|p| pod_active(p))
        .collect();
    let desired = rs.spec.replicas.unwrap_or(1).max(0);
    let diff = i32::try_from(active.len()).unwrap_or(i32::MAX) - desired;
    let mut failure: Option<Error> = None;
    if diff < 0 {
        for _ in 0..(-diff).min(BURST) {
            st.ctx.knobs.delay(Knob::DeploymentLatency).await;
            match create_pod(&pods_api, &rs).await {
                Ok(pod) => {
                    st.ctx
                        .truth
                        .record(step::POD_CREATED, &ns, &pod.name_any(), None);
                }
                Err(e) => {
                    tracing::info!(namespace = %ns, replicaset = %name, error = %e, "Pod create failed");
                    failure = Some(e);
                    break;
                }
            }
        }
    } else if diff > 0 {
        for pod in pods_to_delete(&active, usize::try_from(desired).unwrap_or(0)) {
            st.ctx.knobs.delay(Knob::DeploymentLatency).await;
            match pods_api
                .delete(&pod.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    failure = Some(Error::Kube {
                        what: "delete Pod".into(),
                        source: e,
                    });
                    break;
                }
            }
        }
    }
    let now = now_time().0.as_second();
    let create_failure = match &failure {
        Some(e @ Error::Kube { what, .. }) if what == "create Pod" => Some(e.to_string()),
        _ => None,
    };
    let status = compute_status(&rs, &active, create_failure, now);
    if Some(&status) != rs.status.as_ref() {
        // Merge patch: `conditions: null` clears a resolved ReplicaFailure.
        let mut body = serde_json::to_value(&status).unwrap_or_default();
        if status.conditions.is_none() {
            body["conditions"] = serde_json::Value::Null;
        }
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
    Ok(
        match min_ready_requeue(&active, rs.spec.min_ready_seconds.unwrap_or(0), now) {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        },
    )
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
    kube_call("create Pod", pods.create(&PostParams::default(), &pod)).await
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
