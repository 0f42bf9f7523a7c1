//! Unit tests of `cluster`.

use std::collections::BTreeMap;

use super::follow::classify;
use super::state::is_zero_duration;
use super::*;
use crate::probe::{Reason, Stamp};
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

#[test]
fn the_change_log_keeps_only_recent_changes_and_says_what_it_dropped() {
    use super::view::{prune, push, CHANGE_LOG_AGE};
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    let seq = AtomicU64::new(0);
    let mut v: View<u32> = View::default();
    let t0 = Instant::now();
    let at = |after: Duration| Stamp {
        at: t0 + after,
        wall: chrono::Utc::now(),
    };
    for i in 0..5 {
        push(&mut v, &seq, at(Duration::from_millis(i)), "a".into(), None);
    }
    assert_eq!(v.changes.len(), 5);
    // A change after the age drops the older ones as it is logged.
    let later = CHANGE_LOG_AGE + Duration::from_secs(1);
    push(&mut v, &seq, at(later), "a".into(), None);
    assert_eq!(v.changes.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![6]);
    assert_eq!(v.evicted, 5, "the last change dropped");
    // An idle log empties on the watcher's prune tick.
    assert!(!prune(&mut v, t0 + later));
    assert!(prune(&mut v, t0 + later * 3));
    assert!(v.changes.is_empty());
    assert_eq!(v.evicted, 6);
    // A run subscribing now starts after everything dropped.
    assert_eq!(v.last_seq().max(v.evicted), 6);
}

mod marks_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reloader_hash_and_marks_match_what_reloader_writes() {
        let mut data = BTreeMap::new();
        data.insert("b".to_string(), k8s_openapi::ByteString(b"2".to_vec()));
        data.insert("a".to_string(), k8s_openapi::ByteString(b"1".to_vec()));
        // printf 'a=1;b=2' | sha1sum
        assert_eq!(
            reloader_hash(&data),
            "f83e99e324ba68ccc373a58ef1eb42f8ab88646a"
        );
        assert_eq!(reloader_env_var("canary-env"), "STAKATER_CANARY_ENV_SECRET");
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": 4},
            "spec": {"selector": {}, "template": {
                "metadata": {"annotations": {
                    RESTARTED_AT: "2025-01-01T00:00:00Z",
                    LAST_RELOADED_FROM: "{\"type\":\"SECRET\",\"name\":\"canary-env\",\"namespace\":\"ns\",\"hash\":\"abc\"}"
                }},
                "spec": {"containers": [{"name": "c", "env": [
                    {"name": "STAKATER_CANARY_ENV_SECRET", "value": "def"},
                    {"name": "STAKATER_OTHER_SECRET", "value": "zzz"}
                ]}]}
            }}
        }))
        .unwrap();
        let s = DeploymentState::from_deployment_for(&d, Some("canary-env"));
        assert_eq!(
            s.marks.restarted_at.as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
        assert_eq!(
            s.marks
                .reloader
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            vec!["abc", "def"]
        );
        let other = DeploymentState::from_deployment_for(&d, Some("other"));
        assert_eq!(
            other
                .marks
                .reloader
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            vec!["zzz"]
        );
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {RESTARTED_AT: "2025-01-01T00:00:00Z"}},
            "spec": {"containers": [{"name": "c", "env": [{"name": "STAKATER_CANARY_ENV_SECRET", "value": "def"}]}]}
        }))
        .unwrap();
        let p = PodState::from_pod_for(&pod, Some("canary-env"));
        assert_eq!(p.marks.restarted_at, s.marks.restarted_at);
        assert!(p.marks.reloader.contains("def"));
    }
}

