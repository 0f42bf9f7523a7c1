//! One probe run: write a fresh value, then follow it hop by hop through the
//! watchers' events to the canary Pods, and turn what was seen into an
//! [`Outcome`]. Every milestone's time is the arrival of the event that
//! showed it, never the moment this task got around to looking.
//!
//! | stage | starts | ends |
//! |---|---|---|
//! | `store_write` | just before the KV v2 write | the write's response (new version) |
//! | `eso_sync` | store write done | an ExternalSecret status event with `Ready=True` and `refreshTime` ≥ the write's start floored to whole seconds, arriving once the Secret has been seen with the new digest (ESO writes the Secret before its status, so a sync that started just before our write in the same second does not count) |
//! | `secret_update` | store write done | a Secret event whose `data[key]` SHA-256 equals the new digest |
//! | `reloader_trigger` | `secret_update` end (trigger `reloader`), or store write done (trigger `restart`: the prober then patches `restartedAt` as `kubectl rollout restart` does) | a Deployment event whose pod template differs from the one at run start |
//! | `rollout` | `reloader_trigger` end | a Deployment event showing the rollout of that generation complete, as `kubectl rollout status` decides |
//! | `canary_observe` | `rollout` end, or `secret_update` end when nothing rolls | every ready Pod of the current ReplicaSet answered the new digest (long-poll of the canary's `/digest`) |
//! | `end_to_end` | `store_write` start | `canary_observe` end |
//!
//! A stage the chain lacks is absent. A run that fails names the first stage
//! that did not complete and a reason read from what the cluster said.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::canary::{CanaryClient, MAX_LONG_POLL};
use super::cluster::{
    Change, DeploymentState, EsState, Fault, PodState, RolloutStatus, SecretState, View,
};
use super::store::Written;
use super::{
    Failure, Outcome, ProbeRunner, Reason, RunProgress, RunResult, Stage, StageTiming, Stamp,
    SyncTrigger,
};
use crate::config::{CanarySource, ChainConfig, ProbeConfig, Trigger};

/// Default deadline of a whole run.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// How long a run waits, before writing, for watchers still doing their
/// first list (it needs their state as the baseline).
const READY_WAIT: Duration = Duration::from_secs(10);

/// If ESO's status event arrived before the Secret showed the new value and
/// no later status event comes within this time, the status update was a
/// no-op (same second, same conditions) and the sync ended with the Secret.
const ESO_STATUS_GRACE: Duration = Duration::from_secs(2);

/// Pause before asking again a canary that had no value or did not answer.
const CANARY_RETRY: Duration = Duration::from_millis(250);

/// Timeout of the prober's own API requests (the restart patch).
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Which hops a chain has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// An ExternalSecret is synced (`eso_sync`).
    pub eso: bool,
    /// A Kubernetes Secret carries the value (`secret_update`).
    pub secret: bool,
    /// Who rolls the Deployment; `None` when nothing rolls.
    pub trigger: Option<Trigger>,
    /// A Deployment is named (for the replica count).
    pub deployment: bool,
    /// The canary reads an env var (fixed at process start).
    pub env_canary: bool,
}

impl Plan {
    /// The plan of a configured chain.
    pub fn of(chain: &ChainConfig) -> Plan {
        Plan {
            eso: chain.external_secret.is_some(),
            secret: chain.secret.is_some(),
            trigger: chain
                .rollout
                .as_ref()
                .map(|r| r.trigger)
                .filter(|t| *t != Trigger::None),
            deployment: chain.rollout.is_some(),
            env_canary: chain.canary.source == CanarySource::Env,
        }
    }

    /// The chain's stages, in order (without `end_to_end`).
    pub fn stages(&self) -> Vec<Stage> {
        Stage::CHAIN
            .into_iter()
            .filter(|s| match s {
                Stage::EsoSync => self.eso,
                Stage::SecretUpdate => self.secret,
                Stage::ReloaderTrigger | Stage::Rollout => self.trigger.is_some(),
                _ => true,
            })
            .collect()
    }
}

/// The state at run start that later events are compared with.
#[derive(Debug, Clone, Default)]
pub struct Baseline {
    /// The Deployment's pod-template digest.
    pub template: Option<String>,
    /// The ReplicaSets (pod-template hashes) of the Pods already there.
    pub owners: BTreeSet<String>,
    /// Restart counts of the Pods already there.
    pub restarts: BTreeMap<String, i32>,
    /// The digest the canaries should be seeing before the write.
    pub old_digest: Option<String>,
    /// The chain's Secret did not exist at run start.
    pub secret_absent: bool,
}

/// What the watchers say at the end of a run, for attribution.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The ExternalSecret watcher is failing.
    pub es_fault: Option<(Reason, String)>,
    /// The ExternalSecret now (`None`: absent).
    pub es: Option<EsState>,
    /// The Secret watcher is failing.
    pub secret_fault: Option<(Reason, String)>,
    /// The Secret exists now.
    pub secret_present: bool,
    /// The Deployment watcher is failing.
    pub deployment_fault: Option<(Reason, String)>,
    /// The Deployment now.
    pub deployment: Option<DeploymentState>,
    /// The Pod watcher is failing.
    pub pods_fault: Option<(Reason, String)>,
}

/// What a canary Pod answered last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAnswer {
    /// A digest (or none: the canary has no value).
    Digest(Option<String>),
    /// No usable answer.
    Error(Reason, String),
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: Stamp,
    end: Option<Stamp>,
}

#[derive(Debug, Default)]
struct PodProgress {
    last: Option<PodAnswer>,
    done: Option<Stamp>,
}

/// A canary Pod to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub ip: String,
}

/// How a run ended, before it becomes an [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every stage completed.
    Success,
    /// A stage failed for a reason that waiting will not change.
    Failed(Stage, Reason, String),
    /// A deadline passed.
    Deadline,
    /// Cancelled.
    Aborted,
}

/// The stage bookkeeping of one run: fed events in arrival order, it
/// decides when each stage starts and ends and, at the end, why it failed.
#[derive(Debug)]
pub struct Tracker {
    plan: Plan,
    new_digest: String,
    base: Baseline,
    run_deadline: Instant,
    limits: BTreeMap<Stage, Duration>,
    spans: BTreeMap<Stage, Span>,
    write_floor: Option<DateTime<Utc>>,
    secret_new: Option<Stamp>,
    es_early: Option<Stamp>,
    template_changed: Option<(Stamp, i64)>,
    rollout_done: Option<Stamp>,
    es_error: Option<String>,
    es_deleted: bool,
    secret_deleted: bool,
    /// The Secret is absent now (deleted, or never there since run start).
    secret_absent: bool,
    deployment_deleted: bool,
    stuck: Option<String>,
    crash: Option<String>,
    canary: BTreeMap<String, PodProgress>,
    targets: Vec<Target>,
    failed: Option<(Stage, Reason, String)>,
}

impl Tracker {
    /// A run of `plan` writing a value whose digest is `new_digest`.
    pub fn new(
        plan: Plan,
        new_digest: String,
        base: Baseline,
        run_deadline: Instant,
        limits: BTreeMap<Stage, Duration>,
    ) -> Tracker {
        Tracker {
            plan,
            new_digest,
            secret_absent: base.secret_absent,
            base,
            run_deadline,
            limits,
            spans: BTreeMap::new(),
            write_floor: None,
            secret_new: None,
            es_early: None,
            template_changed: None,
            rollout_done: None,
            es_error: None,
            es_deleted: false,
            secret_deleted: false,
            deployment_deleted: false,
            stuck: None,
            crash: None,
            canary: BTreeMap::new(),
            targets: Vec::new(),
            failed: None,
        }
    }

