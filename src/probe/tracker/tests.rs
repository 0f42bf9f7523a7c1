//! The tracker and attribution, driven by made-up events and stamps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::*;
use crate::probe::canary::CanaryError;
use crate::probe::cluster::{Change, Condition, Fault, Gap};
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
        // After the write (a fault counts only if it began in the stage).
        stamp: c.at(20),
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
        ready_canaries: 0,
        ..Default::default()
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
        refresh_time: Some(refresh),
        ready: Some(Condition {
            status: "True".into(),
            reason: "SecretSynced".into(),
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn secret(d: &str) -> SecretState {
    SecretState {
        resource_version: None,
        digest: Some(d.into()),
        reloader_hash: Some(format!("h-{}", &d[..4])),
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
        // A template other than the baseline's carries Reloader's hash of
        // the new value (see `secret`).
        marks: Marks {
            restarted_at: None,
            reloader: (template != "t1")
                .then(|| format!("h-{}", &NEW[..4]))
                .into_iter()
                .collect(),
        },
        ..Default::default()
    }
}

fn pod(owner: &str, ready: bool) -> PodState {
    // A Pod of a new ReplicaSet carries the new template's marks.
    let marks = if owner == "old" {
        Marks::default()
    } else {
        deployment("t2", 0, 0, 0, 0).marks
    };
    PodState {
        ip: Some("127.0.0.9".into()),
        ready,
        owner: Some(owner.into()),
        marks,
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
fn eso_status_delivered_just_before_its_secret_ends_the_sync_at_the_status() {
    // Seen on the real cluster: ESO wrote the Secret, then its status 6 ms
    // later, and the ExternalSecret watch delivered first. ESO's next
    // refresh (2 s later) must not become the end of the stage.
    let mut c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_external_secret(&c.change(1_000, "es", Some(es_ready(c.secs(1)))));
    t.on_secret(&c.change(1_005, "s", Some(secret(NEW))));
    t.tick(c.at(1_100).at);
    assert_eq!(t.ended(Stage::EsoSync), None, "waits for a later status");
    assert!(t.next_wakeup() <= c.at(1_005).at + ESO_REORDER_WINDOW);
    t.on_external_secret(&c.change(3_000, "es", Some(es_ready(c.secs(3)))));
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(1_000)));
    // The same without the later refresh: the window's end decides.
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_external_secret(&c.change(1_000, "es", Some(es_ready(c.secs(1)))));
    t.on_secret(&c.change(1_005, "s", Some(secret(NEW))));
    t.tick(c.at(1_005).at + ESO_REORDER_WINDOW);
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(1_000)));
    // An early status of a sync that did not carry our value, then ours:
    // the status right after the Secret is the sync's own.
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_external_secret(&c.change(950, "es", Some(es_ready(c.secs(0)))));
    t.on_secret(&c.change(1_000, "s", Some(secret(NEW))));
    t.on_external_secret(&c.change(1_006, "es", Some(es_ready(c.secs(1)))));
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(1_006)));
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
    // ESO keeps re-reporting its sync every refresh (2 s, as often as the
    // grace): the first report ends the stage, later ones do not postpone
    // it (they used to, so the run could time out at eso_sync).
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(20, "s", None));
    t.on_external_secret(&c.change(300, "es", Some(es_ready(c.secs(0)))));
    t.on_external_secret(&c.change(2_250, "es", Some(es_ready(c.secs(2)))));
    t.tick(c.at(300).at + ESO_STATUS_GRACE);
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(300)));
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
    t.restart_sent(Restarted {
        restarted_at: "r".into(),
        generation: 2,
    });
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
    t.restart_sent(Restarted {
        restarted_at: "r".into(),
        generation: 2,
    });
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

fn marks(restarted: Option<&str>, hash: Option<&str>) -> Marks {
    Marks {
        restarted_at: restarted.map(str::to_string),
        reloader: hash.into_iter().map(str::to_string).collect(),
    }
}

fn marked(mut d: DeploymentState, m: &Marks) -> DeploymentState {
    d.marks = m.clone();
    d.restarted_at = m.restarted_at.clone();
    d
}

fn secret_h(d: &str, hash: &str) -> SecretState {
    SecretState {
        reloader_hash: Some(hash.into()),
        ..secret(d)
    }
}

fn pod_m(owner: &str, m: &Marks) -> PodState {
    PodState {
        marks: m.clone(),
        ..pod(owner, true)
    }
}

