//! Accuracy: many probe runs on the lab with randomized stage latencies,
//! each stage's measured duration scored against the lab's ground truth;
//! then the same chains timed by the kubectl-polling baseline
//! (`bench/baseline.py`) and scored the same way.
//!
//! | stage | truth start | truth end |
//! |---|---|---|
//! | `store_write` | the measurer's own request start | OpenBao's `created_time` of the version |
//! | `eso_sync` | `created_time` | `eso.status_synced` with the run's digest |
//! | `secret_update` | `created_time` | `eso.secret_written` with the run's digest |
//! | `reloader_trigger` | `eso.secret_written` (env) / `created_time` (Bank-Vaults) | `reloader.template_patched` / `deployment.template_changed` after it |
//! | `rollout` | that trigger | `deployment.rollout_complete` after it |
//! | `canary_observe` | `rollout_complete` (env canaries hold the value from start) / `eso.secret_written` (volume) | `rollout_complete` / `kubelet.volume_updated` with the digest |
//! | `end_to_end` | the measurer's own request start | the last truth end above |

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use secret_canary_lab::lab::Lab;
use secret_canary_lab::openbao::BaoAdmin;
use secret_canary_lab::truth::{error_beyond, Milestones, TruthRecord};
use serde_json::Value;

use crate::prober::Prober;
use crate::scenario::{self, Chain, EsoAuth, Kind, ProberSpec};
use crate::stats::{summarize, Summary};
use crate::{start_lab, Tools};

/// The stages in report order.
pub const STAGES: [&str; 7] = [
    "store_write",
    "eso_sync",
    "secret_update",
    "reloader_trigger",
    "rollout",
    "canary_observe",
    "end_to_end",
];

/// The randomized controller delays of the accuracy run.
pub const KNOBS: [(&str, &str); 5] = [
    ("eso-latency", "20ms..400ms"),
    ("reloader-latency", "10ms..200ms"),
    ("deployment-latency", "5ms..100ms"),
    ("kubelet-start-latency", "20ms..300ms"),
    ("volume-sync-latency", "100ms..800ms"),
];

/// ESO's `refreshInterval` in the accuracy scenario (as the reference scenario).
pub const REFRESH_INTERVAL: &str = "2s";

/// How the accuracy phase runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prober runs to score (all chains together).
    pub runs: usize,
    /// Copies of each of the three chain variants (probes run concurrently).
    pub copies: usize,
    /// The probes' interval.
    pub interval: Duration,
    /// Baseline runs (all chains together); 0 skips the baseline.
    pub baseline_runs: usize,
}

/// One stage's measurement in one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StageObs {
    pub(crate) start: DateTime<Utc>,
    /// Measured duration, seconds.
    pub(crate) dur: f64,
}

/// One scored run.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    chain: Chain,
    digest: String,
    pub(crate) created: Option<DateTime<Utc>>,
    pub(crate) stages: BTreeMap<&'static str, StageObs>,
}

/// One row of the accuracy table: a stage of a chain variant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Chain variant.
    pub kind: Kind,
    /// Stage.
    pub stage: &'static str,
    /// The true durations, ms.
    pub truth_ms: Summary,
    /// |prober − truth|, ms.
    pub prober_ms: Summary,
    /// |baseline − truth|, ms.
    pub baseline_ms: Summary,
}

/// Every run's error for one stage, ms.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageSamples {
    /// Stage.
    pub stage: String,
    /// |prober − truth|, ms.
    pub prober_ms: Vec<f64>,
    /// |baseline − truth|, ms.
    pub baseline_ms: Vec<f64>,
}

