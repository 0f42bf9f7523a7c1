//! The real tier (`secret-canary-lab up --cluster real`): the real
//! kube-apiserver, etcd, controller-manager, scheduler and ESO, the lab's
//! node agent, Reloader and Bank-Vaults webhook against the real API server.
//!
//! Two measurements on one lab:
//!
//! - **Accuracy and API load.** 10 probes on 10 chains of the reference
//!   scenario's three variants (4 ESO + Reloader + env, 3 ESO + Secret
//!   volume, 3 Bank-Vaults restart), run concurrently, with the node agent
//!   on the upstream timing profile (Secret volumes refreshed on the
//!   kubelet's sync period, 1 min plus up to 50 % jitter). Each stage is
//!   scored against `truth.jsonl` (the API server's audit log and the node
//!   agent's records, `lab/src/real/audit_truth.rs`) with the same code as
//!   the simulated accuracy phase. The prober runs as its own ServiceAccount
//!   (`canary/secret-canary`, a Role like the chart's), whose every request
//!   the audit policy records (metadata only), so its API requests are
//!   counted by verb from the audit log.
//! - **Time to detect** ([`detect`]): faults the cluster itself reports,
//!   made by real means, each timed from the cluster's signal to the
//!   prober's export and verdict.

pub mod detect;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use secret_canary_lab::real::bins::{self, Binaries};
use secret_canary_lab::real::lab::RealLab;
use secret_canary_lab::real::RealOptions;
use serde_json::{json, Value};

use crate::accuracy::{self, Row, StageSamples};
use crate::prober::Prober;
use crate::scenario::{self, Chain, EsoAuth, Kind, ProberSpec, NAMESPACE};
use crate::stats::{summarize, Summary};
use crate::Tools;

/// The prober's ServiceAccount (the reference scenario's), audited by the
/// real lab's policy.
pub const PROBER_SA: &str = "secret-canary";

/// How the real phase runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the probes run.
    pub duration: Duration,
    /// The probes' interval.
    pub interval: Duration,
    /// The node agent's sync period (Secret volume refresh).
    pub sync_period: Duration,
    /// Also measure time to detect.
    pub detect: bool,
    /// The build profile of the measured binaries (`release`, `debug`).
    pub profile: String,
}

/// Requests of one verb and resource.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerbCount {
    /// `get`, `list`, `watch`, `patch`, ...
    pub verb: String,
    /// `pods`, `secrets`, `externalsecrets`, `deployments`, ...
    pub resource: String,
    /// Before the prober reported ready (start-up).
    pub startup: usize,
    /// After it reported ready.
    pub after: usize,
}

/// Audit windows of one writer's writes of one resource.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TruthWindow {
    /// ESO, Reloader, the deployment controller.
    pub writer: String,
    /// `secrets`, `externalsecrets/status`, `deployments`, ...
    pub resource: String,
    /// `stageTimestamp − requestReceivedTimestamp`, ms.
    pub window_ms: Summary,
}

/// What the real phase found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RealResult {
    /// Probes run concurrently.
    pub probes: usize,
    /// Runs seen.
    pub runs: usize,
    /// Of which succeeded.
    pub success: usize,
    /// Failure stage/reason counts of the rest.
    pub failures: BTreeMap<String, usize>,
    /// Successful runs that could not be matched to the truth.
    pub unscored: usize,
    /// Per chain variant and stage (`baseline_ms` empty).
    pub rows: Vec<Row>,
    /// Per stage over every variant.
    pub overall: Vec<Row>,
    /// Every scored error per stage.
    pub samples: Vec<StageSamples>,
    /// The prober's requests by verb and resource, from the audit log.
    pub verbs: Vec<VerbCount>,
    /// The prober's user in the audit log.
    pub user: String,
    /// Per stage (all chains): how far the prober's duration lies outside
    /// the durations the truth's windows allow, ms.
    pub beyond: Vec<(String, Summary)>,
    /// The truth's own resolution: per writer and resource, the audit
    /// window (request received → response complete, ms) of the writes the
    /// truth is made of; the commit lies somewhere inside it.
    pub truth_windows: Vec<TruthWindow>,
    /// Seconds the probes ran after ready.
    pub window_s: f64,
    /// Lab ready after, seconds.
    pub lab_ready_s: f64,
    /// `/proc/loadavg` when the probes started and when they stopped.
    pub load: (String, String),
    /// The node agent's sync period.
    pub sync_period: String,
    /// Probe interval.
    pub interval: String,
    /// Build profile of the prober and canaries.
    pub profile: String,
    /// Pinned component versions.
    pub versions: BTreeMap<String, String>,
    /// Time to detect, when measured.
    pub detect: Option<detect::DetectResult>,
    /// Wall time of the phase.
    pub seconds: f64,
}