fn target_names(t: &Tracker, view: &View<PodState>) -> Vec<String> {
    t.targets(view, None).0.into_iter().map(|t| t.pod).collect()
}

#[test]
fn a_concurrent_restart_before_reloaders_patch_neither_ends_nor_shortens_anything() {
    let mut c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(100, "s", Some(secret_h(NEW, "h-new"))));
    // `kubectl rollout restart` lands first: its template carries the old hash.
    let kubectl = marks(Some("2025-06-15T10:00:00Z"), Some("h-old"));
    t.on_deployment(&c.change(
        120,
        "d",
        Some(marked(deployment("tr", 2, 1, 0, 0), &kubectl)),
    ));
    assert_eq!(t.ended(Stage::ReloaderTrigger), None);
    t.on_deployment(&c.change(
        200,
        "d",
        Some(marked(deployment("tr", 2, 2, 1, 1), &kubectl)),
    ));
    assert!(!t.started(Stage::Rollout));
    // A late Reloader patch for the previous value does not count either.
    let late = marks(Some("2025-06-15T10:00:00Z"), Some("h-older"));
    t.on_deployment(&c.change(220, "d", Some(marked(deployment("tl", 3, 2, 0, 0), &late))));
    assert_eq!(t.ended(Stage::ReloaderTrigger), None);
    // Reloader's patch for this run's Secret.
    let ours = marks(Some("2025-06-15T10:00:00Z"), Some("h-new"));
    t.on_deployment(&c.change(250, "d", Some(marked(deployment("tn", 4, 3, 0, 0), &ours))));
    assert_eq!(t.ended(Stage::ReloaderTrigger), Some(c.at(250)));
    t.on_deployment(&c.change(300, "d", Some(marked(deployment("tn", 4, 4, 1, 0), &ours))));
    assert_eq!(t.ended(Stage::Rollout), None);
    t.on_deployment(&c.change(400, "d", Some(marked(deployment("tn", 4, 4, 1, 1), &ours))));
    assert_eq!(t.ended(Stage::Rollout), Some(c.at(400)));
    // Only the Pods of the template carrying the value are canaries.
    let view = pods_view(&[
        ("restart-pod", pod_m("rs-r", &kubectl)),
        ("late-pod", pod_m("rs-l", &late)),
        ("new-pod", pod_m("rs-n", &ours)),
    ]);
    assert_eq!(target_names(&t, &view), vec!["new-pod"]);
}

#[test]
fn a_restart_after_the_value_lengthens_the_rollout_and_its_pods_are_canaries() {
    let mut c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(100, "s", Some(secret_h(NEW, "h-new"))));
    let ours = marks(None, Some("h-new"));
    t.on_deployment(&c.change(150, "d", Some(marked(deployment("tn", 2, 2, 0, 0), &ours))));
    assert_eq!(t.ended(Stage::ReloaderTrigger), Some(c.at(150)));
    // kubectl rollout restart mid-rollout: the Deployment's status now
    // speaks of generation 3, and the run waits for it.
    let both = marks(Some("2025-06-15T10:00:00Z"), Some("h-new"));
    t.on_deployment(&c.change(200, "d", Some(marked(deployment("tk", 3, 2, 1, 1), &both))));
    assert_eq!(t.ended(Stage::Rollout), None);
    t.on_deployment(&c.change(600, "d", Some(marked(deployment("tk", 3, 3, 1, 1), &both))));
    assert_eq!(t.ended(Stage::Rollout), Some(c.at(600)));
    let view = pods_view(&[
        ("ours", pod_m("rs-n", &ours)),
        ("kubectl", pod_m("rs-k", &both)),
    ]);
    assert_eq!(target_names(&t, &view), vec!["kubectl", "ours"]);
}

#[test]
fn reloaders_patch_seen_before_the_secret_still_counts() {
    let mut c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    let ours = marks(None, Some("h-new"));
    t.on_deployment(&c.change(95, "d", Some(marked(deployment("tn", 2, 2, 0, 0), &ours))));
    t.on_secret(&c.change(100, "s", Some(secret_h(NEW, "h-new"))));
    // Two watch streams out of order: the trigger ends at its own start.
    assert_eq!(t.ended(Stage::ReloaderTrigger), Some(c.at(100)));
}

