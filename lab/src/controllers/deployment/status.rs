//! The Deployment status, pure: replica counts, the Progressing, Available
//! and ReplicaFailure conditions, and the progress deadline
//! (kube-controller-manager's `syncRolloutStatus`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::rollout::RsView;
use crate::controllers::workload::seconds;

/// Counts of the Deployment status, from its ReplicaSets' statuses.
pub fn status_counts(
    desired: i32,
    all: &[RsView],
    new: Option<&RsView>,
) -> (i32, i32, i32, i32, i32) {
    let replicas: i32 = all.iter().map(|r| r.status_replicas).sum();
    let updated = new.map(|n| n.status_replicas).unwrap_or(0);
    let ready: i32 = all.iter().map(|r| r.ready).sum();
    let available: i32 = all.iter().map(|r| r.available).sum();
    let unavailable = (desired - available).max(0);
    (replicas, updated, ready, available, unavailable)
}

pub(super) fn cond<'a>(
    conds: &'a [DeploymentCondition],
    t: &str,
) -> Option<&'a DeploymentCondition> {
    conds.iter().find(|c| c.type_.as_deref() == Some(t))
}

/// `SetDeploymentCondition`: no change when status and reason are the same;
/// keeps lastTransitionTime when only the reason changes.
pub fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = cond(conds, c.type_.as_deref().unwrap_or_default()) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

pub(super) fn new_condition(
    t: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(t.into()),
        status: Some(if status { "True" } else { "False" }.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Inputs to [`next_status`].
pub struct StatusInput<'a> {
    /// `spec.replicas`.
    pub desired: i32,
    /// `metadata.generation`.
    pub generation: i64,
    /// maxUnavailable as the Available condition uses it (0 for Recreate).
    pub max_unavailable: i32,
    /// `progressDeadlineSeconds`, if set.
    pub progress_deadline: Option<i32>,
    /// The new ReplicaSet's name.
    pub new_rs: Option<&'a str>,
    /// Counts from [`status_counts`].
    pub counts: (i32, i32, i32, i32, i32),
    /// A `ReplicaFailure` condition to copy from a ReplicaSet.
    pub replica_failure: Option<(String, String)>,
    /// Now, unix seconds.
    pub now: Time,
}

/// `calculateStatus` + `syncRolloutStatus`: the next Deployment status
/// from the previous one. Conditions in `prev` are kept where unchanged.
pub fn next_status(prev: &DeploymentStatus, input: &StatusInput<'_>) -> DeploymentStatus {
    let (replicas, updated, ready, available, unavailable) = input.counts;
    let mut conds = prev.conditions.clone().unwrap_or_default();
    let now = &input.now;
    if available >= input.desired - input.max_unavailable {
        set_condition(
            &mut conds,
            new_condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut conds,
            new_condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    let mut next = DeploymentStatus {
        observed_generation: Some(input.generation),
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some(unavailable),
        collision_count: prev.collision_count,
        terminating_replicas: prev.terminating_replicas,
        conditions: None,
    };
    if let Some(deadline) = input.progress_deadline {
        let rs_name = input.new_rs.unwrap_or_default();
        let current = cond(&conds, "Progressing").cloned();
        let is_complete = replicas == updated
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        if !is_complete {
            let complete =
                updated == input.desired && replicas == input.desired && available == input.desired;
            let prev_old = prev.replicas.unwrap_or(0) - prev.updated_replicas.unwrap_or(0);
            let progressing = updated > prev.updated_replicas.unwrap_or(0)
                || (replicas - updated) < prev_old
                || ready > prev.ready_replicas.unwrap_or(0)
                || available > prev.available_replicas.unwrap_or(0);
            if complete {
                set_condition(
                    &mut conds,
                    new_condition(
                        "Progressing",
                        true,
                        "NewReplicaSetAvailable",
                        format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                        now,
                    ),
                );
            } else if progressing {
                let mut c = new_condition(
                    "Progressing",
                    true,
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                    now,
                );
                if let Some(cur) = &current {
                    if cur.status.as_deref() == Some("True") {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                }
                conds.retain(|x| x.type_.as_deref() != Some("Progressing"));
                conds.push(c);
            } else if timed_out(current.as_ref(), deadline, seconds(now)) {
                set_condition(
                    &mut conds,
                    new_condition(
                        "Progressing",
                        false,
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                        now,
                    ),
                );
            }
        }
    }
    match &input.replica_failure {
        Some((reason, message)) => {
            let mut c = new_condition("ReplicaFailure", true, reason, message.clone(), now);
            if let Some(cur) = cond(&conds, "ReplicaFailure") {
                if cur.status == c.status && cur.reason == c.reason && cur.message == c.message {
                    c = cur.clone();
                }
            }
            conds.retain(|x| x.type_.as_deref() != Some("ReplicaFailure"));
            conds.push(c);
        }
        None => conds.retain(|x| x.type_.as_deref() != Some("ReplicaFailure")),
    }
    next.conditions = Some(conds);
    next
}

/// `DeploymentTimedOut`.
fn timed_out(current: Option<&DeploymentCondition>, deadline: i32, now: i64) -> bool {
    let Some(c) = current else { return false };
    match c.reason.as_deref() {
        Some("NewReplicaSetAvailable") => false,
        Some("ProgressDeadlineExceeded") => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| seconds(t) + i64::from(deadline) < now),
    }
}

/// When to look again for a progress deadline (`requeueStuckDeployment`).
pub fn deadline_requeue(
    status: &DeploymentStatus,
    deadline: Option<i32>,
    now: i64,
) -> Option<Duration> {
    let deadline = deadline?;
    let c = cond(
        status.conditions.as_deref().unwrap_or_default(),
        "Progressing",
    )?;
    if matches!(
        c.reason.as_deref(),
        Some("NewReplicaSetAvailable") | Some("ProgressDeadlineExceeded")
    ) {
        return None;
    }
    let at = seconds(c.last_update_time.as_ref()?) + i64::from(deadline) + 1;
    Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)).max(Duration::from_millis(100)))
}