/// Why the real tier cannot run here (binaries not built), if it cannot.
pub fn missing() -> Option<String> {
    let missing = Binaries::pinned().missing(&bins::CONTROL_PLANE);
    (!missing.is_empty()).then(|| {
        format!(
            "the real cluster's binaries are not built ({}); run scripts/build-real.sh",
            missing.join(", ")
        )
    })
}

/// The loadavg triple now.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The 10 chains of the real phase: 4 env, 3 volume, 3 Bank-Vaults.
pub fn chains() -> Vec<Chain> {
    let mut v: Vec<Chain> = (0..4).map(|i| Chain::new(Kind::Env, i)).collect();
    v.extend((0..3).map(|i| Chain::new(Kind::Volume, i)));
    v.extend((0..3).map(|i| Chain::new(Kind::Bankvaults, i)));
    v
}

/// The scenario for the real lab: the generated chains (plus `extra`),
/// readiness probes every second as in the reference scenario, and the
/// prober's ServiceAccount with a Role like the chart's (no resourceNames:
/// the bench's chains are many).
pub fn scenario_text(chains: &[Chain], patch: impl Fn(&mut Value)) -> Result<String> {
    let text =
        scenario::scenario_yaml(chains, &[], accuracy::REFRESH_INTERVAL, EsoAuth::Kubernetes);
    let mut doc: Value = serde_norway::from_str(&text).context("generated scenario")?;
    if let Some(objects) = doc["objects"].as_array_mut() {
        for o in objects.iter_mut() {
            if o["kind"] == "Deployment" {
                if let Some(cs) = o
                    .pointer_mut("/spec/template/spec/containers")
                    .and_then(Value::as_array_mut)
                {
                    for c in cs {
                        c["readinessProbe"]["periodSeconds"] = json!(1);
                    }
                }
            }
        }
        objects.insert(
            2,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": PROBER_SA, "namespace": NAMESPACE}}),
        );
        objects.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": PROBER_SA, "namespace": NAMESPACE},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["external-secrets.io"], "resources": ["externalsecrets"],
                 "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["apps"], "resources": ["deployments"],
                 "verbs": ["get", "list", "watch", "patch"]},
            ],
        }));
        objects.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": PROBER_SA, "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PROBER_SA},
            "subjects": [{"kind": "ServiceAccount", "name": PROBER_SA, "namespace": NAMESPACE}],
        }));
    }
    patch(&mut doc);
    Ok(serde_norway::to_string(&doc)?)
}

/// Run the real phase (the lab is stopped at the end, also on error).
pub async fn run(tools: &Tools, opts: &Options, dir: &Path) -> Result<RealResult> {
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let chains = chains();
    let extra = detect::chains();
    let all: Vec<Chain> = chains.iter().chain(extra.iter()).cloned().collect();
    let file = dir.join("scenario.yaml");
    std::fs::write(&file, scenario_text(&all, detect::patch_scenario)?)?;
    let mut ro = RealOptions::new(dir.join("lab"));
    ro.canary_bin = Some(tools.prober_bin.clone());
    ro.scenario = Some(file);
    ro.node.volume_sync_period = opts.sync_period;
    ro.ready_timeout = Duration::from_secs(180);
    eprintln!(
        "real: starting the real lab ({} chains, node sync period {})",
        all.len(),
        humantime::format_duration(opts.sync_period)
    );
    let lab = RealLab::start(ro).await.context("starting the real lab")?;
    eprintln!("real: lab ready in {:.1} s", lab.ready_after.as_secs_f64());
    let result = async {
        let kubeconfig = secret_canary_lab::real::setup::service_account_kubeconfig(
            &lab.cluster,
            NAMESPACE,
            PROBER_SA,
            "prober.kubeconfig",
        )
        .await
        .context("the prober's kubeconfig")?;
        let mut res = measure(tools, opts, &lab, &chains, &kubeconfig).await?;
        res.lab_ready_s = lab.ready_after.as_secs_f64();
        if opts.detect {
            res.detect = Some(detect::run(tools, &lab, &kubeconfig).await?);
        }
        Ok::<_, anyhow::Error>(res)
    }
    .await;
    lab.stop().await;
    let mut res = result?;
    res.seconds = started.elapsed().as_secs_f64();
    Ok(res)
}

