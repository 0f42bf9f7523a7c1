//! The stage tracker of one run: fed watcher events and canary answers in
//! arrival order, it decides when each stage starts and ends. It does no
//! I/O and reads no clock of its own, so unit tests drive it with made-up
//! stamps. Why a stage did not complete is decided in [`attribution`].
//!
//! | stage | starts | ends |
//! |---|---|---|
//! | `store_write` | just before the KV v2 write | the write's response (new version) |
//! | `eso_sync` | store write done | an ExternalSecret status event with `Ready=True` whose sync mark (`refreshTime`, `syncedResourceVersion`) differs from the one at run start, arriving once the Secret has been seen with the new digest (ESO writes the Secret before its status), or at most 200 ms before it when no later status follows within 200 ms (the two watches deliver independently). ESO's clock is only compared with itself. If ESO's status update changed nothing (the previous sync was in the same second), the stage ends with the Secret after a 2 s grace |
//! | `secret_update` | store write done | a Secret event whose `data[key]` SHA-256 equals the new digest |
//! | `reloader_trigger` | `secret_update` end (trigger `reloader`), or store write done (trigger `restart`: the prober then patches `restartedAt` as `kubectl rollout restart` does) | a Deployment event whose pod template carries this run's value: Reloader's hash of the Secret seen with the new digest (SHA-1 of its sorted `key=value` pairs joined by `;`) in `STAKATER_<NAME>_SECRET` or in `reloader.stakater.com/last-reloaded-from`; with `restart`, the exact `restartedAt` the prober sent. A concurrent `kubectl rollout restart`, an unrelated deploy or a late Reloader patch for an older value does not end it |
//! | `rollout` | `reloader_trigger` end | a Deployment event showing the rollout complete, as `kubectl rollout status` decides, for that generation or a later one (a restart landing after ours lengthens it, never shortens it) |
//! | `canary_observe` | `rollout` end, or `secret_update` end when nothing rolls | every ready, non-terminating canary Pod made from a template carrying the value (its marks: `restartedAt`, Reloader hash) answered the new digest (long-poll of the canary's `/digest`) |
//! | `end_to_end` | `store_write` start | `canary_observe` end |
//!
//! A stage the chain lacks is absent.

pub mod attribution;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::canary::CanaryError;
use super::cluster::{
    Change, DeploymentState, EsState, Marks, PodState, Restarted, RolloutStatus, SecretState, View,
};
use super::plan::Plan;
use super::store::Written;
use super::{Reason, Stage, StageTiming, Stamp};
use crate::config::Trigger;

pub use attribution::{Blocked, Cause, Facts, Finding};

/// If ESO's status event arrived before the Secret showed the new value and
/// no later status event comes within this time, the status update was a
/// no-op (same second, same conditions) and the sync ended with the Secret.
pub const ESO_STATUS_GRACE: Duration = Duration::from_secs(2);

/// ESO writes the Secret, then its status a few ms later, but the two
/// watches deliver independently: on a real cluster the status event can
/// arrive first. A status event that came at most this long before the
/// Secret event is that same sync's, when no later status event follows
/// within this time (a later one would be the sync's own status, the early
/// one a sync that did not carry our value).
pub const ESO_REORDER_WINDOW: Duration = Duration::from_millis(200);

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
    /// Canary Pods ready (and not terminating) at run start.
    pub ready_canaries: usize,
    /// The ExternalSecret's state at run start (its sync mark is what a
    /// sync of this run's value changes).
    pub es_status: Option<EsState>,
}

