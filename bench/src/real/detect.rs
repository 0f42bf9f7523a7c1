//! Time to detect, on the real cluster: faults the cluster itself reports,
//! made by real means, one at a time, each on a chain of its own with one
//! probe (a fresh `secret-canary run` whose first run starts at once):
//!
//! | fault | made by | the cluster's signal (timestamp from) |
//! |---|---|---|
//! | ESO cannot read the store | `read-canary` policy emptied in OpenBao; the probe force-syncs an ExternalSecret with `refreshInterval: 1h` | ESO's `Ready=False` status write (audit log) |
//! | unpullable image | the Deployment's image set to an unknown one, `progressDeadlineSeconds: 5`, before the run; the run's restart makes a new ReplicaSet | the node agent's `ErrImagePull` Pod status write, then the deployment controller's `ProgressDeadlineExceeded` (audit log) |
//! | crash loop | the Bank-Vaults role deleted in OpenBao (vault-env cannot log in and exits 1) | the node agent's first Pod status with a restart, then `CrashLoopBackOff` (audit log) |
//! | store 403 on the prober's write | `write-canary` policy made read-only | OpenBao's 403 answer as it arrives at a timing proxy between the prober and OpenBao (OpenBao 2 refuses to enable an audit device through its API) |
//!
//! The export is the first `/metrics` scrape (every 20 ms) showing
//! `secret_canary_stage_blocked{probe=...} 1` or the run's failure in
//! `secret_canary_runs_total`; the verdict is the run's end (`/probes`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use reqwest::Method;
use secret_canary_lab::openbao::POLICIES;
use secret_canary_lab::real::lab::RealLab;
use secret_canary_lab::truth::step;
use serde_json::{json, Value};

use crate::prober::Prober;
use crate::scenario::{self, Chain, Kind, ProberSpec, NAMESPACE};
use crate::Tools;

/// One fault's timings.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Detection {
    /// The fault.
    pub fault: String,
    /// What the cluster said, and where the timestamp is from.
    pub signal: String,
    /// The signal's timestamp.
    pub signal_at: Option<DateTime<Utc>>,
    /// A second, later signal that ends the run (PDE, CrashLoopBackOff).
    pub final_signal: Option<(String, DateTime<Utc>)>,
    /// The run's start (prober's report).
    pub run_started: Option<DateTime<Utc>>,
    /// First scrape showing `stage_blocked` 1: when, stage, reason.
    pub blocked: Option<(DateTime<Utc>, String, String)>,
    /// First scrape showing the run's failure counted.
    pub failure_exported: Option<DateTime<Utc>>,
    /// The run's end as the prober reports it.
    pub verdict_at: Option<DateTime<Utc>>,
    /// The verdict: result and failure stage/reason.
    pub verdict: String,
    /// Any problem making the fault.
    pub note: String,
}

impl Detection {
    /// Signal → first export (blocked gauge or failure), ms.
    pub fn to_export_ms(&self) -> Option<f64> {
        let export = match (self.blocked.as_ref().map(|b| b.0), self.failure_exported) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(ms_between(self.signal_at?, export))
    }

    /// Signal → verdict (run end), ms.
    pub fn to_verdict_ms(&self) -> Option<f64> {
        Some(ms_between(self.signal_at?, self.verdict_at?))
    }

    /// Final signal → failure exported, ms.
    pub fn final_to_export_ms(&self) -> Option<f64> {
        Some(ms_between(
            self.final_signal.as_ref()?.1,
            self.failure_exported?,
        ))
    }
}

fn ms_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// What the detect measurement found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DetectResult {
    /// One row per fault.
    pub rows: Vec<Detection>,
    /// `/proc/loadavg` at its start.
    pub load: String,
}

/// The chains of the detect measurement (in the real lab beside the others).
pub fn chains() -> Vec<Chain> {
    let named = |kind: Kind, name: &str| Chain {
        kind,
        name: name.into(),
        namespace: NAMESPACE.into(),
        store_path: format!("canary/{name}"),
        selector: format!("app={name}"),
        replicas: 1,
    };
    vec![
        named(Kind::Volume, "ttd-es"),
        named(Kind::Bankvaults, "ttd-img"),
        named(Kind::Bankvaults, "ttd-crash"),
    ]
}

/// `ttd-es` is refreshed only when the probe forces it, so its condition
/// changes during the run, not before.
pub fn patch_scenario(doc: &mut Value) {
    for o in doc["objects"].as_array_mut().into_iter().flatten() {
        if o["kind"] == "ExternalSecret" && o["metadata"]["name"] == "ttd-es" {
            o["spec"]["refreshInterval"] = json!("1h");
        }
    }
}