async fn measure(
    tools: &Tools,
    opts: &Options,
    lab: &RealLab,
    chains: &[Chain],
    kubeconfig: &Path,
) -> Result<RealResult> {
    let mut res = RealResult {
        probes: chains.len(),
        user: secret_canary_lab::real::audit::PROBER_USER.to_string(),
        sync_period: humantime::format_duration(opts.sync_period).to_string(),
        interval: humantime::format_duration(opts.interval).to_string(),
        profile: opts.profile.clone(),
        versions: lab_versions(&lab.dir),
        ..Default::default()
    };
    let config = lab.dir.join("bench-prober.yaml");
    let token = lab.dir.join("prober.token");
    // A volume run waits for the node's sync period (up to 1.5 periods).
    let deadline = opts.sync_period.mul_f64(1.5) + Duration::from_secs(60);
    std::fs::write(
        &config,
        scenario::prober_yaml(
            chains,
            &ProberSpec {
                kubeconfig,
                vault_addr: &lab.vault.addr,
                token_file: &token,
                interval: opts.interval,
                deadline,
                force_sync: false,
                stagger: false,
            },
        ),
    )?;
    let mut prober = Prober::start(&tools.prober_bin, &config, &lab.dir.join("prober.log")).await?;
    prober.wait_ready(Duration::from_secs(120)).await?;
    let ready_at = Utc::now();
    res.load.0 = loadavg();
    eprintln!(
        "real: {} probes running for {} (load {})",
        chains.len(),
        humantime::format_duration(opts.duration),
        res.load.0
    );
    let mut reported = accuracy::Reported::new(chains);
    let mut observed = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        observed.extend(reported.poll(&prober, &lab.bao).await);
    }
    res.runs = reported.runs;
    res.success = reported.success;
    res.failures = reported.failures;
    res.window_s = t0.elapsed().as_secs_f64();
    res.load.1 = loadavg();
    prober.stop(Duration::from_secs(15)).await;
    eprintln!(
        "real: {} runs, {} succeeded (load at end {})",
        res.runs, res.success, res.load.1
    );
    // The audit tailer follows the log a little behind.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut truth = lab.truth.records();
    truth.sort_by_key(|r| r.ts);
    let scores = accuracy::score(&observed, &truth, &lab.dir.join("prober-scored.jsonl"));
    res.unscored = scores.unscored;
    let (rows, overall, samples) = accuracy::tables(&scores.dur, &scores.err, &Default::default());
    res.rows = rows;
    res.overall = overall;
    res.samples = samples;
    res.beyond = beyond_by_stage(&scores.beyond);
    res.verbs = count_verbs(&lab.cluster.audit_log, &res.user, ready_at)?;
    let audit = std::fs::read_to_string(&lab.cluster.audit_log).unwrap_or_default();
    res.truth_windows = truth_windows(&audit);
    Ok(res)
}

/// Every chain's error beyond the truth's window, per stage (in the order
/// of the pipeline).
fn beyond_by_stage(beyond: &accuracy::ByStage) -> Vec<(String, Summary)> {
    let mut by: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
    for ((_, stage), v) in beyond {
        let order = accuracy::STAGES
            .iter()
            .position(|s| s == stage)
            .unwrap_or(usize::MAX);
        let e = by
            .entry(order)
            .or_insert_with(|| (stage.to_string(), Vec::new()));
        e.1.extend(v);
    }
    by.into_values().map(|(s, v)| (s, summarize(&v))).collect()
}

fn lab_versions(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("lab.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| serde_json::from_value(v["versions"].clone()).ok())
        .unwrap_or_default()
}

/// The user's requests in the audit log by verb and resource (one per
/// audit ID: a watch has a `ResponseStarted` and a `ResponseComplete`
/// event), split at `ready` by the time each was received.
pub fn count_verbs(log: &PathBuf, user: &str, ready: DateTime<Utc>) -> Result<Vec<VerbCount>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(count_verbs_in(&text, user, ready))
}

