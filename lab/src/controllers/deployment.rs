//! Simulated Deployment controller: one ReplicaSet per pod-template hash,
//! rolling updates under `maxSurge`/`maxUnavailable` (or Recreate), and the
//! status and conditions `kubectl rollout status` reads (observedGeneration,
//! updated/ready/available replicas, Progressing with its deadline,
//! Available, ReplicaFailure). The arithmetic follows kube-controller-manager's
//! `rolloutRolling`/`syncRolloutStatus`; the Pods themselves are the
//! ReplicaSet controller's job ([`super::replicaset`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{applier, watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::api::{key_of, kube_call, Backoffs, Key, KubeError};
use super::Context;
use crate::faults::Knob;
use crate::truth::step;

/// Label joining a ReplicaSet and its Pods to one pod-template version.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Revision annotation on ReplicaSets and Deployments.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

/// Why a Deployment or ReplicaSet reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed or timed out.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The object cannot be acted on (bad selector, name clash).
    #[error("cannot reconcile {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------------------
// Shared by the Deployment and ReplicaSet controllers.

/// The Deployment and ReplicaSet controllers' error back-off: 250 ms·2ⁿ,
/// at most 30 s (the real workqueue goes to 1000 s; the lab prefers quick
/// recovery).
pub(crate) fn workqueue_delay(attempts: u32) -> Duration {
    (Duration::from_millis(250) * (1u32 << attempts.saturating_sub(1).min(10)))
        .min(Duration::from_secs(30))
}

/// How long expectations may wait for the cache before the controller stops
/// trusting them and acts anyway. The real `ExpectationsTimeout` is 5 min;
/// the lab recovers from a lost watch event within a minute instead.
pub(crate) const EXPECTATIONS_TTL: Duration = Duration::from_secs(60);

/// What one owner is still waiting to see in its informer cache.
#[derive(Debug, Default)]
struct Pending {
    /// Creations of objects whose names the server picks (`generateName`),
    /// counted down as new objects appear in the cache.
    creations: u32,
    /// Objects created under a known name, until the cache has them.
    created: HashSet<String>,
    /// Objects deleted, until the cache has them gone or terminating.
    deleted: HashSet<String>,
    /// When these expectations were raised.
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.creations == 0 && self.created.is_empty() && self.deleted.is_empty()
    }
}

/// The real controllers' "expectations": the creates and deletes an owner
/// issued that its informer cache has not shown yet. While any are pending
/// the cache is known to be stale for that owner, and acting on it would
/// create or delete a second time.
#[derive(Default)]
pub(crate) struct Expectations {
    map: Mutex<HashMap<Key, Pending>>,
}

impl Expectations {
    fn with<T>(&self, key: &Key, f: impl FnOnce(&mut Pending) -> T) -> Option<T> {
        let mut m = self.map.lock().ok()?;
        let p = m.entry(key.clone()).or_default();
        let out = f(p);
        if p.is_empty() {
            m.remove(key);
        }
        Some(out)
    }

    /// `n` creations with server-picked names are about to be issued.
    pub(crate) fn expect_creations(&self, key: &Key, n: u32) {
        self.with(key, |p| {
            p.creations += n;
            p.since = Some(Instant::now());
        });
    }

    /// A new object owned by `key` reached the cache, or a counted creation
    /// failed (the cache will never show it).
    pub(crate) fn creation_observed(&self, key: &Key) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(p) = m.get_mut(key) {
                p.creations = p.creations.saturating_sub(1);
                if p.is_empty() {
                    m.remove(key);
                }
            }
        }
    }

    /// An object named `name` is about to be created.
    pub(crate) fn expect_created(&self, key: &Key, name: &str) {
        self.with(key, |p| {
            p.created.insert(name.to_string());
            p.since = Some(Instant::now());
        });
    }

    /// An object named `name` is about to be deleted.
    pub(crate) fn expect_deleted(&self, key: &Key, name: &str) {
        self.with(key, |p| {
            p.deleted.insert(name.to_string());
            p.since = Some(Instant::now());
        });
    }

    /// A create or delete of `name` failed: the cache will not change for it.
    pub(crate) fn lower(&self, key: &Key, name: &str) {
        self.with(key, |p| {
            p.created.remove(name);
            p.deleted.remove(name);
        });
    }

    /// The owner is gone.
    pub(crate) fn forget(&self, key: &Key) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(key);
        }
    }

    /// `None` once the cache shows everything `key` issued (or the
    /// expectations expired after [`EXPECTATIONS_TTL`]); else how long until
    /// they expire. `cached(name)` says whether the cache has the object and
    /// whether it is still live (not terminating).
    pub(crate) fn pending(
        &self,
        key: &Key,
        cached: impl Fn(&str) -> Option<bool>,
    ) -> Option<Duration> {
        let mut m = self.map.lock().ok()?;
        let p = m.get_mut(key)?;
        p.created.retain(|n| cached(n).is_none());
        p.deleted.retain(|n| cached(n) == Some(true));
        let left = p
            .since
            .and_then(|t| EXPECTATIONS_TTL.checked_sub(t.elapsed()))
            .filter(|d| !d.is_zero());
        match left {
            Some(left) if !p.is_empty() => Some(left),
            _ => {
                if !p.is_empty() {
                    tracing::warn!(namespace = %key.0, owner = %key.1, pending = ?p, "expectations expired; acting on the cache");
                }
                m.remove(key);
                None
            }
        }
    }
}