/// What the accuracy phase found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AccuracyResult {
    /// Probes (chains) run concurrently.
    pub probes: usize,
    /// Prober runs seen.
    pub prober_runs: usize,
    /// Of which succeeded.
    pub prober_success: usize,
    /// Failure stage/reason counts of the rest.
    pub prober_failures: BTreeMap<String, usize>,
    /// Successful runs that could not be matched to the truth.
    pub prober_unscored: usize,
    /// Baseline runs made.
    pub baseline_runs: usize,
    /// Of which saw every milestone before its deadline.
    pub baseline_complete: usize,
    /// Complete baseline runs that could not be matched to the truth.
    pub baseline_unscored: usize,
    /// Per chain variant and stage.
    pub rows: Vec<Row>,
    /// Per stage over every chain variant.
    pub overall: Vec<Row>,
    /// Every scored error per stage over every chain variant (for the picture).
    pub samples: Vec<StageSamples>,
    /// Wall time of the phase.
    pub seconds: f64,
}

/// Run the accuracy phase.
pub async fn run(tools: &Tools, opts: &Options, dir: &Path) -> Result<AccuracyResult> {
    let started = Instant::now();
    let chains = scenario::chains(&[Kind::Env, Kind::Volume, Kind::Bankvaults], opts.copies);
    let knobs: Vec<(&str, String)> = KNOBS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let lab = start_lab(
        tools,
        dir,
        &chains,
        &knobs,
        REFRESH_INTERVAL,
        EsoAuth::Kubernetes,
        secret_canary_lab::controllers::eso::DEFAULT_WORKERS,
    )
    .await?;
    let result = measure(tools, opts, &lab, &chains, started).await;
    lab.stop().await;
    result
}

async fn measure(
    tools: &Tools,
    opts: &Options,
    lab: &Lab,
    chains: &[Chain],
    started: Instant,
) -> Result<AccuracyResult> {
    let mut res = AccuracyResult {
        probes: chains.len(),
        ..Default::default()
    };
    let config = lab.dir.join("bench-prober.yaml");
    let token = lab.dir.join("prober.token");
    std::fs::write(
        &config,
        scenario::prober_yaml(
            chains,
            &ProberSpec {
                kubeconfig: &lab.kubeconfig,
                vault_addr: &lab.vault.addr,
                token_file: &token,
                interval: opts.interval,
                deadline: Duration::from_secs(60),
                force_sync: false,
                stagger: false,
            },
        ),
    )?;
    let mut prober = Prober::start(&tools.prober_bin, &config, &lab.dir.join("prober.log")).await?;
    prober.wait_ready(Duration::from_secs(120)).await?;
    eprintln!(
        "accuracy: {} probes running, collecting {} runs",
        chains.len(),
        opts.runs
    );

    let mut reported = Reported::new(chains);
    let mut observed = Vec::new();
    let per_probe = opts.runs.div_ceil(chains.len().max(1)) as u32;
    let limit = opts.interval * (per_probe + 2) * 2 + Duration::from_secs(120);
    let t0 = Instant::now();
    while reported.runs < opts.runs && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        observed.extend(reported.poll(&prober, &lab.bao).await);
    }
    res.prober_runs = reported.runs;
    res.prober_success = reported.success;
    res.prober_failures = reported.failures;
    prober.stop(Duration::from_secs(15)).await;
    eprintln!(
        "accuracy: prober done ({} runs, {} succeeded) after {:.0} s",
        res.prober_runs,
        res.prober_success,
        t0.elapsed().as_secs_f64()
    );

    let mut baseline = Vec::new();
    if opts.baseline_runs > 0 {
        let (runs, complete) = run_baseline(tools, opts, lab, chains).await?;
        res.baseline_runs = runs.len() + complete.len();
        res.baseline_complete = complete.len();
        baseline = complete;
        let _ = runs;
        eprintln!(
            "accuracy: baseline done ({} runs, {} complete)",
            res.baseline_runs, res.baseline_complete
        );
    }

    let truth = lab.truth.records();
    let prober = score(&observed, &truth, &lab.dir.join("prober-scored.jsonl"));
    res.prober_unscored = prober.unscored;
    let baseline = score(&baseline, &truth, &lab.dir.join("baseline-scored.jsonl"));
    res.baseline_unscored = baseline.unscored;

    let (rows, overall, samples) = tables(&prober.dur, &prober.err, &baseline.err);
    res.rows = rows;
    res.overall = overall;
    res.samples = samples;
    res.seconds = started.elapsed().as_secs_f64();
    Ok(res)
}

