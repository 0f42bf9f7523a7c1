//! One pass over a Deployment, in steps: wait for the caches, observe the
//! owned ReplicaSets, make sure the new one exists, scale, record the
//! revision, write the status, clean up old ReplicaSets.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::SelectorExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use serde_json::json;

use super::rollout::{
    new_rs_target, old_scale_down, pod_template_hash, resolve_fenceposts, RsView,
};
use super::status::{
    completed_rs, cond, deadline_requeue, new_condition, next_status, set_condition, status_counts,
    StatusInput,
};
use super::{
    is_conflict, revision, stale, State, DEFAULT_PROGRESS_DEADLINE, POD_TEMPLATE_HASH,
    REVISION_ANNOTATION,
};
use crate::controllers::api::{kube_call, Key};
use crate::controllers::workload::{controller_uid, now_time, owner_ref, seconds, selector, Error};
use crate::faults::Knob;
use crate::truth::step;

/// One pass: each step either hands on to the next or ends the pass with
/// the [`Action`] it returns.
pub(super) async fn reconcile(d: Arc<Deployment>, st: Arc<State>) -> Result<Action, Error> {
    if let Some(action) = wait_for_caches(&d, &st) {
        return Ok(action);
    }
    let Some(mut obs) = observe(&d, &st) else {
        return Ok(Action::await_change());
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(st.ctx.client.clone(), &obs.ns);
    let prev_status = d.status.clone().unwrap_or_default();
    let mut status_base = prev_status.clone();
    if obs.new_rs.is_none() && !obs.paused {
        create_new_rs(&d, &st, &rs_api, &mut obs, &mut status_base).await?;
    } else if let Some(rs) = &obs.new_rs {
        adopt_new_rs(&d, &rs_api, rs, obs.max_old_revision, &mut status_base).await?;
    }
    let new_view = obs.new_rs.as_ref().map(RsView::of);
    if !obs.paused {
        scale(&st, &rs_api, &obs, new_view.as_ref()).await?;
    }

    // Writes to the Deployment carry the cached resourceVersion: if the cache
    // is behind (e.g. our own last status write is not in it yet), the write
    // fails with 409 instead of overwriting newer state, and the pass is
    // redone when the watch brings the newer version. So a status transition
    // (and its ground-truth record) happens once.
    let deploys: Api<Deployment> = Api::namespaced(st.ctx.client.clone(), &obs.ns);
    let rv = match record_revision(&d, &deploys, &obs).await? {
        ControlFlow::Continue(rv) => rv,
        ControlFlow::Break(action) => return Ok(action),
    };
    let deadline = progress_deadline(&d);
    let input = status_input(&d, &obs, new_view.as_ref(), deadline);
    let next = next_status(&status_base, &input);
    if next != prev_status {
        if let ControlFlow::Break(action) =
            write_status(&st, &deploys, &obs, rv, &prev_status, &next).await?
        {
            return Ok(action);
        }
    }
    if next.updated_replicas == Some(obs.desired)
        && next.replicas == Some(obs.desired)
        && next.available_replicas == Some(obs.desired)
    {
        cleanup_old(
            &st,
            &obs.key,
            &rs_api,
            &obs.old_rss,
            d.spec.revision_history_limit.unwrap_or(10),
        )
        .await?;
    }
    st.backoff.reset(&obs.key);
    Ok(
        match deadline_requeue(&next, deadline, seconds(&now_time())) {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        },
    )
}

/// Step 1: `Some` when the pass must wait: for the error back-off, for the
/// ReplicaSet cache's first list, or for a write of ours the cache does not
/// show yet.
fn wait_for_caches(d: &Deployment, st: &State) -> Option<Action> {
    let ns = d.namespace().unwrap_or_default();
    let key = (ns.clone(), d.name_any());
    if let Some(wait) = st.backoff.remaining(&key, "") {
        return Some(Action::requeue(wait));
    }
    // Everything below reads the informer caches, as the real controller
    // does; the ReplicaSet cache's first list triggers every Deployment.
    if !st.rs_synced.load(Ordering::SeqCst) || d.metadata.deletion_timestamp.is_some() {
        return Some(Action::await_change());
    }
    // A ReplicaSet we created or deleted that the cache does not show yet:
    // the cache is stale for this Deployment, and acting on it would create
    // the same ReplicaSet again. Its watch event brings the next pass.
    let cached_rs = |n: &str| {
        st.replicasets
            .get(&ObjectRef::new(n).within(&ns))
            .map(|rs| rs.metadata.deletion_timestamp.is_none())
    };
    st.expectations
        .pending(&key, cached_rs)
        .map(Action::requeue)
}

/// What one pass sees of a Deployment and the ReplicaSets it owns.
struct Observed {
    ns: String,
    name: String,
    key: Key,
    uid: String,
    /// The pod-template hash of the current template.
    hash: String,
    /// The owned ReplicaSet with the current template, if there is one.
    new_rs: Option<ReplicaSet>,
    /// Every other owned ReplicaSet.
    old_rss: Vec<ReplicaSet>,
    old_views: Vec<RsView>,
    max_old_revision: i64,
    desired: i32,
    recreate: bool,
    surge: i32,
    max_unavailable: i32,
    paused: bool,
}

/// Step 2: the Deployment's owned ReplicaSets from the cache, split into
/// the new one and the old ones, and the strategy resolved. `None` (the
/// Deployment is skipped) when its selector is invalid.
fn observe(d: &Deployment, st: &State) -> Option<Observed> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let sel = match selector(&d.spec.selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(namespace = %ns, deployment = %name, error = %e, "skipping Deployment");
            return None;
        }
    };
    let owned: Vec<ReplicaSet> = st
        .replicasets
        .state()
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|rs| sel.matches(rs.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .filter(|rs| controller_uid(&rs.metadata, "Deployment").as_deref() == Some(uid.as_str()))
        .map(|rs| rs.as_ref().clone())
        .collect();
    let hash = pod_template_hash(&d.spec.template);
    let (mut new_rs, old_rss): (Vec<ReplicaSet>, Vec<ReplicaSet>) =
        owned.into_iter().partition(|rs| {
            rs.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_HASH))
                == Some(&hash)
        });
    let desired = d.spec.replicas.unwrap_or(1);
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    let (surge, max_unavailable) = match &strategy.rolling_update {
        Some(ru) => resolve_fenceposts(ru.max_surge.as_ref(), ru.max_unavailable.as_ref(), desired),
        None => resolve_fenceposts(None, None, desired),
    };
    let old_views: Vec<RsView> = old_rss.iter().map(RsView::of).collect();
    let max_old_revision = old_rss
        .iter()
        .map(|r| revision(&r.metadata))
        .max()
        .unwrap_or(0);
    Some(Observed {
        key: (ns.clone(), name.clone()),
        ns,
        name,
        uid,
        hash,
        new_rs: new_rs.pop(),
        old_rss,
        old_views,
        max_old_revision,
        desired,
        recreate: strategy.type_.as_deref() == Some("Recreate"),
        surge,
        max_unavailable,
        paused: d.spec.paused == Some(true),
    })
}