/// Does this status say the rollout of `rs` just finished?
pub(super) fn completed_rs(status: &DeploymentStatus) -> Option<String> {
    let c = cond(
        status.conditions.as_deref().unwrap_or_default(),
        "Progressing",
    )?;
    if c.reason.as_deref() != Some("NewReplicaSetAvailable") {
        return None;
    }
    Some(c.message.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn input(counts: (i32, i32, i32, i32, i32), now: i64) -> StatusInput<'static> {
        StatusInput {
            desired: 3,
            generation: 2,
            max_unavailable: 0,
            progress_deadline: Some(10),
            new_rs: Some("d-abc"),
            counts,
            replica_failure: None,
            now: t(now),
        }
    }

    fn reason(s: &DeploymentStatus, ty: &str) -> String {
        cond(s.conditions.as_deref().unwrap(), ty)
            .unwrap()
            .reason
            .clone()
            .unwrap()
    }

    #[test]
    fn status_progress_complete_and_deadline() {
        let mut s = DeploymentStatus::default();
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            new_condition(
                "Progressing",
                true,
                "NewReplicaSetCreated",
                "x".into(),
                &t(1000),
            ),
        );
        s.conditions = Some(conds);
        // Progress: one updated replica.
        let s1 = next_status(&s, &input((4, 1, 3, 3, 0), 1001));
        assert_eq!(reason(&s1, "Progressing"), "ReplicaSetUpdated");
        assert_eq!(reason(&s1, "Available"), "MinimumReplicasAvailable");
        assert_eq!(s1.observed_generation, Some(2));
        // No progress, before the deadline: unchanged.
        let s2 = next_status(&s1, &input((4, 1, 3, 3, 0), 1005));
        assert_eq!(s2, s1);
        assert_eq!(
            deadline_requeue(&s2, Some(10), 1005),
            Some(Duration::from_secs(7))
        );
        // Past the deadline.
        let s3 = next_status(&s2, &input((4, 1, 3, 3, 0), 1012));
        let c = cond(s3.conditions.as_deref().unwrap(), "Progressing").unwrap();
        assert_eq!(c.reason.as_deref(), Some("ProgressDeadlineExceeded"));
        assert_eq!(c.status.as_deref(), Some("False"));
        assert_eq!(deadline_requeue(&s3, Some(10), 1012), None);
        // Complete.
        let s4 = next_status(&s1, &input((3, 3, 3, 3, 0), 1003));
        assert_eq!(reason(&s4, "Progressing"), "NewReplicaSetAvailable");
        assert_eq!(
            completed_rs(&s4).unwrap(),
            "ReplicaSet \"d-abc\" has successfully progressed."
        );
        // Not enough available.
        let s5 = next_status(&s, &input((3, 0, 1, 1, 2), 1001));
        assert_eq!(reason(&s5, "Available"), "MinimumReplicasUnavailable");
        assert_eq!(s5.unavailable_replicas, Some(2));
    }

    #[test]
    fn replica_failure_is_copied_and_cleared() {
        let mut i = input((0, 0, 0, 0, 3), 1000);
        i.replica_failure = Some(("FailedCreate".into(), "webhook down".into()));
        let s = next_status(&DeploymentStatus::default(), &i);
        assert_eq!(reason(&s, "ReplicaFailure"), "FailedCreate");
        let s2 = next_status(&s, &input((0, 0, 0, 0, 3), 1001));
        assert!(cond(s2.conditions.as_deref().unwrap(), "ReplicaFailure").is_none());
    }
}