/// The uid of an object's controlling owner of the given kind.
pub(crate) fn controller_uid(meta: &ObjectMeta, kind: &str) -> Option<String> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.clone())
}

/// A controller owner reference to `obj`.
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..obj.controller_owner_ref(&())?
    })
}

/// A usable selector; an empty one would select everything, which the real
/// API rejects for Deployments and ReplicaSets.
pub(crate) fn selector(ls: &LabelSelector) -> Result<Selector, Error> {
    let sel =
        Selector::try_from(ls.clone()).map_err(|e| Error::Invalid(format!("selector: {e}")))?;
    if sel.selects_all() {
        return Err(Error::Invalid("empty selector".into()));
    }
    Ok(sel)
}

pub(crate) fn now_time() -> Time {
    Time(Timestamp::now())
}

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

/// Is the Pod Ready, and since when?
pub fn pod_ready_since(pod: &Pod) -> Option<Option<i64>> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(c.last_transition_time.as_ref().map(seconds))
}

/// Ready for at least `min_ready` seconds at `now` (unix seconds).
pub fn pod_available(pod: &Pod, min_ready: i32, now: i64) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since + i64::from(min_ready) <= now,
    }
}

/// Not being deleted, not finished.
pub fn pod_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
}

// ---------------------------------------------------------------------------
// Pure rollout arithmetic.

/// A stable, short, lower-case alphanumeric hash of a pod template (the
/// alphabet Kubernetes uses for generated names: no vowels, no look-alikes).
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut n = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    out
}

/// An int-or-percent scaled against `total`; percentages round up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let p: i64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
            let num = p * i64::from(total);
            let r = if round_up {
                (num + 99).div_euclid(100)
            } else {
                num.div_euclid(100)
            };
            i32::try_from(r).ok()
        }
    }
}

/// `(maxSurge, maxUnavailable)` resolved against the desired replicas:
/// defaults 25%/25%, surge rounds up, unavailable down, never both zero.
pub fn resolve_fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let quarter = IntOrString::String("25%".into());
    let s = scaled_value(surge.unwrap_or(&quarter), desired, true)
        .or_else(|| scaled_value(&quarter, desired, true))
        .unwrap_or(1)
        .max(0);
    let mut u = scaled_value(unavailable.unwrap_or(&quarter), desired, false)
        .or_else(|| scaled_value(&quarter, desired, false))
        .unwrap_or(0)
        .max(0);
    if s == 0 && u == 0 {
        u = 1;
    }
    (s, u)
}

/// What the rollout arithmetic needs from a ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsView {
    /// Name.
    pub name: String,
    /// `spec.replicas`.
    pub spec_replicas: i32,
    /// `status.replicas`.
    pub status_replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// Creation time (unix seconds), for oldest-first ordering.
    pub created: i64,
}

impl RsView {
    /// The Pods this ReplicaSet may still have: its spec, or more while a
    /// scale-down is not yet reflected in its status. The real controller
    /// sums `spec.replicas` only, so the ReplicaSet controller's deletes
    /// (old) and creates (new) can cross and briefly exceed `maxSurge`; the
    /// lab waits for the old Pods to be gone before surging again.
    pub fn replicas_upper_bound(&self) -> i32 {
        self.spec_replicas.max(self.status_replicas)
    }

    fn of(rs: &ReplicaSet) -> RsView {
        let st = rs.status.clone().unwrap_or_default();
        RsView {
            name: rs.name_any(),
            spec_replicas: rs.spec.replicas.unwrap_or(1),
            status_replicas: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
            created: rs
                .metadata
                .creation_timestamp
                .as_ref()
                .map(seconds)
                .unwrap_or(0),
        }
    }
}

/// `NewRSNewReplicas` for a rolling update: scale the new ReplicaSet up as
/// far as `replicas + maxSurge` total allows.
pub fn new_rs_target(desired: i32, surge: i32, all_spec_replicas: i32, new_spec: i32) -> i32 {
    if new_spec >= desired {
        return desired;
    }
    let max_total = desired + surge;
    if all_spec_replicas >= max_total {
        return new_spec;
    }
    let up = (max_total - all_spec_replicas).min(desired - new_spec);
    new_spec + up
}

/// `reconcileOldReplicaSets`: how far each old ReplicaSet may be scaled
/// down now (unhealthy replicas first, then down to `replicas -
/// maxUnavailable` available). Returns `(index into old, new spec.replicas)`.
pub fn old_scale_down(
    old: &[RsView],
    new: Option<&RsView>,
    desired: i32,
    max_unavailable: i32,
) -> Vec<(usize, i32)> {
    let old_count: i32 = old.iter().map(|r| r.spec_replicas).sum();
    if old_count == 0 {
        return Vec::new();
    }
    let all_count = old_count + new.map(|n| n.spec_replicas).unwrap_or(0);
    let min_available = desired - max_unavailable;
    let new_unavailable = new
        .map(|n| n.spec_replicas - n.available)
        .unwrap_or(0)
        .max(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..old.len()).collect();
    order.sort_by_key(|i| (old[*i].created, old[*i].name.clone()));
    let mut spec: Vec<i32> = old.iter().map(|r| r.spec_replicas).collect();
    // Phase 1: drop old replicas that are not available anyway.
    let mut cleaned = 0;
    for &i in &order {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = spec[i] - old[i].available.min(spec[i]);
        if spec[i] == 0 || unhealthy <= 0 {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(unhealthy);
        spec[i] -= n;
        cleaned += n;
    }
    // Phase 2: scale down available old replicas while availability allows.
    let available: i32 =
        old.iter().map(|r| r.available).sum::<i32>() + new.map(|n| n.available).unwrap_or(0);
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for &i in &order {
            if done >= total {
                break;
            }
            if spec[i] == 0 {
                continue;
            }
            let n = spec[i].min(total - done);
            spec[i] -= n;
            done += n;
        }
    }
    (0..old.len())
        .filter(|i| spec[*i] != old[*i].spec_replicas)
        .map(|i| (i, spec[i]))
        .collect()
}

