//! Score a `once --output json` report against `truth.jsonl` with the
//! lab's [`Milestones`] (the benchmark scores the same way), for the real
//! cluster's tests: |measured − true| in ms per stage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use secret_canary_lab::truth::{Milestones, TruthRecord};
use serde_json::Value;

/// The chain kinds of the reference scenario.
pub use secret_canary_lab::truth::ChainKind as Kind;

/// Stage -> (measured s, true s) of one run.
pub type Scored = BTreeMap<String, (f64, f64)>;

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Each stage of one run with its true duration, or which bound the truth lacks.
pub fn score(
    probe: &Value,
    kind: Kind,
    deployment: &str,
    written: DateTime<Utc>,
    truth: &[TruthRecord],
) -> Result<Scored, String> {
    let digest = probe["digest"].as_str().ok_or("no digest")?;
    let points = Milestones::of(truth, kind, deployment, digest, written);
    let mut out = Scored::new();
    for s in probe["stages"].as_array().into_iter().flatten() {
        let stage = s["stage"].as_str().unwrap_or_default();
        let (Some(start), Some(dur)) = (ts(&s["started_at"]), s["duration_seconds"].as_f64())
        else {
            continue;
        };
        let (a, b) = points.bounds(kind, stage, start);
        match (a, b) {
            (Some(a), Some(b)) => {
                let t = (b - a).num_nanoseconds().unwrap_or(0) as f64 / 1e9;
                out.insert(stage.to_string(), (dur, t));
            }
            _ => return Err(format!("{stage}: no truth (start {a:?}, end {b:?})")),
        }
    }
    Ok(out)
}

/// OpenBao's `created_time` of the version the run wrote (`kv_metadata`
/// JSON), nearest the end of the prober's `store_write`.
pub fn created_time(meta: &Value, probe: &Value) -> Option<DateTime<Utc>> {
    let meta = meta.get("data").unwrap_or(meta);
    let sw = probe["stages"]
        .as_array()?
        .iter()
        .find(|s| s["stage"] == "store_write")?;
    let end = ts(&sw["completed_at"])?;
    let slack = chrono::Duration::milliseconds(500);
    meta["versions"]
        .as_object()?
        .values()
        .filter_map(|v| ts(&v["created_time"]))
        .filter(|t| *t >= end - slack * 4 && *t <= end + slack)
        .min_by_key(|t| (*t - end).num_microseconds().unwrap_or(i64::MAX).abs())
}

/// p50/p99/max of a list (ms), sorted in place.
pub fn percentiles(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}
