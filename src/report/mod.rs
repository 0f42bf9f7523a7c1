//! What `once` prints and `/probes` serves: per probe its last outcome with
//! every stage's timing, SLO threshold and verdict, optionally set beside an
//! earlier saved report. A pure function of the outcomes and the config;
//! each output format is a renderer of the same [`Report`]:
//!
//! ```text
//! mod.rs       the model, the terminal table with its stage timeline, JSON
//! markdown.rs  pull-request comments and CI step summaries
//! junit.rs     one test case per probe for CI test-report views
//! compare.rs   before/after: stages slower than a threshold (`--compare`)
//! ```

pub mod compare;
pub mod junit;
pub mod markdown;

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::{Config, ProbeConfig};
use crate::vocab::{Failure, Outcome, RunResult, Stage, SyncTrigger};

pub use crate::slo::{end_to_end, passed, slo_breaches, Verdict};
pub use compare::{Baseline, Comparison, Thresholds};

/// Output format of `once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A human-readable table per probe, with a stage timeline.
    #[default]
    Table,
    /// One JSON document with every outcome (the input of `--compare`).
    Json,
    /// Markdown for a pull-request comment or a CI step summary.
    Markdown,
    /// JUnit XML: one test case per probe; a failure names stage and reason.
    Junit,
}

impl Format {
    /// The format a report file's name suggests (`.json`, `.md`, `.xml`),
    /// else `None`.
    pub fn from_extension(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "md" | "markdown" => Some(Format::Markdown),
            "xml" | "junit" => Some(Format::Junit),
            "txt" | "table" => Some(Format::Table),
            _ => None,
        }
    }
}

/// Exit code of `once` when every probe passed.
pub const EXIT_PASS: u8 = 0;
/// Exit code of `once` when a probe failed or broke its SLO.
pub const EXIT_FAIL: u8 = 1;
/// Exit code for usage and config errors.
pub const EXIT_USAGE: u8 = 2;

/// How a stage went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// Completed.
    Completed,
    /// Started and did not complete (the run's failure stage).
    Failed,
    /// Never started (an earlier stage failed).
    NotStarted,
}

/// One stage of one run, ready to print or serialise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// How it went.
    pub status: StageStatus,
    /// Wall clock at its start, RFC 3339 with nanoseconds.
    pub started_at: Option<String>,
    /// Wall clock at its completion, RFC 3339 with nanoseconds.
    pub completed_at: Option<String>,
    /// Monotonic duration, seconds.
    pub duration_seconds: Option<f64>,
    /// The SLO threshold, seconds.
    pub slo_seconds: Option<f64>,
    /// The SLO verdict.
    pub slo: Verdict,
    /// Where the stage sits on the run's time axis: seconds from the run's
    /// first stage start to this stage's start and to its end (a stage that
    /// did not complete ends when the run ended). For timelines.
    #[serde(skip)]
    pub span: Option<(f64, f64)>,
}

/// One probe's run, ready to print or serialise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    /// The probe's name.
    pub probe: String,
    /// The run's id (as in logs and exemplars).
    pub run_id: String,
    /// How the run ended.
    pub result: RunResult,
    /// Succeeded and met every SLO.
    pub passed: bool,
    /// SHA-256 (hex) of the value written.
    pub digest: Option<String>,
    /// RFC 3339 with nanoseconds.
    pub started_at: String,
    /// RFC 3339 with nanoseconds.
    pub finished_at: String,
    /// The first stage that did not complete, and why.
    pub failure: Option<Failure>,
    /// A human-readable detail of the failure (never a secret value).
    pub detail: Option<String>,
    /// What made ESO sync the value (`natural` refreshInterval or `forced`
    /// by the force-sync annotation); absent without ESO.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_trigger: Option<SyncTrigger>,
    /// The chain's stages in order, then `end_to_end`.
    pub stages: Vec<StageReport>,
}

/// The whole `once` report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Every probe passed.
    pub passed: bool,
    /// The process exit code this report implies.
    pub exit_code: u8,
    /// One entry per outcome, in the order given.
    pub probes: Vec<ProbeReport>,
    /// This run set beside an earlier saved report (`--compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Per stage of the probe's chain, then `end_to_end`: timing and SLO verdict.