/// Step 3a: no ReplicaSet has the current template: record the template
/// change (once), create the new ReplicaSet (for Recreate: once every old
/// Pod is gone) and note it in the Progressing condition.
async fn create_new_rs(
    d: &Deployment,
    st: &State,
    rs_api: &Api<ReplicaSet>,
    obs: &mut Observed,
    status_base: &mut DeploymentStatus,
) -> Result<(), Error> {
    let (ns, name, key) = (&obs.ns, &obs.name, &obs.key);
    let first_sight = st
        .seen_templates
        .lock()
        .map(|mut s| s.insert((obs.uid.clone(), obs.hash.clone())))
        .unwrap_or(true);
    if first_sight {
        st.ctx
            .truth
            .record(step::DEPLOYMENT_TEMPLATE_CHANGED, ns, name, None);
    }
    let old_pods: i32 = obs
        .old_views
        .iter()
        .map(|r| r.status_replicas.max(r.spec_replicas))
        .sum();
    // Recreate makes the new ReplicaSet only once every old Pod is gone.
    if obs.recreate && old_pods != 0 {
        return Ok(());
    }
    let all_spec: i32 = obs.old_views.iter().map(RsView::replicas_upper_bound).sum();
    let replicas = if obs.recreate {
        obs.desired
    } else {
        new_rs_target(obs.desired, obs.surge, all_spec, 0)
    };
    st.ctx.knobs.delay(Knob::DeploymentLatency).await;
    let rs_name = format!("{name}-{}", obs.hash);
    st.expectations.expect_created(key, &rs_name);
    let created = create_rs(d, rs_api, &obs.hash, replicas, obs.max_old_revision + 1).await;
    let rs = match created {
        Ok(Created::New(rs)) => {
            st.ctx
                .truth
                .record(step::REPLICASET_CREATED, ns, name, None);
            rs
        }
        // Not a creation of ours: no ground truth. The cache will show it.
        Ok(Created::Existing(rs)) => rs,
        Err(e) => {
            st.expectations.lower(key, &rs_name);
            return Err(e);
        }
    };
    let now = now_time();
    let mut conds = status_base.conditions.clone().unwrap_or_default();
    if d.spec
        .progress_deadline_seconds
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
        > 0
    {
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                true,
                "NewReplicaSetCreated",
                format!("Created new replica set \"{}\"", rs.name_any()),
                &now,
            ),
        );
    }
    status_base.conditions = Some(conds);
    obs.new_rs = Some(rs);
    Ok(())
}

