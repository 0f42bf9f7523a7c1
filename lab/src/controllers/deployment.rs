//! Simulated Deployment controller: one ReplicaSet per pod-template hash,
//! rolling updates under `maxSurge`/`maxUnavailable` (or Recreate), and the
//! status and conditions `kubectl rollout status` reads (observedGeneration,
//! updated/ready/available replicas, Progressing with its deadline,
//! Available, ReplicaFailure). The arithmetic follows kube-controller-manager's
//! `rolloutRolling`/`syncRolloutStatus`; the Pods themselves are the
//! ReplicaSet controller's job ([`super::replicaset`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::faults::Knob;
use crate::truth::step;

/// Label joining a ReplicaSet and its Pods to one pod-template version.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Revision annotation on ReplicaSets and Deployments.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

const KUBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a Deployment or ReplicaSet reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call `{what}` failed: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// A Kubernetes API call did not answer in time.
    #[error("Kubernetes API call `{0}` timed out")]
    KubeTimeout(String),
    /// The object cannot be acted on (bad selector, name clash).
    #[error("cannot reconcile {0}")]
    Invalid(String),
}

pub(crate) async fn kube_call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(KUBE_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|source| Error::Kube {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(Error::KubeTimeout(what.to_string())),
    }
}

// ---------------------------------------------------------------------------
// Shared by the Deployment and ReplicaSet controllers.

/// Per-object error back-off: 250 ms·2ⁿ, at most 30 s (the real workqueue
/// goes to 1000 s; the lab prefers quick recovery), cleared on any fault or
/// knob switch so a cleared fault is retried at once.
#[derive(Default)]
pub(crate) struct Backoffs {
    map: Mutex<HashMap<(String, String), (u32, Instant)>>,
}

impl Backoffs {
    pub(crate) fn next(&self, key: (String, String)) -> Duration {
        let Ok(mut m) = self.map.lock() else {
            return Duration::from_secs(1);
        };
        let n = m.get(&key).map(|(n, _)| n + 1).unwrap_or(1);
        let d = (Duration::from_millis(250) * (1u32 << n.saturating_sub(1).min(10)))
            .min(Duration::from_secs(30));
        m.insert(key, (n, Instant::now() + d));
        d
    }

    pub(crate) fn remaining(&self, key: &(String, String)) -> Option<Duration> {
        let m = self.map.lock().ok()?;
        m.get(key)?
            .1
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    pub(crate) fn reset(&self, key: &(String, String)) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(key);
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
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
// The controller.

struct State {
    ctx: Context,
    backoff: Backoffs,
    /// (Deployment uid, template hash) already recorded as a template change.
    seen_templates: Mutex<HashSet<(String, String)>>,
}

/// Run the Deployment controller until `cancel` fires. (The ReplicaSet
/// controller is [`super::replicaset::run`]; the lab runs both.)
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    let client = ctx.client.clone();
    let state = Arc::new(State {
        ctx,
        backoff: Backoffs::default(),
        seen_templates: Mutex::default(),
    });
    let knob_state = state.clone();
    let knob_changes = futures::stream::unfold(knob_state, |st| async move {
        st.ctx.knobs.changed().await;
        st.backoff.clear();
        Some(((), st))
    });
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ReplicaSet>::all(client),
        watcher::Config::default(),
        |rs: ReplicaSet| {
            let ns = rs.namespace().unwrap_or_default();
            rs.metadata
                .owner_references
                .unwrap_or_default()
                .into_iter()
                .filter(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(move |o| ObjectRef::<Deployment>::new(&o.name).within(&ns))
        },
    )
    .reconcile_all_on(knob_changes)
    .graceful_shutdown_on(cancel.cancelled_owned())
    .run(reconcile, error_policy, state)
    .for_each(|res| async move {
        match res {
            Ok(_) => {}
            Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                tracing::warn!(deployment = %obj, error = %e, "Deployment reconcile failed")
            }
            Err(e) => tracing::debug!(error = %e, "Deployment controller event"),
        }
    })
    .await;
    Ok(())
}

fn error_policy(d: Arc<Deployment>, _e: &Error, st: Arc<State>) -> Action {
    Action::requeue(
        st.backoff
            .next((d.namespace().unwrap_or_default(), d.name_any())),
    )
}

fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn reconcile(cached: Arc<Deployment>, st: Arc<State>) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let key = (ns.clone(), name.clone());
    if let Some(wait) = st.backoff.remaining(&key) {
        return Ok(Action::requeue(wait));
    }
    // Read it fresh: a reconcile triggered by a ReplicaSet event can run
    // before the cache has our own last status write, and a stale
    // Progressing condition would misreport the rollout.
    let deploys: Api<Deployment> = Api::namespaced(st.ctx.client.clone(), &ns);
    let Some(d) = kube_call("get Deployment", deploys.get_opt(&name)).await? else {
        return Ok(Action::await_change());
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
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
    let listed = kube_call(
        "list ReplicaSets",
        rs_api.list(&ListParams::default().labels_from(&sel)),
    )
    .await?;
    let owned: Vec<ReplicaSet> = listed
        .items
        .into_iter()
        .filter(|rs| controller_uid(&rs.metadata, "Deployment").as_deref() == Some(uid.as_str()))
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
            let all_spec: i32 = old_views.iter().map(|r| r.spec_replicas).sum();
            let replicas = if recreate {
                desired
            } else {
                new_rs_target(desired, surge, all_spec, 0)
            };
            st.ctx.knobs.delay(Knob::DeploymentLatency).await;
            let rs = create_rs(&d, &rs_api, &hash, replicas, max_old_revision + 1).await?;
            st.ctx
                .truth
                .record(step::REPLICASET_CREATED, &ns, &name, None);
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

    // The Deployment carries its newest revision, as `kubectl rollout history` reads it.
    if let Some(rs) = &new_rs {
        let rev = revision(&rs.metadata).max(max_old_revision + 1);
        if revision(&d.metadata) != rev {
            let deploys: Api<Deployment> = Api::namespaced(st.ctx.client.clone(), &ns);
            let patch =
                json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev.to_string()}}});
            kube_call(
                "patch Deployment revision",
                deploys.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
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
        kube_call(
            "patch Deployment status",
            deploys.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": next })),
            ),
        )
        .await?;
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
        let all_spec: i32 = old.iter().map(|r| r.spec_replicas).sum::<i32>() + n.spec_replicas;
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

async fn create_rs(
    d: &Deployment,
    rs_api: &Api<ReplicaSet>,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> Result<ReplicaSet, Error> {
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
    match rs_api.create(&PostParams::default(), &rs).await {
        Ok(rs) => Ok(rs),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Created by an earlier pass whose answer was lost: adopt it if ours.
            let existing = kube_call("get ReplicaSet", rs_api.get(&name)).await?;
            if controller_uid(&existing.metadata, "Deployment") == d.metadata.uid {
                Ok(existing)
            } else {
                Err(Error::Invalid(format!("ReplicaSet {name} exists and is not owned by Deployment {}", d.name_any())))
            }
        }
        Err(e) => Err(Error::Kube {
            what: "create ReplicaSet".into(),
            source: e,
        }),
    }
    .inspect(|_| tracing::info!(namespace = ?d.namespace(), deployment = %d.name_any(), replicaset = %name, replicas, "created ReplicaSet"))
}

/// Delete old, scaled-down ReplicaSets beyond `revisionHistoryLimit`, oldest first.
async fn cleanup_old(
    st: &State,
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
        match rs_api
            .delete(&rs.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::Kube {
                    what: "delete old ReplicaSet".into(),
                    source: e,
                })
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
