//! Property-based fuzzing (proptest) of every parser of outside data: the
//! config file, the store's answers, the canary's answers and the
//! Kubernetes objects the watchers reduce. None may panic or hang, and
//! errors must name the field at fault.
//!
//! `scripts/fuzz.sh` runs these with a large `PROPTEST_CASES` for a long
//! fuzzing session; failures found are kept in `proptest-regressions/` and
//! replayed first by every later `cargo test`.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::DynamicObject;
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;
use serde_json::{json, Value};

use crate::config::{Config, ConfigError};
use crate::probe::canary::parse_answer;
use crate::probe::cluster::{DeploymentState, EsState, PodState, SecretState};
use crate::probe::store::{self, Step, Store, StoreError};
use crate::probe::Reason;

/// Cases per property come from `PROPTEST_CASES` (default 256). No
/// per-case timeout (it would fork a process per case); `scripts/fuzz.sh`
/// bounds the whole session, so a hang shows as a timed-out session.
fn config() -> PtConfig {
    PtConfig::default()
}

// ---------------------------------------------------------------- values

/// Field names of the config and of the objects, so random maps often hit
/// real fields rather than only unknown ones.
const KEYS: &[&str] = &[
    "kubernetes",
    "kubeconfig",
    "request_timeout",
    "probes",
    "name",
    "schedule",
    "interval",
    "deadline",
    "stage_deadlines",
    "slo",
    "store",
    "address",
    "mount",
    "path",
    "path_prefix",
    "max_versions",
    "key",
    "namespace",
    "ca_bundle",
    "timeout",
    "auth",
    "token",
    "env",
    "file",
    "role",
    "token_file",
    "approle",
    "role_id",
    "secret_id",
    "chain",
    "external_secret",
    "secret",
    "rollout",
    "deployment",
    "trigger",
    "canary",
    "selector",
    "port",
    "source",
    "eso_sync",
    "end_to_end",
    "store_write",
    "digest",
    "observed_at",
    "started_at",
    "error",
    "changed",
    "status",
    "conditions",
    "type",
    "reason",
    "message",
    "data",
    "metadata",
    "spec",
    "replicas",
    "restartCount",
    "version",
    "created_time",
    "errors",
];

/// Scalars a parser may choke on: boundaries, odd strings, look-alikes.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[a-z0-9/._-]{0,20}",
        Just(String::new()),
        Just("..".into()),
        Just("/".into()),
        Just("canary/".into()),
        Just("canary/../x".into()),
        Just("0 */5 * * * *".into()),
        Just("*/0 * * * * *".into()),
        Just("0 0 0 31 2 * 2020".into()),
        Just("@hourly".into()),
        Just("18446744073709551615s".into()),
        Just("9999999999999999999999h".into()),
        Just("-1s".into()),
        Just("1ns".into()),
        Just("2025-01-01T00:00:00Z".into()),
        Just("+275760-09-13T00:00:00Z".into()),
        Just("2025-13-45T99:99:99Z".into()),
        Just("True".into()),
        Just("null".into()),
        Just("~".into()),
        Just("app in (a,".into()),
        Just("\u{0}".into()),
        Just("é".repeat(40)),
        Just("x".repeat(300)),
    ]
}

fn tricky_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        Just(Value::from(i32::MAX)),
        Just(Value::from(i32::MIN)),
        Just(Value::from(i64::MAX)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(-1)),
        Just(Value::from(0)),
        Just(Value::from(65536)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => tricky_string(),
    ]
}

/// Any JSON value, biased towards the fields and scalars above.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        tricky_number(),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Where in a JSON document a mutation applies.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Seg::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One structural mutation of a JSON document.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the node with any value.
    Replace(Value),
    /// Remove the node from its parent.
    Remove,
    /// Add a key to the node (when it is a map).
    AddKey(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any_json().prop_map(Mutation::Replace),
        2 => Just(Mutation::Remove),
        1 => (key(), any_json()).prop_map(|(k, v)| Mutation::AddKey(k, v)),
    ]
}