#[test]
fn trigger_restart_ends_only_at_the_restarted_at_the_prober_sent() {
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
    let kubectl = marks(Some("2025-06-15T10:00:00Z"), None);
    t.on_deployment(&c.change(
        20,
        "d",
        Some(marked(deployment("tk", 2, 1, 0, 0), &kubectl)),
    ));
    t.restart_sent(Restarted {
        restarted_at: "2025-06-15T10:00:01Z".into(),
        generation: 3,
    });
    t.on_deployment(&c.change(
        25,
        "d",
        Some(marked(deployment("tk", 2, 2, 1, 1), &kubectl)),
    ));
    assert_eq!(t.ended(Stage::ReloaderTrigger), None);
    let ours = marks(Some("2025-06-15T10:00:01Z"), None);
    t.on_deployment(&c.change(30, "d", Some(marked(deployment("to", 3, 2, 1, 1), &ours))));
    assert_eq!(t.ended(Stage::ReloaderTrigger), Some(c.at(30)));
    t.on_deployment(&c.change(90, "d", Some(marked(deployment("to", 3, 3, 1, 1), &ours))));
    assert_eq!(t.ended(Stage::Rollout), Some(c.at(90)));
    let view = pods_view(&[("k", pod_m("rs-k", &kubectl)), ("o", pod_m("rs-o", &ours))]);
    assert_eq!(target_names(&t, &view), vec!["o"]);
}

fn es_synced(refresh: DateTime<Utc>, synced: &str) -> EsState {
    EsState {
        synced_resource_version: Some(synced.into()),
        ..es_ready(refresh)
    }
}

fn tracker_with(plan: Plan, base: Baseline, clock: &Clock) -> Tracker {
    Tracker::new(plan, NEW.into(), base, clock.at(60_000).at, BTreeMap::new())
}

#[test]
fn eso_sync_is_decided_by_esos_own_status_change_not_its_clock() {
    let mut c = Clock::new();
    // ESO's clock 2 s behind ours: its refreshTime is before our write.
    let mut b = base();
    b.es_status = Some(es_synced(c.secs(-10), "1-abc"));
    let mut t = tracker_with(plan_eso_reloader(), b.clone(), &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(100, "s", Some(secret(NEW))));
    t.on_external_secret(&c.change(104, "es", Some(es_synced(c.secs(-2), "1-abc"))));
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(104)));

    // ESO's clock 2 s ahead: an event that leaves the status as it was at
    // run start (the force-sync annotation, a label) does not count.
    b.es_status = Some(es_synced(c.secs(2), "1-abc"));
    let mut t = tracker_with(plan_eso_reloader(), b, &c);
    t.store_written(&c.written(0, 10));
    t.on_external_secret(&c.change(50, "es", Some(es_synced(c.secs(2), "1-abc"))));
    t.on_secret(&c.change(100, "s", Some(secret(NEW))));
    t.on_external_secret(&c.change(101, "es", Some(es_synced(c.secs(2), "1-abc"))));
    assert_eq!(t.ended(Stage::EsoSync), None);
    t.on_external_secret(&c.change(110, "es", Some(es_synced(c.secs(3), "1-abc"))));
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(110)));
}

#[test]
fn an_eso_status_update_that_changed_nothing_ends_the_sync_with_the_secret() {
    let mut c = Clock::new();
    // The sync before the run and ours in the same second: ESO's status
    // update is a no-op, no event comes.
    let mut b = base();
    b.es_status = Some(es_synced(c.secs(0), "1-abc"));
    let mut t = tracker_with(plan_eso_reloader(), b, &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(100, "s", Some(secret(NEW))));
    t.tick(c.at(100).at + ESO_STATUS_GRACE - Duration::from_millis(1));
    assert_eq!(t.ended(Stage::EsoSync), None);
    t.tick(c.at(100).at + ESO_STATUS_GRACE);
    assert_eq!(t.ended(Stage::EsoSync), Some(c.at(100)));
}

#[test]
fn a_watch_fault_counts_only_if_it_began_after_the_stage_started() {
    let c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(500, 510));
    // A fault from before the run that is still there did not stop eso_sync.
    let old = Facts {
        es: Some(es_ready(c.secs(-5))),
        es_fault: Some(fault(Reason::ApiError, "500", &c)),
        secret_present: true,
        ..Default::default()
    };
    assert_eq!(t.attribute(Stage::EsoSync, &old).reason, Reason::Timeout);
    let mut new = old.clone();
    new.es_fault = Some(Fault {
        stamp: c.at(600),
        ..fault(Reason::ApiError, "500", &c)
    });
    assert_eq!(t.attribute(Stage::EsoSync, &new).reason, Reason::ApiError);
}

