//! A run's view of the probe's shared watchers: one subscription per
//! watcher, drained in arrival order (the change log's `seq`), plus what
//! they showed when the run started (the baseline) and when it ended (the
//! facts for attribution).

use tokio::sync::watch;

use super::cluster::{
    Change, Cluster, DeploymentState, EsState, Fault, PodState, SecretState, View,
};
use super::tracker::{Baseline, Facts, Tracker};

/// A watcher event of any kind, to process in arrival order.
enum Event {
    Es(Change<EsState>),
    Secret(Change<SecretState>),
    Deployment(Change<DeploymentState>),
    Pod(Change<PodState>),
}

impl Event {
    fn seq(&self) -> u64 {
        match self {
            Event::Es(c) => c.seq,
            Event::Secret(c) => c.seq,
            Event::Deployment(c) => c.seq,
            Event::Pod(c) => c.seq,
        }
    }
}

/// A run's subscription to one watcher.
struct Sub<T> {
    rx: Option<watch::Receiver<View<T>>>,
    cursor: u64,
}

impl<T: Clone> Sub<T> {
    fn new(rx: Option<&watch::Receiver<View<T>>>) -> Sub<T> {
        let mut rx = rx.cloned();
        let cursor = rx
            .as_mut()
            .map(|r| r.borrow_and_update().last_seq())
            .unwrap_or(0);
        Sub { rx, cursor }
    }

    /// Changes since the last call.
    fn drain(&mut self, out: &mut Vec<Event>, wrap: fn(Change<T>) -> Event) {
        let Some(rx) = self.rx.as_mut() else { return };
        let view = rx.borrow_and_update();
        if let Some(first) = view.changes.front() {
            if first.seq > self.cursor + 1 && self.cursor > 0 && view.changes.len() > 1 {
                // Only a hint: seq is shared by all watchers, so gaps are normal.
                tracing::trace!(
                    first = first.seq,
                    cursor = self.cursor,
                    "change log moved past the run's cursor"
                );
            }
        }
        for c in view.changes.iter().filter(|c| c.seq > self.cursor) {
            out.push(wrap(c.clone()));
        }
        self.cursor = self.cursor.max(view.last_seq());
    }

    /// The watcher published something (never returns for an absent one
    /// or one whose watcher stopped).
    async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    fn fault(&self) -> Option<Fault> {
        self.rx.as_ref().and_then(|r| r.borrow().fault.clone())
    }

    /// The watcher's first object now, if it has one.
    fn first(&self) -> Option<T> {
        self.rx
            .as_ref()
            .and_then(|r| r.borrow().objects.values().next().map(|o| (**o).clone()))
    }
}

/// One run's subscriptions to all of the chain's watchers.
pub struct Subscriptions {
    es: Sub<EsState>,
    secret: Sub<SecretState>,
    deployments: Sub<DeploymentState>,
    pods: Sub<PodState>,
}

impl Subscriptions {
    /// Subscribe now: only changes after this moment are delivered.
    pub fn new(cluster: &Cluster) -> Subscriptions {
        Subscriptions {
            es: Sub::new(cluster.external_secret.as_ref()),
            secret: Sub::new(cluster.secret.as_ref()),
            deployments: Sub::new(cluster.deployments.as_ref()),
            pods: Sub::new(Some(&cluster.pods)),
        }
    }

    /// Feed every change since the last call to the tracker, in arrival order.
    pub fn deliver(&mut self, tracker: &mut Tracker) {
        let mut events = Vec::new();
        self.es.drain(&mut events, Event::Es);
        self.secret.drain(&mut events, Event::Secret);
        self.deployments.drain(&mut events, Event::Deployment);
        self.pods.drain(&mut events, Event::Pod);
        events.sort_by_key(Event::seq);
        for e in &events {
            match e {
                Event::Es(c) => tracker.on_external_secret(c),
                Event::Secret(c) => tracker.on_secret(c),
                Event::Deployment(c) => tracker.on_deployment(c),
                Event::Pod(c) => tracker.on_pod(c),
            }
        }
    }

    /// Some watcher published something.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.es.changed() => {}
            _ = self.secret.changed() => {}
            _ = self.deployments.changed() => {}
            _ = self.pods.changed() => {}
        }
    }

    /// The state at run start; `last_digest` is the value the prober wrote
    /// last, the "old" value when no Secret shows one.
    pub fn baseline(&self, last_digest: Option<String>) -> Baseline {
        let mut base = Baseline::default();
        if let Some(rx) = &self.secret.rx {
            base.secret_absent = rx.borrow().objects.is_empty();
            base.old_digest = self.secret.first().and_then(|s| s.digest);
        }
        if base.old_digest.is_none() {
            base.old_digest = last_digest;
        }
        base.template = self.deployments.first().map(|d| d.template);
        if let Some(rx) = &self.pods.rx {
            for (name, p) in rx.borrow().objects.iter() {
                if let Some(o) = &p.owner {
                    base.owners.insert(o.clone());
                }
                base.restarts.insert(name.clone(), p.restarts);
            }
        }
        base
    }

    /// What the watchers say now, for attribution.
    pub fn facts(&self) -> Facts {
        Facts {
            es_fault: self.es.fault(),
            es: self.es.first(),
            secret_fault: self.secret.fault(),
            secret_present: self
                .secret
                .rx
                .as_ref()
                .is_some_and(|r| !r.borrow().objects.is_empty()),
            deployment_fault: self.deployments.fault(),
            deployment: self.deployments.first(),
            pods_fault: self.pods.fault(),
        }
    }
}
