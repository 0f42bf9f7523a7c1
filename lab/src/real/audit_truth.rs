//! Ground truth from the real cluster: the API server's audit log
//! (`DIR/audit.log`) converted into `truth.jsonl` lines, the same steps the
//! simulated controllers record, each stamped with the audit event's
//! `stageTimestamp` (`ResponseComplete`: the write was committed and
//! answered).
//!
//! | audit event (user, verb, object) | step |
//! |---|---|
//! | ESO's ServiceAccount, `create`/`update` `secrets` | `eso.secret_written`, one line per data key (digest of its value) |
//! | ESO's ServiceAccount, `update` `externalsecrets/status`, `Ready=True` | `eso.status_synced` (digests of the target Secret's ESO-written content) |
//! | the same, `Ready=False` | `eso.status_error` |
//! | Reloader's ServiceAccount, `patch`/`update` `deployments` | `reloader.template_patched` |
//! | anyone else, `patch`/`update` `deployments` touching the template | `deployment.template_changed` |
//! | the deployment controller, `update` `deployments/status`, newly rolled out | `deployment.rollout_complete` |
//!
//! Secrets are audited at `Metadata` level (no bodies), so a Secret write's
//! content is found by the resource version: an `update` carries the version
//! it replaced (`objectRef.resourceVersion`), and the version it made is the
//! next one a Secret watch (admin) saw of that object. The watch keeps only
//! SHA-256 digests of the values, never the values.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::truth::{self, step, Truth};

/// Who is who in the audit log.
#[derive(Debug, Clone)]
pub struct Users {
    /// ESO's ServiceAccount user name.
    pub eso: String,
    /// Reloader's ServiceAccount user name.
    pub reloader: String,
    /// The controller-manager's deployment controller.
    pub deployment_controller: String,
}

impl Users {
    /// The real lab's identities.
    pub fn lab() -> Users {
        use super::setup::{
            ESO_NAMESPACE, ESO_SERVICE_ACCOUNT, RELOADER_NAMESPACE, RELOADER_SERVICE_ACCOUNT,
        };
        Users {
            eso: format!("system:serviceaccount:{ESO_NAMESPACE}:{ESO_SERVICE_ACCOUNT}"),
            reloader: format!(
                "system:serviceaccount:{RELOADER_NAMESPACE}:{RELOADER_SERVICE_ACCOUNT}"
            ),
            deployment_controller: "system:serviceaccount:kube-system:deployment-controller".into(),
        }
    }
}

/// Digests of every version of every Secret the watch saw:
/// (namespace, name) -> resource version -> digests of the data values.
#[derive(Debug, Default, Clone)]
pub struct SecretVersions(Arc<Mutex<VersionMap>>);

type VersionMap = HashMap<(String, String), BTreeMap<u64, Vec<String>>>;

impl SecretVersions {
    /// Note one version (digests only).
    pub fn put(&self, ns: &str, name: &str, rv: u64, digests: Vec<String>) {
        if let Ok(mut m) = self.0.lock() {
            m.entry((ns.into(), name.into()))
                .or_default()
                .insert(rv, digests);
        }
    }

    /// The first version after `after` (`None`: the first version at all).
    fn next(&self, ns: &str, name: &str, after: Option<u64>) -> Option<Vec<String>> {
        let m = self.0.lock().ok()?;
        let versions = m.get(&(ns.to_string(), name.to_string()))?;
        let lo = after.map_or(0, |a| a + 1);
        versions.range(lo..).next().map(|(_, d)| d.clone())
    }

    /// Note a Secret seen by a watch.
    pub fn apply(&self, s: &Secret) {
        let Some(rv) = s.resource_version().and_then(|v| v.parse().ok()) else {
            return;
        };
        let digests = s
            .data
            .iter()
            .flatten()
            .map(|(_, v)| truth::digest(&v.0))
            .collect();
        self.put(
            &s.namespace().unwrap_or_default(),
            &s.name_any(),
            rv,
            digests,
        );
    }
}

/// One converted line.
#[derive(Debug, Clone, PartialEq)]
pub struct Rec {
    /// stageTimestamp.
    pub ts: DateTime<Utc>,
    /// requestReceivedTimestamp: the write was committed between it and `ts`.
    pub received: Option<DateTime<Utc>>,
    /// The step.
    pub step: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Digest, where there is one.
    pub digest: Option<String>,
}

/// Turns audit events into truth records, in the log's order.
#[derive(Debug)]
pub struct Converter {
    users: Users,
    /// Digests of what ESO last wrote to each Secret.
    eso_written: HashMap<(String, String), Vec<String>>,
    /// Whether each Deployment was rolled out at its last status write.
    rolled_out: HashMap<(String, String), bool>,
}

/// An event that needs a Secret version the watch has not seen yet.
#[derive(Debug, PartialEq)]
pub struct NotYet;

impl Converter {
    /// A converter for these users.
    pub fn new(users: Users) -> Converter {
        Converter {
            users,
            eso_written: HashMap::new(),
            rolled_out: HashMap::new(),
        }
    }