mod health_tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "Forbidden").with_code(code),
        ))
    }

    #[test]
    fn the_probers_own_refusals_are_prober_errors_naming_the_webhook() {
        let rbac = ClusterError::ForceSyncPatch {
            namespace: "ns".into(),
            name: "es".into(),
            value: "1".into(),
            source: api(403, "externalsecrets.external-secrets.io \"es\" is forbidden: User \"system:serviceaccount:ns:secret-canary\" cannot patch resource"),
        };
        assert_eq!(rbac.reason(), Reason::ProberError);
        assert!(!rbac.to_string().contains("webhook"));
        let webhook = ClusterError::ForceSyncPatch {
            namespace: "ns".into(),
            name: "es".into(),
            value: "1".into(),
            source: api(403, "admission webhook \"deny-annotations.kyverno.svc\" denied the request: annotations are immutable"),
        };
        assert_eq!(webhook.reason(), Reason::ProberError);
        assert!(webhook
            .to_string()
            .contains("(refused by admission webhook deny-annotations.kyverno.svc)"));
        let unauthorized = ClusterError::RestartPatch {
            namespace: "ns".into(),
            name: "d".into(),
            restarted_at: "t".into(),
            source: api(401, "Unauthorized"),
        };
        assert_eq!(unauthorized.reason(), Reason::ProberError);
        let watch = watcher::Error::InitialListFailed(api(403, "forbidden"));
        assert_eq!(classify(&watch), Some(Reason::ProberError));
        let down = api(500, "Internal error occurred: failed calling webhook \"mutate.bank-vaults\": connection refused");
        assert_eq!(
            refusing_webhook(&down).as_deref(),
            Some("mutate.bank-vaults")
        );
    }

    #[test]
    fn a_fault_keeps_its_onset_and_recovery_closes_a_gap() {
        let t0 = Stamp::now();
        let later = |ms| Stamp {
            at: t0.at + Duration::from_millis(ms),
            wall: t0.wall + chrono::Duration::milliseconds(ms as i64),
        };
        let mut v: View<SecretState> = View::default();
        assert!(!v.healthy(t0));
        v.faulted(Reason::ApiError, "500".into(), later(10));
        v.faulted(Reason::ApiError, "500 again".into(), later(500));
        assert_eq!(v.fault.as_ref().unwrap().stamp, later(10));
        assert_eq!(
            v.all_gaps(),
            vec![Gap {
                from: later(10),
                to: None
            }]
        );
        assert!(v.healthy(later(900)));
        assert!(v.fault.is_none());
        assert_eq!(
            v.all_gaps(),
            vec![Gap {
                from: later(10),
                to: Some(later(900))
            }]
        );
    }

    #[test]
    fn the_watch_backoff_is_capped_at_a_few_seconds() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..12 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[0], Duration::from_millis(250));
        assert!(seen.iter().all(|d| *d <= WATCH_BACKOFF_MAX));
        assert_eq!(*seen.last().unwrap(), WATCH_BACKOFF_MAX);
        assert!(WATCH_BACKOFF_MAX <= Duration::from_secs(5));
    }
}

#[test]
fn the_refresh_settings_are_read_from_the_spec() {
    let o: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": "es", "namespace": "ns"},
        "spec": {"refreshPolicy": "CreatedOnce", "refreshInterval": "0s"}
    }))
    .unwrap();
    let s = EsState::from_object(&o);
    assert_eq!(s.refresh_policy.as_deref(), Some("CreatedOnce"));
    assert_eq!(s.refresh_interval.as_deref(), Some("0s"));
    assert!(s.ignores_force_sync().is_some());
    for zero in ["0", "0s", "0h0m0s", "0.0s"] {
        assert!(is_zero_duration(zero), "{zero}");
    }
    for d in ["1h", "10s", "0h1m0s", "", "s"] {
        assert!(!is_zero_duration(d), "{d}");
    }
}

/// A kube client for an address where nothing listens: its watchers fail
/// and retry, which is all the registry tests need.
fn unreachable_client() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn chains(yaml: &str) -> Vec<crate::config::ChainConfig> {
    crate::config::Config::from_yaml(yaml, "t.yaml")
        .unwrap()
        .probes
        .into_iter()
        .map(|p| p.chain)
        .collect()
}

const SHARED_CHAINS: &str = r#"
allow_shared_objects: true
probes:
  - name: a
    interval: 30s
    store: {address: "http://127.0.0.1:8200", path: canary/a, auth: {token: {env: T}}}
    chain:
      namespace: canary
      external_secret: es
      secret: {name: s, key: value}
      rollout: {deployment: d, trigger: reloader}
      canary: {selector: app=c, source: env}
  - name: b
    interval: 30s
    store: {address: "http://127.0.0.1:8200", path: canary/b, auth: {token: {env: T}}}
    chain:
      namespace: canary
      external_secret: es
      secret: {name: s, key: value}
      rollout: {deployment: d, trigger: reloader}
      canary: {selector: app=c, source: env}
  - name: c
    interval: 30s
    store: {address: "http://127.0.0.1:8200", path: canary/c, auth: {token: {env: T}}}
    chain:
      namespace: canary
      secret: {name: s, key: other}
      canary: {selector: app=other, source: file}
"#;

#[tokio::test]
async fn probes_on_the_same_objects_lease_one_watch_each_until_the_last_lets_go() {
    let cancel = CancellationToken::new();
    let watches = Watches::new(unreachable_client(), cancel.clone());
    let c = chains(SHARED_CHAINS);
    let a = Cluster::lease(&c[0], &watches);
    assert_eq!(watches.running(), 4);
    let b = Cluster::lease(&c[1], &watches);
    assert_eq!(watches.running(), 4, "the same objects share the watches");
    assert!(a.pods.same_channel(&b.pods));
    assert!(a
        .secret
        .as_ref()
        .unwrap()
        .same_channel(b.secret.as_ref().unwrap()));
    // Another key of the same Secret is another reduction; other Pods another watch.
    let other = Cluster::lease(&c[2], &watches);
    assert_eq!(watches.running(), 6);
    drop(a);
    assert_eq!(watches.running(), 6, "b still holds them");
    drop(b);
    assert_eq!(watches.running(), 2);
    drop(other);
    assert_eq!(watches.running(), 0);
    // A lease after the last one let go starts a new watch.
    let again = Cluster::lease(&c[0], &watches);
    assert_eq!(watches.running(), 4);
    drop(again);
    cancel.cancel();
}