/// What a canary Pod answered last.
#[derive(Debug, Clone)]
pub enum PodAnswer {
    /// A digest (or none: the canary has no value).
    Digest(Option<String>),
    /// The canary's value is a literal `vault:` reference nothing resolved.
    Unresolved,
    /// No usable answer.
    Failed(Arc<CanaryError>),
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

/// How a run ended, before it becomes an [`super::Outcome`].
#[derive(Debug, Clone)]
pub enum End {
    /// Every stage completed.
    Success,
    /// A stage failed for a reason that waiting will not change.
    Failed(Stage, Finding),
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
    /// The ExternalSecret's latest state says `Ready=True`.
    es_ready_now: bool,
    /// Reloader's hashes of the Secret states that carried the new digest.
    secret_hashes: BTreeSet<String>,
    /// The prober's restart patch (trigger `restart`).
    restart: Option<Restarted>,
    /// Deployment events since the write, replayed when what makes a
    /// template "ours" becomes known after the event (streams reorder).
    deployment_log: Vec<Change<DeploymentState>>,
    /// The first template carrying the value: when seen, its generation.
    carried: Option<(Stamp, i64)>,
    /// Marks of every template from that generation on (a later restart
    /// or deploy is made from it, so its Pods carry the value too).
    carrying: BTreeSet<Marks>,
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
    failed: Option<(Stage, Finding)>,
    /// What the cluster says blocks the first incomplete stage now.
    blocked: Option<Blocked>,
    /// How long a blocking signal may persist before the run ends.
    blocked_for: Option<Duration>,
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
            es_ready_now: base.es_status.as_ref().is_some_and(EsState::is_ready),
            base,
            run_deadline,
            limits,
            spans: BTreeMap::new(),
            write_floor: None,
            secret_new: None,
            es_early: None,
            secret_hashes: BTreeSet::new(),
            restart: None,
            deployment_log: Vec::new(),
            carried: None,
            carrying: BTreeSet::new(),
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
            blocked: None,
            blocked_for: None,
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

    /// The digest the canaries should be seeing before the write.
    pub fn old_digest(&self) -> Option<&str> {
        self.base.old_digest.as_deref()
    }

    /// The store write is about to start (login is done).
    pub fn store_starting(&mut self, at: Stamp) {
        self.start(Stage::StoreWrite, at);
    }

    /// The store write failed.
    pub fn store_failed(&mut self, at: Stamp, finding: Finding) {
        self.start(Stage::StoreWrite, at);
        self.fail(Stage::StoreWrite, finding);
    }

    /// The store write succeeded: it ends when the store committed the
    /// value ([`Written::committed`]), where the next stages start.
    pub fn store_written(&mut self, w: &Written) {
        self.start(Stage::StoreWrite, w.started);
        self.end(Stage::StoreWrite, w.committed());
        self.write_floor = DateTime::from_timestamp(w.started.wall.timestamp(), 0);
        self.advance();
    }

