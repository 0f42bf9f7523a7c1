//! The ground-truth log: every step a simulated controller completes, with a
//! wall-clock timestamp in nanoseconds, written as JSONL to `DIR/truth.jsonl`
//! and kept in memory so tests can score the prober's measurements against it.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The steps the lab records. Names are `component.step`.
pub mod step {
    /// ESO read the value from the store (digest of the value read).
    pub const ESO_STORE_READ: &str = "eso.store_read";
    /// ESO created or updated the target Secret (digest of the synced key).
    pub const ESO_SECRET_WRITTEN: &str = "eso.secret_written";
    /// ESO wrote the ExternalSecret status (Ready=True).
    pub const ESO_STATUS_SYNCED: &str = "eso.status_synced";
    /// ESO wrote the ExternalSecret status (Ready=False, SecretSyncedError).
    pub const ESO_STATUS_ERROR: &str = "eso.status_error";
    /// Reloader patched a workload's pod template (digest of the Secret data).
    pub const RELOADER_PATCHED: &str = "reloader.template_patched";
    /// Someone (the prober, kubectl) patched `restartedAt`: seen by the
    /// Deployment controller as a template change without Reloader.
    pub const DEPLOYMENT_TEMPLATE_CHANGED: &str = "deployment.template_changed";
    /// The Deployment controller created a new ReplicaSet.
    pub const REPLICASET_CREATED: &str = "deployment.replicaset_created";
    /// The Deployment's rollout finished (all replicas updated and available,
    /// old ones gone), as `kubectl rollout status` would report.
    pub const ROLLOUT_COMPLETE: &str = "deployment.rollout_complete";
    /// The ReplicaSet controller created a Pod.
    pub const POD_CREATED: &str = "replicaset.pod_created";
    /// The kubelet started a Pod's process (digest of the canary value in its env).
    pub const POD_STARTED: &str = "kubelet.pod_started";
    /// The kubelet marked a Pod Ready.
    pub const POD_READY: &str = "kubelet.pod_ready";
    /// The kubelet rewrote a Secret volume's files (digest of the canary key).
    pub const VOLUME_UPDATED: &str = "kubelet.volume_updated";
    /// vault-env style resolution at Pod start read the value (digest).
    pub const VAULT_ENV_RESOLVED: &str = "bankvaults.resolved";
}

/// A chain variant, as the truth scores it: which milestones bound each of
/// its stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChainKind {
    /// ESO -> Secret -> Reloader (env vars) -> rollout -> env canary.
    Env,
    /// ESO -> Secret -> kubelet volume refresh -> file canary.
    Volume,
    /// The prober's restart -> rollout -> `vault:` resolved at Pod start.
    Bankvaults,
}

/// When a milestone happened: at `ts` at the latest and at `from` at the
/// earliest (equal, except for records from the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// The earliest it can have happened.
    pub from: DateTime<Utc>,
    /// When the truth stamped it.
    pub ts: DateTime<Utc>,
}

impl At {
    /// A milestone known to the instant.
    pub fn exactly(ts: DateTime<Utc>) -> At {
        At { from: ts, ts }
    }

    fn of(r: &TruthRecord) -> At {
        At {
            from: r.received.unwrap_or(r.ts).min(r.ts),
            ts: r.ts,
        }
    }
}

/// The truth's milestones of one run: when its value was written to the
/// store and when each controller after that completed its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Milestones {
    /// The store's `created_time` of the value the run wrote.
    pub written: DateTime<Utc>,
    /// ESO wrote the Secret with the value.
    pub secret: Option<At>,
    /// ESO wrote the ExternalSecret's synced status for the value.
    pub synced: Option<At>,
    /// Reloader patched the Deployment (env chains) or the template changed
    /// (the prober's restart, Bank-Vaults chains).
    pub trigger: Option<At>,
    /// The rollout after the trigger completed.
    pub complete: Option<At>,
    /// The kubelet rewrote the Secret volume with the value.
    pub volume: Option<At>,
}

