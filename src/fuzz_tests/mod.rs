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

mod canary_answers;
mod config_file;
mod kube_objects;
mod store_answers;