pub fn stage_reports(probe: &ProbeConfig, outcome: &Outcome) -> Vec<StageReport> {
    let mut rows = stage_rows(probe, outcome);
    let origin = outcome.stages.first().map(|t| t.started_at);
    for r in &mut rows {
        r.span = origin.and_then(|origin| span(origin, outcome, r));
    }
    rows
}

/// Seconds from `origin` to a row's start and end.
fn span(origin: DateTime<Utc>, outcome: &Outcome, r: &StageReport) -> Option<(f64, f64)> {
    let timing = if r.stage == Stage::EndToEnd {
        outcome.stages.first()
    } else {
        outcome.stages.iter().find(|t| t.stage == r.stage)
    }?;
    let secs = |t: DateTime<Utc>| (t - origin).num_nanoseconds().unwrap_or(0) as f64 / 1e9;
    let start = secs(timing.started_at).max(0.0);
    let end = match r.duration_seconds {
        Some(d) => start + d,
        None => secs(outcome.finished_at).max(start),
    };
    Some((start, end))
}

fn stage_rows(probe: &ProbeConfig, outcome: &Outcome) -> Vec<StageReport> {
    let mut rows = Vec::new();
    for stage in probe.stages() {
        let timing = outcome.stages.iter().find(|t| t.stage == stage);
        // A successful run went through every stage of its own shape; one
        // of the chain's it has no timing for was not part of this run (a
        // first delivery has no rollout: `Plan::for_run`), not "not started".
        if timing.is_none() && outcome.result == RunResult::Success && stage != Stage::EndToEnd {
            continue;
        }
        let duration = timing.and_then(|t| t.duration);
        let status = match timing {
            Some(t) if t.completed_at.is_some() || t.duration.is_some() => StageStatus::Completed,
            Some(_) => StageStatus::Failed,
            None => StageStatus::NotStarted,
        };
        rows.push(row(
            probe,
            stage,
            status,
            duration,
            timing.map(|t| t.started_at),
            timing.and_then(|t| t.completed_at),
        ));
    }
    let e2e = end_to_end(outcome);
    let engine = outcome.stages.iter().find(|t| t.stage == Stage::EndToEnd);
    let started = engine
        .map(|t| t.started_at)
        .or_else(|| outcome.stages.first().map(|t| t.started_at));
    let completed = engine
        .and_then(|t| t.completed_at)
        .or_else(|| e2e.and_then(|_| outcome.stages.last().and_then(|t| t.completed_at)));
    let status = if e2e.is_some() {
        StageStatus::Completed
    } else {
        StageStatus::Failed
    };
    rows.push(row(probe, Stage::EndToEnd, status, e2e, started, completed));
    rows
}

fn row(
    probe: &ProbeConfig,
    stage: Stage,
    status: StageStatus,
    duration: Option<Duration>,
    started: Option<DateTime<Utc>>,
    completed: Option<DateTime<Utc>>,
) -> StageReport {
    let slo = probe.slo(stage);
    let verdict = Verdict::of(slo, duration);
    StageReport {
        stage,
        status,
        started_at: started.map(rfc3339),
        completed_at: completed.map(rfc3339),
        duration_seconds: duration.map(|d| d.as_secs_f64()),
        slo_seconds: slo.map(|d| d.as_secs_f64()),
        slo: verdict,
        span: None,
    }
}

/// One probe's report.
pub fn probe_report(probe: &ProbeConfig, outcome: &Outcome) -> ProbeReport {
    ProbeReport {
        probe: outcome.probe.clone(),
        run_id: outcome.run_id.clone(),
        result: outcome.result,
        passed: passed(probe, outcome),
        digest: outcome.digest.clone(),
        started_at: rfc3339(outcome.started_at),
        finished_at: rfc3339(outcome.finished_at),
        failure: outcome.failure,
        detail: outcome.detail.clone(),
        sync_trigger: outcome.sync_trigger,
        stages: stage_reports(probe, outcome),
    }
}

/// The report of a set of outcomes. An outcome whose probe is not in the
/// config (a caller bug) counts as not passed.
pub fn build(config: &Config, outcomes: &[Outcome]) -> Report {
    let probes: Vec<ProbeReport> = outcomes
        .iter()
        .map(|o| match config.probe(&o.probe) {
            Some(p) => probe_report(p, o),
            None => ProbeReport {
                probe: o.probe.clone(),
                run_id: o.run_id.clone(),
                result: o.result,
                passed: false,
                digest: o.digest.clone(),
                started_at: rfc3339(o.started_at),
                finished_at: rfc3339(o.finished_at),
                failure: o.failure,
                detail: o.detail.clone(),
                sync_trigger: o.sync_trigger,
                stages: Vec::new(),
            },
        })
        .collect();
    let passed = !probes.is_empty() && probes.iter().all(|p| p.passed);
    Report {
        passed,
        exit_code: if passed { EXIT_PASS } else { EXIT_FAIL },
        probes,
        comparison: None,
    }
}