/// [`count_verbs`] on the log's text.
pub fn count_verbs_in(text: &str, user: &str, ready: DateTime<Utc>) -> Vec<VerbCount> {
    let mut ids = HashSet::new();
    let mut counts: BTreeMap<(String, String), VerbCount> = BTreeMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["user"]["username"].as_str() != Some(user) {
            continue;
        }
        let Some(id) = e["auditID"].as_str() else {
            continue;
        };
        if !ids.insert(id.to_string()) {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or("?").to_string();
        let mut resource = e["objectRef"]["resource"]
            .as_str()
            .unwrap_or_else(|| e["requestURI"].as_str().unwrap_or("?"))
            .to_string();
        if let Some(sub) = e["objectRef"]["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let received = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        let c = counts
            .entry((verb.clone(), resource.clone()))
            .or_insert_with(|| VerbCount {
                verb,
                resource,
                ..Default::default()
            });
        if received.is_some_and(|t| t >= ready) {
            c.after += 1;
        } else {
            c.startup += 1;
        }
    }
    counts.into_values().collect()
}

/// The audit windows of the writes the truth is made of (ESO's, Reloader's
/// and the deployment controller's creates, updates and patches).
pub fn truth_windows(audit: &str) -> Vec<TruthWindow> {
    let u = secret_canary_lab::real::audit_truth::Users::lab();
    let writers = [
        (u.eso.as_str(), "ESO"),
        (u.reloader.as_str(), "Reloader"),
        (u.deployment_controller.as_str(), "deployment controller"),
    ];
    let ts = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let mut by: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    for line in audit.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["stage"] != "ResponseComplete"
            || !matches!(e["verb"].as_str(), Some("create" | "update" | "patch"))
        {
            continue;
        }
        let Some((_, writer)) = writers
            .iter()
            .find(|(user, _)| e["user"]["username"].as_str() == Some(*user))
        else {
            continue;
        };
        let (Some(a), Some(b)) = (ts(&e["requestReceivedTimestamp"]), ts(&e["stageTimestamp"]))
        else {
            continue;
        };
        let mut resource = e["objectRef"]["resource"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        if let Some(sub) = e["objectRef"]["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        if !matches!(
            resource.as_str(),
            "secrets" | "externalsecrets/status" | "deployments" | "deployments/status"
        ) {
            continue;
        }
        by.entry((writer, resource))
            .or_default()
            .push((b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    by.into_iter()
        .map(|((writer, resource), v)| TruthWindow {
            writer: writer.to_string(),
            resource,
            window_ms: summarize(&v),
        })
        .collect()
}

/// Where the real phase keeps its files.
pub fn dir(work: &Path) -> PathBuf {
    work.join("real")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_counted_once_per_request_and_split_at_ready() {
        let u = "system:serviceaccount:canary:secret-canary";
        let ev = |id: &str, verb: &str, res: &str, t: &str, user: &str| {
            json!({"auditID": id, "verb": verb, "user": {"username": user},
                "objectRef": {"resource": res}, "requestReceivedTimestamp": t})
            .to_string()
        };
        let log = [
            ev("a", "list", "pods", "2026-01-01T00:00:00Z", u),
            ev("b", "watch", "pods", "2026-01-01T00:00:00.5Z", u),
            ev("b", "watch", "pods", "2026-01-01T00:00:00.5Z", u),
            ev("c", "watch", "pods", "2026-01-01T00:05:00Z", u),
            ev("d", "patch", "deployments", "2026-01-01T00:05:00Z", u),
            ev("e", "list", "pods", "2026-01-01T00:05:00Z", "someone-else"),
            "not json".to_string(),
        ]
        .join("\n");
        let ready = DateTime::parse_from_rfc3339("2026-01-01T00:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = count_verbs_in(&log, u, ready);
        let get = |verb: &str, r: &str| {
            v.iter()
                .find(|c| c.verb == verb && c.resource == r)
                .map(|c| (c.startup, c.after))
        };
        assert_eq!(get("list", "pods"), Some((1, 0)));
        assert_eq!(get("watch", "pods"), Some((1, 1)));
        assert_eq!(get("patch", "deployments"), Some((0, 1)));
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn truth_windows_are_per_writer_and_resource() {
        let u = secret_canary_lab::real::audit_truth::Users::lab();
        let ev = |user: &str, res: &str, sub: Option<&str>, recv: &str, done: &str| {
            json!({"stage": "ResponseComplete", "verb": "update", "user": {"username": user},
                "objectRef": {"resource": res, "subresource": sub},
                "requestReceivedTimestamp": recv, "stageTimestamp": done})
            .to_string()
        };
        let log = [
            ev(
                &u.eso,
                "secrets",
                None,
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00.004Z",
            ),
            ev(
                &u.eso,
                "externalsecrets",
                Some("status"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00.010Z",
            ),
            ev(
                &u.reloader,
                "deployments",
                None,
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:00.100Z",
            ),
            ev(
                "someone",
                "deployments",
                None,
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:01Z",
            ),
            ev(
                &u.eso,
                "serviceaccounts",
                Some("token"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:00:01Z",
            ),
        ]
        .join("\n");
        let w = truth_windows(&log);
        let got: Vec<(String, String, f64)> = w
            .iter()
            .map(|x| (x.writer.clone(), x.resource.clone(), x.window_ms.max))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ESO".into(), "externalsecrets/status".into(), 10.0),
                ("ESO".into(), "secrets".into(), 4.0),
                ("Reloader".into(), "deployments".into(), 100.0),
            ]
        );
    }

    #[test]
    fn the_real_scenario_parses_with_the_prober_identity() {
        let text = scenario_text(&chains(), |_| {}).unwrap();
        let vars = BTreeMap::from([("VAULT_ADDR", "http://127.0.0.1:1".to_string())]);
        let s = secret_canary_lab::scenario::Scenario::parse(&text, &vars).unwrap();
        let kinds: Vec<&str> = s
            .objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .collect();
        assert!(kinds.contains(&"Role") && kinds.contains(&"RoleBinding"));
        assert_eq!(kinds.iter().filter(|k| **k == "Deployment").count(), 10);
        assert!(text.contains("periodSeconds: 1"));
    }
}