/// Counts of the Deployment status, from its ReplicaSets' statuses.
pub fn status_counts(
    desired: i32,
    all: &[RsView],
    new: Option<&RsView>,
) -> (i32, i32, i32, i32, i32) {
    let replicas: i32 = all.iter().map(|r| r.status_replicas).sum();
    let updated = new.map(|n| n.status_replicas).unwrap_or(0);
    let ready: i32 = all.iter().map(|r| r.ready).sum();
    let available: i32 = all.iter().map(|r| r.available).sum();
    let unavailable = (desired - available).max(0);
    (replicas, updated, ready, available, unavailable)
}

fn cond<'a>(conds: &'a [DeploymentCondition], t: &str) -> Option<&'a DeploymentCondition> {
    conds.iter().find(|c| c.type_.as_deref() == Some(t))
}

/// `SetDeploymentCondition`: no change when status and reason are the same;
/// keeps lastTransitionTime when only the reason changes.
pub fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = cond(conds, c.type_.as_deref().unwrap_or_default()) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

fn new_condition(
    t: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(t.into()),
        status: Some(if status { "True" } else { "False" }.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Inputs to [`next_status`].
pub struct StatusInput<'a> {
    /// `spec.replicas`.
    pub desired: i32,
    /// `metadata.generation`.
    pub generation: i64,
    /// maxUnavailable as the Available condition uses it (0 for Recreate).
    pub max_unavailable: i32,
    /// `progressDeadlineSeconds`, if set.
    pub progress_deadline: Option<i32>,
    /// The new ReplicaSet's name.
    pub new_rs: Option<&'a str>,
    /// Counts from [`status_counts`].
    pub counts: (i32, i32, i32, i32, i32),
    /// A `ReplicaFailure` condition to copy from a ReplicaSet.
    pub replica_failure: Option<(String, String)>,
    /// Now, unix seconds.
    pub now: Time,
}

/// `calculateStatus` + `syncRolloutStatus`: the next Deployment status
/// from the previous one. Conditions in `prev` are kept where unchanged.
pub fn next_status(prev: &DeploymentStatus, input: &StatusInput<'_>) -> DeploymentStatus {
    let (replicas, updated, ready, available, unavailable) = input.counts;
    let mut conds = prev.conditions.clone().unwrap_or_default();
    let now = &input.now;
    if available >= input.desired - input.max_unavailable {
        set_condition(
            &mut conds,
            new_condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut conds,
            new_condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    let mut next = DeploymentStatus {
        observed_generation: Some(input.generation),
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some(unavailable),
        collision_count: prev.collision_count,
        terminating_replicas: prev.terminating_replicas,
        conditions: None,
    };
    if let Some(deadline) = input.progress_deadline {
        let rs_name = input.new_rs.unwrap_or_default();
        let current = cond(&conds, "Progressing").cloned();
        let is_complete = replicas == updated
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        if !is_complete {
            let complete =
                updated == input.desired && replicas == input.desired && available == input.desired;
            let prev_old = prev.replicas.unwrap_or(0) - prev.updated_replicas.unwrap_or(0);
            let progressing = updated > prev.updated_replicas.unwrap_or(0)
                || (replicas - updated) < prev_old
                || ready > prev.ready_replicas.unwrap_or(0)
                || available > prev.available_replicas.unwrap_or(0);
            if complete {
                set_condition(
                    &mut conds,
                    new_condition(
                        "Progressing",
                        true,
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                        now,
                    ),
                );
            } else if progressing {
                let mut c = new_condition(
                    "Progressing",
                    true,
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                    now,
                );
                if let Some(cur) = &current {
                    if cur.status.as_deref() == Some("True") {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                }
                conds.retain(|x| x.type_.as_deref() != Some("Progressing"));
                conds.push(c);
            } else if timed_out(current.as_ref(), deadline, seconds(now)) {
                set_condition(
                    &mut conds,
                    new_condition(
                        "Progressing",
                        false,
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                        now,
                    ),
                );
            }
        }
    }
    match &input.replica_failure {
        Some((reason, message)) => {
            let mut c = new_condition("ReplicaFailure", true, reason, message.clone(), now);
            if let Some(cur) = cond(&conds, "ReplicaFailure") {
                if cur.status == c.status && cur.reason == c.reason && cur.message == c.message {
                    c = cur.clone();
                }
            }
            conds.retain(|x| x.type_.as_deref() != Some("ReplicaFailure"));
            conds.push(c);
        }
        None => conds.retain(|x| x.type_.as_deref() != Some("ReplicaFailure")),
    }
    next.conditions = Some(conds);
    next
}

/// `DeploymentTimedOut`.
fn timed_out(current: Option<&DeploymentCondition>, deadline: i32, now: i64) -> bool {
    let Some(c) = current else { return false };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| seconds(t) + i64::from(deadline) < now),
    }
}

/// When to look again for a progress deadline (`requeueStuckDeployment`).
pub fn deadline_requeue(
    status: &DeploymentStatus,
    deadline: Option<i32>,
    now: i64,
) -> Option<Duration> {
    let deadline = deadline?;
    let c = cond(
        status.conditions.as_deref().unwrap_or_default(),
        "Progressing",
    )?;
    if matches!(
        c.reason.as_deref(),
        Some("NewReplicaSetAvailable") | Some("ProgressDeadlineExceeded")
    ) {
        return None;
    }
    let at = seconds(c.last_update_time.as_ref()?) + i64::from(deadline) + 1;
    Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)).max(Duration::from_millis(100)))
}