/// [`build`], then set beside `baseline` (`--compare`): a regression
/// makes the exit code 1 even when every probe passed.
pub fn build_compared(
    config: &Config,
    outcomes: &[Outcome],
    baseline: &Baseline,
    thresholds: Thresholds,
) -> Report {
    let mut report = build(config, outcomes);
    let comparison = compare::compare(baseline, &report, thresholds);
    if comparison.regressed {
        report.exit_code = EXIT_FAIL;
    }
    report.comparison = Some(comparison);
    report
}

/// The exit code of `once`: 0 when every probe passed, else 1.
pub fn exit_code(config: &Config, outcomes: &[Outcome]) -> u8 {
    build(config, outcomes).exit_code
}

/// Render the report of `outcomes`.
pub fn render(config: &Config, outcomes: &[Outcome], format: Format) -> String {
    render_report(&build(config, outcomes), format)
}

/// Render a built report.
pub fn render_report(report: &Report, format: Format) -> String {
    match format {
        Format::Json => {
            // Serialising plain data into a String cannot fail; fall back to
            // an error object rather than panicking if it ever does.
            let mut s = serde_json::to_string_pretty(report)
                .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
            s.push('\n');
            s
        }
        Format::Table => table(report),
        Format::Markdown => markdown::render(report),
        Format::Junit => junit::render(report),
    }
}

/// `1.234s`, `12.3ms`, `2m03.5s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.3}s")
    } else {
        let m = (s / 60.0).floor();
        format!("{}m{:04.1}s", m as u64, s - m * 60.0)
    }
}

fn secs(v: Option<f64>) -> String {
    v.and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map_or_else(|| "-".into(), human)
}

/// A probe's one-line verdict: `PASS`, `FAIL at stage (reason)`,
/// `SLO BREACHED`, `ABORTED`.
pub fn verdict_text(p: &ProbeReport) -> String {
    match (p.result, p.failure) {
        (RunResult::Aborted, Some(f)) => format!("ABORTED at {}", f.stage),
        (_, Some(f)) => format!("FAIL at {} ({})", f.stage, f.reason),
        (RunResult::Success, None) if !p.passed => "SLO BREACHED".into(),
        (RunResult::Success, None) => "PASS".into(),
        (r, None) => r.as_str().to_uppercase(),
    }
}

fn status_text(s: StageStatus) -> &'static str {
    match s {
        StageStatus::Completed => "completed",
        StageStatus::Failed => "failed",
        StageStatus::NotStarted => "not started",
    }
}

fn slo_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Met => "met",
        Verdict::Breached => "BREACHED",
        Verdict::NoSlo => "-",
        Verdict::NotCompleted => "not completed",
    }
}