    /// The records of one audit event (`Err(NotYet)`: try again once the
    /// Secret watch has caught up; `force` gives up waiting and records the
    /// write without a digest).
    pub fn convert(
        &mut self,
        ev: &Value,
        versions: &SecretVersions,
        force: bool,
    ) -> Result<Vec<Rec>, NotYet> {
        let s = |p: &str| ev.pointer(p).and_then(Value::as_str).unwrap_or_default();
        if s("/stage") != "ResponseComplete" {
            return Ok(vec![]);
        }
        let code = ev
            .pointer("/responseStatus/code")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if !(200..300).contains(&code) {
            return Ok(vec![]);
        }
        let Some(ts) = DateTime::parse_from_rfc3339(s("/stageTimestamp"))
            .ok()
            .map(|t| t.with_timezone(&Utc))
        else {
            return Ok(vec![]);
        };
        let (user, verb) = (s("/user/username"), s("/verb"));
        let (group, resource, sub) = (
            s("/objectRef/apiGroup"),
            s("/objectRef/resource"),
            s("/objectRef/subresource"),
        );
        let (ns, name) = (s("/objectRef/namespace"), s("/objectRef/name"));
        let received = DateTime::parse_from_rfc3339(s("/requestReceivedTimestamp"))
            .ok()
            .map(|t| t.with_timezone(&Utc));
        let rec = |step, digest: Option<String>| Rec {
            ts,
            received,
            step,
            namespace: ns.to_string(),
            name: name.to_string(),
            digest,
        };
        let write = matches!(verb, "create" | "update" | "patch");
        match (group, resource, sub) {
            ("", "secrets", "") if write && user == self.users.eso => {
                let after = match verb {
                    "create" => None,
                    _ => s("/objectRef/resourceVersion").parse().ok(),
                };
                let digests = match versions.next(ns, name, after) {
                    Some(d) => d,
                    None if force => vec![],
                    None => return Err(NotYet),
                };
                self.eso_written
                    .insert((ns.into(), name.into()), digests.clone());
                if digests.is_empty() {
                    return Ok(vec![rec(step::ESO_SECRET_WRITTEN, None)]);
                }
                Ok(digests
                    .into_iter()
                    .map(|d| rec(step::ESO_SECRET_WRITTEN, Some(d)))
                    .collect())
            }
            ("external-secrets.io", "externalsecrets", "status")
                if write && user == self.users.eso =>
            {
                let obj = &ev["responseObject"];
                let ready = obj
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Ready")
                    .and_then(|c| c["status"].as_str());
                match ready {
                    Some("True") => {
                        let target = obj
                            .pointer("/spec/target/name")
                            .and_then(Value::as_str)
                            .unwrap_or(name);
                        let digests = self
                            .eso_written
                            .get(&(ns.to_string(), target.to_string()))
                            .cloned()
                            .unwrap_or_default();
                        Ok(digests
                            .into_iter()
                            .map(|d| rec(step::ESO_STATUS_SYNCED, Some(d)))
                            .collect())
                    }
                    Some("False") => Ok(vec![rec(step::ESO_STATUS_ERROR, None)]),
                    _ => Ok(vec![]),
                }
            }
            ("apps", "deployments", "") if matches!(verb, "update" | "patch") => {
                if user == self.users.reloader {
                    return Ok(vec![rec(step::RELOADER_PATCHED, None)]);
                }
                if user == self.users.deployment_controller {
                    return Ok(vec![]);
                }
                // A template change (kubectl rollout restart, the prober's
                // restart trigger): the request touches spec.template.
                let touches = ev
                    .pointer("/requestObject/spec/template")
                    .is_some_and(|t| !t.is_null());
                Ok(if touches {
                    vec![rec(step::DEPLOYMENT_TEMPLATE_CHANGED, None)]
                } else {
                    vec![]
                })
            }
            ("apps", "deployments", "status")
                if write && user == self.users.deployment_controller =>
            {
                let Ok(d) = serde_json::from_value::<Deployment>(ev["responseObject"].clone())
                else {
                    return Ok(vec![]);
                };
                let now = super::lab::rolled_out(&d);
                let was = self
                    .rolled_out
                    .insert((ns.into(), name.into()), now)
                    .unwrap_or(false);
                Ok(if now && !was {
                    vec![rec(step::ROLLOUT_COMPLETE, None)]
                } else {
                    vec![]
                })
            }
            _ => Ok(vec![]),
        }
    }
}

/// How long an ESO Secret write waits for the watch to see its version.
const WATCH_GRACE: Duration = Duration::from_secs(3);

