//! What the Deployment and ReplicaSet controllers share: their error, the
//! workqueue back-off, expectations (writes not yet in the cache), ownership,
//! Pod readiness, and the informer plumbing that drives their reconciles.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{applier, watcher, WatchStreamExt};
use kube::Resource;
use tokio_util::sync::CancellationToken;

use super::api::{key_of, Backoffs, Key, KubeError};
use super::Context;

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

pub(crate) fn seconds(t: &Time) -> i64 {
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
