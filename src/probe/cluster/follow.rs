//! Following a watch: classifying its errors, the loop that restarts it
//! after a fault, and publishing what it delivers into a [`View`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::view::{next_backoff, prune, push, View, CHANGE_LOG_AGE};
use crate::probe::{Reason, Stamp};

/// Classify a watcher error. `None`: not a fault (a 410 is a normal relist).
pub(super) fn classify(e: &watcher::Error) -> Option<Reason> {
    let api = |err: &kube::Error| match err {
        kube::Error::Api(s) => code_reason(s.code),
        _ => Reason::ApiError,
    };
    match e {
        watcher::Error::WatchError(s) if s.code == 410 => None,
        watcher::Error::WatchError(s) => Some(code_reason(s.code)),
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => Some(api(k)),
        watcher::Error::NoResourceVersion => Some(Reason::ApiError),
    }
}

/// The reason an API status code stands for.
pub fn code_reason(code: u16) -> Reason {
    match code {
        404 => Reason::NotFound,
        // Our own request was malformed (bad selector, bad patch), or the
        // prober's own credentials or RBAC (or a policy webhook) refused it:
        // the prober's owners must act, not the pipeline's.
        400 | 401 | 403 | 422 => Reason::ProberError,
        _ => Reason::ApiError,
    }
}

/// Follow one watch until `cancel`, reducing each object with `project`.
///
/// kube-runtime's watcher emits nothing when a re-watch after an error
/// succeeds, so a fault would stay the view's state until the next object
/// event. Instead every fault ends the stream: after a pause (doubling, at
/// most [`WATCH_BACKOFF_MAX`]) a new one starts with a relist, whose
/// completion clears the fault. Relists only publish what changed.
///
/// [`WATCH_BACKOFF_MAX`]: super::WATCH_BACKOFF_MAX
async fn follow<K, T>(
    api: Api<K>,
    config: watcher::Config,
    project: impl Fn(&K) -> T + Send + Sync + 'static,
    tx: watch::Sender<View<T>>,
    seq: Arc<AtomicU64>,
    what: String,
    cancel: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    let mut backoff = Duration::ZERO;
    loop {
        let ended = follow_stream(&api, &config, &project, &tx, &seq, &what, &cancel).await;
        if ended {
            return;
        }
        backoff = next_backoff(backoff);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// One watch stream from its first list to its first fault; `true` when
/// the watcher should stop (cancelled, or the stream ended).
async fn follow_stream<K, T>(
    api: &Api<K>,
    config: &watcher::Config,
    project: &impl Fn(&K) -> T,
    tx: &watch::Sender<View<T>>,
    seq: &AtomicU64,
    what: &str,
    cancel: &CancellationToken,
) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    let stream = watcher(api.clone(), config.clone());
    futures::pin_mut!(stream);
    // Objects of a (re)list, published together when it completes.
    let mut relist: Option<Vec<(Stamp, String, T)>> = None;
    // Old changes go when the next one comes; an idle watcher drops its
    // last burst on this tick (no run is woken for it).
    let mut prune_tick = tokio::time::interval(CHANGE_LOG_AGE);
    prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return true,
            _ = prune_tick.tick() => {
                let now = std::time::Instant::now();
                tx.send_if_modified(|v| {
                    prune(v, now);
                    false
                });
                continue;
            }
            item = stream.next() => item,
        };
        let stamp = Stamp::now();
        let Some(item) = item else {
            tracing::warn!(watch = %what, "watch stream ended");
            return true;
        };
        match item {
            Err(e) => {
                let Some(reason) = classify(&e) else { continue };
                tracing::debug!(watch = %what, error = %e, "watch error; starting over after a pause");
                tx.send_modify(|v| v.faulted(reason, e.to_string(), stamp));
                return false;
            }
            Ok(watcher::Event::Init) => relist = Some(Vec::new()),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(buf) = relist.as_mut() {
                    buf.push((stamp, o.name_any(), project(&o)));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = relist.take().unwrap_or_default();
                tx.send_modify(|v| {
                    if v.healthy(stamp) {
                        tracing::info!(watch = %what, "watch recovered");
                    }
                    v.synced = true;
                    let mut seen = BTreeMap::new();
                    for (st, name, state) in listed {
                        let changed = v.objects.get(&name).is_none_or(|old| **old != state);
                        let state = Arc::new(state);
                        if changed {
                            push(v, seq, st, name.clone(), Some(state.clone()));
                        }
                        seen.insert(name, state);
                    }
                    let gone: Vec<String> = v
                        .objects
                        .keys()
                        .filter(|k| !seen.contains_key(*k))
                        .cloned()
                        .collect();
                    for name in gone {
                        push(v, seq, stamp, name, None);
                    }
                    v.objects = seen;
                });
            }
            Ok(watcher::Event::Apply(o)) => {
                let name = o.name_any();
                let state = project(&o);
                tx.send_if_modified(|v| {
                    let was_faulty = v.healthy(stamp);
                    if v.objects.get(&name).is_some_and(|old| **old == state) {
                        return was_faulty;
                    }
                    let state = Arc::new(state);
                    v.objects.insert(name.clone(), state.clone());
                    push(v, seq, stamp, name, Some(state));
                    true
                });
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.name_any();
                tx.send_modify(|v| {
                    v.healthy(stamp);
                    v.objects.remove(&name);
                    push(v, seq, stamp, name, None);
                });
            }
        }
    }
}

/// Start a watcher task and return its view.
pub(super) fn spawn<K, T>(
    api: Api<K>,
    config: watcher::Config,
    project: impl Fn(&K) -> T + Send + Sync + 'static,
    seq: &Arc<AtomicU64>,
    what: String,
    cancel: &CancellationToken,
) -> watch::Receiver<View<T>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + Debug + 'static,
{
    let (tx, rx) = watch::channel(View::default());
    tokio::spawn(follow(
        api,
        config,
        project,
        tx,
        seq.clone(),
        what,
        cancel.clone(),
    ));
    rx
}