#[test]
fn durations_measured_across_a_watch_gap_are_marked() {
    let mut c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(3000, "s", Some(secret(NEW))));
    let gap = Gap {
        from: c.at(1000),
        to: Some(c.at(2900)),
    };
    let marked = t.gap_stages(&[gap]);
    assert_eq!(
        marked,
        vec![Stage::EsoSync, Stage::SecretUpdate, Stage::EndToEnd]
    );
    // A gap before the run touches nothing.
    let before = Gap {
        from: Stamp {
            at: c.at(0).at - Duration::from_secs(5),
            wall: c.at(0).wall,
        },
        to: Some(Stamp {
            at: c.at(0).at - Duration::from_secs(1),
            wall: c.at(0).wall,
        }),
    };
    assert!(t.gap_stages(&[before]).is_empty());
}

#[test]
fn crash_evidence_comes_only_from_new_live_pods_and_a_crash_loop_fails_at_once() {
    let mut c = Clock::new();
    let mut b = base();
    b.restarts.insert("old-pod".into(), 0);
    let mut t = tracker_with(plan_eso_reloader(), b, &c);
    t.store_written(&c.written(0, 10));
    t.on_secret(&c.change(100, "s", Some(secret(NEW))));
    t.on_deployment(&c.change(150, "d", Some(deployment("t2", 2, 2, 0, 0))));
    let looping = |owner: &str| PodState {
        restarts: 1,
        crash: Some("container canary CrashLoopBackOff: back-off 10s".into()),
        ..pod(owner, false)
    };
    // A Pod that existed at run start, and a terminating new one: no evidence.
    t.on_pod(&c.change(200, "old-pod", Some(looping("new"))));
    let terminating = PodState {
        terminating: true,
        ..looping("new")
    };
    t.on_pod(&c.change(210, "going-pod", Some(terminating)));
    assert!(t.verdict(c.at(211).at).is_none());
    let facts = Facts {
        deployment: Some(deployment("t2", 2, 2, 0, 0)),
        ..Default::default()
    };
    assert_eq!(t.attribute(Stage::Rollout, &facts).reason, Reason::Timeout);
    // A new Pod in CrashLoopBackOff ends the run at once.
    t.on_pod(&c.change(300, "new-pod", Some(looping("new"))));
    assert!(matches!(
        t.verdict(c.at(301).at),
        Some(End::Failed(
            Stage::Rollout,
            Finding {
                reason: Reason::CanaryCrashing,
                ..
            }
        ))
    ));
}

#[test]
fn an_unresolved_vault_reference_is_its_own_reason_at_canary_observe() {
    let mut c = Clock::new();
    // Bank-Vaults chain (restart, env): a new Pod started unmutated fails at once.
    let plan = Plan {
        eso: false,
        secret: false,
        trigger: Some(Trigger::Restart),
        deployment: true,
        env_canary: true,
    };
    let mut t = tracker(plan, &c);
    t.store_written(&c.written(0, 10));
    t.restart_sent(Restarted {
        restarted_at: "r".into(),
        generation: 2,
    });
    t.on_deployment(&c.change(30, "d", Some(deployment("t2", 2, 2, 1, 1))));
    assert!(t.observing());
    t.on_canary("p", c.at(40), PodAnswer::Unresolved);
    match t.verdict(c.at(41).at) {
        Some(End::Failed(Stage::CanaryObserve, f)) => {
            assert_eq!(f.reason, Reason::UnresolvedReference);
            let said = f.cause.to_string();
            assert!(said.contains("unresolved `vault:` reference"), "{said}");
        }
        other => panic!("{other:?}"),
    }

    // A file canary: named at the deadline, not a plain mismatch.
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
    let view = pods_view(&[("a", pod("rs", true))]);
    let (targets, expected) = t.targets(&view, None);
    t.on_canary("a", c.at(30), PodAnswer::Unresolved);
    t.set_targets(targets, expected);
    assert!(t.verdict(c.at(31).at).is_none());
    let (f, _, _) = t.conclude(&End::Deadline, &Facts::default());
    assert_eq!(f.unwrap().reason, Reason::UnresolvedReference);
}