/// Apply `m` at the `pick`-th node of `doc`; returns the path mutated.
fn mutate(doc: &mut Value, pick: prop::sample::Index, m: Mutation) -> Vec<Seg> {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = pick.get(&all).clone();
    match m {
        Mutation::Replace(v) => {
            if let Some(n) = node_mut(doc, &path) {
                *n = v;
            }
        }
        Mutation::Remove => {
            if let Some((last, parent)) = path.split_last() {
                match (last, node_mut(doc, parent)) {
                    (Seg::Key(k), Some(Value::Object(m))) => {
                        m.remove(k);
                    }
                    (Seg::Index(i), Some(Value::Array(a))) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        Mutation::AddKey(k, v) => {
            if let Some(Value::Object(m)) = node_mut(doc, &path) {
                m.insert(k, v);
            }
        }
    }
    path
}

// ---------------------------------------------------------------- config

/// Valid configs: the documented example and one using every field.
const SEEDS: &[&str] = &[
    include_str!("../examples/config.yaml"),
    r#"
kubernetes: {kubeconfig: /tmp/kc, request_timeout: 5s}
probes:
  - name: full
    schedule: "0 */5 * * * *"
    deadline: 3m
    stage_deadlines: {eso_sync: 1m, secret_update: 1m, reloader_trigger: 1m, rollout: 2m, canary_observe: 1m, store_write: 10s}
    slo: {store_write: 1s, eso_sync: 10s, end_to_end: 90s}
    store:
      address: http://127.0.0.1:8200
      mount: kv
      path: team/canary/x
      path_prefix: team/canary
      max_versions: 3
      key: v
      namespace: ns1
      ca_bundle: /etc/ca.pem
      timeout: 2s
      auth: {approle: {mount: ar, role_id: r, secret_id: {env: SID}}}
    chain:
      namespace: canary
      external_secret: es
      secret: {name: s, key: v}
      rollout: {deployment: d, trigger: reloader}
      canary: {selector: "app=c,tier in (a, b),!legacy", port: 9000, source: env, timeout: 1s}
  - name: vol
    interval: 10s
    store:
      address: https://vault.example
      path: canary/vol
      auth: {kubernetes: {role: r, mount: k8s, token_file: /var/run/t}}
    chain:
      namespace: canary
      external_secret: es2
      secret: {name: s2}
      rollout: {deployment: d2, trigger: none}
      canary: {selector: app=v, source: file}
"#,
];

fn seed() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(SEEDS)
}

/// The config path serde_yaml and the validator use for a node
/// (`probes[1].store.auth`).
fn config_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn error_text(e: &ConfigError) -> String {
    let mut t = e.to_string();
    for l in e.lines() {
        t.push('\n');
        t.push_str(&l);
    }
    t
}

/// One textual mutation of a YAML file.
#[derive(Debug, Clone)]
enum TextEdit {
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    ReplaceValue(prop::sample::Index, String),
    Reindent(prop::sample::Index, usize),
    InsertChar(prop::sample::Index, char),
    Truncate(prop::sample::Index),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let ix = any::<prop::sample::Index>;
    prop_oneof![
        ix().prop_map(TextEdit::DeleteLine),
        ix().prop_map(TextEdit::DuplicateLine),
        (ix(), ix()).prop_map(|(a, b)| TextEdit::SwapLines(a, b)),
        (ix(), tricky_string()).prop_map(|(a, s)| TextEdit::ReplaceValue(a, s)),
        (ix(), 0usize..9).prop_map(|(a, n)| TextEdit::Reindent(a, n)),
        (
            ix(),
            prop::sample::select(vec![
                ':', '-', '{', '}', '[', ']', '"', '\'', '#', '&', '*', '!', '|', '>', '\t', ' ',
                '\n', '%', '@', '`', ',', '?'
            ])
        )
            .prop_map(|(a, c)| TextEdit::InsertChar(a, c)),
        ix().prop_map(TextEdit::Truncate),
    ]
}

fn apply_edit(text: &str, e: &TextEdit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return text.to_string();
    }
    match e {
        TextEdit::DeleteLine(i) => {
            lines.remove(i.index(lines.len()));
        }
        TextEdit::DuplicateLine(i) => {
            let n = i.index(lines.len());
            lines.insert(n, lines[n].clone());
        }
        TextEdit::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        TextEdit::ReplaceValue(i, v) => {
            let n = i.index(lines.len());
            if let Some((k, _)) = lines[n].split_once(": ") {
                lines[n] = format!("{k}: {v}");
            }
        }
        TextEdit::Reindent(i, by) => {
            let n = i.index(lines.len());
            lines[n] = format!("{}{}", " ".repeat(*by), lines[n].trim_start());
        }
        TextEdit::InsertChar(i, c) => {
            let t = lines.join("\n");
            let chars: Vec<char> = t.chars().collect();
            let at = i.index(chars.len() + 1);
            let mut out: String = chars[..at].iter().collect();
            out.push(*c);
            out.extend(&chars[at..]);
            return out;
        }
        TextEdit::Truncate(i) => {
            let t = lines.join("\n");
            let chars: Vec<char> = t.chars().collect();
            return chars[..i.index(chars.len() + 1)].iter().collect();
        }
    }
    lines.join("\n")
}

/// Every error line names a field or a position.
fn assert_names_something(e: &ConfigError) {
    match e {
        ConfigError::Invalid { problems, .. } => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(
                    p.field.starts_with("probes") || p.field.starts_with("kubernetes"),
                    "problem without a field path: {p}"
                );
                assert!(
                    !p.message.trim().is_empty(),
                    "empty message for {}",
                    p.field
                );
            }
        }
        ConfigError::Syntax { message, .. } => assert!(!message.trim().is_empty()),
        ConfigError::Read { .. } => panic!("from_yaml never reads files"),
    }
}