/// Does this status say the rollout of `rs` just finished?
fn completed_rs(status: &DeploymentStatus) -> Option<String> {
    let c = cond(
        status.conditions.as_deref().unwrap_or_default(),
        "Progressing",
    )?;
    if c.reason.as_deref() != Some("NewReplicaSetAvailable") {
        return None;
    }
    Some(c.message.clone().unwrap_or_default())
}

// ---------------------------------------------------------------------------
// Informer plumbing shared by both controllers: the kube-rs `Controller`
// cannot expose a secondary cache or see raw watch events without unstable
// features, so both controllers drive kube-rs' `applier` from their own
// reflectors.

/// A reflector over `api` (filling `writer`) whose events `on_event` turns
/// into reconcile requests. `on_event` runs after the event reached the
/// store, so a reconcile it triggers sees the cache including the event.
pub(crate) fn trigger_stream<K, P>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    mut on_event: impl FnMut(&watcher::Event<K>) -> Vec<ObjectRef<P>> + Send + 'static,
) -> BoxStream<'static, Result<ObjectRef<P>, watcher::Error>>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    P: Resource<DynamicType = ()> + Send + 'static,
{
    reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .map_ok(move |ev| futures::stream::iter(on_event(&ev).into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

/// One reconcile request for every object in `store` each time a fault or
/// knob changes, after `on_change` (which clears the error back-off).
pub(crate) fn knob_triggers<K>(
    ctx: &Context,
    store: Store<K>,
    on_change: impl Fn() + Send + Sync + 'static,
) -> BoxStream<'static, Result<ObjectRef<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let knobs = ctx.knobs.clone();
    let on_change = Arc::new(on_change);
    futures::stream::unfold((), move |()| {
        let (knobs, store, on_change) = (knobs.clone(), store.clone(), on_change.clone());
        async move {
            knobs.changed().await;
            on_change();
            let refs: Vec<ObjectRef<K>> = store
                .state()
                .iter()
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect();
            Some((futures::stream::iter(refs.into_iter().map(Ok)), ()))
        }
    })
    .flatten()
    .boxed()
}

/// Every object in `store`, as reconcile requests.
pub(crate) fn all_refs<K>(store: &Store<K>) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// What [`drive`] needs from an owner controller's state.
pub(crate) trait OwnerState: Send + Sync + 'static {
    /// The controller's context.
    fn ctx(&self) -> &Context;
    /// Its per-object error back-off.
    fn backoff(&self) -> &Backoffs;
    /// Its creates and deletes not yet seen in the cache.
    fn expectations(&self) -> &Expectations;
}

/// Turns the events of the owners' own reflector into reconcile requests:
/// each applied owner, every owner once a list is complete; a deleted
/// owner's expectations are dropped.
pub(crate) fn owner_events<K, S>(
    st: Arc<S>,
    store: Store<K>,
) -> impl FnMut(&watcher::Event<K>) -> Vec<ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: OwnerState,
{
    move |ev| match ev {
        watcher::Event::Apply(o) => vec![ObjectRef::from_obj(o)],
        watcher::Event::Delete(o) => {
            st.expectations().forget(&key_of(o));
            Vec::new()
        }
        watcher::Event::InitDone => all_refs(&store),
        watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
    }
}

/// Drive `reconcile` from `triggers` and from every fault or knob switch
/// (which clears the back-off) until `cancel` fires, logging failures; a
/// failed object is requeued after its back-off.
pub(crate) async fn drive<K, S, F, Fut>(
    what: &'static str,
    store: Store<K>,
    triggers: Vec<BoxStream<'static, Result<ObjectRef<K>, watcher::Error>>>,
    reconcile: F,
    state: Arc<S>,
    cancel: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    S: OwnerState,
    F: FnMut(Arc<K>, Arc<S>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    let knob_st = state.clone();
    let knobs = knob_triggers(state.ctx(), store.clone(), move || {
        knob_st.backoff().clear()
    });
    let queue = futures::stream::select_all(triggers.into_iter().chain([knobs]));
    let mut reconcile = reconcile;
    applier(
        move |obj, st| Box::pin(reconcile(obj, st)),
        |obj: Arc<K>, _e: &Error, st: Arc<S>| st.backoff().requeue(obj.as_ref()),
        state,
        store,
        queue.take_until(cancel.cancelled_owned()),
        kube::runtime::Config::default(),
    )
    .for_each(|res| async move {
        match res {
            Ok(_) => {}
            Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                tracing::warn!(object = %obj, error = %e, "{what} reconcile failed")
            }
            Err(e) => tracing::debug!(error = %e, "{what} controller event"),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// The controller.

struct State {
    ctx: Context,
    backoff: Backoffs,
    /// (Deployment uid, template hash) already recorded as a template change.
    seen_templates: Mutex<HashSet<(String, String)>>,
    /// ReplicaSets created or deleted, per Deployment, not yet in the cache.
    expectations: Expectations,
    /// The ReplicaSet informer cache.
    replicasets: Store<ReplicaSet>,
    /// Set once the ReplicaSet cache holds its first full list.
    rs_synced: AtomicBool,
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

/// Run the Deployment controller until `cancel` fires. (The ReplicaSet
/// controller is [`super::replicaset::run`]; the lab runs both.)
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    let client = ctx.client.clone();
    let (deployments, d_writer) = reflector::store::<Deployment>();
    let (replicasets, rs_writer) = reflector::store::<ReplicaSet>();
    let state = Arc::new(State {
        ctx,
        backoff: Backoffs::new(workqueue_delay),
        seen_templates: Mutex::default(),
        expectations: Expectations::default(),
        replicasets,
        rs_synced: AtomicBool::new(false),
    });
    let d_triggers = trigger_stream(
        Api::<Deployment>::all(client.clone()),
        d_writer,
        owner_events(state.clone(), deployments.clone()),
    );
    let rs_triggers = {
        let (st, store) = (state.clone(), deployments.clone());
        trigger_stream(
            Api::<ReplicaSet>::all(client),
            rs_writer,
            move |ev| match ev {
                watcher::Event::Apply(rs) | watcher::Event::Delete(rs) => owner_refs(rs),
                watcher::Event::InitDone => {
                    st.rs_synced.store(true, Ordering::SeqCst);
                    all_refs(&store)
                }
                watcher::Event::Init | watcher::Event::InitApply(_) => Vec::new(),
            },
        )
    };
    drive(
        "Deployment",
        deployments,
        vec![d_triggers, rs_triggers],
        reconcile,
        state,
        cancel,
    )
    .await;
    Ok(())
}

/// The Deployment controlling a ReplicaSet.
fn owner_refs(rs: &ReplicaSet) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.namespace().unwrap_or_default();
    rs.owner_references()
        .iter()
        .filter(|o| o.controller == Some(true) && o.kind == "Deployment")
        .map(|o| ObjectRef::<Deployment>::new(&o.name).within(&ns))
        .collect()
}

fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How long to wait after our write lost a resourceVersion race (the cache
/// was stale); the watch event for the newer version usually comes first.
const CONFLICT_REQUEUE: Duration = Duration::from_millis(500);

fn stale(ns: &str, name: &str) -> Action {
    tracing::debug!(namespace = %ns, deployment = %name, "Deployment cache is stale (409); waiting for the watch");
    Action::requeue(CONFLICT_REQUEUE)
}

fn is_conflict(e: &KubeError) -> bool {
    e.api_code() == Some(409)
}

async fn reconcile(d: Arc<Deployment>, st: Arc<State>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let key = (ns.clone(), name.clone());
    if let Some(wait) = st.backoff.remaining(&key, "") {
        return Ok(Action::requeue(wait));
    }
    // Everything below reads the informer caches, as the real controller
    // does; the ReplicaSet cache's first list triggers every Deployment.
    if !st.rs_synced.load(Ordering::SeqCst) || d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // A ReplicaSet we created or deleted that the cache does not show yet:
    // the cache is stale for this Deployment, and acting on it would create
    // the same ReplicaSet again. Its watch event brings the next pass.
    let cached_rs = |n: &str| {
        st.replicasets
            .get(&ObjectRef::new(n).within(&ns))
            .map(|rs| rs.metadata.deletion_timestamp.is_none())
    };
    if let Some(wait) = st.expectations.pending(&key, cached_rs) {
        return Ok(Action::requeue(wait));
    }
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let sel = match selector(&d.spec.selector) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(namespace = %ns, deployment = %name, error = %e, "skipping Deployment");
            return Ok(Action::await_change());
        }
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(st.ctx.client.clone(), &ns);
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
    let mut new_rs = new_rs.pop();
    let desired = d.spec.replicas.unwrap_or(1);
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let (surge, max_unavailable) = match &strategy.rolling_update {
        Some(ru) => resolve_fenceposts(ru.max_surge.as_ref(), ru.max_unavailable.as_ref(), desired),
        None => resolve_fenceposts(None, None, desired),
    };
    let paused = d.spec.paused == Some(true);
    let prev_status = d.status.clone().unwrap_or_default();
    let mut status_base = prev_status.clone();
    let old_views: Vec<RsView> = old_rss.iter().map(RsView::of).collect();
    let max_old_revision = old_rss
        .iter()
        .map(|r| revision(&r.metadata))
        .max()
        .unwrap_or(0);

    if new_rs.is_none() && !paused {
        let first_sight = st
            .seen_templates
            .lock()
            .map(|mut s| s.insert((uid.clone(), hash.clone())))
            .unwrap_or(true);
        if first_sight {
            st.ctx
                .truth
                .record(step::DEPLOYMENT_TEMPLATE_CHANGED, &ns, &name, None);
        }
        let old_pods: i32 = old_views
            .iter()
            .map(|r| r.status_replicas.max(r.spec_replicas))
            .sum();
        // Recreate makes the new ReplicaSet only once every old Pod is gone.
        if !recreate || old_pods == 0 {
            let all_spec: i32 = old_views.iter().map(RsView::replicas_upper_bound).sum();
            let replicas = if recreate {
                desired
            } else {
                new_rs_target(desired, surge, all_spec, 0)
            };
            st.ctx.knobs.delay(Knob::DeploymentLatency).await;
            let rs_name = format!("{name}-{hash}");
            st.expectations.expect_created(&key, &rs_name);
            let rs = match create_rs(&d, &rs_api, &hash, replicas, max_old_revision + 1).await {
                Ok(Created::New(rs)) => {
                    st.ctx
                        .truth
                        .record(step::REPLICASET_CREATED, &ns, &name, None);
                    rs
                }
                // Not a creation of ours: no ground truth. The cache will show it.
                Ok(Created::Existing(rs)) => rs,
                Err(e) => {
                    st.expectations.lower(&key, &rs_name);
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
            new_rs = Some(rs);
        }
    } else if let Some(rs) = &new_rs {
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
    }
    let new_view = new_rs.as_ref().map(RsView::of);

    if !paused {
        scale(
            &st,
            &rs_api,
            recreate,
            desired,
            surge,
            max_unavailable,
            &old_views,
            new_view.as_ref(),
        )
        .await?;
    }

    // Writes to the Deployment carry the cached resourceVersion: if the cache
    // is behind (e.g. our own last status write is not in it yet), the write
    // fails with 409 instead of overwriting newer state, and the pass is
    // redone when the watch brings the newer version. So a status transition
    // (and its ground-truth record) happens once.
    let deploys: Api<Deployment> = Api::namespaced(st.ctx.client.clone(), &ns);
    let mut rv = d.metadata.resource_version.clone().unwrap_or_default();
    // The Deployment carries its newest revision, as `kubectl rollout history` reads it.
    if let Some(rs) = &new_rs {
        let rev = revision(&rs.metadata).max(max_old_revision + 1);
        if revision(&d.metadata) != rev {
            let patch = json!({"metadata": {
                "resourceVersion": rv,
                "annotations": {REVISION_ANNOTATION: rev.to_string()},
            }});
            match kube_call(
                "patch Deployment revision",
                deploys.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await
            {
                Ok(updated) => rv = updated.metadata.resource_version.unwrap_or_default(),
                Err(e) if is_conflict(&e) => return Ok(stale(&ns, &name)),
                Err(e) => return Err(e.into()),
            }
        }
    }

    let mut all_views = old_views.clone();
    all_views.extend(new_view.clone());
    let replica_failure = new_rs
        .iter()
        .chain(old_rss.iter())
        .filter_map(|rs| {
            rs.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| {
                    c.type_.as_deref() == Some("ReplicaFailure")
                        && c.status.as_deref() == Some("True")
                })
                .map(|c| {
                    (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                })
        })
        .next();
    let deadline = d
        .spec
        .progress_deadline_seconds
        .or(Some(DEFAULT_PROGRESS_DEADLINE))
        .filter(|s| *s > 0 && *s != i32::MAX);
    let input = StatusInput {
        desired,
        generation: d.metadata.generation.unwrap_or(0),
        max_unavailable: if recreate || desired == 0 {
            0
        } else {
            max_unavailable.min(desired)
        },
        progress_deadline: deadline,
        new_rs: new_view.as_ref().map(|v| v.name.as_str()),
        counts: status_counts(desired, &all_views, new_view.as_ref()),
        replica_failure,
        now: now_time(),
    };
    let next = next_status(&status_base, &input);
    if next != prev_status {
        let body = json!({"metadata": {"resourceVersion": rv}, "status": next});
        match kube_call(
            "patch Deployment status",
            deploys.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body)),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(stale(&ns, &name)),
            Err(e) => return Err(e.into()),
        }
        if let Some(done) = completed_rs(&next) {
            if completed_rs(&prev_status).as_deref() != Some(done.as_str()) {
                st.ctx
                    .truth
                    .record(step::ROLLOUT_COMPLETE, &ns, &name, None);
            }
        }
    }
    if next.updated_replicas == Some(desired)
        && next.replicas == Some(desired)
        && next.available_replicas == Some(desired)
    {
        cleanup_old(
            &st,
            &key,
            &rs_api,
            &old_rss,
            d.spec.revision_history_limit.unwrap_or(10),
        )
        .await?;
    }
    st.backoff.reset(&key);
    Ok(
        match deadline_requeue(&next, deadline, seconds(&now_time())) {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        },
    )
}

#[allow(clippy::too_many_arguments)]
async fn scale(
    st: &State,
    rs_api: &Api<ReplicaSet>,
    recreate: bool,
    desired: i32,
    surge: i32,
    max_unavailable: i32,
    old: &[RsView],
    new: Option<&RsView>,
) -> Result<(), Error> {
    if recreate {
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
            new_rs_target(desired, surge, all_spec, n.spec_replicas)
        };
        if target != n.spec_replicas {
            scale_rs(st, rs_api, &n.name, target).await?;
            if target > n.spec_replicas {
                return Ok(());
            }
        }
    }
    for (i, replicas) in old_scale_down(old, new, desired, max_unavailable) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn expectations_wait_for_the_cache() {
        let e = Expectations::default();
        let k: Key = ("ns".into(), "rs".into());
        assert_eq!(e.pending(&k, |_| None), None, "nothing issued");
        // Counted creations: met only once each new Pod was observed.
        e.expect_creations(&k, 2);
        assert!(e.pending(&k, |_| None).is_some());
        e.creation_observed(&k);
        assert!(e.pending(&k, |_| None).is_some());
        e.creation_observed(&k);
        assert_eq!(e.pending(&k, |_| None), None);
        e.creation_observed(&k); // an unexpected Pod: no effect, no underflow
        assert_eq!(e.pending(&k, |_| None), None);
        // Named creation: met when the cache has it.
        e.expect_created(&k, "a");
        assert!(e.pending(&k, |_| None).is_some());
        assert_eq!(e.pending(&k, |n| (n == "a").then_some(true)), None);
        // Deletion: met when gone or terminating, not while live.
        e.expect_deleted(&k, "b");
        assert!(e.pending(&k, |_| Some(true)).is_some());
        assert_eq!(e.pending(&k, |_| Some(false)), None);
        e.expect_deleted(&k, "c");
        assert_eq!(e.pending(&k, |_| None), None);
        // A failed call lowers the expectation at once.
        e.expect_created(&k, "d");
        e.lower(&k, "d");
        assert_eq!(e.pending(&k, |_| None), None);
        // Other owners are independent; forget drops everything.
        let other: Key = ("ns".into(), "other".into());
        e.expect_creations(&k, 1);
        assert_eq!(e.pending(&other, |_| None), None);
        e.forget(&k);
        assert_eq!(e.pending(&k, |_| None), None);
    }

    #[test]
    fn expectations_expire() {
        let e = Expectations::default();
        let k: Key = ("ns".into(), "rs".into());
        e.expect_creations(&k, 1);
        let left = e.pending(&k, |_| None).unwrap();
        assert!(left <= EXPECTATIONS_TTL && left > EXPECTATIONS_TTL / 2);
        if let Some(p) = e.map.lock().unwrap().get_mut(&k) {
            p.since = Instant::now().checked_sub(EXPECTATIONS_TTL + Duration::from_secs(1));
        }
        assert_eq!(e.pending(&k, |_| None), None, "expired");
        assert_eq!(e.pending(&k, |_| None), None, "and cleared");
    }

    #[test]
    fn template_hash_is_stable_and_short() {
        let mut tpl = PodTemplateSpec::default();
        let a = pod_template_hash(&tpl);
        assert_eq!(a, pod_template_hash(&tpl.clone()));
        assert_eq!(a.len(), 10);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        tpl.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                "kubectl.kubernetes.io/restartedAt".into(),
                "x".into(),
            )])),
            ..Default::default()
        });
        assert_ne!(a, pod_template_hash(&tpl));
    }

    #[test]
    fn fenceposts() {
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(resolve_fenceposts(None, None, 3), (1, 0));
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(resolve_fenceposts(None, None, 1), (1, 0));
        let zero = IntOrString::Int(0);
        assert_eq!(resolve_fenceposts(Some(&zero), Some(&zero), 3), (0, 1));
        let half = IntOrString::String("50%".into());
        assert_eq!(resolve_fenceposts(Some(&half), Some(&half), 3), (2, 1));
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(0)), 3),
            (2, 0)
        );
        assert_eq!(
            scaled_value(&IntOrString::String("bad".into()), 4, true),
            None
        );
    }

    #[test]
    fn new_rs_scale_up_respects_surge() {
        // 3 desired, surge 1: old RS still has 3 → new may go to 1.
        assert_eq!(new_rs_target(3, 1, 3, 0), 1);
        assert_eq!(new_rs_target(3, 1, 4, 1), 1);
        assert_eq!(new_rs_target(3, 1, 3, 1), 2);
        assert_eq!(new_rs_target(3, 0, 3, 0), 0);
        assert_eq!(new_rs_target(3, 1, 3, 3), 3);
    }

    fn view(name: &str, spec: i32, avail: i32, created: i64) -> RsView {
        RsView {
            name: name.into(),
            spec_replicas: spec,
            status_replicas: spec,
            ready: avail,
            available: avail,
            created,
        }
    }

    #[test]
    fn old_scale_down_keeps_min_available() {
        // desired 3, maxUnavailable 0: new has 1 available → old may drop 1.
        let old = [view("old", 3, 3, 1)];
        let new = view("new", 1, 1, 2);
        assert_eq!(old_scale_down(&old, Some(&new), 3, 0), vec![(0, 2)]);
        // new not yet available: nothing may go.
        let new = view("new", 1, 0, 2);
        assert!(old_scale_down(&old, Some(&new), 3, 0).is_empty());
        // Unhealthy old replicas go first, as far as the surge headroom allows
        // (4 Pods, 2 must stay available, 1 new one unavailable → 1 may go).
        let old = [view("old", 3, 1, 1)];
        let new = view("new", 1, 0, 2);
        assert_eq!(old_scale_down(&old, Some(&new), 3, 1), vec![(0, 2)]);
    }

    /// Simulate a whole rolling update: each step the controller acts, then
    /// Pods appear for spec and become available. Checks the invariants.
    #[test]
    fn rolling_update_converges_within_bounds() {
        for (desired, surge, unavail) in [
            (3, 1, 0),
            (3, 1, 1),
            (4, 2, 1),
            (5, 0, 1),
            (1, 1, 0),
            (10, 3, 2),
        ] {
            let mut old = vec![view("old", desired, desired, 1)];
            let mut new = view("new", 0, 0, 2);
            for _ in 0..100 {
                let all_spec = old[0].spec_replicas + new.spec_replicas;
                let target = new_rs_target(desired, surge, all_spec, new.spec_replicas);
                if target > new.spec_replicas {
                    new.spec_replicas = target;
                } else {
                    for (i, r) in old_scale_down(&old, Some(&new), desired, unavail) {
                        old[i].spec_replicas = r;
                    }
                }
                // Pods follow spec immediately (scale-down kills, scale-up starts
                // unavailable, then becomes available next step).
                assert!(old[0].spec_replicas + new.spec_replicas <= desired + surge);
                old[0].available = old[0].available.min(old[0].spec_replicas);
                assert!(
                    old[0].available + new.available >= desired - unavail,
                    "{desired} {surge} {unavail}"
                );
                new.available = new.spec_replicas;
                if new.spec_replicas == desired && old[0].spec_replicas == 0 {
                    break;
                }
            }
            assert_eq!(
                (new.spec_replicas, old[0].spec_replicas),
                (desired, 0),
                "{desired} {surge} {unavail}"
            );
        }
    }

    fn input(counts: (i32, i32, i32, i32, i32), now: i64) -> StatusInput<'static> {
        StatusInput {
            desired: 3,
            generation: 2,
            max_unavailable: 0,
            progress_deadline: Some(10),
            new_rs: Some("d-abc"),
            counts,
            replica_failure: None,
            now: t(now),
        }
    }

    fn reason(s: &DeploymentStatus, ty: &str) -> String {
        cond(s.conditions.as_deref().unwrap(), ty)
            .unwrap()
            .reason
            .clone()
            .unwrap()
    }

    #[test]
    fn status_progress_complete_and_deadline() {
        let mut s = DeploymentStatus::default();
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                true,
                "NewReplicaSetCreated",
                "x".into(),
                &t(1000),
            ),
        );
        s.conditions = Some(conds);
        // Progress: one updated replica.
        let s1 = next_status(&s, &input((4, 1, 3, 3, 0), 1001));
        assert_eq!(reason(&s1, "Progressing"), "ReplicaSetUpdated");
        assert_eq!(reason(&s1, "Available"), "MinimumReplicasAvailable");
        assert_eq!(s1.observed_generation, Some(2));
        // No progress, before the deadline: unchanged.
        let s2 = next_status(&s1, &input((4, 1, 3, 3, 0), 1005));
        assert_eq!(s2, s1);
        assert_eq!(
            deadline_requeue(&s2, Some(10), 1005),
            Some(Duration::from_secs(7))
        );
        // Past the deadline.
        let s3 = next_status(&s2, &input((4, 1, 3, 3, 0), 1012));
        let c = cond(s3.conditions.as_deref().unwrap(), "Progressing").unwrap();
        assert_eq!(c.reason.as_deref(), Some("ProgressDeadlineExceeded"));
        assert_eq!(c.status.as_deref(), Some("False"));
        assert_eq!(deadline_requeue(&s3, Some(10), 1012), None);
        // Complete.
        let s4 = next_status(&s1, &input((3, 3, 3, 3, 0), 1003));
        assert_eq!(reason(&s4, "Progressing"), "NewReplicaSetAvailable");
        assert_eq!(
            completed_rs(&s4).unwrap(),
            "ReplicaSet \"d-abc\" has successfully progressed."
        );
        // Not enough available.
        let s5 = next_status(&s, &input((3, 0, 1, 1, 2), 1001));
        assert_eq!(reason(&s5, "Available"), "MinimumReplicasUnavailable");
        assert_eq!(s5.unavailable_replicas, Some(2));
    }

    #[test]
    fn replica_failure_is_copied_and_cleared() {
        let mut i = input((0, 0, 0, 0, 3), 1000);
        i.replica_failure = Some(("FailedCreate".into(), "webhook down".into()));
        let s = next_status(&DeploymentStatus::default(), &i);
        assert_eq!(reason(&s, "ReplicaFailure"), "FailedCreate");
        let s2 = next_status(&s, &input((0, 0, 0, 0, 3), 1001));
        assert!(cond(s2.conditions.as_deref().unwrap(), "ReplicaFailure").is_none());
    }

    #[test]
    fn pod_availability_uses_min_ready_seconds() {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let pod = Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(t(100)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(pod_available(&pod, 0, 100));
        assert!(!pod_available(&pod, 5, 104));
        assert!(pod_available(&pod, 5, 105));
        assert!(!pod_available(&Pod::default(), 0, 100));
    }
}
