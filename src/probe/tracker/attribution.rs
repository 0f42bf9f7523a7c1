//! Failure attribution: why a run's first incomplete stage did not
//! complete, read from what the cluster said (watcher faults, conditions,
//! crash evidence, canary answers), never from a guess. Each finding is a
//! bounded [`Reason`] (the metric label) and a typed [`Cause`] (the
//! report's detail).

use std::sync::Arc;

use super::super::canary::CanaryError;
use super::super::cluster::{ClusterError, DeploymentState, EsState, Fault, RolloutStatus};
use super::super::store::StoreError;
use super::super::{Failure, Reason, RunResult, Stage};
use super::{End, PodAnswer, Tracker};

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
}

/// A digest shortened for messages.
pub(super) fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
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

    /// Why `stage` did not complete, from what the cluster said.
    pub fn attribute(&self, stage: Stage, facts: &Facts) -> Finding {
        match stage {
            Stage::StoreWrite => Finding::waiting_for("the store write"),
            Stage::EsoSync => self.attribute_eso(facts),
            Stage::SecretUpdate => self.attribute_secret(facts),
            Stage::ReloaderTrigger => Finding::watch(&facts.deployment_fault, "Deployment")
                .or_else(|| self.deployment_missing(facts))
                .unwrap_or_else(|| Finding::waiting_for("the Deployment's pod template to change")),
            Stage::Rollout => self.attribute_rollout(facts),
            Stage::CanaryObserve => self.attribute_canary(facts),
            Stage::EndToEnd => Finding::waiting_for("the end-to-end deadline"),
        }
    }

    fn attribute_eso(&self, facts: &Facts) -> Finding {
        if let Some(f) = Finding::watch(&facts.es_fault, "ExternalSecret") {
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
        if let Some(f) = Finding::watch(&facts.secret_fault, "Secret") {
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
        if let Some(f) = Finding::watch(&facts.deployment_fault, "Deployment")
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
        if let Some(f) = Finding::watch(&facts.pods_fault, "canary Pods") {
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
}
