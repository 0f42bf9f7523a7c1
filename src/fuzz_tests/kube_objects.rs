//! Fuzzing the Kubernetes objects the watchers reduce.

use super::*;

fn condition(types: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(types),
        prop_oneof![Just("True"), Just("False"), Just("Unknown"), Just("")],
        prop_oneof![
            Just("SecretSynced".to_string()),
            Just("SecretSyncedError".to_string()),
            Just("ProgressDeadlineExceeded".to_string()),
            tricky_string()
        ],
        tricky_string(),
    )
        .prop_map(|(t, s, r, m)| json!({"type": t, "status": s, "reason": r, "message": m}))
}

fn time_string() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..4_102_444_800, 0u32..1_000_000_000).prop_map(|(s, n)| {
            chrono::DateTime::from_timestamp(s, n)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        }),
        tricky_string(),
    ]
}

/// Well-typed ExternalSecrets with arbitrary values.
fn external_secret() -> impl Strategy<Value = Value> {
    (
        prop::option::of(time_string()),
        prop::collection::vec(condition(&["Ready", "Other", "ready"]), 0..4),
        prop::option::of(tricky_string()),
    )
        .prop_map(|(refresh, conds, rv)| {
            let mut status = json!({"conditions": conds});
            if let Some(t) = refresh {
                status["refreshTime"] = json!(t);
            }
            json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                "metadata": {"name": "es", "namespace": "ns", "resourceVersion": rv},
                "status": status})
        })
}

fn secret() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        key(),
        prop::collection::vec(any::<u8>(), 0..64),
        0..4,
    )
    .prop_map(|data| {
        use base64_like::encode;
        let data: BTreeMap<String, String> = data.into_iter().map(|(k, v)| (k, encode(&v))).collect();
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "resourceVersion": "1"}, "data": data})
    })
}

/// Standard base64 without a dependency (the Secret's `data` encoding).
mod base64_like {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(b: &[u8]) -> String {
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &c)| n | (u32::from(c) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn deployment() -> impl Strategy<Value = Value> {
    (
        (any::<i64>(), prop::option::of(any::<i32>()), prop::option::of(tricky_string())),
        (
            prop::option::of(any::<i64>()),
            prop::option::of(any::<i32>()),
            prop::option::of(any::<i32>()),
            prop::option::of(any::<i32>()),
        ),
        prop::collection::vec(condition(&["Progressing", "ReplicaFailure", "Available"]), 0..4),
    )
        .prop_map(|((generation, replicas, restarted), (og, r, ur, ar), conds)| {
            let mut ann = serde_json::Map::new();
            if let Some(t) = restarted {
                ann.insert(crate::probe::cluster::RESTARTED_AT.into(), json!(t));
            }
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "generation": generation},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "c"}},
                    "template": {"metadata": {"annotations": ann}, "spec": {"containers": [{"name": "c"}]}}},
                "status": {"observedGeneration": og, "replicas": r, "updatedReplicas": ur,
                    "availableReplicas": ar, "conditions": conds}})
        })
}

fn container_status() -> impl Strategy<Value = Value> {
    (
        tricky_string(),
        prop_oneof![any::<i32>(), Just(i32::MAX), 0..10i32],
        prop::option::of((
            prop_oneof![
                Just("CrashLoopBackOff".to_string()),
                Just("ErrImagePull".to_string()),
                Just("ContainerCreating".to_string()),
                tricky_string()
            ],
            prop::option::of(tricky_string()),
        )),
    )
        .prop_map(|(name, restarts, waiting)| {
            let state = match waiting {
                Some((reason, message)) => {
                    json!({"waiting": {"reason": reason, "message": message}})
                }
                None => json!({"running": {}}),
            };
            json!({"name": name, "image": "x", "imageID": "", "ready": false,
                "restartCount": restarts, "state": state})
        })
}

fn pod() -> impl Strategy<Value = Value> {
    (
        prop::option::of(tricky_string()),
        prop::collection::vec((any::<bool>(), tricky_string()), 0..3),
        prop::option::of(time_string()),
        prop::option::of(tricky_string()),
        prop::collection::vec(condition(&["Ready", "PodScheduled"]), 0..3),
        prop::collection::vec(container_status(), 0..4),
        prop::collection::vec(container_status(), 0..2),
    )
        .prop_map(|(hash, owners, deleted, ip, conds, cs, ics)| {
            let mut labels = serde_json::Map::new();
            if let Some(h) = hash {
                labels.insert("pod-template-hash".into(), json!(h));
            }
            let owners: Vec<Value> = owners
                .into_iter()
                .map(|(c, n)| json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": n, "uid": "u", "controller": c}))
                .collect();
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "labels": labels, "ownerReferences": owners, "deletionTimestamp": deleted},
                "status": {"podIP": ip, "conditions": conds, "containerStatuses": cs, "initContainerStatuses": ics}})
        })
}

/// Feed a document to every reduction the watchers apply (kube-rs has
/// already deserialised it when a reduction sees it).
fn reduce_all(doc: &Value, key: &str) {
    if let Ok(o) = serde_json::from_value::<DynamicObject>(doc.clone()) {
        let s = EsState::from_object(&o);
        let _ = (s.is_ready(), s.sync_failed());
    }
    if let Ok(s) = serde_json::from_value::<Secret>(doc.clone()) {
        let st = SecretState::from_secret(&s, key);
        if let Some(d) = st.digest {
            assert_eq!(d.len(), 64);
        }
    }
    if let Ok(d) = serde_json::from_value::<Deployment>(doc.clone()) {
        let st = DeploymentState::from_deployment(&d);
        let _ = (st.rollout(), st.replica_failure());
    }
    if let Ok(p) = serde_json::from_value::<Pod>(doc.clone()) {
        let _ = PodState::from_pod(&p);
    }
}

fn kube_object() -> impl Strategy<Value = Value> {
    prop_oneof![external_secret(), secret(), deployment(), pod()]
}

proptest! {
    #![proptest_config(config())]

    /// Well-typed objects with arbitrary values (boundary numbers included).
    #[test]
    fn kube_objects_well_typed(doc in kube_object(), key in key()) {
        reduce_all(&doc, &key);
    }

    /// Objects with one node replaced, removed or extended.
    #[test]
    fn kube_objects_mutated(mut doc in kube_object(), pick in any::<prop::sample::Index>(), m in mutation(), key in key()) {
        mutate(&mut doc, pick, m);
        reduce_all(&doc, &key);
    }

    /// Arbitrary documents.
    #[test]
    fn kube_objects_arbitrary(doc in any_json(), key in key()) {
        reduce_all(&doc, &key);
    }
}