    /// A failure that waiting will not change (the first one wins).
    pub fn fail(&mut self, stage: Stage, finding: Finding) {
        if self.failed.is_none() {
            self.failed = Some((stage, finding));
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
        if let Some((changed, _)) = self.carried {
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
        self.es_ready_now = es.is_ready();
        if let Some(cond) = es.sync_failed() {
            self.es_error = Some(format!("{}: {}", cond.reason, cond.message));
        }
        if self.write_floor.is_none() {
            return;
        }
        // A sync changes ESO's own mark (refreshTime, syncedResourceVersion);
        // its clock is never compared with ours.
        let changed = self
            .base
            .es_status
            .as_ref()
            .is_none_or(|b| b.sync_mark() != es.sync_mark());
        let qualifies = es.is_ready() && changed;
        if !qualifies {
            self.es_early = None;
            return;
        }
        if let Some((decide_at, end)) = self.eso_pending() {
            if c.stamp.at > decide_at {
                // Arrived after the window: a later refresh, not this sync.
                self.end(Stage::EsoSync, end);
                return;
            }
        }
        if !self.plan.secret || self.secret_new.is_some() {
            self.end(Stage::EsoSync, c.stamp);
        } else if self.es_early.is_none() {
            // The first report of a sync counts: ESO re-reporting on its
            // refresh (every `refreshInterval`, as often as the grace) while
            // the Secret stays absent must not postpone the grace for ever.
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
            Some(s) if s.digest.as_deref() == Some(self.new_digest.as_str()) => {
                if self.write_floor.is_none() {
                    return;
                }
                self.secret_absent = false;
                let new_hash = s
                    .reloader_hash
                    .as_ref()
                    .is_some_and(|h| self.secret_hashes.insert(h.clone()));
                if self.secret_new.is_none() {
                    self.secret_new = Some(c.stamp);
                }
                if new_hash && self.carried.is_none() {
                    self.replay_deployments();
                }
                self.advance();
            }
            Some(_) => self.secret_absent = false,
        }
    }

    /// The prober's restart patch was taken: its `restartedAt` value and
    /// generation are what "our" template carries.
    pub fn restart_sent(&mut self, r: Restarted) {
        self.restart = Some(r);
        if self.carried.is_none() {
            self.replay_deployments();
        }
    }

    /// Whether a template carries this run's value: Reloader's hash of a
    /// Secret state with the new digest (env var or annotation), or the
    /// exact `restartedAt` the prober sent (or a later generation than its
    /// patch made, when the watch skipped ours).
    fn carries(&self, d: &DeploymentState) -> bool {
        match self.plan.trigger {
            Some(Trigger::Reloader) => d
                .marks
                .reloader
                .iter()
                .any(|h| self.secret_hashes.contains(h)),
            Some(Trigger::Restart) => self.restart.as_ref().is_some_and(|r| {
                d.marks.restarted_at.as_deref() == Some(r.restarted_at.as_str())
                    || d.generation >= r.generation
            }),
            _ => false,
        }
    }

    /// A Deployment event.
    pub fn on_deployment(&mut self, c: &Change<DeploymentState>) {
        if c.state.is_none() {
            self.deployment_deleted = true;
            return;
        }
        if self.write_floor.is_none() {
            return;
        }
        self.deployment_log.push(c.clone());
        self.deployment_event(c);
        self.advance();
    }

    /// Look at the Deployment events since the write again.
    fn replay_deployments(&mut self) {
        let log = std::mem::take(&mut self.deployment_log);
        for c in &log {
            self.deployment_event(c);
        }
        self.deployment_log = log;
        self.advance();
    }

    fn deployment_event(&mut self, c: &Change<DeploymentState>) {
        let Some(d) = &c.state else { return };
        if self.base.template.is_none() {
            self.base.template = Some(d.template.clone());
        }
        if let Some(f) = d.replica_failure() {
            self.stuck = Some(format!("ReplicaFailure {}: {}", f.reason, f.message));
        }
        if self.carried.is_none() && self.carries(d) {
            self.carried = Some((c.stamp, d.generation));
        }
        let Some((_, generation)) = self.carried else {
            return;
        };
        if d.generation >= generation {
            self.carrying.insert(d.marks.clone());
            self.on_rollout_status(c.stamp, d.rollout());
        }
    }

    /// The rollout of the changed template, as the Deployment reports it.
    fn on_rollout_status(&mut self, at: Stamp, status: RolloutStatus) {
        match status {
            RolloutStatus::Complete if self.rollout_done.is_none() => self.rollout_done = Some(at),
            RolloutStatus::DeadlineExceeded(m) => {
                let said = format!("ProgressDeadlineExceeded: {m}");
                self.stuck = Some(said.clone());
                if self.started(Stage::Rollout) && self.ended(Stage::Rollout).is_none() {
                    let finding = Finding::new(Reason::RolloutStuck, Cause::Reported(said));
                    self.fail(Stage::Rollout, finding);
                }
            }
            _ => {}
        }
    }

    /// A canary Pod event (crash evidence): only from Pods that did not
    /// exist at run start, are not terminating, and (when the chain rolls)
    /// were made from a template carrying the value. A new Pod in
    /// `CrashLoopBackOff` ends the run at once as `canary_crashing`.
    pub fn on_pod(&mut self, c: &Change<PodState>) {
        let Some(p) = &c.state else { return };
        if p.terminating || self.base.restarts.contains_key(&c.name) {
            return;
        }
        if self.plan.trigger.is_some() && !self.of_new_template(p) {
            return;
        }
        if let Some(crash) = &p.crash {
            let said = format!("Pod {}: {crash}", c.name);
            if crash.contains("CrashLoopBackOff") && self.write_floor.is_some() {
                let stage = if self.started(Stage::Rollout) && self.ended(Stage::Rollout).is_none()
                {
                    Stage::Rollout
                } else if self.started(Stage::CanaryObserve) {
                    Stage::CanaryObserve
                } else {
                    Stage::Rollout
                };
                let finding = Finding::new(Reason::CanaryCrashing, Cause::Reported(said.clone()));
                self.fail(stage, finding);
            }
            self.crash = Some(said);
        } else if p.restarts > 0 {
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
        let targets = pods
            .objects
            .iter()
            .filter(|(_, p)| p.ready && !p.terminating && self.of_new_template(p))
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

    /// Whether a Pod was made from a template carrying this run's value
    /// (always true when nothing rolls): its marks are those of such a
    /// template, and its ReplicaSet was not there at run start.
    fn of_new_template(&self, p: &PodState) -> bool {
        if self.plan.trigger.is_none() {
            return true;
        }
        self.carrying.contains(&p.marks)
            && p.owner
                .as_ref()
                .is_none_or(|o| !self.base.owners.contains(o))
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
        if matches!(answer, PodAnswer::Unresolved) && self.plan.env_canary {
            // An env value is fixed at process start: this Pod runs with the
            // reference for its lifetime.
            let detail = format!(
                "Pod {pod} runs with an unresolved `vault:` reference (the secret-injection webhook let it start unmutated)"
            );
            let finding = Finding::new(Reason::UnresolvedReference, Cause::Reported(detail));
            self.fail(Stage::CanaryObserve, finding);
        }
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
                    attribution::short(d)
                );
                let finding = Finding::new(Reason::ValueMismatch, Cause::Reported(detail));
                self.fail(Stage::CanaryObserve, finding);
            }
        }
        self.canary.entry(pod.to_string()).or_default().last = Some(answer);
    }

    /// Check the ESO grace period (see [`ESO_STATUS_GRACE`]) and the
    /// reorder window (see [`ESO_REORDER_WINDOW`]).
    pub fn tick(&mut self, now: Instant) {
        if let Some((decide_at, end)) = self.eso_pending() {
            if now >= decide_at {
                self.end(Stage::EsoSync, end);
            }
        }
    }

    /// When `eso_sync` ends if no later status event comes, and at which
    /// stamp: at ESO's status when it arrived just before the Secret's
    /// change (the watches' delivery order, [`ESO_REORDER_WINDOW`]); at the
    /// Secret's change when ESO's status came long before it or changed
    /// nothing ([`ESO_STATUS_GRACE`]); or, when ESO reported a sync of our
    /// write but the Secret is gone (deleted, and not recreated: e.g.
    /// `creationPolicy: None`), at ESO's status (ESO did its part, the
    /// missing Secret is what fails the run).
    fn eso_pending(&self) -> Option<(Instant, Stamp)> {
        if self.ended(Stage::EsoSync).is_some() {
            return None;
        }
        match (self.es_early, self.secret_new) {
            (Some(e), Some(s)) if s.at.saturating_duration_since(e.at) <= ESO_REORDER_WINDOW => {
                Some((s.at + ESO_REORDER_WINDOW, e))
            }
            (Some(_), Some(s)) => Some((s.at + ESO_STATUS_GRACE, s)),
            // ESO wrote the Secret and its status update changed nothing
            // (the previous sync was in the same second): no event comes.
            (None, Some(s)) if self.es_ready_now => Some((s.at + ESO_STATUS_GRACE, s)),
            (Some(e), None) if self.secret_absent => Some((e.at + ESO_STATUS_GRACE, e)),
            _ => None,
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

    /// The `end_to_end` deadline, once the store write has started.
    fn end_to_end_deadline(&self) -> Option<Instant> {
        let limit = self.limits.get(&Stage::EndToEnd)?;
        self.spans
            .get(&Stage::StoreWrite)
            .map(|s| s.start.at + *limit)
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
        if let Some((decide_at, _)) = self.eso_pending() {
            next = next.min(decide_at);
        }
        if let Some(d) = self.end_to_end_deadline() {
            next = next.min(d);
        }
        if let Some(at) = self.blocked_until() {
            next = next.min(at);
        }
        next
    }

    /// How the run ends now, if it does.
    pub fn verdict(&self, now: Instant) -> Option<End> {
        if let Some((s, f)) = &self.failed {
            return Some(End::Failed(*s, f.clone()));
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
        if self.end_to_end_deadline().is_some_and(|d| now >= d) {
            return true;
        }
        self.spans
            .iter()
            .any(|(stage, span)| span.end.is_none() && now >= self.stage_deadline(*stage, span))
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
}