    fn start(&mut self, stage: Stage, at: Stamp) {
        self.spans.entry(stage).or_insert(Span {
            start: at,
            end: None,
        });
    }

    /// End a started stage; an event that arrived before the stage's start
    /// (two watch streams can deliver out of order) ends it at its start.
    fn end(&mut self, stage: Stage, at: Stamp) -> Option<Stamp> {
        let span = self.spans.get_mut(&stage)?;
        if span.end.is_none() {
            span.end = Some(if at.at < span.start.at {
                span.start
            } else {
                at
            });
        }
        span.end
    }

    fn started(&self, stage: Stage) -> bool {
        self.spans.contains_key(&stage)
    }

    fn ended(&self, stage: Stage) -> Option<Stamp> {
        self.spans.get(&stage).and_then(|s| s.end)
    }

    /// The store write is about to start (login is done).
    pub fn store_starting(&mut self, at: Stamp) {
        self.start(Stage::StoreWrite, at);
    }

    /// The store write failed.
    pub fn store_failed(&mut self, at: Stamp, reason: Reason, detail: String) {
        self.start(Stage::StoreWrite, at);
        self.fail(Stage::StoreWrite, reason, detail);
    }

    /// The store write succeeded.
    pub fn store_written(&mut self, w: &Written) {
        self.start(Stage::StoreWrite, w.started);
        self.end(Stage::StoreWrite, w.finished);
        self.write_floor = DateTime::from_timestamp(w.started.wall.timestamp(), 0);
        self.advance();
    }

    /// A failure that waiting will not change (the first one wins).
    pub fn fail(&mut self, stage: Stage, reason: Reason, detail: String) {
        if self.failed.is_none() {
            self.failed = Some((stage, reason, detail));
        }
    }

    /// Derive stage starts and ends from the facts seen so far.
    fn advance(&mut self) {
        let Some(written) = self.ended(Stage::StoreWrite) else {
            return;
        };
        if self.plan.eso {
            self.start(Stage::EsoSync, written);
        }
        if self.plan.secret {
            self.start(Stage::SecretUpdate, written);
        }
        match (self.plan.trigger, self.plan.secret) {
            (Some(Trigger::Restart), _) | (Some(_), false) => {
                self.start(Stage::ReloaderTrigger, written)
            }
            (None, false) => self.start(Stage::CanaryObserve, written),
            _ => {}
        }
        if let Some(s) = self.secret_new {
            if let Some(end) = self.end(Stage::SecretUpdate, s) {
                match self.plan.trigger {
                    Some(Trigger::Reloader) => self.start(Stage::ReloaderTrigger, end),
                    None => self.start(Stage::CanaryObserve, end),
                    _ => {}
                }
            }
        }
        if let Some((changed, _)) = self.template_changed {
            if self.started(Stage::ReloaderTrigger) {
                if let Some(end) = self.end(Stage::ReloaderTrigger, changed) {
                    self.start(Stage::Rollout, end);
                }
            }
        }
        if let Some(done) = self.rollout_done {
            if self.started(Stage::Rollout) {
                if let Some(end) = self.end(Stage::Rollout, done) {
                    self.start(Stage::CanaryObserve, end);
                }
            }
        }
    }

    /// An ExternalSecret event.
    pub fn on_external_secret(&mut self, c: &Change<EsState>) {
        let Some(es) = &c.state else {
            self.es_deleted = true;
            self.es_early = None;
            return;
        };
        if let Some(cond) = es.sync_failed() {
            self.es_error = Some(format!("{}: {}", cond.reason, cond.message));
        }
        let Some(floor) = self.write_floor else {
            return;
        };
        let qualifies = es.is_ready() && es.refresh_time.is_some_and(|t| t >= floor);
        if !qualifies {
            self.es_early = None;
            return;
        }
        if !self.plan.secret || self.secret_new.is_some() {
            self.end(Stage::EsoSync, c.stamp);
        } else {
            self.es_early = Some(c.stamp);
        }
    }

    /// A Secret event.
    pub fn on_secret(&mut self, c: &Change<SecretState>) {
        match &c.state {
            None => {
                self.secret_deleted = true;
                self.secret_absent = true;
            }
            Some(s)
                if s.digest.as_deref() == Some(self.new_digest.as_str())
                    && self.secret_new.is_none() =>
            {
                if self.write_floor.is_some() {
                    self.secret_new = Some(c.stamp);
                    self.advance();
                }
            }
            Some(_) => self.secret_absent = false,
        }
    }

