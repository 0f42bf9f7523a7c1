//! Failure attribution: why a run's first incomplete stage did not
//! complete, read from what the cluster said (watcher faults, conditions,
//! crash evidence, canary answers), never from a guess. Each finding is a
//! bounded [`Reason`] (the metric label) and a typed [`Cause`] (the
//! report's detail).

use std::sync::Arc;

use super::super::canary::CanaryError;
use super::super::cluster::{ClusterError, DeploymentState, EsState, Fault, Gap, RolloutStatus};
use super::super::store::StoreError;
use super::super::{Failure, Reason, RunResult, Stage};
use super::{End, PodAnswer, Tracker};
use crate::probe::Stamp;
use std::time::{Duration, Instant};

/// What a stage failed on, beyond its bounded reason. Its text is the
/// run's `detail`: for logs and reports, never a label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Cause {
    /// A store call failed.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// One of the prober's own API requests failed (restart, force-sync).
    #[error(transparent)]
    Cluster(Arc<ClusterError>),
    /// The canary client could not be built, or a canary gave no usable answer.
    #[error(transparent)]
    Canary(Arc<CanaryError>),
    /// A watcher the stage depends on is failing.
    #[error("watching the {what} failed: {}", fault.message)]
    Watch {
        /// What is watched (`ExternalSecret`, `canary Pods`, ...).
        what: &'static str,
        /// The watcher's fault.
        fault: Fault,
    },
    /// A deadline passed first; the text says while doing what.
    #[error("deadline passed {0}")]
    Deadline(String),
    /// What the cluster or a canary reported (a condition, a missing object,
    /// a digest).
    #[error("{0}")]
    Reported(String),
}

/// Why a stage did not complete: the label value and its cause.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The bounded reason (the `reason` label).
    pub reason: Reason,
    /// The cause (the detail).
    pub cause: Cause,
}

impl Finding {
    /// A finding of `reason` because of `cause`.
    pub fn new(reason: Reason, cause: Cause) -> Finding {
        Finding { reason, cause }
    }

    /// A store call failed (its error says which reason).
    pub fn store(e: StoreError) -> Finding {
        Finding::new(e.reason(), Cause::Store(Arc::new(e)))
    }

    /// One of the prober's API requests failed.
    pub fn cluster(e: ClusterError) -> Finding {
        Finding::new(e.reason(), Cause::Cluster(Arc::new(e)))
    }

    /// `what` did not happen before the deadline.
    pub fn deadline(what: impl Into<String>) -> Finding {
        Finding::new(Reason::Timeout, Cause::Deadline(what.into()))
    }

    fn waiting_for(what: &str) -> Finding {
        Finding::deadline(format!("waiting for {what}"))
    }

    fn reported(reason: Reason, what: impl Into<String>) -> Finding {
        Finding::new(reason, Cause::Reported(what.into()))
    }

    /// A watcher's fault, if there is one, counts against the stage.
    fn watch(fault: &Option<Fault>, what: &'static str) -> Option<Finding> {
        fault.as_ref().map(|f| {
            let cause = Cause::Watch {
                what,
                fault: f.clone(),
            };
            Finding::new(f.reason, cause)
        })
    }
}

/// What the watchers say at the end of a run, for attribution.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The ExternalSecret watcher is failing.
    pub es_fault: Option<Fault>,
    /// The ExternalSecret now (`None`: absent).
    pub es: Option<EsState>,
    /// The Secret watcher is failing.
    pub secret_fault: Option<Fault>,
    /// The Secret exists now.
    pub secret_present: bool,
    /// The Deployment watcher is failing.
    pub deployment_fault: Option<Fault>,
    /// The Deployment now.
    pub deployment: Option<DeploymentState>,
    /// The Pod watcher is failing.
    pub pods_fault: Option<Fault>,
    /// Every watcher's recent gaps (the current faults as open ones).
    pub gaps: Vec<Gap>,
}

/// A digest shortened for messages.
pub(super) fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

/// The cluster's own signal that a run's first incomplete stage is blocked
/// (a condition, a missing object, a failing watch), and since when.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// The stage.
    pub stage: Stage,
    /// The bounded reason (the gauge's label).
    pub reason: Reason,
    /// When this signal was first seen (continuously since).
    pub since: Stamp,
    /// The pipeline reported it (a condition, a missing object, a canary's
    /// answer): the run ends once it persisted `blocked_for`. A failing
    /// watch only marks the stage: the watch may recover, and the run with it.
    pub ends_run: bool,
}

impl Tracker {
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

