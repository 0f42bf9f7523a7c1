//! The tracker and attribution, driven by made-up events and stamps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::*;
use crate::probe::canary::CanaryError;
use crate::probe::cluster::{Change, Condition, Fault};
use crate::probe::{Failure, RunResult};

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

fn fault(reason: Reason, message: &str, c: &Clock) -> Fault {
    Fault {
        reason,
        message: message.into(),
        stamp: c.at(0),
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
    assert!(t.verdict(c.at(305).at).is_none());
    t.on_canary("new-pod", c.at(310), PodAnswer::Digest(Some(NEW.into())));
    t.set_targets(targets, expected);
    assert!(matches!(t.verdict(c.at(311).at), Some(End::Success)));
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
    assert!(t.verdict(c.at(59_999).at).is_none());
    let end = t.verdict(c.at(60_000).at).unwrap();
    assert!(matches!(end, End::Deadline));
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
    // The detail reads as it did before the causes were typed.
    let (_, _, d) = t.conclude(&End::Deadline, &Facts::default());
    assert_eq!(d.as_deref(), Some("eso_sync: ExternalSecret not found"));

    // The ExternalSecret missing, or its CRD not served.
    assert_eq!(
        t.attribute(Stage::EsoSync, &Facts::default()).reason,
        Reason::NotFound
    );
    let crd = Facts {
        es_fault: Some(fault(Reason::NotFound, "404", &c)),
        ..Default::default()
    };
    assert_eq!(t.attribute(Stage::EsoSync, &crd).reason, Reason::NotFound);
    let api = Facts {
        es_fault: Some(fault(Reason::ApiError, "500", &c)),
        ..Default::default()
    };
    assert_eq!(t.attribute(Stage::EsoSync, &api).reason, Reason::ApiError);

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
        Some(End::Failed(
            Stage::Rollout,
            Finding {
                reason: Reason::RolloutStuck,
                ..
            }
        ))
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
        Some(End::Failed(
            Stage::CanaryObserve,
            Finding {
                reason: Reason::ValueMismatch,
                ..
            }
        ))
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
        PodAnswer::Failed(Arc::new(CanaryError::Unreachable {
            url: "http://127.0.0.9:8080/digest".into(),
            message: "refused".into(),
        })),
    );
    t.set_targets(targets.clone(), expected);
    assert!(t.verdict(c.at(31).at).is_none());
    let (f, _, _) = t.conclude(&End::Deadline, &Facts::default());
    assert_eq!(f.unwrap().reason, Reason::CanaryUnreachable);
    t.on_canary("a", c.at(35), PodAnswer::Digest(Some(OTHER.into())));
    let (f, _, _) = t.conclude(&End::Deadline, &Facts::default());
    assert_eq!(f.unwrap().reason, Reason::ValueMismatch);
    // Both see the new value: done at the later answer.
    t.on_canary("a", c.at(40), PodAnswer::Digest(Some(NEW.into())));
    t.on_canary("b", c.at(45), PodAnswer::Digest(Some(NEW.into())));
    t.set_targets(targets, expected);
    assert!(matches!(t.verdict(c.at(46).at), Some(End::Success)));
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
    let limits: BTreeMap<Stage, Duration> = [(Stage::SecretUpdate, Duration::from_secs(1))].into();
    let mut t = Tracker::new(plan, NEW.into(), base(), c.at(60_000).at, limits);
    t.store_written(&c.written(0, 10));
    assert_eq!(t.next_wakeup(), c.at(1010).at);
    assert!(t.verdict(c.at(1009).at).is_none());
    assert!(matches!(t.verdict(c.at(1010).at), Some(End::Deadline)));
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