    /// A Deployment event.
    pub fn on_deployment(&mut self, c: &Change<DeploymentState>) {
        let Some(d) = &c.state else {
            self.deployment_deleted = true;
            return;
        };
        if self.write_floor.is_none() {
            return;
        }
        match &self.base.template {
            None => self.base.template = Some(d.template.clone()),
            Some(t) if *t != d.template && self.template_changed.is_none() => {
                self.template_changed = Some((c.stamp, d.generation));
            }
            Some(_) => {}
        }
        if let Some(f) = d.replica_failure() {
            self.stuck = Some(format!("ReplicaFailure {}: {}", f.reason, f.message));
        }
        if let Some((_, generation)) = self.template_changed {
            if d.generation >= generation {
                match d.rollout() {
                    RolloutStatus::Complete if self.rollout_done.is_none() => {
                        self.rollout_done = Some(c.stamp)
                    }
                    RolloutStatus::DeadlineExceeded(m) => {
                        self.stuck = Some(format!("ProgressDeadlineExceeded: {m}"));
                        if self.started(Stage::Rollout) && self.ended(Stage::Rollout).is_none() {
                            self.fail(
                                Stage::Rollout,
                                Reason::RolloutStuck,
                                format!("ProgressDeadlineExceeded: {m}"),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        self.advance();
    }

    /// A canary Pod event (crash evidence).
    pub fn on_pod(&mut self, c: &Change<PodState>) {
        let Some(p) = &c.state else { return };
        if let Some(crash) = &p.crash {
            self.crash = Some(format!("Pod {}: {crash}", c.name));
        } else if p.restarts > self.base.restarts.get(&c.name).copied().unwrap_or(0) {
            self.crash = Some(format!(
                "Pod {} restarted ({} restarts)",
                c.name, p.restarts
            ));
        }
    }

    /// The canary Pods to ask now: ready, not terminating, and (after a
    /// rollout) of a ReplicaSet that was not there at run start; plus how
    /// many there must be.
    pub fn targets(
        &self,
        pods: &View<PodState>,
        deployment: Option<&DeploymentState>,
    ) -> (Vec<Target>, usize) {
        let rolled = self.plan.trigger.is_some();
        let targets = pods
            .objects
            .iter()
            .filter(|(_, p)| p.ready && !p.terminating)
            .filter(|(_, p)| {
                !rolled
                    || p.owner
                        .as_ref()
                        .is_none_or(|o| !self.base.owners.contains(o))
            })
            .filter_map(|(name, p)| {
                p.ip.as_ref().map(|ip| Target {
                    pod: name.clone(),
                    ip: ip.clone(),
                })
            })
            .collect();
        let expected = match deployment {
            Some(d) if self.plan.deployment => d.spec_replicas.max(1) as usize,
            _ => 1,
        };
        (targets, expected)
    }

    /// The canary stage is running (pollers should be).
    pub fn observing(&self) -> bool {
        self.started(Stage::CanaryObserve) && self.ended(Stage::CanaryObserve).is_none()
    }

    /// Set the current targets; ends `canary_observe` once each has
    /// answered the new digest.
    pub fn set_targets(&mut self, targets: Vec<Target>, expected: usize) {
        self.targets = targets;
        if !self.observing() || self.targets.len() < expected || self.targets.is_empty() {
            return;
        }
        let mut last: Option<Stamp> = None;
        for t in &self.targets {
            match self.canary.get(&t.pod).and_then(|p| p.done) {
                Some(d) => {
                    if last.is_none_or(|l| d.at > l.at) {
                        last = Some(d);
                    }
                }
                None => return,
            }
        }
        if let Some(end) = last {
            self.end(Stage::CanaryObserve, end);
        }
    }

    /// A canary Pod answered (or failed to).
    pub fn on_canary(&mut self, pod: &str, at: Stamp, answer: PodAnswer) {
        if let PodAnswer::Digest(Some(d)) = &answer {
            if *d == self.new_digest {
                self.canary
                    .entry(pod.to_string())
                    .or_default()
                    .done
                    .get_or_insert(at);
            } else if self.plan.env_canary && self.plan.trigger.is_some() {
                // An env value is fixed at process start: a Pod of the new
                // ReplicaSet with another value will never see ours.
                let old = self.base.old_digest.as_deref() == Some(d.as_str());
                let detail = format!(
                    "Pod {pod} of the new ReplicaSet reports {} digest {}",
                    if old { "the old" } else { "another" },
                    short(d)
                );
                self.fail(Stage::CanaryObserve, Reason::ValueMismatch, detail);
            }
        }
        self.canary.entry(pod.to_string()).or_default().last = Some(answer);
    }

    /// Check the ESO grace period (see [`ESO_STATUS_GRACE`]).
    pub fn tick(&mut self, now: Instant) {
        if let (Some(_), Some(s)) = (self.es_early, self.secret_new) {
            if now >= s.at + ESO_STATUS_GRACE && self.ended(Stage::EsoSync).is_none() {
                self.end(Stage::EsoSync, s);
            }
        }
        // ESO reported a sync of our write but the Secret is gone (deleted,
        // and not recreated: e.g. `creationPolicy: None`): ESO did its part,
        // the missing Secret is what fails the run.
        if let (Some(e), None, true) = (self.es_early, self.secret_new, self.secret_absent) {
            if now >= e.at + ESO_STATUS_GRACE && self.ended(Stage::EsoSync).is_none() {
                self.end(Stage::EsoSync, e);
            }
        }
    }

    fn stage_deadline(&self, stage: Stage, span: &Span) -> Instant {
        let own = self.limits.get(&stage).map(|l| span.start.at + *l);
        own.map_or(self.run_deadline, |d| d.min(self.run_deadline))
    }

    /// When the canary stage must be done.
    pub fn canary_deadline(&self) -> Instant {
        self.spans
            .get(&Stage::CanaryObserve)
            .map_or(self.run_deadline, |s| {
                self.stage_deadline(Stage::CanaryObserve, s)
            })
    }

    /// When the run next has to look without an event: the earliest deadline
    /// or grace period.
    pub fn next_wakeup(&self) -> Instant {
        let mut next = self.run_deadline;
        for (stage, span) in &self.spans {
            if span.end.is_none() {
                next = next.min(self.stage_deadline(*stage, span));
            }
        }
        if let (Some(_), Some(s), None) =
            (self.es_early, self.secret_new, self.ended(Stage::EsoSync))
        {
            next = next.min(s.at + ESO_STATUS_GRACE);
        }
        if let (Some(e), None, true, None) = (
            self.es_early,
            self.secret_new,
            self.secret_absent,
            self.ended(Stage::EsoSync),
        ) {
            next = next.min(e.at + ESO_STATUS_GRACE);
        }
        if let (Some(l), Some(s)) = (
            self.limits.get(&Stage::EndToEnd),
            self.spans.get(&Stage::StoreWrite),
        ) {
            next = next.min(s.start.at + *l);
        }
        next
    }

    /// How the run ends now, if it does.
    pub fn verdict(&self, now: Instant) -> Option<End> {
        if let Some((s, r, d)) = &self.failed {
            return Some(End::Failed(*s, *r, d.clone()));
        }
        let all_done = self.plan.stages().iter().all(|s| self.ended(*s).is_some());
        if all_done {
            return Some(End::Success);
        }
        (now >= self.next_wakeup() && self.expired(now)).then_some(End::Deadline)
    }

    fn expired(&self, now: Instant) -> bool {
        if now >= self.run_deadline {
            return true;
        }
        if let (Some(l), Some(s)) = (
            self.limits.get(&Stage::EndToEnd),
            self.spans.get(&Stage::StoreWrite),
        ) {
            if now >= s.start.at + *l {
                return true;
            }
        }
        self.spans
            .iter()
            .any(|(stage, span)| span.end.is_none() && now >= self.stage_deadline(*stage, span))
    }

    /// The first started stage that did not complete (chain order).
    fn first_incomplete(&self) -> Stage {
        self.plan
            .stages()
            .into_iter()
            .find(|s| self.started(*s) && self.ended(*s).is_none())
            .or_else(|| {
                self.plan
                    .stages()
                    .into_iter()
                    .find(|s| self.ended(*s).is_none())
            })
            .unwrap_or(Stage::CanaryObserve)
    }

    /// Why `stage` did not complete, from what the cluster said.
    pub fn attribute(&self, stage: Stage, facts: &Facts) -> (Reason, String) {
        let fault = |f: &Option<(Reason, String)>, what: &str| {
            f.as_ref()
                .map(|(r, m)| (*r, format!("watching the {what} failed: {m}")))
        };
        let timeout = |what: &str| {
            (
                Reason::Timeout,
                format!("deadline passed waiting for {what}"),
            )
        };
        match stage {
            Stage::StoreWrite => timeout("the store write"),
            Stage::EsoSync => {
                if let Some(f) = fault(&facts.es_fault, "ExternalSecret") {
                    return f;
                }
                match &facts.es {
                    None => (Reason::NotFound, "ExternalSecret not found".into()),
                    Some(es) => {
                        if let Some(c) = es.sync_failed() {
                            (
                                Reason::SyncError,
                                format!("ExternalSecret Ready=False {}: {}", c.reason, c.message),
                            )
                        } else if let Some(e) = &self.es_error {
                            (Reason::SyncError, format!("ExternalSecret reported {e}"))
                        } else {
                            timeout("ESO to sync the new value")
                        }
                    }
                }
            }
            Stage::SecretUpdate => {
                if let Some(f) = fault(&facts.secret_fault, "Secret") {
                    return f;
                }
                if !facts.secret_present || self.secret_deleted {
                    (
                        Reason::NotFound,
                        "Secret not found (or deleted during the run)".into(),
                    )
                } else if let Some(e) = &self.es_error {
                    (Reason::SyncError, format!("ExternalSecret reported {e}"))
                } else {
                    timeout("the Secret to carry the new value")
                }
            }
            Stage::ReloaderTrigger => {
                if let Some(f) = fault(&facts.deployment_fault, "Deployment") {
                    return f;
                }
                if facts.deployment.is_none() || self.deployment_deleted {
                    (Reason::NotFound, "Deployment not found".into())
                } else {
                    timeout("the Deployment's pod template to change")
                }
            }
            Stage::Rollout => {
                if let Some(f) = fault(&facts.deployment_fault, "Deployment") {
                    return f;
                }
                if facts.deployment.is_none() || self.deployment_deleted {
                    return (Reason::NotFound, "Deployment not found".into());
                }
                if let Some(c) = &self.crash {
                    return (Reason::CanaryCrashing, c.clone());
                }
                if let Some(s) = &self.stuck {
                    return (Reason::RolloutStuck, s.clone());
                }
                let waiting = match facts.deployment.as_ref().map(|d| d.rollout()) {
                    Some(RolloutStatus::Waiting(w)) => w,
                    _ => "the rollout to complete",
                };
                timeout(waiting)
            }
            Stage::CanaryObserve => self.attribute_canary(facts),
            Stage::EndToEnd => timeout("the end-to-end deadline"),
        }
    }

    fn attribute_canary(&self, facts: &Facts) -> (Reason, String) {
        if let Some(c) = &self.crash {
            return (Reason::CanaryCrashing, c.clone());
        }
        if let Some((r, m)) = &facts.pods_fault {
            return (*r, format!("watching the canary Pods failed: {m}"));
        }
        let rolled = self.plan.trigger.is_some();
        let old = self.base.old_digest.as_deref();
        let mut unreachable = None;
        for t in &self.targets {
            let Some(p) = self.canary.get(&t.pod) else {
                continue;
            };
            if p.done.is_some() {
                continue;
            }
            match &p.last {
                Some(PodAnswer::Digest(Some(d)))
                    if *d != self.new_digest && (rolled || Some(d.as_str()) != old) =>
                {
                    return (
                        Reason::ValueMismatch,
                        format!(
                            "Pod {} reports digest {}, neither the old nor the new one",
                            t.pod,
                            short(d)
                        ),
                    );
                }
                Some(PodAnswer::Digest(None)) => {
                    return (Reason::ValueMismatch, format!("Pod {} has no value", t.pod));
                }
                Some(PodAnswer::Error(r, m)) => unreachable = unreachable.or(Some((*r, m.clone()))),
                _ => {}
            }
        }
        if let Some(u) = unreachable {
            return u;
        }
        if self.targets.is_empty() {
            return (
                Reason::Timeout,
                "deadline passed with no ready canary Pod of the current ReplicaSet".into(),
            );
        }
        (
            Reason::Timeout,
            "deadline passed waiting for the canary Pods to see the new value".into(),
        )
    }

    /// The stages' timings, in chain order, then `end_to_end`.
    pub fn timings(&self) -> Vec<StageTiming> {
        let timing = |stage: Stage, start: Stamp, end: Option<Stamp>| StageTiming {
            stage,
            started_at: start.wall,
            completed_at: end.map(|e| e.wall),
            duration: end.map(|e| e.at.saturating_duration_since(start.at)),
        };
        let mut out: Vec<StageTiming> = self
            .plan
            .stages()
            .into_iter()
            .filter_map(|s| {
                self.spans
                    .get(&s)
                    .map(|span| timing(s, span.start, span.end))
            })
            .collect();
        if let Some(w) = self.spans.get(&Stage::StoreWrite) {
            out.push(timing(
                Stage::EndToEnd,
                w.start,
                self.ended(Stage::CanaryObserve),
            ));
        }
        out
    }

    /// Turn the end into failure, result and detail.
    pub fn conclude(
        &self,
        end: &End,
        facts: &Facts,
    ) -> (Option<Failure>, RunResult, Option<String>) {
        match end {
            End::Success => (None, RunResult::Success, None),
            End::Failed(stage, reason, detail) => (
                Some(Failure {
                    stage: *stage,
                    reason: *reason,
                }),
                RunResult::Failure,
                Some(detail.clone()),
            ),
            End::Deadline => {
                let stage = self.first_incomplete();
                let (reason, detail) = self.attribute(stage, facts);
                (
                    Some(Failure { stage, reason }),
                    RunResult::Failure,
                    Some(format!("{stage}: {detail}")),
                )
            }
            End::Aborted => {
                let stage = self.first_incomplete();
                (
                    Some(Failure {
                        stage,
                        reason: Reason::Aborted,
                    }),
                    RunResult::Aborted,
                    Some(format!("{stage}: the prober stopped during the run")),
                )
            }
        }
    }
}

/// A digest shortened for messages.
fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

/// SHA-256 hex of a value.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A fresh random test value: 32 random bytes, hex.
pub fn fresh_value() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

fn fault_of(f: &Option<Fault>) -> Option<(Reason, String)> {
    f.as_ref().map(|f| (f.reason, f.message.clone()))
}

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

    fn fault(&self) -> Option<(Reason, String)> {
        self.rx.as_ref().and_then(|r| fault_of(&r.borrow().fault))
    }
}

/// One canary answer, from a poller to the run.
struct Report {
    pod: String,
    stamp: Stamp,
    answer: PodAnswer,
}

/// Ask one canary Pod until it reports `new` or the deadline passes:
/// long-poll "answer when it differs from what you last told me".
async fn poll_pod(
    client: CanaryClient,
    target: Target,
    mut known: Option<String>,
    new: String,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Report>,
) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let remaining = deadline - now;
        let res = match &known {
            Some(k) => {
                client
                    .wait_change(&target.ip, k, remaining.min(MAX_LONG_POLL))
                    .await
            }
            None => client.digest(&target.ip).await,
        };
        let stamp = Stamp::now();
        let (answer, pause) = match res {
            Ok(a) => {
                let pause = a.digest.is_none();
                known = a.digest.clone();
                (PodAnswer::Digest(a.digest), pause)
            }
            Err(e) => (PodAnswer::Error(e.reason(), e.to_string()), true),
        };
        let reached = answer == PodAnswer::Digest(Some(new.clone()));
        if tx
            .send(Report {
                pod: target.pod.clone(),
                stamp,
                answer,
            })
            .is_err()
            || reached
        {
            return;
        }
        if pause {
            tokio::time::sleep(
                CANARY_RETRY.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
}

/// The per-stage deadlines of a probe.
fn limits(config: &ProbeConfig) -> BTreeMap<Stage, Duration> {
    config
        .stage_deadlines
        .iter()
        .map(|(s, d)| (*s, d.0))
        .collect()
}

/// Await `fut` unless the run is cancelled or its deadline passes first.
async fn bounded<T>(
    fut: impl Future<Output = T>,
    cancel: &CancellationToken,
    until: Instant,
) -> Option<Result<T, ()>> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        _ = tokio::time::sleep_until(until.into()) => Some(Err(())),
        v = fut => Some(Ok(v)),
    }
}

/// Run one probe run to its outcome.
///
/// `progress`, when given, is told the stages as they start and end.
pub async fn execute(
    runner: &ProbeRunner,
    run_id: String,
    cancel: CancellationToken,
    progress: Option<&watch::Sender<RunProgress>>,
) -> Outcome {
    let config = runner.config();
    let run_start = Stamp::now();
    let deadline = run_start.at + config.deadline.unwrap_or(DEFAULT_DEADLINE);
    let plan = runner.plan;
    let cluster = &runner.cluster;
    let cancel = {
        // Either the run's token or the prober's own shutdown aborts the run.
        let c = CancellationToken::new();
        let (a, b, c2) = (cancel.clone(), runner.stop.clone(), c.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = a.cancelled() => c2.cancel(),
                _ = b.cancelled() => c2.cancel(),
                _ = c2.cancelled() => {}
            }
        });
        c
    };
    let _stop_relay = cancel.clone().drop_guard();

    // Watchers still on their first list: wait briefly, they give the baseline.
    let ready_by = (run_start.at + READY_WAIT).min(deadline);
    while !cluster.is_ready() && Instant::now() < ready_by && !cancel.is_cancelled() {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }

    let mut es = Sub::new(cluster.external_secret.as_ref());
    let mut secret = Sub::new(cluster.secret.as_ref());
    let mut deployments = Sub::new(cluster.deployments.as_ref());
    let mut pods = Sub::new(Some(&cluster.pods));
    let base = baseline(runner, &secret, &deployments, &pods);
    let value = fresh_value();
    let new_digest = digest(&value);
    let mut tracker = Tracker::new(
        plan,
        new_digest.clone(),
        base.clone(),
        deadline,
        limits(config),
    );
    let sync_trigger = plan.eso.then_some(if config.chain.force_sync {
        SyncTrigger::Forced
    } else {
        SyncTrigger::Natural
    });

    let outcome = |tracker: &Tracker, end: End, facts: &Facts| {
        let (failure, result, detail) = tracker.conclude(&end, facts);
        Outcome {
            probe: config.name.clone(),
            run_id: run_id.clone(),
            digest: Some(new_digest.clone()),
            started_at: run_start.wall,
            finished_at: Utc::now(),
            stages: tracker.timings(),
            failure,
            result,
            detail,
            sync_trigger,
        }
    };

    // Store: log in first (not part of store_write), then write.
    let store_limit = config.stage_deadlines.get(&Stage::StoreWrite).map(|d| d.0);
    let store_until = store_limit.map_or(deadline, |l| (Instant::now() + l).min(deadline));
    match bounded(runner.store.prepare(), &cancel, store_until).await {
        None => {
            tracker.store_starting(Stamp::now());
            return outcome(&tracker, End::Aborted, &Facts::default());
        }
        Some(Err(())) => {
            tracker.store_failed(
                Stamp::now(),
                Reason::Timeout,
                "deadline passed logging in to the store".into(),
            );
            return outcome(
                &tracker,
                End::Failed(
                    Stage::StoreWrite,
                    Reason::Timeout,
                    "deadline passed logging in to the store".into(),
                ),
                &Facts::default(),
            );
        }
        Some(Ok(Err(e))) => {
            tracker.store_failed(Stamp::now(), e.reason(), e.to_string());
            return outcome(
                &tracker,
                End::Failed(Stage::StoreWrite, e.reason(), e.to_string()),
                &Facts::default(),
            );
        }
        Some(Ok(Ok(()))) => {}
    }
    let before_write = Stamp::now();
    tracker.store_starting(before_write);
    publish(progress, &tracker, sync_trigger);
    let store_until = store_limit.map_or(deadline, |l| (before_write.at + l).min(deadline));
    match bounded(runner.store.write(&value), &cancel, store_until).await {
        None => return outcome(&tracker, End::Aborted, &Facts::default()),
        Some(Err(())) => {
            let d = "deadline passed writing to the store".to_string();
            return outcome(
                &tracker,
                End::Failed(Stage::StoreWrite, Reason::Timeout, d),
                &Facts::default(),
            );
        }
        Some(Ok(Err(e))) => {
            tracing::info!(probe = %config.name, run_id = %run_id, error = %e, "store write failed");
            return outcome(
                &tracker,
                End::Failed(Stage::StoreWrite, e.reason(), e.to_string()),
                &Facts::default(),
            );
        }
        Some(Ok(Ok(w))) => {
            tracker.store_written(&w);
            if let Ok(mut last) = runner.last_digest.lock() {
                *last = Some(new_digest.clone());
            }
        }
    }

    // Forced sync: right after the write, so ESO reads the new value now
    // rather than at its next refreshInterval.
    if sync_trigger == Some(SyncTrigger::Forced) {
        match bounded(
            cluster.force_sync(Utc::now(), API_TIMEOUT),
            &cancel,
            deadline,
        )
        .await
        {
            None => return outcome(&tracker, End::Aborted, &Facts::default()),
            Some(Err(())) => {}
            Some(Ok(Err(e))) => tracker.fail(Stage::EsoSync, e.reason(), e.to_string()),
            Some(Ok(Ok(()))) => {}
        }
    }

    if plan.trigger == Some(Trigger::Restart) {
        match bounded(cluster.restart(Utc::now(), API_TIMEOUT), &cancel, deadline).await {
            None => return outcome(&tracker, End::Aborted, &Facts::default()),
            Some(Err(())) => {}
            Some(Ok(Err(e))) => tracker.fail(Stage::ReloaderTrigger, e.reason(), e.to_string()),
            Some(Ok(Ok(()))) => {}
        }
    }

    let canary_client = runner.canary.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let mut pollers: JoinSet<()> = JoinSet::new();
    let mut polling: HashMap<String, (String, AbortHandle)> = HashMap::new();
    // A Pod of a new ReplicaSet with an env canary has its value fixed at
    // start: ask it plainly first, so an old value shows at once as a
    // mismatch instead of a long-poll waiting for a change that never comes.
    let old_digest = if plan.env_canary && plan.trigger.is_some() {
        None
    } else {
        base.old_digest.clone()
    };

    let end = loop {
        let mut events = Vec::new();
        es.drain(&mut events, Event::Es);
        secret.drain(&mut events, Event::Secret);
        deployments.drain(&mut events, Event::Deployment);
        pods.drain(&mut events, Event::Pod);
        events.sort_by_key(Event::seq);
        for e in &events {
            match e {
                Event::Es(c) => tracker.on_external_secret(c),
                Event::Secret(c) => tracker.on_secret(c),
                Event::Deployment(c) => tracker.on_deployment(c),
                Event::Pod(c) => tracker.on_pod(c),
            }
        }
        while let Ok(r) = rx.try_recv() {
            tracker.on_canary(&r.pod, r.stamp, r.answer);
        }
        let now = Instant::now();
        tracker.tick(now);

        if tracker.observing() {
            let (targets, expected) = {
                let pv = cluster.pods.borrow();
                let dv = cluster.deployments.as_ref().map(|d| d.borrow());
                let dep = dv.as_ref().and_then(|v| v.objects.values().next().cloned());
                tracker.targets(&pv, dep.as_deref())
            };
            match &canary_client {
                Ok(client) => {
                    polling.retain(|pod, (ip, handle)| {
                        let keep = targets.iter().any(|t| t.pod == *pod && t.ip == *ip);
                        if !keep {
                            handle.abort();
                        }
                        keep
                    });
                    for t in &targets {
                        if !polling.contains_key(&t.pod) {
                            let h = pollers.spawn(poll_pod(
                                client.clone(),
                                t.clone(),
                                old_digest.clone(),
                                new_digest.clone(),
                                tracker.canary_deadline(),
                                tx.clone(),
                            ));
                            polling.insert(t.pod.clone(), (t.ip.clone(), h));
                        }
                    }
                }
                Err(e) => tracker.fail(Stage::CanaryObserve, Reason::ProberError, e.clone()),
            }
            tracker.set_targets(targets, expected);
        }

        publish(progress, &tracker, sync_trigger);
        if let Some(end) = tracker.verdict(now) {
            break end;
        }
        let wake = tracker.next_wakeup();
        tokio::select! {
            _ = cancel.cancelled() => break End::Aborted,
            _ = es.changed() => {}
            _ = secret.changed() => {}
            _ = deployments.changed() => {}
            _ = pods.changed() => {}
            Some(r) = rx.recv() => tracker.on_canary(&r.pod, r.stamp, r.answer),
            _ = tokio::time::sleep_until(wake.into()) => {}
            Some(_) = pollers.join_next(), if !pollers.is_empty() => {}
        }
    };
    pollers.abort_all();

    let facts = Facts {
        es_fault: es.fault(),
        es: cluster
            .external_secret
            .as_ref()
            .and_then(|r| r.borrow().objects.values().next().map(|e| (**e).clone())),
        secret_fault: secret.fault(),
        secret_present: cluster
            .secret
            .as_ref()
            .is_some_and(|r| !r.borrow().objects.is_empty()),
        deployment_fault: deployments.fault(),
        deployment: cluster
            .deployments
            .as_ref()
            .and_then(|r| r.borrow().objects.values().next().map(|d| (**d).clone())),
        pods_fault: pods.fault(),
    };
    let out = outcome(&tracker, end, &facts);
    if let (Some(f), Some(d)) = (&out.failure, &out.detail) {
        tracing::info!(probe = %config.name, run_id = %out.run_id, stage = %f.stage, reason = %f.reason, detail = %d, "probe run failed");
    }
    out
}

/// Tell a progress display where the run is (only when something changed).
fn publish(
    progress: Option<&watch::Sender<RunProgress>>,
    tracker: &Tracker,
    sync_trigger: Option<SyncTrigger>,
) {
    let Some(tx) = progress else { return };
    let mut stages = tracker.timings();
    stages.retain(|t| t.stage != Stage::EndToEnd);
    tx.send_if_modified(|p| {
        if p.stages == stages && p.sync_trigger == sync_trigger {
            return false;
        }
        p.stages = stages;
        p.sync_trigger = sync_trigger;
        true
    });
}

/// The baseline of a run, read from the watchers' current state.
fn baseline(
    runner: &ProbeRunner,
    secret: &Sub<SecretState>,
    deployments: &Sub<DeploymentState>,
    pods: &Sub<PodState>,
) -> Baseline {
    let mut base = Baseline::default();
    if let Some(rx) = &secret.rx {
        base.secret_absent = rx.borrow().objects.is_empty();
        base.old_digest = rx
            .borrow()
            .objects
            .values()
            .next()
            .and_then(|s| s.digest.clone());
    }
    if base.old_digest.is_none() {
        base.old_digest = runner.last_digest.lock().ok().and_then(|d| d.clone());
    }
    if let Some(rx) = &deployments.rx {
        base.template = rx
            .borrow()
            .objects
            .values()
            .next()
            .map(|d| d.template.clone());
    }
    if let Some(rx) = &pods.rx {
        for (name, p) in rx.borrow().objects.iter() {
            if let Some(o) = &p.owner {
                base.owners.insert(o.clone());
            }
            base.restarts.insert(name.clone(), p.restarts);
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::cluster::Condition;
    use std::sync::Arc;

    const NEW: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const OLD: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const OTHER: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    struct Clock {
        t0: Stamp,
        seq: u64,
    }

    impl Clock {
        fn new() -> Clock {
            // Whole second + 400 ms, so "floored to the second" is visible.
            let wall = DateTime::from_timestamp(1_750_000_000, 400_000_000).unwrap();
            Clock {
                t0: Stamp {
                    at: Instant::now(),
                    wall,
                },
                seq: 0,
            }
        }
        fn at(&self, ms: u64) -> Stamp {
            Stamp {
                at: self.t0.at + Duration::from_millis(ms),
                wall: self.t0.wall + chrono::Duration::milliseconds(ms as i64),
            }
        }
        fn change<T>(&mut self, ms: u64, name: &str, state: Option<T>) -> Change<T> {
            self.seq += 1;
            Change {
                seq: self.seq,
                stamp: self.at(ms),
                name: name.into(),
                state: state.map(Arc::new),
            }
        }
        fn written(&self, start: u64, end: u64) -> Written {
            Written {
                version: 2,
                created_time: None,
                started: self.at(start),
                finished: self.at(end),
            }
        }
        fn secs(&self, s: i64) -> DateTime<Utc> {
            DateTime::from_timestamp(self.t0.wall.timestamp() + s, 0).unwrap()
        }
    }

    fn plan_eso_reloader() -> Plan {
        Plan {
            eso: true,
            secret: true,
            trigger: Some(Trigger::Reloader),
            deployment: true,
            env_canary: true,
        }
    }

    fn base() -> Baseline {
        Baseline {
            template: Some("t1".into()),
            owners: ["old".to_string()].into(),
            restarts: BTreeMap::new(),
            old_digest: Some(OLD.into()),
            secret_absent: false,
        }
    }

    fn tracker(plan: Plan, clock: &Clock) -> Tracker {
        Tracker::new(
            plan,
            NEW.into(),
            base(),
            clock.at(60_000).at,
            BTreeMap::new(),
        )
    }

    fn es_ready(refresh: DateTime<Utc>) -> EsState {
        EsState {
            resource_version: None,
            refresh_time: Some(refresh),
            ready: Some(Condition {
                status: "True".into(),
                reason: "SecretSynced".into(),
                message: String::new(),
            }),
        }
    }

    fn secret(d: &str) -> SecretState {
        SecretState {
            resource_version: None,
            digest: Some(d.into()),
        }
    }

    fn deployment(
        template: &str,
        generation: i64,
        observed: i64,
        updated: i32,
        available: i32,
    ) -> DeploymentState {
        DeploymentState {
            generation,
            observed_generation: observed,
            template: template.into(),
            spec_replicas: 1,
            replicas: updated.max(1),
            updated_replicas: updated,
            available_replicas: available,
            ..Default::default()
        }
    }

    fn pod(owner: &str, ready: bool) -> PodState {
        PodState {
            ip: Some("127.0.0.9".into()),
            ready,
            owner: Some(owner.into()),
            ..Default::default()
        }
    }

    fn ms(t: &[StageTiming], s: Stage) -> Option<u128> {
        t.iter()
            .find(|x| x.stage == s)
            .and_then(|x| x.duration)
            .map(|d| d.as_millis())
    }

    fn pods_view(pods: &[(&str, PodState)]) -> View<PodState> {
        let mut v = View::default();
        for (n, p) in pods {
            v.objects.insert(n.to_string(), Arc::new(p.clone()));
        }
        v
    }

    #[test]
    fn full_eso_reloader_chain_measures_each_stage_from_event_arrival() {
        let mut c = Clock::new();
        let mut t = tracker(plan_eso_reloader(), &c);
        t.store_written(&c.written(0, 10));
        t.on_secret(&c.change(100, "s", Some(secret(NEW))));
        t.on_external_secret(&c.change(105, "es", Some(es_ready(c.secs(0)))));
        t.on_deployment(&c.change(150, "d", Some(deployment("t2", 2, 1, 0, 0))));
        t.on_deployment(&c.change(200, "d", Some(deployment("t2", 2, 2, 1, 0))));
        t.on_deployment(&c.change(300, "d", Some(deployment("t2", 2, 2, 1, 1))));
        assert!(t.observing());
        let view = pods_view(&[("old-pod", pod("old", true)), ("new-pod", pod("new", true))]);
        let (targets, expected) = t.targets(&view, Some(&deployment("t2", 2, 2, 1, 1)));
        assert_eq!(expected, 1);
        assert_eq!(
            targets.iter().map(|t| t.pod.as_str()).collect::<Vec<_>>(),
            vec!["new-pod"]
        );
        t.set_targets(targets.clone(), expected);
        assert_eq!(t.verdict(c.at(305).at), None);
        t.on_canary("new-pod", c.at(310), PodAnswer::Digest(Some(NEW.into())));
        t.set_targets(targets, expected);
        assert_eq!(t.verdict(c.at(311).at), Some(End::Success));
        let timings = t.timings();
        let order: Vec<Stage> = timings.iter().map(|x| x.stage).collect();
        assert_eq!(
            order,
            vec![
                Stage::StoreWrite,
                Stage::EsoSync,
                Stage::SecretUpdate,
                Stage::ReloaderTrigger,
                Stage::Rollout,
                Stage::CanaryObserve,
                Stage::EndToEnd
            ]
        );
        assert_eq!(ms(&timings, Stage::StoreWrite), Some(10));
        assert_eq!(ms(&timings, Stage::EsoSync), Some(95));
        assert_eq!(ms(&timings, Stage::SecretUpdate), Some(90));
        assert_eq!(ms(&timings, Stage::ReloaderTrigger), Some(50));
        assert_eq!(ms(&timings, Stage::Rollout), Some(150));
        assert_eq!(ms(&timings, Stage::CanaryObserve), Some(10));
        assert_eq!(ms(&timings, Stage::EndToEnd), Some(310));
        assert_eq!(timings[0].started_at, c.at(0).wall);
        let (failure, result, _) = t.conclude(&End::Success, &Facts::default());
        assert_eq!((failure, result), (None, RunResult::Success));
    }

    #[test]
    fn eso_status_of_an_earlier_sync_in_the_same_second_does_not_count() {
        let mut c = Clock::new();
        let mut t = tracker(plan_eso_reloader(), &c);
        t.store_written(&c.written(0, 10));
        // A status whose refreshTime is before the write's second: ignored.
        t.on_external_secret(&c.change(20, "es", Some(es_ready(c.secs(-1)))));
        // Same second as the write, but the Secret does not have the value yet.
        t.on_external_secret(&c.change(30, "es", Some(es_ready(c.secs(0)))));
        assert_eq!(t.ended(Stage::EsoSync), None);
        t.on_secret(&c.change(1000, "s", Some(secret(NEW))));
        t.on_external_secret(&c.change(1004, "es", Some(es_ready(c.secs(1)))));
        assert_eq!(t.ended(Stage::EsoSync), Some(c.at(1004)));
    }

    #[test]
    fn eso_status_no_op_ends_the_sync_with_the_secret_after_the_grace() {
        let mut c = Clock::new();
        let mut t = tracker(plan_eso_reloader(), &c);
        t.store_written(&c.written(0, 10));
        t.on_external_secret(&c.change(30, "es", Some(es_ready(c.secs(0)))));
        t.on_secret(&c.change(300, "s", Some(secret(NEW))));
        t.tick(c.at(301).at);
        assert_eq!(t.ended(Stage::EsoSync), None);
        assert!(t.next_wakeup() <= c.at(300).at + ESO_STATUS_GRACE);
        t.tick(c.at(300).at + ESO_STATUS_GRACE);
        assert_eq!(t.ended(Stage::EsoSync), Some(c.at(300)));
    }

    #[test]
    fn eso_synced_but_the_secret_gone_fails_secret_update_not_found() {
        let mut c = Clock::new();
        let mut t = tracker(plan_eso_reloader(), &c);
        t.store_written(&c.written(0, 10));
        t.on_secret(&c.change(20, "s", None));
        t.on_external_secret(&c.change(300, "es", Some(es_ready(c.secs(0)))));
        assert!(t.next_wakeup() <= c.at(300).at + ESO_STATUS_GRACE);
        t.tick(c.at(300).at + ESO_STATUS_GRACE);
        assert_eq!(t.ended(Stage::EsoSync), Some(c.at(300)));
        let end = t.verdict(c.at(60_000).at).unwrap();
        let facts = Facts {
            es: Some(es_ready(c.secs(0))),
            secret_present: false,
            ..Default::default()
        };
        let (f, _, _) = t.conclude(&end, &facts);
        assert_eq!(
            f,
            Some(Failure {
                stage: Stage::SecretUpdate,
                reason: Reason::NotFound
            })
        );
        // Recreated meanwhile (ESO's Owner policy): ESO's sync waits for it.
        let mut t = tracker(plan_eso_reloader(), &c);
        t.store_written(&c.written(0, 10));
        t.on_secret(&c.change(20, "s", None));
        t.on_secret(&c.change(40, "s", Some(secret(OLD))));
        t.on_external_secret(&c.change(300, "es", Some(es_ready(c.secs(0)))));
        t.tick(c.at(300).at + ESO_STATUS_GRACE);
        assert_eq!(t.ended(Stage::EsoSync), None);
    }

    #[test]
    fn deadline_failures_name_the_first_incomplete_stage_and_the_clusters_reason() {
        let mut c = Clock::new();
        let mut t = tracker(plan_eso_reloader(), &c);
        t.store_written(&c.written(0, 10));
        let mut failing = es_ready(c.secs(-5));
        failing.ready = Some(Condition {
            status: "False".into(),
            reason: "SecretSyncedError".into(),
            message: "could not get secret data from provider".into(),
        });
        t.on_external_secret(&c.change(50, "es", Some(failing.clone())));
        assert_eq!(t.verdict(c.at(59_999).at), None);
        let end = t.verdict(c.at(60_000).at).unwrap();
        assert_eq!(end, End::Deadline);
        let facts = Facts {
            es: Some(failing),
            secret_present: true,
            ..Default::default()
        };
        let (f, r, d) = t.conclude(&end, &facts);
        assert_eq!(
            f,
            Some(Failure {
                stage: Stage::EsoSync,
                reason: Reason::SyncError
            })
        );
        assert_eq!(r, RunResult::Failure);
        assert!(d.unwrap().contains("SecretSyncedError"));

        // The ExternalSecret missing, or its CRD not served.
        assert_eq!(
            t.attribute(Stage::EsoSync, &Facts::default()).0,
            Reason::NotFound
        );
        let crd = Facts {
            es_fault: Some((Reason::NotFound, "404".into())),
            ..Default::default()
        };
        assert_eq!(t.attribute(Stage::EsoSync, &crd).0, Reason::NotFound);
        let api = Facts {
            es_fault: Some((Reason::ApiError, "500".into())),
            ..Default::default()
        };
        assert_eq!(t.attribute(Stage::EsoSync, &api).0, Reason::ApiError);

        // A Secret deleted mid-run (no ESO in this chain).
        let plan = Plan {
            eso: false,
            ..plan_eso_reloader()
        };
        let mut t = tracker(plan, &c);
        t.store_written(&c.written(0, 10));
        t.on_secret(&c.change(40, "s", None::<SecretState>));
        let (f, _, _) = t.conclude(&End::Deadline, &Facts::default());
        assert_eq!(
            f,
            Some(Failure {
                stage: Stage::SecretUpdate,
                reason: Reason::NotFound
            })
        );
    }

    #[test]
    fn rollout_problems_are_rollout_stuck_or_canary_crashing() {
        let mut c = Clock::new();
        let plan = Plan {
            eso: false,
            secret: false,
            trigger: Some(Trigger::Restart),
            deployment: true,
            env_canary: true,
        };
        let mut t = tracker(plan, &c);
        t.store_written(&c.written(0, 10));
        assert!(t.started(Stage::ReloaderTrigger));
        t.on_deployment(&c.change(30, "d", Some(deployment("t2", 2, 2, 1, 0))));
        assert_eq!(t.ended(Stage::ReloaderTrigger), Some(c.at(30)));
        let mut crashing = pod("new", false);
        crashing.restarts = 3;
        crashing.crash = Some("container canary CrashLoopBackOff: back-off".into());
        t.on_pod(&c.change(40, "new-pod", Some(crashing)));
        let facts = Facts {
            deployment: Some(deployment("t2", 2, 2, 1, 0)),
            ..Default::default()
        };
        let (f, _, d) = t.conclude(&End::Deadline, &facts);
        assert_eq!(
            f,
            Some(Failure {
                stage: Stage::Rollout,
                reason: Reason::CanaryCrashing
            })
        );
        assert!(d.unwrap().contains("CrashLoopBackOff"));

        // ProgressDeadlineExceeded ends the run at once.
        let mut t = tracker(plan, &c);
        t.store_written(&c.written(0, 10));
        t.on_deployment(&c.change(30, "d", Some(deployment("t2", 2, 1, 0, 0))));
        let mut stuck = deployment("t2", 2, 2, 0, 0);
        stuck.progressing = Some(Condition {
            status: "False".into(),
            reason: "ProgressDeadlineExceeded".into(),
            message: "ReplicaSet \"x\" has timed out progressing.".into(),
        });
        t.on_deployment(&c.change(50, "d", Some(stuck)));
        assert!(matches!(
            t.verdict(c.at(51).at),
            Some(End::Failed(Stage::Rollout, Reason::RolloutStuck, _))
        ));
    }

    #[test]
    fn canary_answers_decide_value_mismatch_and_unreachable() {
        let mut c = Clock::new();
        // Env canary after a rollout: a new Pod with the old value fails at once.
        let plan = Plan {
            eso: false,
            secret: true,
            trigger: Some(Trigger::Reloader),
            deployment: true,
            env_canary: true,
        };
        let mut t = tracker(plan, &c);
        t.store_written(&c.written(0, 10));
        t.on_secret(&c.change(20, "s", Some(secret(NEW))));
        t.on_deployment(&c.change(30, "d", Some(deployment("t2", 2, 2, 1, 1))));
        assert!(t.observing());
        t.on_canary("p", c.at(40), PodAnswer::Digest(Some(OLD.into())));
        assert!(matches!(
            t.verdict(c.at(41).at),
            Some(End::Failed(Stage::CanaryObserve, Reason::ValueMismatch, _))
        ));

        // Volume canary: the old value is "not yet"; another value is a mismatch.
        let plan = Plan {
            eso: false,
            secret: true,
            trigger: None,
            deployment: false,
            env_canary: false,
        };
        let mut t = tracker(plan, &c);
        t.store_written(&c.written(0, 10));
        t.on_secret(&c.change(20, "s", Some(secret(NEW))));
        assert!(t.observing());
        let view = pods_view(&[("a", pod("rs", true)), ("b", pod("rs", true))]);
        let (targets, expected) = t.targets(&view, None);
        assert_eq!(targets.len(), 2);
        t.on_canary("a", c.at(30), PodAnswer::Digest(Some(OLD.into())));
        t.on_canary(
            "b",
            c.at(30),
            PodAnswer::Error(Reason::CanaryUnreachable, "refused".into()),
        );
        t.set_targets(targets.clone(), expected);
        assert_eq!(t.verdict(c.at(31).at), None);
        let (f, _, _) = t.conclude(&End::Deadline, &Facts::default());
        assert_eq!(f.unwrap().reason, Reason::CanaryUnreachable);
        t.on_canary("a", c.at(35), PodAnswer::Digest(Some(OTHER.into())));
        let (f, _, _) = t.conclude(&End::Deadline, &Facts::default());
        assert_eq!(f.unwrap().reason, Reason::ValueMismatch);
        // Both see the new value: done at the later answer.
        t.on_canary("a", c.at(40), PodAnswer::Digest(Some(NEW.into())));
        t.on_canary("b", c.at(45), PodAnswer::Digest(Some(NEW.into())));
        t.set_targets(targets, expected);
        assert_eq!(t.verdict(c.at(46).at), Some(End::Success));
        assert_eq!(ms(&t.timings(), Stage::CanaryObserve), Some(25));
        assert_eq!(ms(&t.timings(), Stage::EndToEnd), Some(45));
    }

    #[test]
    fn stage_deadlines_and_abort() {
        let mut c = Clock::new();
        let plan = Plan {
            eso: true,
            secret: true,
            trigger: None,
            deployment: false,
            env_canary: false,
        };
        let limits: BTreeMap<Stage, Duration> =
            [(Stage::SecretUpdate, Duration::from_secs(1))].into();
        let mut t = Tracker::new(plan, NEW.into(), base(), c.at(60_000).at, limits);
        t.store_written(&c.written(0, 10));
        assert_eq!(t.next_wakeup(), c.at(1010).at);
        assert_eq!(t.verdict(c.at(1009).at), None);
        assert_eq!(t.verdict(c.at(1010).at), Some(End::Deadline));
        let facts = Facts {
            es: Some(es_ready(c.secs(-3))),
            secret_present: true,
            ..Default::default()
        };
        // eso_sync comes first in the chain and did not complete either.
        let (f, _, _) = t.conclude(&End::Deadline, &facts);
        assert_eq!(
            f,
            Some(Failure {
                stage: Stage::EsoSync,
                reason: Reason::Timeout
            })
        );
        t.on_secret(&c.change(400, "s", Some(secret(NEW))));
        t.on_external_secret(&c.change(500, "es", Some(es_ready(c.secs(0)))));
        let (f, r, _) = t.conclude(&End::Aborted, &facts);
        assert_eq!(r, RunResult::Aborted);
        assert_eq!(
            f,
            Some(Failure {
                stage: Stage::CanaryObserve,
                reason: Reason::Aborted
            })
        );
        let _ = c.change::<PodState>(0, "x", None);
    }
}
