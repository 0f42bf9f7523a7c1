//! The process's watchers, shared: one kube-rs watch per (kind, namespace,
//! name or label selector, reduction) for every probe that follows it.
//!
//! Probes whose chains name the same objects would otherwise each open the
//! same watches (and relist the same objects after every fault): a watch
//! costs the API server a connection and an initial list per copy. Here a
//! probe leases a watch's [`View`] from [`Watches`]; the first lease starts
//! the watcher, later ones get a receiver of the same `tokio::sync::watch`
//! channel (every receiver is woken by the send that published an event,
//! so a shared watch stamps and delivers exactly as a private one did), and
//! the watcher stops when the last lease is dropped or the registry's
//! token fires.
//!
//! The reduction is part of the key because what a run needs of an object
//! depends on its chain: the digest of one key of a Secret, the marks of
//! one Secret on a Deployment's or Pod's template. Chains that agree on it
//! (the same objects) share one watch; two chains reading different keys
//! of one Secret watch it twice.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};

use kube::api::Api;
use kube::runtime::watcher;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::follow::spawn;
use super::view::View;

/// What identifies one shared watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct WatchKey {
    /// The resource (`pods`, `secrets`, ...); it decides the view's type.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// `metadata.name=NAME` (a field selector) or a label selector.
    pub selector: String,
    /// What the reduction of each object depends on (empty: nothing).
    pub reduction: String,
}

/// A started watcher: its view, kept alive by the probes that lease it.
pub(super) struct Lease<T> {
    rx: watch::Receiver<View<T>>,
    stop: CancellationToken,
    key: WatchKey,
    registry: Weak<Inner>,
}

impl<T> Lease<T> {
    /// A receiver of the watcher's view.
    pub fn receiver(&self) -> watch::Receiver<View<T>> {
        self.rx.clone()
    }
}

impl<T> Drop for Lease<T> {
    /// The last probe let go: stop the watch and forget it (unless a new
    /// lease already replaced it in the registry).
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(inner) = self.registry.upgrade() {
            let mut live = inner.live.lock().unwrap_or_else(|e| e.into_inner());
            if live.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                live.remove(&self.key);
            }
        }
    }
}

/// Anything a probe holds to keep its leased watches running.
pub(super) type Held = Arc<dyn Any + Send + Sync>;

struct Inner {
    client: kube::Client,
    cancel: CancellationToken,
    /// Arrival order across every watcher of the process (runs merge the
    /// changes of their chain's watchers by it).
    seq: Arc<AtomicU64>,
    live: Mutex<HashMap<WatchKey, Weak<dyn Any + Send + Sync>>>,
}

/// The process's shared watchers. Cheap to clone.
#[derive(Clone)]
pub struct Watches {
    inner: Arc<Inner>,
}

impl Watches {
    /// A registry whose watchers use `client` and stop when `cancel` fires.
    pub fn new(client: kube::Client, cancel: CancellationToken) -> Watches {
        Watches {
            inner: Arc::new(Inner {
                client,
                cancel,
                seq: Arc::new(AtomicU64::new(0)),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The kube client the watchers use.
    pub fn client(&self) -> &kube::Client {
        &self.inner.client
    }

    /// Watches running now.
    pub fn running(&self) -> usize {
        let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values().filter(|w| w.strong_count() > 0).count()
    }

    /// The watch of `key`: the running one, else one started now on `api`
    /// with `config`, reducing each object with `project`.
    pub(super) fn lease<K, T>(
        &self,
        key: WatchKey,
        api: impl FnOnce(kube::Client) -> Api<K>,
        config: watcher::Config,
        project: impl Fn(&K) -> T + Send + Sync + 'static,
    ) -> Arc<Lease<T>>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        T: PartialEq + Send + Sync + Debug + 'static,
    {
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        // A lease of another type under the same key cannot happen (the
        // kind decides the type); if it did, it is dropped after the lock
        // is released, since its drop takes the lock.
        let mut other: Option<Held> = None;
        if let Some(held) = live.get(&key).and_then(Weak::upgrade) {
            match held.downcast::<Lease<T>>() {
                Ok(lease) => return lease,
                Err(held) => other = Some(held),
            }
        }
        let stop = self.inner.cancel.child_token();
        let what = format!("{} {}/{}", key.kind, key.namespace, key.selector);
        let rx = spawn(
            api(self.inner.client.clone()),
            config,
            project,
            &self.inner.seq,
            what,
            &stop,
        );
        let lease = Arc::new(Lease {
            rx,
            stop,
            key: key.clone(),
            registry: Arc::downgrade(&self.inner),
        });
        let held: Held = lease.clone();
        live.insert(key, Arc::downgrade(&held));
        drop(live);
        drop(other);
        lease
    }
}