/// The stages that took longest, slowest first (without `end_to_end`).
pub fn slowest(p: &ProbeReport) -> Option<&StageReport> {
    p.stages
        .iter()
        .filter(|s| s.stage != Stage::EndToEnd)
        .filter_map(|s| s.duration_seconds.map(|d| (s, d)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| s)
}

/// The run's `end_to_end` duration, seconds.
pub fn end_to_end_seconds(p: &ProbeReport) -> Option<f64> {
    p.stages
        .iter()
        .find(|s| s.stage == Stage::EndToEnd)
        .and_then(|s| s.duration_seconds)
}

/// Columns of the timeline's bar area.
pub const TIMELINE_WIDTH: usize = 40;

/// The common time axis of a report: the longest run, seconds.
fn axis(report: &Report) -> f64 {
    report
        .probes
        .iter()
        .flat_map(|p| p.stages.iter())
        .filter_map(|s| s.span.map(|(_, end)| end))
        .fold(0.0, f64::max)
}

/// One run's stages as horizontal bars on an axis of `total` seconds
/// shared by every run of the report, so the hop that took the time, and
/// the slower run, stand out.
fn timeline(out: &mut String, p: &ProbeReport, total: f64) {
    if total <= 0.0 {
        return;
    }
    let w = TIMELINE_WIDTH;
    out.push('\n');
    let _ = writeln!(
        out,
        "  {:<18} |0{:>width$}|",
        "TIMELINE",
        human(Duration::from_secs_f64(total)),
        width = w - 1
    );
    let col = |x: f64| x / total * w as f64;
    for s in p.stages.iter().filter(|s| s.stage != Stage::EndToEnd) {
        let Some((start, end)) = s.span else { continue };
        let from = (col(start).floor() as usize).min(w - 1);
        let to = (col(end).ceil() as usize).clamp(from + 1, w);
        let fill = if s.status == StageStatus::Completed {
            '█'
        } else {
            '░'
        };
        let bar: String = (0..w)
            .map(|i| if (from..to).contains(&i) { fill } else { ' ' })
            .collect();
        let label = match s.duration_seconds {
            Some(_) => secs(s.duration_seconds),
            None => format!("{} (failed)", human(Duration::from_secs_f64(end - start))),
        };
        let _ = writeln!(out, "  {:<18} |{bar}| {label}", s.stage.as_str());
    }
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let total = axis(report);
    for p in &report.probes {
        let trigger = p
            .sync_trigger
            .map(|t| format!("  sync {}", t.as_str()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "probe {}  run {}  {}{trigger}",
            p.probe,
            p.run_id,
            verdict_text(p)
        );
        let _ = writeln!(
            out,
            "  {:<18} {:<12} {:>12} {:>12}  VERDICT",
            "STAGE", "STATUS", "DURATION", "SLO"
        );
        for s in &p.stages {
            let _ = writeln!(
                out,
                "  {:<18} {:<12} {:>12} {:>12}  {}",
                s.stage.as_str(),
                status_text(s.status),
                secs(s.duration_seconds),
                secs(s.slo_seconds),
                slo_text(s.slo),
            );
        }
        if let Some(detail) = &p.detail {
            let _ = writeln!(out, "  detail: {detail}");
        }
        timeline(&mut out, p, total);
        out.push('\n');
    }
    if let Some(c) = &report.comparison {
        compare::table(&mut out, c);
        out.push('\n');
    }
    let failed = report.probes.iter().filter(|p| !p.passed).count();
    let _ = writeln!(
        out,
        "{} probe(s): {} passed, {} failed",
        report.probes.len(),
        report.probes.len() - failed,
        failed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Reason, StageTiming};

    const CONFIG: &str = r#"
probes:
  - name: eso-volume
    interval: 1m
    slo: {eso_sync: 2s, end_to_end: 30s}
    store: {address: "https://vault.example:8200", path: canary/v, auth: {kubernetes: {role: canary}}}
    chain:
      namespace: canary
      external_secret: canary-volume
      secret: {name: canary-volume}
      canary: {selector: app=canary-volume, source: file}
"#;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-01T00:00:00.000000001Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::milliseconds(ms)
    }

    fn timing(stage: Stage, from: i64, to: Option<i64>) -> StageTiming {
        StageTiming {
            stage,
            started_at: t(from),
            completed_at: to.map(t),
            duration: to.map(|to| Duration::from_millis((to - from) as u64)),
        }
    }

    fn success(eso_ms: i64) -> Outcome {
        Outcome {
            probe: "eso-volume".into(),
            run_id: "r1".into(),
            digest: Some("d".into()),
            started_at: t(0),
            finished_at: t(10_000),
            stages: vec![
                timing(Stage::StoreWrite, 0, Some(20)),
                timing(Stage::EsoSync, 20, Some(20 + eso_ms)),
                timing(Stage::SecretUpdate, 20 + eso_ms, Some(30 + eso_ms)),
                timing(Stage::CanaryObserve, 30 + eso_ms, Some(900 + eso_ms)),
            ],
            failure: None,
            result: RunResult::Success,
            detail: None,
            sync_trigger: Some(crate::vocab::SyncTrigger::Natural),
            watch_gaps: Vec::new(),
        }
    }

    fn config() -> Config {
        Config::from_yaml(CONFIG, "t.yaml").unwrap()
    }

    #[test]
    fn a_successful_run_lists_only_the_stages_it_had() {
        // A first delivery on a Reloader chain: no reloader_trigger, no rollout.
        let text = CONFIG
            .replace("eso-volume", "eso-env")
            .replace(
                "secret: {name: canary-volume}",
                "secret: {name: canary-volume}\n      rollout: {deployment: d, trigger: reloader}",
            )
            .replace("source: file", "source: env");
        let config = Config::from_yaml(&text, "t.yaml").unwrap();
        let mut o = success(500);
        o.probe = "eso-env".into();
        let stages: Vec<Stage> = probe_report(&config.probes[0], &o)
            .stages
            .iter()
            .map(|s| s.stage)
            .collect();
        assert_eq!(
            stages,
            [
                Stage::StoreWrite,
                Stage::EsoSync,
                Stage::SecretUpdate,
                Stage::CanaryObserve,
                Stage::EndToEnd
            ]
        );
        // A failed run still lists the stages it never reached.
        o.result = RunResult::Failure;
        o.stages.truncate(2);
        o.stages[1].completed_at = None;
        o.stages[1].duration = None;
        let r = probe_report(&config.probes[0], &o);
        assert!(r
            .stages
            .iter()
            .any(|s| s.stage == Stage::Rollout && s.status == StageStatus::NotStarted));
    }

    #[test]
    fn a_fast_success_passes() {
        let config = config();
        let out = render(&config, &[success(500)], Format::Table);
        assert!(out.contains("probe eso-volume  run r1  PASS"), "{out}");
        assert!(out.contains("eso_sync"), "{out}");
        assert!(out.contains("500.0ms"), "{out}");
        assert!(out.contains("1 probe(s): 1 passed, 0 failed"), "{out}");
        assert_eq!(exit_code(&config, &[success(500)]), EXIT_PASS);
    }

    #[test]
    fn a_slow_stage_breaks_the_slo_and_fails_the_report() {
        let config = config();
        let o = success(2500);
        let out = render(&config, std::slice::from_ref(&o), Format::Table);
        assert!(out.contains("SLO BREACHED"), "{out}");
        assert!(out.contains("BREACHED"), "{out}");
        assert_eq!(slo_breaches(&config.probes[0], &o), vec![Stage::EsoSync]);
        assert_eq!(exit_code(&config, &[o]), EXIT_FAIL);
    }

    #[test]
    fn a_failure_names_stage_and_reason() {
        let config = config();
        let mut o = success(500);
        o.stages.truncate(2);
        o.stages[1] = timing(Stage::EsoSync, 20, None);
        o.failure = Some(Failure {
            stage: Stage::EsoSync,
            reason: Reason::SyncError,
        });
        o.result = RunResult::Failure;
        o.detail = Some("ExternalSecret canary-volume: Ready=False".into());
        let out = render(&config, std::slice::from_ref(&o), Format::Table);
        assert!(out.contains("FAIL at eso_sync (sync_error)"), "{out}");
        assert!(out.contains("not started"), "{out}");
        assert!(out.contains("detail: ExternalSecret"), "{out}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&config, &[o], Format::Json)).unwrap();
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["probes"][0]["failure"]["reason"], "sync_error");
        assert_eq!(json["probes"][0]["stages"][1]["status"], "failed");
        assert_eq!(json["probes"][0]["stages"][1]["slo"], "not_completed");
        assert_eq!(json["probes"][0]["stages"][2]["status"], "not_started");
    }

    #[test]
    fn json_carries_nanosecond_timestamps_and_end_to_end() {
        let config = config();
        let json: serde_json::Value =
            serde_json::from_str(&render(&config, &[success(500)], Format::Json)).unwrap();
        let p = &json["probes"][0];
        assert_eq!(
            p["stages"][0]["started_at"],
            "2030-01-01T00:00:00.000000001Z"
        );
        assert_eq!(
            p["stages"][0]["completed_at"],
            "2030-01-01T00:00:00.020000001Z"
        );
        let e2e = &p["stages"][4];
        assert_eq!(e2e["stage"], "end_to_end");
        assert_eq!(e2e["duration_seconds"], 1.4);
        assert_eq!(e2e["slo"], "met");
        assert_eq!(json["passed"], true);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(12)), "12.0ms");
        assert_eq!(human(Duration::from_millis(1234)), "1.234s");
        assert_eq!(human(Duration::from_millis(123_500)), "2m03.5s");
    }

    #[test]
    fn end_to_end_is_only_for_successful_runs() {
        let mut o = success(100);
        o.stages.push(timing(Stage::EndToEnd, 0, Some(1000)));
        assert!(end_to_end(&o).is_some());
        o.result = RunResult::Failure;
        assert_eq!(end_to_end(&o), None);
    }
}