    /// A watcher's fault counts against `stage` only if it is current (the
    /// facts are read at the deadline) and began after the stage started:
    /// one that began earlier and is still there did not stop this stage.
    fn fault_of<'f>(&self, stage: Stage, fault: &'f Option<Fault>) -> Option<&'f Fault> {
        let start = self.spans.get(&stage).map(|s| s.start.at);
        fault
            .as_ref()
            .filter(|f| start.is_none_or(|s| f.stamp.at >= s))
    }

    fn watch_finding(
        &self,
        stage: Stage,
        fault: &Option<Fault>,
        what: &'static str,
    ) -> Option<Finding> {
        Finding::watch(&self.fault_of(stage, fault).cloned(), what)
    }

    /// The stages (and `end_to_end`) whose span overlaps one of `gaps`:
    /// their durations were measured across a watch gap.
    pub fn gap_stages(&self, gaps: &[Gap]) -> Vec<Stage> {
        let mut out: Vec<Stage> = self
            .plan
            .stages()
            .into_iter()
            .filter(|s| {
                self.spans
                    .get(s)
                    .is_some_and(|span| gaps.iter().any(|g| g.overlaps(span.start, span.end)))
            })
            .collect();
        if !out.is_empty() {
            out.push(Stage::EndToEnd);
        }
        out
    }

    /// Why `stage` did not complete, from what the cluster said.
    pub fn attribute(&self, stage: Stage, facts: &Facts) -> Finding {
        match stage {
            Stage::StoreWrite => Finding::waiting_for("the store write"),
            Stage::EsoSync => self.attribute_eso(facts),
            Stage::SecretUpdate => self.attribute_secret(facts),
            Stage::ReloaderTrigger => self
                .watch_finding(stage, &facts.deployment_fault, "Deployment")
                .or_else(|| self.deployment_missing(facts))
                .unwrap_or_else(|| Finding::waiting_for("the Deployment's pod template to change")),
            Stage::Rollout => self.attribute_rollout(facts),
            Stage::CanaryObserve => self.attribute_canary(facts),
            Stage::EndToEnd => Finding::waiting_for("the end-to-end deadline"),
        }
    }

    fn attribute_eso(&self, facts: &Facts) -> Finding {
        if let Some(f) = self.watch_finding(Stage::EsoSync, &facts.es_fault, "ExternalSecret") {
            return f;
        }
        let Some(es) = &facts.es else {
            return Finding::reported(Reason::NotFound, "ExternalSecret not found");
        };
        if let Some(c) = es.sync_failed() {
            let said = format!("ExternalSecret Ready=False {}: {}", c.reason, c.message);
            Finding::reported(Reason::SyncError, said)
        } else if let Some(e) = &self.es_error {
            Finding::reported(Reason::SyncError, format!("ExternalSecret reported {e}"))
        } else {
            Finding::waiting_for("ESO to sync the new value")
        }
    }

    fn attribute_secret(&self, facts: &Facts) -> Finding {
        if let Some(f) = self.watch_finding(Stage::SecretUpdate, &facts.secret_fault, "Secret") {
            return f;
        }
        if !facts.secret_present || self.secret_deleted {
            Finding::reported(
                Reason::NotFound,
                "Secret not found (or deleted during the run)",
            )
        } else if let Some(e) = &self.es_error {
            Finding::reported(Reason::SyncError, format!("ExternalSecret reported {e}"))
        } else {
            Finding::waiting_for("the Secret to carry the new value")
        }
    }

    fn deployment_missing(&self, facts: &Facts) -> Option<Finding> {
        (facts.deployment.is_none() || self.deployment_deleted)
            .then(|| Finding::reported(Reason::NotFound, "Deployment not found"))
    }

    fn attribute_rollout(&self, facts: &Facts) -> Finding {
        if let Some(f) = self
            .watch_finding(Stage::Rollout, &facts.deployment_fault, "Deployment")
            .or_else(|| self.deployment_missing(facts))
        {
            return f;
        }
        if let Some(c) = &self.crash {
            return Finding::reported(Reason::CanaryCrashing, c.clone());
        }
        if let Some(s) = &self.stuck {
            return Finding::reported(Reason::RolloutStuck, s.clone());
        }
        let waiting = match facts.deployment.as_ref().map(|d| d.rollout()) {
            Some(RolloutStatus::Waiting(w)) => w,
            _ => "the rollout to complete",
        };
        Finding::waiting_for(waiting)
    }

    fn attribute_canary(&self, facts: &Facts) -> Finding {
        if let Some(c) = &self.crash {
            return Finding::reported(Reason::CanaryCrashing, c.clone());
        }
        if let Some(f) = self.watch_finding(Stage::CanaryObserve, &facts.pods_fault, "canary Pods")
        {
            return f;
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
                    let said = format!(
                        "Pod {} reports digest {}, neither the old nor the new one",
                        t.pod,
                        short(d)
                    );
                    return Finding::reported(Reason::ValueMismatch, said);
                }
                Some(PodAnswer::Unresolved) => {
                    let said = format!(
                        "Pod {} runs with an unresolved `vault:` reference (the secret-injection webhook let it start unmutated)",
                        t.pod
                    );
                    return Finding::reported(Reason::UnresolvedReference, said);
                }
                Some(PodAnswer::Digest(None)) => {
                    let said = format!("Pod {} has no value", t.pod);
                    return Finding::reported(Reason::ValueMismatch, said);
                }
                Some(PodAnswer::Failed(e)) => {
                    unreachable = unreachable
                        .or_else(|| Some(Finding::new(e.reason(), Cause::Canary(e.clone()))))
                }
                _ => {}
            }
        }
        if let Some(u) = unreachable {
            return u;
        }
        if self.targets.is_empty() {
            return Finding::deadline("with no ready canary Pod of the current ReplicaSet");
        }
        Finding::waiting_for("the canary Pods to see the new value")
    }

    /// Turn the end into failure, result and detail.
    pub fn conclude(
        &self,
        end: &End,
        facts: &Facts,
    ) -> (Option<Failure>, RunResult, Option<String>) {
        match end {
            End::Success => (None, RunResult::Success, None),
            End::Failed(stage, f) => (
                Some(Failure {
                    stage: *stage,
                    reason: f.reason,
                }),
                RunResult::Failure,
                Some(f.cause.to_string()),
            ),
            End::Deadline => {
                let stage = self.first_incomplete();
                let f = self.attribute(stage, facts);
                (
                    Some(Failure {
                        stage,
                        reason: f.reason,
                    }),
                    RunResult::Failure,
                    Some(format!("{stage}: {}", f.cause)),
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

    /// End the run when a blocking signal the pipeline reported has
    /// persisted this long (unset: wait for the deadlines).
    pub fn set_blocked_for(&mut self, limit: Duration) {
        self.blocked_for = Some(limit);
    }

    /// What the cluster says blocks the first incomplete stage now: a
    /// finding read from a condition, a missing object, a canary's answer
    /// or a failing watch (never a plain wait, a deadline, or an
    /// unreachable canary, which may just be starting).
    pub fn blocking_signal(&self, facts: &Facts) -> Option<(Stage, Finding)> {
        if self.failed.is_some() {
            return None;
        }
        let stage = self.first_incomplete();
        if stage == Stage::StoreWrite || !self.started(stage) || self.ended(stage).is_some() {
            return None;
        }
        let f = self.attribute(stage, facts);
        matches!(f.cause, Cause::Reported(_) | Cause::Watch { .. }).then_some((stage, f))
    }

    /// Take the cluster's signal now: returns the stage and reason it
    /// blocks (for the `stage_blocked` gauge), and fails the run once a
    /// signal the pipeline reported persisted `blocked_for`.
    pub fn observe_blocking(&mut self, now: Stamp, facts: &Facts) -> Option<(Stage, Reason)> {
        let Some((stage, finding)) = self.blocking_signal(facts) else {
            self.blocked = None;
            return None;
        };
        let since = match &self.blocked {
            Some(b) if b.stage == stage && b.reason == finding.reason => b.since,
            _ => now,
        };
        let ends_run = matches!(finding.cause, Cause::Reported(_));
        self.blocked = Some(Blocked {
            stage,
            reason: finding.reason,
            since,
            ends_run,
        });
        if let (true, Some(limit)) = (ends_run, self.blocked_for) {
            if now.at.saturating_duration_since(since.at) >= limit {
                let said = format!(
                    "{} (reported for {}: blocked_for)",
                    finding.cause,
                    humantime::format_duration(limit)
                );
                self.fail(stage, Finding::new(finding.reason, Cause::Reported(said)));
            }
        }
        Some((stage, finding.reason))
    }

    /// The current blocking signal, if any.
    pub fn blocked(&self) -> Option<&Blocked> {
        self.blocked.as_ref()
    }

    /// When the current blocking signal ends the run, if it does.
    pub(super) fn blocked_until(&self) -> Option<Instant> {
        let b = self.blocked.as_ref().filter(|b| b.ends_run)?;
        Some(b.since.at + self.blocked_for?)
    }

    /// `force_sync` against an ExternalSecret ESO never refreshes on a
    /// metadata change (`refreshPolicy: CreatedOnce`, or `refreshInterval`
    /// 0 with the periodic policy): the patch would be ignored and the run
    /// would wait out its deadline. Fails `eso_sync` with `prober_error`
    /// naming the field, and returns true.
    pub fn refuse_force_sync(&mut self) -> bool {
        let Some(why) = self
            .base
            .es_status
            .as_ref()
            .and_then(EsState::ignores_force_sync)
        else {
            return false;
        };
        let said = format!(
            "chain.force_sync is set, but ESO ignores the force-sync annotation on this ExternalSecret ({why}): unset force_sync or change the ExternalSecret's refresh settings"
        );
        self.fail(Stage::EsoSync, Finding::reported(Reason::ProberError, said));
        true
    }
}