/// Step 3b: a ReplicaSet has the current template: note it in the
/// Progressing condition if none is there, and make it the newest revision
/// (a template rolled back to an older ReplicaSet).
async fn adopt_new_rs(
    d: &Deployment,
    rs_api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    max_old_revision: i64,
    status_base: &mut DeploymentStatus,
) -> Result<(), Error> {
    let has_progressing = status_base
        .conditions
        .as_deref()
        .is_some_and(|c| cond(c, "Progressing").is_some());
    if !has_progressing
        && d.spec
            .progress_deadline_seconds
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
            > 0
    {
        let mut conds = status_base.conditions.clone().unwrap_or_default();
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                true,
                "FoundNewReplicaSet",
                format!("Found new replica set \"{}\"", rs.name_any()),
                &now_time(),
            ),
        );
        status_base.conditions = Some(conds);
    }
    // A template rolled back to an older ReplicaSet makes it the newest revision.
    if revision(&rs.metadata) <= max_old_revision {
        let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: (max_old_revision + 1).to_string()}}});
        kube_call(
            "patch ReplicaSet revision",
            rs_api.patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            ),
        )
        .await?;
    }
    Ok(())
}

/// Step 5: the Deployment carries its newest revision, as `kubectl rollout
/// history` reads it. Continues with the resourceVersion the next write must
/// carry; breaks on a stale cache (409).
async fn record_revision(
    d: &Deployment,
    deploys: &Api<Deployment>,
    obs: &Observed,
) -> Result<ControlFlow<Action, String>, Error> {
    let mut rv = d.metadata.resource_version.clone().unwrap_or_default();
    if let Some(rs) = &obs.new_rs {
        let rev = revision(&rs.metadata).max(obs.max_old_revision + 1);
        if revision(&d.metadata) != rev {
            let patch = json!({"metadata": {
                "resourceVersion": rv,
                "annotations": {REVISION_ANNOTATION: rev.to_string()},
            }});
            match kube_call(
                "patch Deployment revision",
                deploys.patch(&obs.name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
            {
                Ok(updated) => rv = updated.metadata.resource_version.unwrap_or_default(),
                Err(e) if is_conflict(&e) => {
                    return Ok(ControlFlow::Break(stale(&obs.ns, &obs.name)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(ControlFlow::Continue(rv))
}

/// `progressDeadlineSeconds`, `None` when there is none to enforce.
fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .progress_deadline_seconds
        .or(Some(DEFAULT_PROGRESS_DEADLINE))
        .filter(|s| *s > 0 && *s != i32::MAX)
}

/// The first `ReplicaFailure=True` condition among the ReplicaSets, as
/// `(reason, message)`.
fn replica_failure<'a>(rss: impl Iterator<Item = &'a ReplicaSet>) -> Option<(String, String)> {
    rss.filter_map(|rs| {
        rs.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| {
                c.type_.as_deref() == Some("ReplicaFailure") && c.status.as_deref() == Some("True")
            })
            .map(|c| {
                (
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
    })
    .next()
}

/// Step 6: what the status arithmetic ([`next_status`]) needs from this pass.
fn status_input<'a>(
    d: &Deployment,
    obs: &Observed,
    new_view: Option<&'a RsView>,
    deadline: Option<i32>,
) -> StatusInput<'a> {
    let desired = obs.desired;
    let mut all_views = obs.old_views.clone();
    all_views.extend(new_view.cloned());
    StatusInput {
        desired,
        generation: d.metadata.generation.unwrap_or(0),
        max_unavailable: if obs.recreate || desired == 0 {
            0
        } else {
            obs.max_unavailable.min(desired)
        },
        progress_deadline: deadline,
        new_rs: new_view.map(|v| v.name.as_str()),
        counts: status_counts(desired, &all_views, new_view),
        replica_failure: replica_failure(obs.new_rs.iter().chain(obs.old_rss.iter())),
        now: now_time(),
    }
}

/// Step 7: write a changed status; record the rollout complete when a new
/// ReplicaSet first completes. Breaks on a stale cache (409).
async fn write_status(
    st: &State,
    deploys: &Api<Deployment>,
    obs: &Observed,
    rv: String,
    prev_status: &DeploymentStatus,
    next: &DeploymentStatus,
) -> Result<ControlFlow<Action>, Error> {
    let body = json!({"metadata": {"resourceVersion": rv}, "status": next});
    match kube_call(
        "patch Deployment status",
        deploys.patch_status(&obs.name, &PatchParams::default(), &Patch::Merge(&body)),
    )
    .await
    {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => return Ok(ControlFlow::Break(stale(&obs.ns, &obs.name))),
        Err(e) => return Err(e.into()),
    }
    if let Some(done) = completed_rs(next) {
        if completed_rs(prev_status).as_deref() != Some(done.as_str()) {
            st.ctx
                .truth
                .record(step::ROLLOUT_COMPLETE, &obs.ns, &obs.name, None);
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Step 4: scale the ReplicaSets one step towards the strategy's target.
async fn scale(
    st: &State,
    rs_api: &Api<ReplicaSet>,
    obs: &Observed,
    new: Option<&RsView>,
) -> Result<(), Error> {
    let (desired, old) = (obs.desired, obs.old_views.as_slice());
    if obs.recreate {
        for r in old.iter().filter(|r| r.spec_replicas > 0) {
            scale_rs(st, rs_api, &r.name, 0).await?;
        }
        let old_pods: i32 = old.iter().map(|r| r.status_replicas).sum();
        if let Some(n) = new {
            if old_pods == 0
                && old.iter().all(|r| r.spec_replicas == 0)
                && n.spec_replicas != desired
            {
                scale_rs(st, rs_api, &n.name, desired).await?;
            }
        }
        return Ok(());
    }
    // One step per pass, as the real controller: scale up, else scale down;
    // the ReplicaSet status changes bring the next pass.
    if let Some(n) = new {
        let all_spec: i32 =
            old.iter().map(RsView::replicas_upper_bound).sum::<i32>() + n.replicas_upper_bound();
        let target = if n.spec_replicas > desired {
            desired
        } else {
            new_rs_target(desired, obs.surge, all_spec, n.spec_replicas)
        };
        if target != n.spec_replicas {
            scale_rs(st, rs_api, &n.name, target).await?;
            if target > n.spec_replicas {
                return Ok(());
            }
        }
    }
    for (i, replicas) in old_scale_down(old, new, desired, obs.max_unavailable) {
        scale_rs(st, rs_api, &old[i].name, replicas).await?;
    }
    Ok(())
}

async fn scale_rs(
    st: &State,
    rs_api: &Api<ReplicaSet>,
    name: &str,
    replicas: i32,
) -> Result<(), Error> {
    st.ctx.knobs.delay(Knob::DeploymentLatency).await;
    let patch = json!({"spec": {"replicas": replicas}});
    kube_call(
        "scale ReplicaSet",
        rs_api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    Ok(())
}

/// What [`create_rs`] found.
enum Created {
    /// The create succeeded: a new ReplicaSet.
    New(ReplicaSet),
    /// 409 AlreadyExists, and the existing one is ours (an earlier create
    /// whose answer was lost, or a cache that is behind).
    Existing(ReplicaSet),
}

async fn create_rs(
    d: &Deployment,
    rs_api: &Api<ReplicaSet>,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> Result<Created, Error> {
    let name = format!("{}-{}", d.name_any(), hash);
    let mut template = d.spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
    tmeta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH.into(), hash.into());
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: d.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_string(),
                revision.to_string(),
            )])),
            owner_references: owner_ref(d).map(|o| vec![o]),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: d.spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    };
    match kube_call(
        "create ReplicaSet",
        rs_api.create(&PostParams::default(), &rs),
    )
    .await
    {
        Ok(rs) => {
            tracing::info!(namespace = ?d.namespace(), deployment = %d.name_any(), replicaset = %name, replicas, "created ReplicaSet");
            Ok(Created::New(rs))
        }
        Err(e) if is_conflict(&e) => {
            let existing = kube_call("get ReplicaSet", rs_api.get(&name)).await?;
            if controller_uid(&existing.metadata, "Deployment") == d.metadata.uid {
                Ok(Created::Existing(existing))
            } else {
                Err(Error::Invalid(format!(
                    "ReplicaSet {name} exists and is not owned by Deployment {}",
                    d.name_any()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Delete old, scaled-down ReplicaSets beyond `revisionHistoryLimit`, oldest first.
async fn cleanup_old(
    st: &State,
    key: &Key,
    rs_api: &Api<ReplicaSet>,
    old: &[ReplicaSet],
    limit: i32,
) -> Result<(), Error> {
    let mut idle: Vec<&ReplicaSet> = old
        .iter()
        .filter(|r| {
            r.spec.replicas.unwrap_or(1) == 0
                && r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0
        })
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = idle
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    if excess == 0 {
        return Ok(());
    }
    idle.sort_by_key(|r| revision(&r.metadata));
    for rs in idle.into_iter().take(excess) {
        st.ctx.knobs.delay(Knob::DeploymentLatency).await;
        let rs_name = rs.name_any();
        // Until the cache shows it gone, a later pass must not delete it again.
        st.expectations.expect_deleted(key, &rs_name);
        match kube_call(
            "delete old ReplicaSet",
            rs_api.delete(&rs_name, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => {}
            Err(e) => {
                st.expectations.lower(key, &rs_name);
                if e.api_code() != Some(404) {
                    return Err(e.into());
                }
            }
        }
    }
    Ok(())
}
