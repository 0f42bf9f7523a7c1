//! Unit tests of `cluster`.

use super::*;
use serde_json::json;

#[test]
fn deployment_rollout_follows_kubectl() {
    let mut d = DeploymentState {
        generation: 3,
        observed_generation: 2,
        spec_replicas: 2,
        replicas: 2,
        updated_replicas: 2,
        available_replicas: 2,
        ..Default::default()
    };
    assert!(matches!(d.rollout(), RolloutStatus::Waiting(_)));
    d.observed_generation = 3;
    d.updated_replicas = 1;
    d.replicas = 3;
    assert_eq!(
        d.rollout(),
        RolloutStatus::Waiting("replicas to be updated")
    );
    d.updated_replicas = 2;
    assert_eq!(
        d.rollout(),
        RolloutStatus::Waiting("old replicas to terminate")
    );
    d.replicas = 2;
    d.available_replicas = 1;
    assert_eq!(
        d.rollout(),
        RolloutStatus::Waiting("updated replicas to become available")
    );
    d.available_replicas = 2;
    assert_eq!(d.rollout(), RolloutStatus::Complete);
    d.progressing = Some(Condition {
        status: "False".into(),
        reason: "ProgressDeadlineExceeded".into(),
        message: "ReplicaSet x has timed out progressing.".into(),
    });
    assert!(matches!(d.rollout(), RolloutStatus::DeadlineExceeded(_)));
}

#[test]
fn projections_read_the_fields_runs_need() {
    let es: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "metadata": {"name": "es", "namespace": "ns", "resourceVersion": "7"},
            "status": {"refreshTime": "2025-01-02T03:04:05Z", "conditions": [
                {"type": "Ready", "status": "False", "reason": "SecretSyncedError", "message": "could not get secret data from provider"}
            ]}
        }))
        .unwrap();
    let s = EsState::from_object(&es);
    assert_eq!(
        s.refresh_time.unwrap().to_rfc3339(),
        "2025-01-02T03:04:05+00:00"
    );
    assert_eq!(s.sync_failed().unwrap().reason, "SecretSyncedError");
    assert!(!s.is_ready());

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "s", "resourceVersion": "1"},
        "data": {"value": "aGVsbG8="}
    }))
    .unwrap();
    assert_eq!(
        SecretState::from_secret(&secret, "value").digest.as_deref(),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    assert_eq!(SecretState::from_secret(&secret, "other").digest, None);

    let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": {"pod-template-hash": "abc"}, "resourceVersion": "2"},
            "status": {"podIP": "127.0.0.5", "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "canary", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}]}
        }))
        .unwrap();
    let p = PodState::from_pod(&pod);
    assert_eq!(p.owner.as_deref(), Some("abc"));
    assert_eq!(p.ip.as_deref(), Some("127.0.0.5"));
    assert!(p.ready && !p.terminating);
    assert_eq!(p.restarts, 4);
    assert!(p.crash.unwrap().contains("CrashLoopBackOff"));
}

#[test]
fn template_digest_changes_with_the_template_only() {
    let mk = |ann: &str, replicas: i32| -> Deployment {
        serde_json::from_value(json!({
                "metadata": {"name": "d", "generation": 1},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "c"}},
                    "template": {"metadata": {"annotations": {RESTARTED_AT: ann}}, "spec": {"containers": [{"name": "c"}]}}}
            }))
            .unwrap()
    };
    let a = DeploymentState::from_deployment(&mk("t1", 1));
    let b = DeploymentState::from_deployment(&mk("t1", 3));
    let c = DeploymentState::from_deployment(&mk("t2", 1));
    assert_eq!(a.template, b.template);
    assert_ne!(a.template, c.template);
    assert_eq!(c.restarted_at.as_deref(), Some("t2"));
}

#[test]
fn gone_is_a_relist_not_a_fault() {
    let gone = watcher::Error::WatchError(Box::new(
        kube::core::Status::failure("too old", "Expired").with_code(410),
    ));
    assert_eq!(classify(&gone), None);
    let missing = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404),
    )));
    assert_eq!(classify(&missing), Some(Reason::NotFound));
}