/// The per-variant rows, the all-variants rows and every sample per stage,
/// from the scored errors (`baseline` may be empty).
pub(crate) fn tables(
    truth_dur: &ByStage,
    prober_err: &ByStage,
    baseline_err: &ByStage,
) -> (Vec<Row>, Vec<Row>, Vec<StageSamples>) {
    let (mut rows, mut overall, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    let kinds = [Kind::Env, Kind::Volume, Kind::Bankvaults];
    for kind in kinds {
        for stage in STAGES {
            let key = (kind, stage);
            let Some(t) = truth_dur.get(&key) else {
                continue;
            };
            rows.push(Row {
                kind,
                stage,
                truth_ms: summarize(t),
                prober_ms: summarize(prober_err.get(&key).map(Vec::as_slice).unwrap_or(&[])),
                baseline_ms: summarize(baseline_err.get(&key).map(Vec::as_slice).unwrap_or(&[])),
            });
        }
    }
    for stage in STAGES {
        let gather = |m: &ByStage| -> Vec<f64> {
            kinds
                .iter()
                .flat_map(|k| m.get(&(*k, stage)).cloned().unwrap_or_default())
                .collect()
        };
        let t = gather(truth_dur);
        if t.is_empty() {
            continue;
        }
        let (prober, baseline) = (gather(prober_err), gather(baseline_err));
        overall.push(Row {
            kind: Kind::Env,
            stage,
            truth_ms: summarize(&t),
            prober_ms: summarize(&prober),
            baseline_ms: summarize(&baseline),
        });
        samples.push(StageSamples {
            stage: stage.to_string(),
            prober_ms: prober,
            baseline_ms: baseline,
        });
    }
    (rows, overall, samples)
}

fn parse_ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn stage_name(s: &str) -> Option<&'static str> {
    STAGES.iter().copied().find(|x| *x == s)
}

/// The runs the prober reported on `/probes`, each counted once.
pub(crate) struct Reported<'a> {
    by_name: BTreeMap<&'a str, &'a Chain>,
    seen: HashSet<String>,
    /// Runs seen.
    pub runs: usize,
    /// Of which successes.
    pub success: usize,
    /// Failures by `stage/reason`.
    pub failures: BTreeMap<String, usize>,
}

impl<'a> Reported<'a> {
    /// A collector of the runs of the probes on `chains`.
    pub fn new(chains: &'a [Chain]) -> Self {
        Reported {
            by_name: chains.iter().map(|c| (c.name.as_str(), c)).collect(),
            seen: HashSet::new(),
            runs: 0,
            success: 0,
            failures: BTreeMap::new(),
        }
    }

    /// Read `/probes` once: count the runs not seen before and return the
    /// new successful ones as observations, with the store's `created_time`
    /// of the value each wrote. A failed read returns nothing (the next
    /// poll sees the runs it missed only if no later run replaced them).
    pub async fn poll(&mut self, prober: &Prober, bao: &BaoAdmin) -> Vec<Observed> {
        let mut out = Vec::new();
        let Ok(text) = prober.get("/probes").await else {
            return out;
        };
        let Ok(doc) = serde_json::from_str::<Value>(&text) else {
            return out;
        };
        for p in doc["probes"].as_array().into_iter().flatten() {
            let last = &p["last_run"];
            let Some(run_id) = last["run_id"].as_str() else {
                continue;
            };
            if !self.seen.insert(run_id.to_string()) {
                continue;
            }
            self.runs += 1;
            let name = last["probe"].as_str().unwrap_or_default();
            let Some(chain) = self.by_name.get(name).copied() else {
                continue;
            };
            if last["result"].as_str() != Some("success") {
                let key = format!(
                    "{}/{}",
                    last["failure"]["stage"].as_str().unwrap_or("?"),
                    last["failure"]["reason"].as_str().unwrap_or("?")
                );
                *self.failures.entry(key).or_default() += 1;
                continue;
            }
            self.success += 1;
            let mut o = observed_from_report(chain, last);
            if let Some(w) = o.stages.get("store_write").copied() {
                o.created = created_time(bao, &chain.store_path, w.start, w.dur).await;
            }
            out.push(o);
        }
        out
    }
}