/// Follow `audit_log` from its start, converting every event into `truth`,
/// with a Secret watch (digests only) through `admin`, until `cancel`.
pub async fn run(
    audit_log: PathBuf,
    admin: kube::Client,
    truth: Arc<Truth>,
    users: Users,
    cancel: CancellationToken,
) {
    let versions = SecretVersions::default();
    let v = versions.clone();
    let watch_cancel = cancel.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(Api::<Secret>::all(admin), watcher::Config::default())
            .default_backoff()
            .boxed();
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = watch_cancel.cancelled() => return,
            };
            match ev {
                None => return,
                Some(Ok(watcher::Event::Apply(s))) | Some(Ok(watcher::Event::InitApply(s))) => {
                    v.apply(&s)
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "audit truth: Secret watch failed"),
            }
        }
    });
    let mut conv = Converter::new(users);
    let mut reader: Option<std::io::BufReader<std::fs::File>> = None;
    let mut partial = String::new();
    let tick = Duration::from_millis(10);
    'outer: loop {
        if cancel.is_cancelled() {
            break;
        }
        let r = match reader.as_mut() {
            Some(r) => r,
            None => match std::fs::File::open(&audit_log) {
                Ok(f) => reader.insert(std::io::BufReader::new(f)),
                Err(_) => {
                    tokio::time::sleep(tick).await;
                    continue;
                }
            },
        };
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => {
                // Truncated (a new log)? Start over.
                if let (Ok(pos), Ok(meta)) = (r.stream_position(), std::fs::metadata(&audit_log)) {
                    if meta.len() < pos {
                        reader = None;
                        partial.clear();
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {},
                    _ = cancel.cancelled() => break,
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "audit truth: reading the audit log");
                tokio::time::sleep(tick).await;
                continue;
            }
        }
        partial.push_str(&line);
        if !partial.ends_with('\n') {
            continue;
        }
        let text = std::mem::take(&mut partial);
        let Ok(ev) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let waiting = Instant::now();
        let recs = loop {
            let force = waiting.elapsed() > WATCH_GRACE;
            match conv.convert(&ev, &versions, force) {
                Ok(r) => break r,
                Err(NotYet) => {
                    tokio::select! {
                        _ = tokio::time::sleep(tick) => {},
                        _ = cancel.cancelled() => break 'outer,
                    }
                }
            }
        };
        for r in recs {
            truth.record_at(
                r.ts,
                r.received,
                r.step,
                &r.namespace,
                &r.name,
                r.digest.as_deref(),
            );
        }
    }
    watch.abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(user: &str, verb: &str, res: (&str, &str, &str), rv: &str, obj: Value) -> Value {
        json!({
            "stage": "ResponseComplete",
            "stageTimestamp": "2026-01-01T00:00:01.123456Z",
            "user": {"username": user},
            "verb": verb,
            "objectRef": {"apiGroup": res.0, "resource": res.1, "subresource": res.2,
                          "namespace": "canary", "name": "canary-env", "resourceVersion": rv},
            "responseStatus": {"code": 200},
            "responseObject": obj,
        })
    }

    #[test]
    fn eso_writes_take_the_digest_of_the_version_they_made() {
        let u = Users::lab();
        let mut c = Converter::new(u.clone());
        let v = SecretVersions::default();
        v.put("canary", "canary-env", 10, vec!["d1".into()]);
        let write = ev(&u.eso, "update", ("", "secrets", ""), "10", Value::Null);
        assert_eq!(c.convert(&write, &v, false), Err(NotYet));
        v.put("canary", "canary-env", 15, vec!["d2".into()]);
        let r = c.convert(&write, &v, false).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].step, step::ESO_SECRET_WRITTEN);
        assert_eq!(r[0].digest.as_deref(), Some("d2"));
        assert_eq!(
            r[0].ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "2026-01-01T00:00:01.123456Z"
        );
        let status = ev(
            &u.eso,
            "update",
            ("external-secrets.io", "externalsecrets", "status"),
            "3",
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        let r = c.convert(&status, &v, false).unwrap();
        assert_eq!(r[0].step, step::ESO_STATUS_SYNCED);
        assert_eq!(r[0].digest.as_deref(), Some("d2"));
    }

    #[test]
    fn rollout_complete_once_per_rollout() {
        let u = Users::lab();
        let mut c = Converter::new(u.clone());
        let v = SecretVersions::default();
        let d = |updated: i32, obs: i64| {
            json!({"metadata": {"name": "canary-env", "generation": 2},
                   "spec": {"replicas": 2, "selector": {}, "template": {}},
                   "status": {"observedGeneration": obs, "replicas": 2,
                              "updatedReplicas": updated, "availableReplicas": 2}})
        };
        let st = |o| {
            ev(
                &u.deployment_controller,
                "update",
                ("apps", "deployments", "status"),
                "1",
                o,
            )
        };
        assert!(c.convert(&st(d(0, 2)), &v, false).unwrap().is_empty());
        let r = c.convert(&st(d(2, 2)), &v, false).unwrap();
        assert_eq!(r[0].step, step::ROLLOUT_COMPLETE);
        assert!(c.convert(&st(d(2, 2)), &v, false).unwrap().is_empty());
        let patch = ev(
            &u.reloader,
            "patch",
            ("apps", "deployments", ""),
            "",
            Value::Null,
        );
        assert_eq!(
            c.convert(&patch, &v, false).unwrap()[0].step,
            step::RELOADER_PATCHED
        );
    }
}