fn chain(name: &str) -> Chain {
    chains()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| chains().remove(0))
}

const FAULTS: [&str; 4] = [
    "eso-ready-false",
    "image-unpullable",
    "crash-loop",
    "store-403",
];

/// Measure every fault (each restored after its run).
pub async fn run(tools: &Tools, lab: &RealLab, kubeconfig: &Path) -> Result<DetectResult> {
    let mut res = DetectResult {
        load: super::loadavg(),
        ..Default::default()
    };
    for fault in FAULTS {
        eprintln!("detect: {fault}");
        let row = match one(tools, lab, kubeconfig, fault).await {
            Ok(r) => r,
            Err(e) => Detection {
                fault: fault.into(),
                note: format!("{e:#}"),
                ..Default::default()
            },
        };
        eprintln!(
            "detect: {fault}: signal→export {:?} ms, signal→verdict {:?} ms ({}) {}",
            row.to_export_ms(),
            row.to_verdict_ms(),
            row.verdict,
            row.note
        );
        res.rows.push(row);
    }
    Ok(res)
}

async fn one(tools: &Tools, lab: &RealLab, kubeconfig: &Path, fault: &str) -> Result<Detection> {
    let mut d = Detection {
        fault: fault.into(),
        ..Default::default()
    };
    let c = match fault {
        "eso-ready-false" | "store-403" => chain("ttd-es"),
        "image-unpullable" => chain("ttd-img"),
        _ => chain("ttd-crash"),
    };
    let admin = lab.cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    // Fault on.
    match fault {
        "eso-ready-false" => {
            lab.bao
                .put_policy("read-canary", "path \"secret/data/nothing\" {\n  capabilities = [\"read\"]\n}\n")
                .await?
        }
        "store-403" => {
            lab.bao
                .put_policy("write-canary", "path \"secret/data/canary/*\" {\n  capabilities = [\"read\"]\n}\npath \"secret/metadata/canary/*\" {\n  capabilities = [\"read\"]\n}\n")
                .await?
        }
        "crash-loop" => {
            lab.bao
                .call(Method::DELETE, "auth/kubernetes/role/canary-bankvaults", None)
                .await?;
        }
        _ => {
            let patch = json!({"spec": {"progressDeadlineSeconds": 5, "template": {"spec": {"containers": [
                {"name": "canary", "image": "registry.invalid/no-such-image:1"}]}}}});
            deployments
                .patch(&c.name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .context("breaking the image")?;
            // Stable before the run: the rollout of the broken image timed out.
            let t = Instant::now();
            while !progress_deadline_exceeded(&deployments, &c.name).await {
                if t.elapsed() > Duration::from_secs(90) {
                    d.note = "the broken rollout did not reach ProgressDeadlineExceeded in 90 s (is the image pullable after all?)".into();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    // The store's answers timed on the wire, for the store 403.
    let cancel = tokio_util::sync::CancellationToken::new();
    let proxy = crate::proxy::Proxy::start(&lab.vault.addr, cancel.clone()).await?;
    let measured = observe(tools, lab, kubeconfig, &c, fault, &proxy.url, &mut d).await;
    cancel.cancel();
    // Fault off (always).
    let restore = async {
        match fault {
            "eso-ready-false" => lab.bao.put_policy("read-canary", POLICIES[0].1).await?,
            "store-403" => lab.bao.put_policy("write-canary", POLICIES[1].1).await?,
            "crash-loop" => {
                lab.bao
                    .put_kubernetes_role(
                        "canary-bankvaults",
                        "canary-bankvaults",
                        NAMESPACE,
                        "read-canary",
                    )
                    .await?
            }
            _ => {
                let patch = json!({"spec": {"progressDeadlineSeconds": 30, "template": {"spec": {"containers": [
                    {"name": "canary", "image": "secret-canary:latest"}]}}}});
                deployments
                    .patch(&c.name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    restore.await.context("restoring after the fault")?;
    measured?;
    // The signals, from the audit log (and OpenBao's).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Pods of the run's new ReplicaSet only: the broken rollout's older Pod
    // keeps retrying its pull (made at least 5 s before the run).
    let since = d.run_started.unwrap_or_else(Utc::now) - chrono::Duration::seconds(1);
    let audit = std::fs::read_to_string(&lab.cluster.audit_log).unwrap_or_default();
    match fault {
        "eso-ready-false" => {
            let mut truth = lab.truth.records();
            truth.sort_by_key(|r| r.ts);
            d.signal =
                "ESO's ExternalSecret status write `Ready=False` (audit stageTimestamp)".into();
            d.signal_at = truth
                .iter()
                .find(|r| r.step == step::ESO_STATUS_ERROR && r.name == c.name && r.ts >= since)
                .map(|r| r.ts);
        }
        "image-unpullable" => {
            d.signal = "node agent's Pod status `ErrImagePull` (audit stageTimestamp)".into();
            d.signal_at = pod_status_signal(&audit, &c.name, since, |s| {
                waiting_reason(s).is_some_and(|r| r == "ErrImagePull")
            });
            d.final_signal = deployment_pde(&audit, &c.name, since).map(|t| {
                (
                    "`ProgressDeadlineExceeded` (deployment controller's status write)".to_string(),
                    t,
                )
            });
        }
        "crash-loop" => {
            d.signal = "node agent's Pod status with the container's first exit (restartCount 1; audit stageTimestamp)".into();
            d.signal_at = pod_status_signal(&audit, &c.name, since, |s| {
                s["restartCount"].as_i64().unwrap_or(0) > 0
                    || waiting_reason(s).is_some_and(|r| r == "CrashLoopBackOff")
            });
            d.final_signal = pod_status_signal(&audit, &c.name, since, |s| {
                waiting_reason(s).is_some_and(|r| r == "CrashLoopBackOff")
            })
            .map(|t| {
                (
                    "`CrashLoopBackOff` (node agent's Pod status)".to_string(),
                    t,
                )
            });
        }
        _ => {
            let want = format!("/v1/secret/data/{}", c.store_path);
            d.signal =
                "OpenBao's 403 to the prober's write, as it reached a proxy in front of OpenBao"
                    .into();
            d.signal_at = proxy
                .answers()
                .into_iter()
                .find(|a| a.status == 403 && a.method != "GET" && a.path == want && a.at >= since)
                .map(|a| a.at);
        }
    }
    Ok(d)
}

async fn progress_deadline_exceeded(api: &Api<Deployment>, name: &str) -> bool {
    let Ok(dep) = api.get(name).await else {
        return false;
    };
    let v = serde_json::to_value(&dep).unwrap_or_default();
    v["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
}

/// Start a one-probe prober (its first run starts at once), scrape
/// `/metrics` every 20 ms until the run's verdict, then stop it.
async fn observe(
    tools: &Tools,
    lab: &RealLab,
    kubeconfig: &Path,
    c: &Chain,
    fault: &str,
    store: &str,
    d: &mut Detection,
) -> Result<()> {
    let config = lab.dir.join(format!("detect-{fault}.yaml"));
    let token = lab.dir.join("prober.token");
    let text = scenario::prober_yaml(
        std::slice::from_ref(c),
        &ProberSpec {
            kubeconfig,
            vault_addr: store,
            token_file: &token,
            interval: Duration::from_secs(3600),
            deadline: Duration::from_secs(60),
            force_sync: c.kind != Kind::Bankvaults,
            stagger: false,
        },
    );
    std::fs::write(&config, text)?;
    let mut prober = Prober::start(
        &tools.prober_bin,
        &config,
        &lab.dir.join(format!("detect-{fault}.log")),
    )
    .await?;
    prober.wait_ready(Duration::from_secs(60)).await?;
    let probe = format!("probe=\"{}\"", c.name);
    let t = Instant::now();
    let mut succeeded = false;
    while t.elapsed() < Duration::from_secs(90) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(text) = prober.get("/metrics").await else {
            continue;
        };
        let now = Utc::now();
        for line in text.lines() {
            if !line.contains(&probe) {
                continue;
            }
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if d.blocked.is_none()
                && line.starts_with("secret_canary_stage_blocked{")
                && value >= 1.0
            {
                d.blocked = Some((now, label(line, "stage"), label(line, "reason")));
            }
            if d.failure_exported.is_none()
                && line.starts_with("secret_canary_runs_total{")
                && line.contains("result=\"failure\"")
                && value >= 1.0
            {
                d.failure_exported = Some(now);
            }
            if line.starts_with("secret_canary_runs_total{")
                && line.contains("result=\"success\"")
                && value >= 1.0
            {
                succeeded = true;
            }
        }
        if d.failure_exported.is_some() || succeeded {
            break;
        }
    }
    if let Ok(text) = prober.get("/probes").await {
        if let Ok(doc) = serde_json::from_str::<Value>(&text) {
            let last = &doc["probes"][0]["last_run"];
            let ts = |v: &Value| {
                v.as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            d.run_started = ts(&last["started_at"]);
            d.verdict_at = ts(&last["finished_at"]);
            d.verdict = format!(
                "{} {}/{}",
                last["result"].as_str().unwrap_or("?"),
                last["failure"]["stage"].as_str().unwrap_or("-"),
                last["failure"]["reason"].as_str().unwrap_or("-")
            );
        }
    }
    prober.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// A label's value in an exposition line.
fn label(line: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    line.split_once(&key)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_default()
}

fn waiting_reason(status: &Value) -> Option<&str> {
    status["state"]["waiting"]["reason"].as_str()
}

fn stage_ts(e: &Value) -> Option<DateTime<Utc>> {
    e["stageTimestamp"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The first Pod status write (of a Pod labelled `app=<app>`) after
/// `since` whose container status matches.
fn pod_status_signal(
    audit: &str,
    app: &str,
    since: DateTime<Utc>,
    matches: impl Fn(&Value) -> bool,
) -> Option<DateTime<Utc>> {
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "pods"
                && e["objectRef"]["subresource"] == "status"
        })
        .filter_map(|e| Some((stage_ts(&e)?, e)))
        .filter(|(t, _)| *t >= since)
        .find(|(_, e)| {
            let pod = &e["responseObject"];
            let created = pod["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .is_some_and(|t| t >= since);
            created
                && pod["metadata"]["labels"]["app"] == app
                && pod["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(&matches)
        })
        .map(|(t, _)| t)
}

/// The deployment controller's first status write after `since` that
/// turns `Progressing` to `ProgressDeadlineExceeded` (a transition: the
/// broken rollout before the run left the same condition behind, and the
/// controller's first writes for the run's new ReplicaSet still carry it).
fn deployment_pde(audit: &str, name: &str, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut before: Option<bool> = None;
    for (t, e) in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "deployments"
                && e["objectRef"]["subresource"] == "status"
                && e["objectRef"]["name"] == name
        })
        .filter_map(|e| Some((stage_ts(&e)?, e)))
        .filter(|(t, _)| *t >= since)
    {
        let Some(conditions) = e["responseObject"]["status"]["conditions"].as_array() else {
            continue;
        };
        let pde = conditions
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
        if pde && before == Some(false) {
            return Some(t);
        }
        before = Some(pde);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_signals_are_read_from_their_logs() {
        let line =
            r#"secret_canary_stage_blocked{probe="ttd-es",stage="eso_sync",reason="sync_error"} 1"#;
        assert_eq!(label(line, "stage"), "eso_sync");
        assert_eq!(label(line, "reason"), "sync_error");
        let since = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let pod = json!({"stage": "ResponseComplete", "stageTimestamp": "2026-01-01T00:00:01.5Z",
            "objectRef": {"resource": "pods", "subresource": "status"},
            "responseObject": {"metadata": {"labels": {"app": "ttd-img"}, "creationTimestamp": "2026-01-01T00:00:01Z"},
                "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}}});
        let log = format!("{pod}\nnot json\n");
        let t = pod_status_signal(&log, "ttd-img", since, |s| {
            waiting_reason(s) == Some("ErrImagePull")
        });
        assert_eq!(t.unwrap().timestamp_millis() % 10_000, 1500);
        assert!(pod_status_signal(&log, "other", since, |_| true).is_none());
        let dep = |t: &str, reason: &str| {
            json!({"stage": "ResponseComplete", "stageTimestamp": t,
                "objectRef": {"resource": "deployments", "subresource": "status", "name": "ttd-img"},
                "responseObject": {"status": {"conditions": [{"type": "Progressing", "reason": reason}]}}})
            .to_string()
        };
        let log = [
            dep("2026-01-01T00:00:01Z", "ProgressDeadlineExceeded"),
            dep("2026-01-01T00:00:02Z", "NewReplicaSetCreated"),
            dep("2026-01-01T00:00:07Z", "ProgressDeadlineExceeded"),
        ]
        .join("\n");
        let t = deployment_pde(&log, "ttd-img", since).unwrap();
        assert_eq!(t.timestamp() % 60, 7);
        let d = Detection {
            signal_at: Some(since),
            blocked: Some((
                since + chrono::Duration::milliseconds(30),
                "s".into(),
                "r".into(),
            )),
            verdict_at: Some(since + chrono::Duration::seconds(10)),
            ..Default::default()
        };
        assert_eq!(d.to_export_ms(), Some(30.0));
        assert_eq!(d.to_verdict_ms(), Some(10_000.0));
    }
}