#[test]
fn seeds_are_valid() {
    for s in SEEDS {
        if let Err(e) = Config::from_yaml(s, "seed.yaml") {
            panic!("seed invalid: {}", error_text(&e));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary text: no panic, and any error says where or what.
    #[test]
    fn config_arbitrary_text(text in prop_oneof![".*", "[ -~\n\t]{0,400}"]) {
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
        }
    }

    /// Arbitrary YAML documents built from the config's own field names.
    #[test]
    fn config_arbitrary_documents(doc in any_json(), wrap in any::<bool>()) {
        let doc = if wrap { json!({"probes": [doc]}) } else { doc };
        let text = serde_yaml::to_string(&doc).unwrap();
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
        }
    }

    /// Valid files with textual damage.
    #[test]
    fn config_mutated_text(seed in seed(), edits in prop::collection::vec(text_edit(), 1..5)) {
        let mut text = seed.to_string();
        for e in &edits {
            text = apply_edit(&text, e);
        }
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
        }
    }

    /// Valid files with one node replaced, removed or given an extra key:
    /// a rejection inside `probes[i]` names `probes[i]` (serde's path or
    /// the validator's field).
    #[test]
    fn config_mutated_structure(seed in seed(), pick in any::<prop::sample::Index>(), m in mutation()) {
        let mut doc: Value = serde_yaml::from_str(seed).unwrap();
        let path = mutate(&mut doc, pick, m);
        let text = serde_yaml::to_string(&doc).unwrap();
        if let Err(e) = Config::from_yaml(&text, "fuzz.yaml") {
            assert_names_something(&e);
            if path.len() >= 2 && matches!(&path[0], Seg::Key(k) if k == "probes") {
                let probe = config_path(&path[..2]);
                let t = error_text(&e);
                prop_assert!(t.contains(&probe), "mutated {} but the error does not name {probe}:\n{t}", config_path(&path));
            }
        }
    }
}

// ---------------------------------------------------------------- canary

