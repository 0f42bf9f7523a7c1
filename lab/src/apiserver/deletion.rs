//! Graceful deletion, as the real API server does it:
//!
//! - An object with finalizers is not removed by a DELETE: it gets
//!   `deletionTimestamp` (and `deletionGracePeriodSeconds: 0`) and stays
//!   until its finalizers are removed; the update that removes the last one
//!   deletes it ([`super::store::finalized`]).
//! - A Pod on a node gets `deletionTimestamp = now + grace` and
//!   `deletionGracePeriodSeconds = grace` (from the DELETE's
//!   `gracePeriodSeconds`, else `spec.terminationGracePeriodSeconds`,
//!   default 30; a second DELETE may only shorten it) and stays, Terminating,
//!   until its kubelet confirms with a DELETE of grace 0 (after SIGTERM, the
//!   process's exit or the grace period). A Pod on no node, or finished
//!   (`Succeeded`/`Failed`), goes at once.
//!
//! Lab rule: the lab has no scheduler, so a Pod is "on a node" when it has
//! `spec.nodeName` or its kubelet has written `status.hostIP`.
//! Dependents removed by the garbage collector (cascade) go at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::status::{ApiError, ApiResult};
use super::store::{now_rfc3339, Deletion, Key};
use super::Shared;
use crate::apiserver::resources;

/// The `gracePeriodSeconds` a DELETE asks for (body, else query).
fn requested_grace(opts: &Value, query: &BTreeMap<String, String>) -> ApiResult<Option<i64>> {
    if let Some(g) = opts.get("gracePeriodSeconds").filter(|g| !g.is_null()) {
        return g
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("gracePeriodSeconds must be an integer"));
    }
    match query.get("gracePeriodSeconds") {
        None => Ok(None),
        Some(g) => g
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))),
    }
}

fn has_finalizers(v: &Value) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

/// Is this Pod on a node whose kubelet must confirm its deletion?
fn on_node(pod: &Value) -> bool {
    !str_at(pod, "/spec/nodeName").is_empty() || !str_at(pod, "/status/hostIP").is_empty()
}

fn finished(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// What a DELETE with `grace` (if given) does to `old`.
pub(super) fn decide(kind: &str, old: &Value, grace: Option<i64>) -> Deletion {
    let finalizers = has_finalizers(old);
    let marked = old
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    let current = old
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    let graceful_pod = kind == "Pod" && on_node(old) && !finished(old);
    let grace = if graceful_pod {
        let spec = old
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let g = grace.unwrap_or(spec).max(0);
        // A second DELETE may shorten the grace period, never lengthen it.
        current.map_or(g, |c| c.min(g))
    } else {
        0
    };
    if grace == 0 && !finalizers {
        return Deletion::Now;
    }
    if marked && current == Some(grace) {
        return Deletion::Keep(old.clone());
    }
    let mut new = old.clone();
    if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
        if !marked || current.is_some_and(|c| grace < c) {
            m.insert(
                "deletionTimestamp".into(),
                json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
        if !m.contains_key("deletionTimestamp") {
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
        }
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
    Deletion::Keep(new)
}

/// Serve a DELETE of one object: `check` may refuse (preconditions).
/// Returns the object and whether it is gone (else it is being deleted).
pub(super) fn delete(
    shared: &Shared,
    key: &Key,
    check: impl FnOnce(&Value) -> ApiResult<()>,
    orphan: bool,
    opts: &Value,
    query: &BTreeMap<String, String>,
) -> ApiResult<(Arc<Value>, bool)> {
    let grace = requested_grace(opts, query)?;
    let kind = resources::def(key.0).kind;
    shared.store.delete_with(
        key,
        |old| {
            check(old)?;
            Ok(decide(kind, old, grace))
        },
        orphan,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: bool, finalizers: &[&str]) -> Value {
        let mut p = json!({"metadata": {"name": "p", "finalizers": finalizers},
                           "spec": {"terminationGracePeriodSeconds": 5},
                           "status": {"phase": "Running"}});
        if node {
            p["status"]["hostIP"] = json!("127.0.0.1");
        }
        p
    }

    fn kept(d: Deletion) -> Value {
        match d {
            Deletion::Keep(v) => v,
            Deletion::Now => panic!("deleted at once"),
        }
    }

    #[test]
    fn pods_on_a_node_wait_for_the_kubelet() {
        assert!(matches!(
            decide("Pod", &pod(false, &[]), None),
            Deletion::Now
        ));
        let p = kept(decide("Pod", &pod(true, &[]), None));
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 5);
        assert!(p["metadata"]["deletionTimestamp"].is_string());
        // A second DELETE may shorten, not lengthen; grace 0 removes it.
        let p2 = kept(decide("Pod", &p, Some(30)));
        assert_eq!(p2["metadata"]["deletionGracePeriodSeconds"], 5);
        let p3 = kept(decide("Pod", &p, Some(2)));
        assert_eq!(p3["metadata"]["deletionGracePeriodSeconds"], 2);
        assert!(matches!(decide("Pod", &p, Some(0)), Deletion::Now));
        // Finished Pods go at once.
        let mut done = pod(true, &[]);
        done["status"]["phase"] = json!("Succeeded");
        assert!(matches!(decide("Pod", &done, None), Deletion::Now));
    }

    #[test]
    fn finalizers_hold_any_object() {
        let s = json!({"metadata": {"name": "s", "finalizers": ["x/y"]}});
        let k = kept(decide("Secret", &s, None));
        assert_eq!(k["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(k["metadata"]["deletionTimestamp"].is_string());
        assert!(matches!(decide("Secret", &k, None), Deletion::Keep(_)));
        let p = kept(decide("Pod", &pod(true, &["x/y"]), Some(0)));
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(matches!(
            decide("Secret", &json!({"metadata": {"name": "s"}}), None),
            Deletion::Now
        ));
    }
}
