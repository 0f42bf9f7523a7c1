//! A run's view of the probe's shared watchers: one subscription per
//! watcher, drained in arrival order (the change log's `seq`), plus what
//! they showed when the run started (the baseline) and when it ended (the
//! facts for attribution).

use tokio::sync::watch;

use super::cluster::{
    Change, Cluster, DeploymentState, EsState, Fault, Gap, PodState, SecretState, View,
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
    /// What is watched, for the overflow warning.
    what: &'static str,
    /// Drains that found changes dropped before this run read them.
    overflows: u64,
}

impl<T: Clone> Sub<T> {
    fn new(rx: Option<&watch::Receiver<View<T>>>, what: &'static str) -> Sub<T> {
        let mut rx = rx.cloned();
        let cursor = rx
            .as_mut()
            .map(|r| {
                let v = r.borrow_and_update();
                v.last_seq().max(v.evicted)
            })
            .unwrap_or(0);
        Sub {
            rx,
            cursor,
            what,
            overflows: 0,
        }
    }

    /// Changes since the last call.
    fn drain(&mut self, out: &mut Vec<Event>, wrap: fn(Change<T>) -> Event) {
        let Some(rx) = self.rx.as_mut() else { return };
        let view = rx.borrow_and_update();
        if view.evicted > self.cursor {
            // Changes after the cursor were dropped from the bounded log
            // before this run read them (seq is shared by all watchers, so
            // only `evicted` says whether one of this watcher's was lost).
            self.overflows += 1;
            tracing::warn!(
                watcher = self.what,
                cursor = self.cursor,
                evicted = view.evicted,
                "the watcher's change log overflowed before the run read it: events were missed (the run goes on from the objects' current state)"
            );
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

    fn gaps(&self) -> Vec<Gap> {
        self.rx
            .as_ref()
            .map(|r| r.borrow().all_gaps())
            .unwrap_or_default()
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
            es: Sub::new(cluster.external_secret.as_ref(), "ExternalSecret"),
            secret: Sub::new(cluster.secret.as_ref(), "Secret"),
            deployments: Sub::new(cluster.deployments.as_ref(), "Deployment"),
            pods: Sub::new(Some(&cluster.pods), "canary Pods"),
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

    /// How many times a watcher's change log overflowed before this run
    /// read it (each counted and warned about once).
    pub fn overflows(&self) -> u64 {
        self.es.overflows + self.secret.overflows + self.deployments.overflows + self.pods.overflows
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
        base.es_status = self.es.first();
        if let Some(rx) = &self.pods.rx {
            for (name, p) in rx.borrow().objects.iter() {
                if let Some(o) = &p.owner {
                    base.owners.insert(o.clone());
                }
                base.restarts.insert(name.clone(), p.restarts);
                if p.ready && !p.terminating {
                    base.ready_canaries += 1;
                }
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
            gaps: self.gaps(),
        }
    }

    /// Every watcher's recent gaps, the current faults as open ones.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut out = self.es.gaps();
        out.extend(self.secret.gaps());
        out.extend(self.deployments.gaps());
        out.extend(self.pods.gaps());
        out
    }

    /// A current fault of a watcher that a retry cures (`api_error`), if
    /// any: a run started now would measure the outage, not the pipeline.
    pub fn transient_fault(&self) -> Option<Fault> {
        [
            self.es.fault(),
            self.secret.fault(),
            self.deployments.fault(),
            self.pods.fault(),
        ]
        .into_iter()
        .flatten()
        .find(|f| f.reason == super::Reason::ApiError)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Stamp;
    use super::*;

    fn change(seq: u64) -> Change<SecretState> {
        Change {
            seq,
            stamp: Stamp::now(),
            name: "s".into(),
            state: Some(Arc::new(SecretState::default())),
        }
    }

    #[test]
    fn an_overflowing_change_log_is_counted_once() {
        let (tx, rx) = watch::channel(View::<SecretState>::default());
        tx.send_modify(|v| v.changes.push_back(change(1)));
        let mut sub = Sub::new(Some(&rx), "Secret");
        let mut out = Vec::new();
        // Read in time: nothing lost.
        tx.send_modify(|v| v.changes.push_back(change(2)));
        sub.drain(&mut out, Event::Secret);
        assert_eq!((out.len(), sub.overflows), (1, 0));
        // Changes 3 and 4 dropped before the run read them.
        tx.send_modify(|v| {
            v.changes.clear();
            v.evicted = 4;
            v.changes.push_back(change(5));
        });
        sub.drain(&mut out, Event::Secret);
        assert_eq!((out.len(), sub.overflows), (2, 1));
        // The same overflow is not counted again.
        tx.send_modify(|v| v.changes.push_back(change(6)));
        sub.drain(&mut out, Event::Secret);
        assert_eq!((out.len(), sub.overflows), (3, 1));
    }
}