fn good_answer() -> Value {
    json!({
        "digest": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "source": "env",
        "observed_at": "2025-01-01T00:00:00.123456789Z",
        "started_at": "2025-01-01T00:00:00Z",
        "error": null,
        "changed": true
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn canary_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_answer(&body);
    }

    #[test]
    fn canary_arbitrary_json(doc in any_json()) {
        let _ = parse_answer(&serde_json::to_vec(&doc).unwrap());
    }

    /// One field of a good answer changed: a rejection names that field.
    #[test]
    fn canary_mutated_field(
        field in proptest::sample::select(vec!["digest", "source", "observed_at", "started_at", "error", "changed"]),
        value in prop::option::of(any_json()),
    ) {
        let mut doc = good_answer();
        match &value {
            Some(v) => doc[field] = v.clone(),
            None => { doc.as_object_mut().unwrap().remove(field); }
        }
        if let Err(e) = parse_answer(&serde_json::to_vec(&doc).unwrap()) {
            prop_assert!(e.contains(&format!("`{field}`")), "changed {field} to {value:?}: {e}");
            prop_assert!(e.len() < 400, "error echoes too much: {e}");
        }
    }

    /// The canary's `wait` query parameter (outside data on the canary side).
    #[test]
    fn canary_wait_parameter(w in prop::option::of(tricky_string())) {
        if let Ok(d) = crate::canary::server::parse_wait(w.as_deref()) {
            prop_assert!(d <= Duration::from_secs(3600));
        }
    }
}

// ---------------------------------------------------------------- kubernetes

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

// ---------------------------------------------------------------- store

fn good_write_answer() -> Value {
    json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
        "data": {"created_time": "2025-01-01T00:00:00.123456789Z", "custom_metadata": null,
            "deletion_time": "", "destroyed": false, "version": 3},
        "wrap_info": null, "warnings": null, "auth": null})
}

fn good_lookup_answer() -> Value {
    json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
        "data": {"accessor": "a", "creation_time": 1, "creation_ttl": 0, "display_name": "token",
            "entity_id": "", "expire_time": null, "explicit_max_ttl": 0, "id": "t",
            "meta": null, "num_uses": 0, "orphan": true, "path": "auth/token/create",
            "policies": ["root"], "renewable": false, "ttl": 0},
        "wrap_info": null, "warnings": null, "auth": null})
}

const STEPS: [Step; 5] = [
    Step::Login,
    Step::LookupToken,
    Step::RenewToken,
    Step::Write,
    Step::SetMetadata,
];

/// What the store module reads of an answer, as vaultrs hands it over:
/// the envelope (`EndpointResult`), then our own reading of its fields.
fn read_store_answers(body: &[u8]) {
    use vaultrs::api::kv2::responses::SecretVersionMetadata;
    use vaultrs::api::token::responses::LookupTokenResponse;
    use vaultrs::api::{AuthInfo, EndpointError, EndpointResult};
    if let Ok(r) = serde_json::from_slice::<EndpointResult<SecretVersionMetadata>>(body) {
        if let Some(meta) = r.data {
            let _ = store::created_time(&meta.created_time);
        }
    }
    if let Ok(r) = serde_json::from_slice::<EndpointResult<LookupTokenResponse>>(body) {
        if let Some(info) = r.data {
            let _ = store::ttl(info.ttl);
        }
    }
    if let Ok(a) = serde_json::from_slice::<AuthInfo>(body) {
        let _ = store::ttl(a.lease_duration);
    }
    if let Ok(e) = serde_json::from_slice::<EndpointError>(body) {
        for step in STEPS {
            for code in [400u16, 403, 404, 412, 429, 500, 503] {
                let err = StoreError::from_client(
                    step,
                    vaultrs::error::ClientError::APIError {
                        code,
                        errors: e.errors.clone(),
                    },
                );
                assert!(matches!(
                    err.reason(),
                    Reason::AuthError | Reason::StoreError
                ));
                let text = err.to_string();
                assert!(
                    text.contains(&step.to_string()) && text.contains(&code.to_string()),
                    "{text}"
                );
            }
        }
    }
}

