//! Score a `once --output json` report against `truth.jsonl`, the way
//! `bench/src/accuracy.rs` does (same truth intervals per stage), for the
//! real cluster's tests: |measured − true| in ms per stage.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use secret_canary_lab::truth::{step, TruthRecord};
use serde_json::Value;

/// The chain kinds of the reference scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// ESO + Reloader + env.
    Env,
    /// ESO + Secret volume.
    Volume,
    /// Bank-Vaults with a restart trigger.
    Bankvaults,
}

/// Stage -> (measured s, true s) of one run.
pub type Scored = BTreeMap<String, (f64, f64)>;

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn first_digest(truth: &[TruthRecord], st: &str, digest: &str) -> Option<DateTime<Utc>> {
    truth
        .iter()
        .filter(|r| r.step == st && r.digest.as_deref() == Some(digest))
        .map(|r| r.ts)
        .min()
}

fn first_after(
    truth: &[TruthRecord],
    st: &str,
    name: &str,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    truth
        .iter()
        .filter(|r| r.step == st && r.name == name && r.ts >= after)
        .map(|r| r.ts)
        .min()
}

/// The truth's points of one run, or which one is missing.
pub fn score(
    probe: &Value,
    kind: Kind,
    deployment: &str,
    written: DateTime<Utc>,
    truth: &[TruthRecord],
) -> Result<Scored, String> {
    let digest = probe["digest"].as_str().ok_or("no digest")?;
    let secret = first_digest(truth, step::ESO_SECRET_WRITTEN, digest);
    let synced = first_digest(truth, step::ESO_STATUS_SYNCED, digest);
    let (trigger, complete, volume) = match kind {
        Kind::Env => {
            let p = secret.and_then(|s| first_after(truth, step::RELOADER_PATCHED, deployment, s));
            let c = p.and_then(|p| first_after(truth, step::ROLLOUT_COMPLETE, deployment, p));
            (p, c, None)
        }
        Kind::Bankvaults => {
            let t = first_after(
                truth,
                step::DEPLOYMENT_TEMPLATE_CHANGED,
                deployment,
                written,
            );
            let c = t.and_then(|t| first_after(truth, step::ROLLOUT_COMPLETE, deployment, t));
            (t, c, None)
        }
        Kind::Volume => (
            None,
            None,
            first_digest(truth, step::VOLUME_UPDATED, digest),
        ),
    };
    let mut out = Scored::new();
    for s in probe["stages"].as_array().into_iter().flatten() {
        let stage = s["stage"].as_str().unwrap_or_default();
        let (Some(start), Some(dur)) = (ts(&s["started_at"]), s["duration_seconds"].as_f64())
        else {
            continue;
        };
        let w = Some(written);
        let (a, b) = match (kind, stage) {
            (_, "store_write") => (Some(start), w),
            (_, "eso_sync") => (w, synced),
            (_, "secret_update") => (w, secret),
            (Kind::Env, "reloader_trigger") => (secret, trigger),
            (Kind::Bankvaults, "reloader_trigger") => (w, trigger),
            (_, "rollout") => (trigger, complete),
            (Kind::Volume, "canary_observe") => (secret, volume),
            (_, "canary_observe") => (complete, complete),
            (Kind::Volume, "end_to_end") => (Some(start), volume),
            (_, "end_to_end") => (Some(start), complete),
            _ => (None, None),
        };
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
