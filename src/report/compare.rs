//! Before/after: set this run's stage durations beside an earlier saved
//! JSON report (`once --compare BEFORE.json`) and flag the stages that got
//! slower than both thresholds, so a config change (a new ESO version,
//! Reloader flags) can be judged before it rolls out.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, Report, StageStatus};
use crate::vocab::{Stage, SyncTrigger};

/// When a stage counts as slower: both limits must be exceeded, so noise
/// on a fast stage (relative) or on a slow one (absolute) is not flagged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Slower by more than this fraction of the baseline (0.5 = 50 %).
    pub relative: f64,
    /// And slower by more than this much.
    #[serde(rename = "absolute_seconds", serialize_with = "as_secs")]
    pub absolute: Duration,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            relative: 0.5,
            absolute: Duration::from_secs(1),
        }
    }
}

impl Thresholds {
    fn slower(&self, before: f64, after: f64) -> bool {
        after - before > self.absolute.as_secs_f64() && after > before * (1.0 + self.relative)
    }

    fn faster(&self, before: f64, after: f64) -> bool {
        before - after > self.absolute.as_secs_f64() && before > after * (1.0 + self.relative)
    }
}

/// How one stage changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Within the thresholds.
    Same,
    /// Slower than both thresholds: a regression.
    Slower,
    /// Faster by more than both thresholds.
    Faster,
    /// Completed before, did not complete now: a regression.
    NowFailing,
    /// Did not complete before, completed now.
    Recovered,
    /// Not completed in either run.
    StillFailing,
    /// The baseline has no such stage (or probe).
    New,
}

impl Change {
    /// Whether this change fails the comparison.
    pub fn is_regression(self) -> bool {
        matches!(self, Change::Slower | Change::NowFailing)
    }

    fn as_str(self) -> &'static str {
        match self {
            Change::Same => "same",
            Change::Slower => "SLOWER",
            Change::Faster => "faster",
            Change::NowFailing => "NOW FAILING",
            Change::Recovered => "recovered",
            Change::StillFailing => "still failing",
            Change::New => "new",
        }
    }
}

/// One stage of one probe, before and now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageChange {
    /// The probe.
    pub probe: String,
    /// The stage.
    pub stage: Stage,
    /// Its duration in the baseline, seconds (`None`: did not complete).
    pub before_seconds: Option<f64>,
    /// Its duration now, seconds.
    pub after_seconds: Option<f64>,
    /// The verdict.
    pub change: Change,
}

/// This run beside the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Where the baseline came from (its file).
    pub baseline: String,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// A stage regressed: the exit code is 1.
    pub regressed: bool,
    /// Every stage of every probe of this run.
    pub stages: Vec<StageChange>,
    /// What a reader should know (probes missing on either side, a
    /// different sync trigger).
    pub notes: Vec<String>,
}

/// Why a baseline could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The file could not be read.
    #[error("baseline {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a JSON report of `once --output json`.
    #[error(
        "baseline {path} is not a JSON report of `secret-canary once --output json`: {source}"
    )]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// An earlier report, as saved by `once --output json` (only the fields
/// the comparison needs, so reports of older versions still load).
#[derive(Debug, Clone, Deserialize)]
pub struct Baseline {
    /// Where it came from.
    #[serde(skip)]
    pub source: String,
    /// Its probes.
    pub probes: Vec<SavedProbe>,
}

/// One probe of a saved report.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedProbe {
    /// The probe's name.
    pub probe: String,
    /// How ESO was made to sync.
    #[serde(default)]
    pub sync_trigger: Option<SyncTrigger>,
    /// Its stages.
    #[serde(default)]
    pub stages: Vec<SavedStage>,
}

/// One stage of a saved report.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedStage {
    /// The stage.
    pub stage: Stage,
    /// Its duration, seconds (`None`: did not complete).
    #[serde(default)]
    pub duration_seconds: Option<f64>,
}

impl Baseline {
    /// Read a saved JSON report.
    pub fn load(path: &Path) -> Result<Baseline, CompareError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
            path: shown.clone(),
            source,
        })?;
        Baseline::from_json(&text, &shown)
    }

    /// Parse a saved JSON report; `source` names it in messages.
    pub fn from_json(text: &str, source: &str) -> Result<Baseline, CompareError> {
        let mut b: Baseline = serde_json::from_str(text).map_err(|e| CompareError::Parse {
            path: source.to_string(),
            source: e,
        })?;
        b.source = source.to_string();
        Ok(b)
    }
}

