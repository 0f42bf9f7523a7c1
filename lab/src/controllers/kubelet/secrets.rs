//! The kubelet's watch-fed Secret cache (and its `canary-stale` snapshot).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::Kubelet;
use crate::faults::Fault;

/// The kubelet's watch-fed copy of every Secret. While `canary-stale` is on
/// it serves a snapshot frozen when the fault was first noticed, so Pods see
/// the old value as a kubelet with a stale cache would.
#[derive(Debug, Default)]
pub(super) struct SecretCache {
    pub(super) fresh: Mutex<HashMap<(String, String), Secret>>,
    pub(super) frozen: Mutex<Option<HashMap<(String, String), Secret>>>,
}

impl SecretCache {
    pub(super) fn stale(&self, knobs: &crate::faults::Knobs) -> bool {
        let on = knobs.is_on(Fault::CanaryStale);
        if let (Ok(mut frozen), Ok(fresh)) = (self.frozen.lock(), self.fresh.lock()) {
            match (on, frozen.is_some()) {
                (true, false) => *frozen = Some(fresh.clone()),
                (false, true) => *frozen = None,
                _ => {}
            }
        }
        on
    }

    pub(super) fn apply(&self, knobs: &crate::faults::Knobs, s: Secret) {
        self.stale(knobs); // freeze before the update lands
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        if let Ok(mut m) = self.fresh.lock() {
            m.insert(key, s);
        }
    }

    pub(super) fn remove(&self, knobs: &crate::faults::Knobs, namespace: &str, name: &str) {
        self.stale(knobs);
        if let Ok(mut m) = self.fresh.lock() {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    pub(super) fn view(
        &self,
        knobs: &crate::faults::Knobs,
        namespace: &str,
        name: &str,
    ) -> Option<Secret> {
        let key = (namespace.to_string(), name.to_string());
        if self.stale(knobs) {
            if let Ok(f) = self.frozen.lock() {
                if let Some(s) = f.as_ref().and_then(|m| m.get(&key)) {
                    return Some(s.clone());
                }
            }
        }
        self.fresh.lock().ok().and_then(|m| m.get(&key).cloned())
    }
}

pub(super) async fn watch_secrets(kl: Arc<Kubelet>, cancel: CancellationToken) {
    let mut stream = watcher(
        Api::<Secret>::all(kl.ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = cancel.cancelled() => return,
        };
        let Some(ev) = ev else { return };
        let changed = match ev {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                kl.secrets.apply(&kl.ctx.knobs, s);
                Some(key)
            }
            Ok(watcher::Event::Delete(s)) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                kl.secrets.remove(&kl.ctx.knobs, &key.0, &key.1);
                Some(key)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet: Secret watch failed; retrying");
                None
            }
        };
        if let Some(key) = changed {
            let _ = kl.secret_changed.send(key);
        }
    }
}

/// A Secret's data as bytes (`stringData` too, in case a write left it).
pub(super) fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    if let Some(sd) = &s.string_data {
        for (k, v) in sd {
            out.insert(k.clone(), v.clone().into_bytes());
        }
    }
    out
}