impl Milestones {
    /// The milestones of the run that wrote the value of `digest` at
    /// `written`, on a chain of `kind` whose Deployment is `deployment`:
    /// the earliest record of each step with the digest, and for the
    /// Deployment's steps the earliest after the step before them.
    pub fn of(
        truth: &[TruthRecord],
        kind: ChainKind,
        deployment: &str,
        digest: &str,
        written: DateTime<Utc>,
    ) -> Milestones {
        let with_digest = |st: &str| {
            truth
                .iter()
                .filter(|r| r.step == st && r.digest.as_deref() == Some(digest))
                .min_by_key(|r| r.ts)
                .map(At::of)
        };
        let first_after = |st: &str, after: DateTime<Utc>| {
            truth
                .iter()
                .filter(|r| r.step == st && r.name == deployment && r.ts >= after)
                .min_by_key(|r| r.ts)
                .map(At::of)
        };
        let secret = with_digest(step::ESO_SECRET_WRITTEN);
        let trigger = match kind {
            ChainKind::Env => secret.and_then(|s| first_after(step::RELOADER_PATCHED, s.ts)),
            ChainKind::Bankvaults => first_after(step::DEPLOYMENT_TEMPLATE_CHANGED, written),
            ChainKind::Volume => None,
        };
        Milestones {
            written,
            secret,
            synced: with_digest(step::ESO_STATUS_SYNCED),
            trigger,
            complete: trigger.and_then(|t| first_after(step::ROLLOUT_COMPLETE, t.ts)),
            volume: match kind {
                ChainKind::Volume => with_digest(step::VOLUME_UPDATED),
                _ => None,
            },
        }
    }

    /// The milestones that start and end `stage` on a chain of `kind`
    /// (`None` where the truth has no record); `own_start` stands for the
    /// measurer's own start where the truth has none (its store request,
    /// its whole run).
    pub fn span(
        &self,
        kind: ChainKind,
        stage: &str,
        own_start: DateTime<Utc>,
    ) -> (Option<At>, Option<At>) {
        let w = Some(At::exactly(self.written));
        let own = Some(At::exactly(own_start));
        match (kind, stage) {
            (_, "store_write") => (own, w),
            (_, "eso_sync") => (w, self.synced),
            (_, "secret_update") => (w, self.secret),
            (ChainKind::Env, "reloader_trigger") => (self.secret, self.trigger),
            (ChainKind::Bankvaults, "reloader_trigger") => (w, self.trigger),
            (_, "rollout") => (self.trigger, self.complete),
            (ChainKind::Volume, "canary_observe") => (self.secret, self.volume),
            (_, "canary_observe") => (self.complete, self.complete),
            (ChainKind::Volume, "end_to_end") => (own, self.volume),
            (_, "end_to_end") => (own, self.complete),
            _ => (None, None),
        }
    }

    /// The true start and end of `stage`, as the truth stamped them.
    pub fn bounds(
        &self,
        kind: ChainKind,
        stage: &str,
        own_start: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let (a, b) = self.span(kind, stage, own_start);
        (a.map(|a| a.ts), b.map(|b| b.ts))
    }
}

