//! The SLO rule: a run's end-to-end duration, and which completed stages
//! were slower than the thresholds the probe configures. The metrics count
//! breaches with it and the report prints verdicts with it, so both say
//! the same thing.

use std::time::Duration;

use serde::Serialize;

use crate::config::ProbeConfig;
use crate::vocab::{Outcome, RunResult, Stage};

/// A stage's SLO verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Completed within its threshold.
    Met,
    /// Completed, slower than its threshold.
    Breached,
    /// No threshold configured.
    NoSlo,
    /// A threshold is configured but the stage did not complete.
    NotCompleted,
}

impl Verdict {
    /// The verdict of a stage with threshold `slo` that took `duration`
    /// (`None`: it did not complete).
    pub fn of(slo: Option<Duration>, duration: Option<Duration>) -> Verdict {
        match (slo, duration) {
            (None, _) => Verdict::NoSlo,
            (Some(limit), Some(d)) if d > limit => Verdict::Breached,
            (Some(_), Some(_)) => Verdict::Met,
            (Some(_), None) => Verdict::NotCompleted,
        }
    }
}

/// The run's end-to-end duration: the engine's `end_to_end` timing if it
/// reported one, else, for a successful run, from its first stage's start to
/// its last stage's completion.
pub fn end_to_end(outcome: &Outcome) -> Option<Duration> {
    if let Some(d) = outcome.duration(Stage::EndToEnd) {
        return Some(d);
    }
    if outcome.result != RunResult::Success {
        return None;
    }
    let first = outcome.stages.first()?.started_at;
    let last = outcome.stages.last()?.completed_at?;
    (last - first).to_std().ok()
}

/// Completed stages of the probe's chain (and `end_to_end`) slower than
/// their SLO, in chain order.
pub fn slo_breaches(probe: &ProbeConfig, outcome: &Outcome) -> Vec<Stage> {
    probe
        .stages()
        .into_iter()
        .map(|s| (s, outcome.duration(s)))
        .chain([(Stage::EndToEnd, end_to_end(outcome))])
        .filter(|(s, d)| Verdict::of(probe.slo(*s), *d) == Verdict::Breached)
        .map(|(s, _)| s)
        .collect()
}

/// Whether a run succeeded and met every SLO.
pub fn passed(probe: &ProbeConfig, outcome: &Outcome) -> bool {
    outcome.result == RunResult::Success && slo_breaches(probe, outcome).is_empty()
}