/// Compare `report` with `baseline`.
pub fn compare(baseline: &Baseline, report: &Report, thresholds: Thresholds) -> Comparison {
    let mut stages = Vec::new();
    let mut notes = Vec::new();
    for p in &report.probes {
        let before = baseline.probes.iter().find(|b| b.probe == p.probe);
        match before {
            None => notes.push(format!("probe {} is not in the baseline", p.probe)),
            Some(b) if b.sync_trigger != p.sync_trigger => notes.push(format!(
                "probe {}: the baseline's ESO sync was {}, this run's {}; ESO stages are not like for like",
                p.probe,
                b.sync_trigger.map_or("absent", SyncTrigger::as_str),
                p.sync_trigger.map_or("absent", SyncTrigger::as_str),
            )),
            Some(_) => {}
        }
        for s in &p.stages {
            let old = before.and_then(|b| b.stages.iter().find(|o| o.stage == s.stage));
            let after = s.duration_seconds;
            let change = match (old, old.and_then(|o| o.duration_seconds), after) {
                (None, _, _) => Change::New,
                (Some(_), Some(b), Some(a)) if thresholds.slower(b, a) => Change::Slower,
                (Some(_), Some(b), Some(a)) if thresholds.faster(b, a) => Change::Faster,
                (Some(_), Some(_), Some(_)) => Change::Same,
                // A stage that never started now (an earlier one failed)
                // is that earlier stage's regression, not its own.
                (Some(_), Some(_), None) if s.status == StageStatus::NotStarted => Change::Same,
                (Some(_), Some(_), None) => Change::NowFailing,
                (Some(_), None, Some(_)) => Change::Recovered,
                (Some(_), None, None) => Change::StillFailing,
            };
            stages.push(StageChange {
                probe: p.probe.clone(),
                stage: s.stage,
                before_seconds: old.and_then(|o| o.duration_seconds),
                after_seconds: after,
                change,
            });
        }
    }
    for b in &baseline.probes {
        if !report.probes.iter().any(|p| p.probe == b.probe) {
            notes.push(format!("probe {} of the baseline did not run", b.probe));
        }
    }
    Comparison {
        baseline: baseline.source.clone(),
        thresholds,
        regressed: stages.iter().any(|s| s.change.is_regression()),
        stages,
        notes,
    }
}

fn secs(v: Option<f64>) -> String {
    v.and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map_or_else(|| "-".into(), human)
}

/// `+1.234s (+57%)`, `-12.0ms (-3%)`.
pub fn delta(before: Option<f64>, after: Option<f64>) -> String {
    let (Some(b), Some(a)) = (before, after) else {
        return "-".into();
    };
    let d = a - b;
    let sign = if d < 0.0 { '-' } else { '+' };
    let pct = if b > 0.0 {
        format!(" ({sign}{:.0}%)", (d / b * 100.0).abs())
    } else {
        String::new()
    };
    format!("{sign}{}{pct}", human(Duration::from_secs_f64(d.abs())))
}

/// The thresholds in words.
pub fn rule(t: &Thresholds) -> String {
    format!(
        "a stage regresses when slower by more than {:.0}% and more than {}",
        t.relative * 100.0,
        human(t.absolute)
    )
}

/// The comparison as terminal text.
pub fn table(out: &mut String, c: &Comparison) {
    let _ = writeln!(
        out,
        "compared with {} ({})",
        c.baseline,
        rule(&c.thresholds)
    );
    let pw = c
        .stages
        .iter()
        .map(|s| s.probe.chars().count())
        .max()
        .unwrap_or(0)
        .max(16);
    let _ = writeln!(
        out,
        "  {:<pw$} {:<18} {:>12} {:>12} {:>20}  CHANGE",
        "PROBE", "STAGE", "BEFORE", "NOW", "DELTA"
    );
    for s in &c.stages {
        let _ = writeln!(
            out,
            "  {:<pw$} {:<18} {:>12} {:>12} {:>20}  {}",
            s.probe,
            s.stage.as_str(),
            secs(s.before_seconds),
            secs(s.after_seconds),
            delta(s.before_seconds, s.after_seconds),
            s.change.as_str()
        );
    }
    for n in &c.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    let regressions = c.stages.iter().filter(|s| s.change.is_regression()).count();
    if regressions == 0 {
        let _ = writeln!(out, "no regression");
    } else {
        let _ = writeln!(
            out,
            "REGRESSION: {regressions} stage(s) slower or now failing"
        );
    }
}

/// Label of a change for other renderers.
pub fn change_text(c: Change) -> &'static str {
    c.as_str()
}