/// How far (seconds) `measured` lies outside the durations the truth
/// allows between `start` and `end`: from `end.from − start.ts` to
/// `end.ts − start.from` (0 inside; the same as |measured − true| when
/// both are known to the instant). A milestone is one write whose commit
/// the audit log places only between the request's arrival and its
/// response, and the two ends of a stage that is one write (Bank-Vaults'
/// `canary_observe`) are the same instant.
pub fn error_beyond(measured: f64, start: At, end: At) -> f64 {
    let secs = |d: chrono::TimeDelta| d.num_nanoseconds().unwrap_or(0) as f64 / 1e9;
    let (low, high) = if start == end {
        (0.0, 0.0)
    } else {
        (secs(end.from - start.ts), secs(end.ts - start.from))
    };
    if measured < low {
        low - measured
    } else if measured > high {
        measured - high
    } else {
        0.0
    }
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TruthRecord {
    /// When the step completed (RFC 3339 with nanoseconds, UTC).
    #[serde(with = "rfc3339_nanos")]
    pub ts: DateTime<Utc>,
    /// `component.step`, one of [`step`].
    pub step: String,
    /// Namespace of the object involved.
    pub namespace: String,
    /// Name of the object involved.
    pub name: String,
    /// SHA-256 (hex) of the secret value involved, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The earliest the step can have completed, where `ts` is only the
    /// latest: for a record from the API server's audit log, the request's
    /// arrival (the write was committed between it and `ts`). Absent for
    /// the simulated controllers, which stamp the step itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<DateTime<Utc>>,
}

/// SHA-256 of a value, lower-case hex: the only form in which the lab logs a
/// secret value.
pub fn digest(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

/// The log: appended to by every controller, read by tests.
#[derive(Debug, Default)]
pub struct Truth {
    records: Mutex<Vec<TruthRecord>>,
    file: Option<Mutex<std::fs::File>>,
}

impl Truth {
    /// A log kept in memory only.
    pub fn in_memory() -> Self {
        Truth::default()
    }

    /// A log kept in memory and appended to `path` (created or truncated).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Truth {
            records: Mutex::default(),
            file: Some(Mutex::new(file)),
        })
    }

    /// Record a step completed now.
    pub fn record(
        &self,
        step: &str,
        namespace: &str,
        name: &str,
        digest: Option<&str>,
    ) -> TruthRecord {
        self.record_at(Utc::now(), None, step, namespace, name, digest)
    }

    /// Record a step completed at `ts` (a time taken from another clock,
    /// e.g. the API server's audit log), and no earlier than `received`.
    pub fn record_at(
        &self,
        ts: DateTime<Utc>,
        received: Option<DateTime<Utc>>,
        step: &str,
        namespace: &str,
        name: &str,
        digest: Option<&str>,
    ) -> TruthRecord {
        let rec = TruthRecord {
            ts,
            step: step.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            digest: digest.map(str::to_string),
            received,
        };
        if let Some(file) = &self.file {
            if let (Ok(mut f), Ok(line)) = (file.lock(), serde_json::to_string(&rec)) {
                // A full disk must not stop the lab; the in-memory copy remains.
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::warn!(error = %e, "could not append to the ground-truth log");
                }
            }
        }
        if let Ok(mut r) = self.records.lock() {
            r.push(rec.clone());
        }
        rec
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<TruthRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Records of one step for one object, oldest first.
    pub fn find(&self, step: &str, namespace: &str, name: &str) -> Vec<TruthRecord> {
        self.records()
            .into_iter()
            .filter(|r| r.step == step && r.namespace == namespace && r.name == name)
            .collect()
    }

    /// The first record of `step` carrying `digest` (any object).
    pub fn first_with_digest(&self, step: &str, digest: &str) -> Option<TruthRecord> {
        self.records()
            .into_iter()
            .find(|r| r.step == step && r.digest.as_deref() == Some(digest))
    }
}

/// Read a `truth.jsonl` file written by another lab process.
pub fn read_file(path: &Path) -> std::io::Result<Vec<TruthRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