/// A `/probes` `last_run` report as an observation.
pub(crate) fn observed_from_report(chain: &Chain, report: &Value) -> Observed {
    let mut stages = BTreeMap::new();
    for s in report["stages"].as_array().into_iter().flatten() {
        let (Some(name), Some(start), Some(dur)) = (
            s["stage"].as_str().and_then(stage_name),
            parse_ts(&s["started_at"]),
            s["duration_seconds"].as_f64(),
        ) else {
            continue;
        };
        stages.insert(name, StageObs { start, dur });
    }
    Observed {
        chain: chain.clone(),
        digest: report["digest"].as_str().unwrap_or_default().to_string(),
        created: None,
        stages,
    }
}

/// OpenBao's `created_time` of the version written between `start` and
/// `start + dur` (plus slack): the store write's true completion.
pub(crate) async fn created_time(
    bao: &BaoAdmin,
    path: &str,
    start: DateTime<Utc>,
    dur: f64,
) -> Option<DateTime<Utc>> {
    let meta = bao.kv_metadata(path).await.ok()?;
    let meta = meta.get("data").unwrap_or(&meta);
    let end = start + chrono::Duration::microseconds((dur * 1e6) as i64);
    let slack = chrono::Duration::milliseconds(500);
    meta["versions"]
        .as_object()?
        .values()
        .filter_map(|v| parse_ts(&v["created_time"]))
        .filter(|t| *t >= start - slack && *t <= end + slack)
        .min_by_key(|t| (*t - end).num_microseconds().unwrap_or(i64::MAX).abs())
}

/// Run `bench/baseline.py` on the same chains; returns (incomplete, complete) runs.
async fn run_baseline(
    tools: &Tools,
    opts: &Options,
    lab: &Lab,
    chains: &[Chain],
) -> Result<(Vec<Value>, Vec<Observed>)> {
    let chains_file = lab.dir.join("baseline-chains.json");
    std::fs::write(&chains_file, serde_json::to_vec_pretty(chains)?)?;
    let out = lab.dir.join("baseline.jsonl");
    let log = std::fs::File::create(lab.dir.join("baseline.log"))?;
    eprintln!(
        "accuracy: baseline ({} runs, kubectl get every second)",
        opts.baseline_runs
    );
    let per_chain = opts.baseline_runs.div_ceil(chains.len().max(1)) as u64;
    let limit = Duration::from_secs(per_chain * 75 + 120);
    let mut child = tokio::process::Command::new(&tools.python)
        .arg(&tools.baseline_script)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .arg("--kubectl")
        .arg(&tools.kubectl)
        .arg("--bao")
        .arg(&tools.bao)
        .arg("--vault-env")
        .arg(lab.dir.join("vault.env"))
        .arg("--chains")
        .arg(&chains_file)
        .arg("--runs")
        .arg(opts.baseline_runs.to_string())
        .arg("--out")
        .arg(&out)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the baseline script")?;
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                tracing::warn!(%status, "baseline script failed; see baseline.log");
            }
        }
        Err(_) => {
            let _ = child.kill().await;
            tracing::warn!("baseline script did not finish in time; scoring what it wrote");
        }
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let by_name: BTreeMap<&str, &Chain> = chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let (mut incomplete, mut complete) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let chain = v["chain"].as_str().and_then(|n| by_name.get(n));
        match (chain, v["complete"].as_bool()) {
            (Some(chain), Some(true)) => complete.push(observed_from_baseline(chain, &v)),
            _ => incomplete.push(v),
        }
    }
    Ok((incomplete, complete))
}

fn ns_to_ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_i64().map(DateTime::from_timestamp_nanos)
}