/// A store that answers every request with whatever the case says: the
/// prober's store client against hostile or broken answers, end to end
/// through vaultrs and rustify. Not a model of Vault: garbage on purpose.
struct Hostile {
    rt: tokio::runtime::Runtime,
    addr: String,
    answer: Arc<Mutex<Vec<u8>>>,
}

static HOSTILE: LazyLock<Hostile> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answer = Arc::new(Mutex::new(Vec::new()));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let a = answer.clone();
    rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let a = a.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and a body of Content-Length bytes.
                let need = loop {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        break end + 4 + len;
                    }
                };
                while buf.len() < need {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let resp = a.lock().unwrap().clone();
                let _ = s.write_all(&resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    std::env::set_var("SC_FUZZ_STORE_TOKEN", "fuzz-token");
    Hostile { rt, addr, answer }
});

fn http_answer() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        3 => (any::<prop::sample::Index>(), mutation(), prop::bool::ANY).prop_map(|(pick, m, lookup)| {
            let mut doc = if lookup { good_lookup_answer() } else { good_write_answer() };
            mutate(&mut doc, pick, m);
            serde_json::to_vec(&doc).unwrap()
        }),
        1 => any_json().prop_map(|d| serde_json::to_vec(&d).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => Just(serde_json::to_vec(&json!({"errors": ["permission denied"]})).unwrap()),
    ];
    (
        prop_oneof![
            4 => Just(200u16),
            1 => Just(204u16),
            1 => proptest::sample::select(vec![301u16, 400, 401, 403, 404, 412, 429, 500, 502, 503]),
            1 => 200u16..600,
        ],
        body,
        prop_oneof![
            4 => Just(None),
            1 => (0usize..600).prop_map(Some),
        ],
    )
        .prop_map(|(status, body, wrong_len)| {
            let len = wrong_len.unwrap_or(body.len());
            let mut r = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_answers_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        read_store_answers(&body);
    }

    #[test]
    fn store_answers_mutated(pick in any::<prop::sample::Index>(), m in mutation(), lookup in any::<bool>()) {
        let mut doc = if lookup { good_lookup_answer() } else { good_write_answer() };
        mutate(&mut doc, pick, m);
        read_store_answers(&serde_json::to_vec(&doc).unwrap());
    }

    #[test]
    fn store_error_bodies(errors in prop::collection::vec(tricky_string(), 0..4)) {
        read_store_answers(&serde_json::to_vec(&json!({"errors": errors})).unwrap());
    }

    /// The whole store client (login lookup, max_versions, write) against
    /// arbitrary HTTP answers: a result or a typed error, never a panic.
    #[test]
    fn store_client_against_hostile_answers(answer in http_answer()) {
        let h = &*HOSTILE;
        *h.answer.lock().unwrap() = answer;
        let cfg = crate::config::StoreConfig {
            address: h.addr.clone(),
            mount: "secret".into(),
            path: "canary/fuzz".into(),
            path_prefix: "canary/".into(),
            max_versions: None,
            key: "value".into(),
            namespace: None,
            ca_bundle: None,
            timeout: Some(Duration::from_secs(3)),
            auth: crate::config::StoreAuth::Token(crate::config::TokenSource::Env("SC_FUZZ_STORE_TOKEN".into())),
        };
        let r = h.rt.block_on(async {
            let store = Store::new(cfg);
            match store.prepare().await {
                Ok(()) => store.write("fuzz-value").await.map(|w| w.version),
                Err(e) => Err(e),
            }
        });
        if let Err(e) = r {
            prop_assert!(
                matches!(e.reason(), Reason::AuthError | Reason::StoreError),
                "unexpected reason {:?}: {e}", e.reason()
            );
            prop_assert!(!e.to_string().contains("fuzz-value"), "the value leaked into an error: {e}");
        }
    }
}