/// RFC 3339 with nanoseconds, always `Z`.
pub mod rfc3339_nanos {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// Serialize.
    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ts.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("truth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("truth.jsonl");
        let t = Truth::to_file(&path).unwrap();
        let d = digest(b"hello");
        t.record(step::ESO_SECRET_WRITTEN, "ns", "s", Some(&d));
        t.record(step::POD_READY, "ns", "p", None);
        let back = read_file(&path).unwrap();
        assert_eq!(back, t.records());
        assert_eq!(
            t.first_with_digest(step::ESO_SECRET_WRITTEN, &d)
                .unwrap()
                .name,
            "s"
        );
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(!line.contains("hello"));
        assert!(line.contains(&d));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn milestones_follow_the_chain_from_the_written_value() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        let rec = |ms: i64, st: &str, name: &str, d: Option<&str>| TruthRecord {
            ts: at(ms),
            step: st.to_string(),
            namespace: "ns".into(),
            name: name.into(),
            digest: d.map(str::to_string),
            received: None,
        };
        let truth = vec![
            // An earlier run's rollout must not count.
            rec(50, step::ROLLOUT_COMPLETE, "env", None),
            rec(300, step::ESO_STATUS_SYNCED, "env", Some("d1")),
            rec(290, step::ESO_SECRET_WRITTEN, "env", Some("d1")),
            rec(400, step::RELOADER_PATCHED, "env", Some("x")),
            rec(900, step::ROLLOUT_COMPLETE, "env", None),
            rec(950, step::ROLLOUT_COMPLETE, "env", None),
            rec(800, step::VOLUME_UPDATED, "vol", Some("d1")),
        ];
        let m = Milestones::of(&truth, ChainKind::Env, "env", "d1", at(100));
        assert_eq!(m.secret, Some(At::exactly(at(290))));
        assert_eq!(m.synced, Some(At::exactly(at(300))));
        assert_eq!(m.trigger, Some(At::exactly(at(400))));
        assert_eq!(
            m.complete,
            Some(At::exactly(at(900))),
            "the first completion after the patch"
        );
        assert_eq!(m.volume, None, "an env chain has no volume milestone");
        let own = at(90);
        assert_eq!(
            m.bounds(ChainKind::Env, "store_write", own),
            (Some(own), Some(at(100)))
        );
        assert_eq!(
            m.bounds(ChainKind::Env, "reloader_trigger", own),
            (Some(at(290)), Some(at(400)))
        );
        assert_eq!(
            m.bounds(ChainKind::Env, "end_to_end", own),
            (Some(own), Some(at(900)))
        );
        assert_eq!(m.bounds(ChainKind::Env, "nonsense", own), (None, None));
        let v = Milestones::of(&truth, ChainKind::Volume, "vol", "d1", at(100));
        assert_eq!(
            (v.trigger, v.complete, v.volume),
            (None, None, Some(At::exactly(at(800))))
        );
        assert_eq!(
            v.bounds(ChainKind::Volume, "canary_observe", own),
            (Some(at(290)), Some(at(800)))
        );
        // No value of that digest reached the Secret: the bounds say so.
        let none = Milestones::of(&truth, ChainKind::Env, "env", "d2", at(100));
        assert_eq!(
            none.bounds(ChainKind::Env, "secret_update", own),
            (Some(at(100)), None)
        );
    }

    #[test]
    fn error_beyond_counts_only_what_lies_outside_the_truths_window() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
        let start = At::exactly(at(0));
        // Committed somewhere between 100 and 140 ms.
        let end = At {
            from: at(100),
            ts: at(140),
        };
        let ms = |s: f64| (s * 1000.0).round();
        assert_eq!(ms(error_beyond(0.120, start, end)), 0.0);
        assert_eq!(ms(error_beyond(0.090, start, end)), 10.0);
        assert_eq!(ms(error_beyond(0.150, start, end)), 10.0);
        // Known to the instant: the plain error.
        let exact = At::exactly(at(140));
        assert_eq!(ms(error_beyond(0.150, start, exact)), 10.0);
        assert_eq!(ms(error_beyond(0.130, start, exact)), 10.0);
        // One write for both ends: the true duration is 0.
        assert_eq!(ms(error_beyond(0.004, end, end)), 4.0);
        // The audit log's arrival comes from the record.
        let r = TruthRecord {
            ts: at(140),
            step: step::ESO_SECRET_WRITTEN.into(),
            namespace: "ns".into(),
            name: "s".into(),
            digest: None,
            received: Some(at(100)),
        };
        assert_eq!(At::of(&r), end);
    }
}
