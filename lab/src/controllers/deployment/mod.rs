//! Simulated Deployment controller: one ReplicaSet per pod-template hash,
//! rolling updates under `maxSurge`/`maxUnavailable` (or Recreate), and the
//! status and conditions `kubectl rollout status` reads (observedGeneration,
//! updated/ready/available replicas, Progressing with its deadline,
//! Available, ReplicaFailure). The arithmetic follows kube-controller-manager's
//! `rolloutRolling`/`syncRolloutStatus`; the Pods themselves are the
//! ReplicaSet controller's job ([`super::replicaset`]).
//!
//! ```text
//! mod.rs        the controller: caches, triggers, run
//! reconcile.rs  one pass, in steps
//! rollout.rs    template hash, surge and unavailability, scale targets (pure)
//! status.rs     status counts, conditions, progress deadline (pure)
//! ```
//!
//! What the ReplicaSet controller uses too is in [`super::workload`].

mod reconcile;
mod rollout;
mod status;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

pub use super::workload::{pod_active, pod_available, pod_ready_since, Error};
pub use rollout::{
    new_rs_target, old_scale_down, pod_template_hash, resolve_fenceposts, scaled_value, RsView,
};
pub use status::{deadline_requeue, next_status, set_condition, status_counts, StatusInput};

use super::api::{Backoffs, KubeError};
use super::workload::{
    all_refs, drive, owner_events, trigger_stream, workqueue_delay, Expectations, OwnerState,
};
use super::Context;
use reconcile::reconcile;

/// Label joining a ReplicaSet and its Pods to one pod-template version.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Revision annotation on ReplicaSets and Deployments.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Default `progressDeadlineSeconds`.
pub const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

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