#[test]
fn a_blocking_signal_is_exported_at_once_and_ends_the_run_after_blocked_for() {
    let mut c = Clock::new();
    let mut t = tracker(plan_eso_reloader(), &c);
    t.set_blocked_for(Duration::from_secs(10));
    t.store_written(&c.written(0, 10));
    let healthy = Facts {
        es: Some(es_ready(c.secs(-5))),
        secret_present: true,
        ..Default::default()
    };
    // Waiting for ESO is no signal.
    assert_eq!(t.observe_blocking(c.at(20), &healthy), None);
    let mut failing = es_ready(c.secs(-5));
    failing.ready = Some(Condition {
        status: "False".into(),
        reason: "SecretSyncedError".into(),
        message: "could not get secret data from provider".into(),
    });
    t.on_external_secret(&c.change(1_000, "es", Some(failing.clone())));
    let facts = Facts {
        es: Some(failing),
        ..healthy.clone()
    };
    // Exported as soon as the cluster says it...
    assert_eq!(
        t.observe_blocking(c.at(1_000), &facts),
        Some((Stage::EsoSync, Reason::SyncError))
    );
    assert_eq!(t.next_wakeup(), c.at(11_000).at);
    assert!(t.verdict(c.at(1_001).at).is_none());
    t.observe_blocking(c.at(10_999), &facts);
    assert!(t.verdict(c.at(10_999).at).is_none());
    // ...and the run ends once it persisted blocked_for, not at the 60 s deadline.
    t.observe_blocking(c.at(11_000), &facts);
    match t.verdict(c.at(11_000).at) {
        Some(End::Failed(Stage::EsoSync, f)) => {
            assert_eq!(f.reason, Reason::SyncError);
            let said = f.cause.to_string();
            assert!(
                said.contains("SecretSyncedError") && said.contains("10s"),
                "{said}"
            );
        }
        other => panic!("{other:?}"),
    }

    // A signal that clears restarts the clock.
    let mut t = tracker(plan_eso_reloader(), &c);
    t.set_blocked_for(Duration::from_secs(10));
    t.store_written(&c.written(0, 10));
    t.observe_blocking(c.at(1_000), &facts);
    assert_eq!(t.observe_blocking(c.at(5_000), &healthy), None);
    t.observe_blocking(c.at(6_000), &facts);
    t.observe_blocking(c.at(11_000), &facts);
    assert!(t.verdict(c.at(11_000).at).is_none());

    // A failing watch is exported but does not end the run: it may recover.
    let mut t = tracker(plan_eso_reloader(), &c);
    t.set_blocked_for(Duration::from_secs(10));
    t.store_written(&c.written(0, 10));
    let outage = Facts {
        es_fault: Some(fault(Reason::ApiError, "connection refused", &c)),
        ..healthy
    };
    assert_eq!(
        t.observe_blocking(c.at(1_000), &outage),
        Some((Stage::EsoSync, Reason::ApiError))
    );
    t.observe_blocking(c.at(30_000), &outage);
    assert!(t.verdict(c.at(30_000).at).is_none());
    assert!(!t.blocked().unwrap().ends_run);
}

#[test]
fn force_sync_is_refused_when_eso_would_ignore_it() {
    let c = Clock::new();
    let with = |policy: Option<&str>, interval: Option<&str>| {
        let es = EsState {
            refresh_policy: policy.map(str::to_string),
            refresh_interval: interval.map(str::to_string),
            ..es_ready(c.secs(-5))
        };
        let mut t = tracker_with(
            plan_eso_reloader(),
            Baseline {
                es_status: Some(es),
                ..base()
            },
            &c,
        );
        let refused = t.refuse_force_sync();
        (refused, t.verdict(c.at(1).at))
    };
    for (policy, interval, field) in [
        (
            Some("CreatedOnce"),
            Some("1h"),
            "refreshPolicy is CreatedOnce",
        ),
        (None, Some("0s"), "refreshInterval is \"0s\""),
        (Some("Periodic"), Some("0"), "refreshInterval is \"0\""),
    ] {
        match with(policy, interval) {
            (true, Some(End::Failed(Stage::EsoSync, f))) => {
                assert_eq!(f.reason, Reason::ProberError);
                let said = f.cause.to_string();
                assert!(
                    said.contains(field) && said.contains("force_sync"),
                    "{said}"
                );
            }
            other => panic!("{policy:?} {interval:?}: {other:?}"),
        }
    }
    for (policy, interval) in [
        (None, Some("1h")),
        (Some("OnChange"), Some("0s")),
        (Some("Periodic"), Some("10s")),
        (None, None),
    ] {
        assert!(
            matches!(with(policy, interval), (false, None)),
            "{policy:?} {interval:?}"
        );
    }
}