/// A baseline record as an observation, stages defined as the prober's are.
fn observed_from_baseline(chain: &Chain, v: &Value) -> Observed {
    let ws = ns_to_ts(&v["write_start"]);
    let we = ns_to_ts(&v["write_end"]);
    let seen = |k: &str| ns_to_ts(&v["seen"][k]);
    let (secret, eso, template, rollout, canary) = (
        seen("secret"),
        seen("eso"),
        seen("template"),
        seen("rollout"),
        seen("canary"),
    );
    let mut stages = BTreeMap::new();
    let mut put = |name: &'static str, a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>| {
        if let (Some(a), Some(b)) = (a, b) {
            let dur = (b - a).num_nanoseconds().unwrap_or(0) as f64 / 1e9;
            stages.insert(name, StageObs { start: a, dur });
        }
    };
    put("store_write", ws, we);
    match chain.kind {
        Kind::Env => {
            put("eso_sync", we, eso);
            put("secret_update", we, secret);
            put("reloader_trigger", secret, template);
            put("rollout", template, rollout);
            put("canary_observe", rollout, canary);
        }
        Kind::Volume => {
            put("eso_sync", we, eso);
            put("secret_update", we, secret);
            put("canary_observe", secret, canary);
        }
        Kind::Bankvaults => {
            put("reloader_trigger", we, template);
            put("rollout", template, rollout);
            put("canary_observe", rollout, canary);
        }
    }
    put("end_to_end", ws, canary);
    Observed {
        chain: chain.clone(),
        digest: v["digest"].as_str().unwrap_or_default().to_string(),
        created: parse_ts(&v["created_time"]),
        stages,
    }
}

pub(crate) type ByStage = BTreeMap<(Kind, &'static str), Vec<f64>>;

/// The scores of a set of runs, per (variant, stage), in ms.
#[derive(Debug, Default)]
pub(crate) struct Scores {
    /// |measured − true|, the truth's stamps taken as exact.
    pub err: ByStage,
    /// How far the measurement lies outside the durations the truth allows
    /// (the same as `err` where every milestone is known to the instant;
    /// smaller where the audit log only brackets one, see
    /// [`secret_canary_lab::truth::error_beyond`]).
    pub beyond: ByStage,
    /// The true durations.
    pub dur: ByStage,
    /// Runs that could not be matched to the truth.
    pub unscored: usize,
}

/// Score the runs against the truth. Every scored stage also goes to
/// `details` (JSONL) for post-mortems.
pub(crate) fn score(observed: &[Observed], truth: &[TruthRecord], details: &Path) -> Scores {
    let mut out = Scores::default();
    let mut lines = String::new();
    for o in observed {
        let Some(written) = o.created else {
            out.unscored += 1;
            continue;
        };
        let kind = o.chain.kind.into();
        let points = Milestones::of(truth, kind, &o.chain.name, &o.digest, written);
        for (stage, m) in &o.stages {
            let (Some(a), Some(b)) = points.span(kind, stage, m.start) else {
                continue;
            };
            let t = (b.ts - a.ts).num_nanoseconds().unwrap_or(0) as f64 / 1e9;
            let beyond = error_beyond(m.dur, a, b);
            let line = serde_json::json!({
                "chain": o.chain.name, "digest": o.digest, "stage": stage,
                "start": m.start, "measured_s": m.dur, "truth_start": a.ts, "truth_end": b.ts,
                "truth_start_from": a.from, "truth_end_from": b.from,
                "truth_s": t, "error_ms": (m.dur - t) * 1000.0, "beyond_ms": beyond * 1000.0,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
            let key = (o.chain.kind, *stage);
            out.err
                .entry(key)
                .or_default()
                .push((m.dur - t).abs() * 1000.0);
            out.beyond.entry(key).or_default().push(beyond * 1000.0);
            out.dur.entry(key).or_default().push(t * 1000.0);
        }
    }
    if let Err(e) = std::fs::write(details, lines) {
        tracing::warn!(error = %e, file = %details.display(), "could not write scored runs");
    }
    out
}

/// Where the accuracy phase keeps its files.
pub fn dir(work: &Path) -> PathBuf {
    work.join("accuracy")
}
