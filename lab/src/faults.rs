//! Fault switches and latency knobs shared by the API server and every
//! simulated controller. They can be flipped while the lab runs: in process
//! through [`Knobs`], or from another process through the admin endpoint
//! (`secret-canary-lab fault --dir DIR NAME on|off`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A fault the lab can inject. The kebab-case name is what the CLI and the
/// admin endpoint accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// ESO stops syncing altogether (no store reads, no Secret or status writes).
    EsoStall,
    /// ESO's store reads fail; surfaced as `Ready=False/SecretSyncedError`.
    EsoError,
    /// Reloader is not running: Secret changes never patch workloads.
    ReloaderAbsent,
    /// New Pods never become ready; the Deployment hits ProgressDeadlineExceeded.
    RolloutStuck,
    /// Canary processes exit right after start (CrashLoopBackOff).
    CanaryCrash,
    /// Canary processes start but their port is unreachable (not listening).
    CanaryUnreachable,
    /// The kubelet keeps serving the old Secret value: env resolved from a stale
    /// cache, Secret volumes not refreshed.
    CanaryStale,
    /// The Bank-Vaults mutating webhook is down and its `failurePolicy` is
    /// `Fail`: Pod creation is rejected.
    WebhookDown,
    /// The Bank-Vaults mutating webhook is down and its `failurePolicy` is
    /// `Ignore` (the chart's default): Pods are admitted unmutated and start
    /// with the literal `vault:...` reference as their env value.
    WebhookFailOpen,
    /// vault-env cannot reach the store at Pod start (the container fails).
    StoreUnreachable,
    /// The API server answers 500 to a share of requests (not to the admin API).
    ApiErrors,
    /// RBAC revoked for ServiceAccounts: the API server answers 403
    /// Forbidden to every request made with a ServiceAccount token (not the
    /// admin's, not TokenReview, not the admin API). The lab's controllers use
    /// the admin's token; a prober given a ServiceAccount token gets 403s.
    ApiForbidden,
    /// The API server delays every response by the `api-latency` knob.
    ApiSlow,
    /// Open watch streams are cut (and new ones are cut soon after opening).
    WatchDrop,
    /// Watches from any resourceVersion get an in-stream 410 Expired.
    WatchExpire,
    /// Containers start slowly (the `slow-start` knob is added to start-up).
    SlowStart,
}

impl Fault {
    /// Every fault, in a fixed order.
    pub const ALL: [Fault; 16] = [
        Fault::EsoStall,
        Fault::EsoError,
        Fault::ReloaderAbsent,
        Fault::RolloutStuck,
        Fault::CanaryCrash,
        Fault::CanaryUnreachable,
        Fault::CanaryStale,
        Fault::WebhookDown,
        Fault::WebhookFailOpen,
        Fault::StoreUnreachable,
        Fault::ApiErrors,
        Fault::ApiForbidden,
        Fault::ApiSlow,
        Fault::WatchDrop,
        Fault::WatchExpire,
        Fault::SlowStart,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::EsoStall => "eso-stall",
            Fault::EsoError => "eso-error",
            Fault::ReloaderAbsent => "reloader-absent",
            Fault::RolloutStuck => "rollout-stuck",
            Fault::CanaryCrash => "canary-crash",
            Fault::CanaryUnreachable => "canary-unreachable",
            Fault::CanaryStale => "canary-stale",
            Fault::WebhookDown => "webhook-down",
            Fault::WebhookFailOpen => "webhook-fail-open",
            Fault::StoreUnreachable => "store-unreachable",
            Fault::ApiErrors => "api-errors",
            Fault::ApiForbidden => "api-forbidden",
            Fault::ApiSlow => "api-slow",
            Fault::WatchDrop => "watch-drop",
            Fault::WatchExpire => "watch-expire",
            Fault::SlowStart => "slow-start",
        }
    }

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown fault or knob name.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {given:?}; known: {known}")]
pub struct UnknownName {
    what: &'static str,
    given: String,
    known: String,
}

impl FromStr for Fault {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fault::ALL
            .iter()
            .copied()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownName {
                what: "fault",
                given: s.to_string(),
                known: Fault::ALL.map(Fault::name).join(", "),
            })
    }
}

/// A delay a simulated controller waits before (or while) doing its step,
/// or (for the signed knobs, see [`Knob::signed`]) an offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Latency {
    /// Always the same delay.
    Fixed(Duration),
    /// Uniformly drawn from `[min, max]`.
    Uniform {
        /// The shortest delay.
        min: Duration,
        /// The longest delay.
        max: Duration,
    },
    /// A negative offset (`-1500ms`): only signed knobs accept it; as a
    /// delay it counts as zero.
    Negative(Duration),
}

impl Latency {
    /// No delay.
    pub const ZERO: Latency = Latency::Fixed(Duration::ZERO);

    /// Draw one delay (a [`Latency::Negative`] is no delay).
    pub fn sample(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Negative(_) => Duration::ZERO,
            Latency::Uniform { min, max } => {
                if max <= min {
                    return min;
                }
                let span = (max - min).as_nanos() as u64;
                min + Duration::from_nanos(rand::rng().random_range(0..=span))
            }
        }
    }

    /// Draw one signed offset: negative for [`Latency::Negative`].
    pub fn sample_signed(&self) -> chrono::Duration {
        match *self {
            Latency::Negative(d) => -chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX),
            _ => chrono::Duration::from_std(self.sample()).unwrap_or(chrono::Duration::MAX),
        }
    }
}

/// Bad latency text.
#[derive(Debug, thiserror::Error)]
#[error("invalid latency {given:?}: expected a duration such as `250ms`, a range such as `100ms..2s`, or for a signed knob a negative duration such as `-1500ms` ({reason})")]
pub struct BadLatency {
    given: String,
    reason: String,
}

impl FromStr for Latency {
    type Err = BadLatency;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| BadLatency {
            given: s.to_string(),
            reason,
        };
        let parse = |t: &str| humantime::parse_duration(t.trim()).map_err(|e| bad(e.to_string()));
        if let Some(rest) = s.trim().strip_prefix('-') {
            if rest.contains("..") {
                return Err(bad("a range cannot be negative".into()));
            }
            let d = parse(rest)?;
            return Ok(if d.is_zero() {
                Latency::ZERO
            } else {
                Latency::Negative(d)
            });
        }
        let s = s.trim().strip_prefix('+').unwrap_or(s.trim());
        match s.split_once("..") {
            Some((a, b)) => {
                let (min, max) = (parse(a)?, parse(b)?);
                if max < min {
                    return Err(bad("the range's end is before its start".into()));
                }
                Ok(Latency::Uniform { min, max })
            }
            None => Ok(Latency::Fixed(parse(s)?)),
        }
    }
}

impl TryFrom<String> for Latency {
    type Error = BadLatency;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Latency> for String {
    fn from(l: Latency) -> String {
        l.to_string()
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
            Latency::Negative(d) => write!(f, "-{}", humantime::format_duration(*d)),
            Latency::Uniform { min, max } => write!(
                f,
                "{}..{}",
                humantime::format_duration(*min),
                humantime::format_duration(*max)
            ),
        }
    }
}

/// A latency knob. Kebab-case names on the CLI and admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Knob {
    /// ESO: from its reconcile start to the store read completing (added delay).
    EsoLatency,
    /// ESO: between writing the Secret and writing the ExternalSecret status.
    EsoStatusLatency,
    /// Reloader: from seeing the Secret change to patching the workload.
    ReloaderLatency,
    /// Deployment/ReplicaSet controllers: before each reconcile action.
    DeploymentLatency,
    /// Kubelet: from Pod creation to the process being started.
    KubeletStartLatency,
    /// Kubelet: extra start-up delay while the `slow-start` fault is on.
    SlowStart,
    /// Kubelet: from a Secret change to the Secret volume files being rewritten
    /// (the real kubelet's sync period plus cache delay).
    VolumeSyncLatency,
    /// Kubelet: interval between readiness probes.
    ReadinessPeriod,
    /// API server: added to every response while `api-slow` is on.
    ApiLatency,
    /// Kubelet: the crash back-off. As the real kubelet: the first restart
    /// of a crashed container is immediate, the next waits this long
    /// (CrashLoopBackOff), doubling per crash up to 30 times this (10 s up to
    /// 5 min); a run longer than twice the cap starts over.
    CrashBackoff,
    /// ESO: how far the simulated ESO's clock is off the true clock (signed:
    /// `2s` ahead, `-1500ms` behind). Its `refreshTime` and its refresh
    /// decisions use the skewed clock; ground truth stays on the true clock.
    EsoClockSkew,
}

impl Knob {
    /// Every knob, in a fixed order.
    pub const ALL: [Knob; 11] = [
        Knob::EsoLatency,
        Knob::EsoStatusLatency,
        Knob::ReloaderLatency,
        Knob::DeploymentLatency,
        Knob::KubeletStartLatency,
        Knob::SlowStart,
        Knob::VolumeSyncLatency,
        Knob::ReadinessPeriod,
        Knob::ApiLatency,
        Knob::CrashBackoff,
        Knob::EsoClockSkew,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Knob::EsoLatency => "eso-latency",
            Knob::EsoStatusLatency => "eso-status-latency",
            Knob::ReloaderLatency => "reloader-latency",
            Knob::DeploymentLatency => "deployment-latency",
            Knob::KubeletStartLatency => "kubelet-start-latency",
            Knob::SlowStart => "slow-start",
            Knob::VolumeSyncLatency => "volume-sync-latency",
            Knob::ReadinessPeriod => "readiness-period",
            Knob::ApiLatency => "api-latency",
            Knob::CrashBackoff => "crash-backoff",
            Knob::EsoClockSkew => "eso-clock-skew",
        }
    }

    /// The value a fresh lab uses: fast, so tests are quick, but never zero
    /// where the real component always takes time.
    pub fn default_latency(self) -> Latency {
        let ms = |n| Latency::Fixed(Duration::from_millis(n));
        match self {
            Knob::EsoLatency => ms(20),
            Knob::EsoStatusLatency => ms(5),
            Knob::ReloaderLatency => ms(10),
            Knob::DeploymentLatency => ms(5),
            Knob::KubeletStartLatency => ms(20),
            Knob::SlowStart => ms(5000),
            Knob::VolumeSyncLatency => ms(500),
            Knob::ReadinessPeriod => ms(50),
            Knob::ApiLatency => ms(2000),
            Knob::CrashBackoff => ms(10_000),
            Knob::EsoClockSkew => Latency::ZERO,
        }
    }

    /// Does this knob take a signed value (an offset, not a delay)?
    pub fn signed(self) -> bool {
        matches!(self, Knob::EsoClockSkew)
    }

    /// Can this knob take `value`? Only signed knobs take negative values.
    pub fn check(self, value: &Latency) -> Result<(), BadLatency> {
        if matches!(value, Latency::Negative(_)) && !self.signed() {
            return Err(BadLatency {
                given: value.to_string(),
                reason: format!("knob {} is a delay and cannot be negative", self.name()),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Knob {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Knob::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownName {
                what: "knob",
                given: s.to_string(),
                known: Knob::ALL.map(Knob::name).join(", "),
            })
    }
}

/// The live switchboard: one per lab, shared by every component.
#[derive(Debug)]
pub struct Knobs {
    faults: [AtomicBool; Fault::ALL.len()],
    latencies: RwLock<BTreeMap<Knob, Latency>>,
    changed: tokio::sync::Notify,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            faults: Default::default(),
            latencies: RwLock::new(
                Knob::ALL
                    .iter()
                    .map(|k| (*k, k.default_latency()))
                    .collect(),
            ),
            changed: tokio::sync::Notify::new(),
        }
    }
}

/// What `GET /lab/knobs` returns: the whole switchboard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KnobsSnapshot {
    /// Faults that are on.
    pub faults: Vec<Fault>,
    /// Every knob's current latency.
    pub latencies: BTreeMap<Knob, Latency>,
}

impl Knobs {
    /// Is this fault on?
    pub fn is_on(&self, fault: Fault) -> bool {
        self.faults[fault.index()].load(Ordering::Relaxed)
    }

    /// Switch a fault on or off.
    pub fn set_fault(&self, fault: Fault, on: bool) {
        self.faults[fault.index()].store(on, Ordering::Relaxed);
        tracing::info!(%fault, on, "lab fault switched");
        self.changed.notify_waiters();
    }

    /// The current latency of a knob.
    pub fn latency(&self, knob: Knob) -> Latency {
        self.latencies
            .read()
            .map(|m| m.get(&knob).copied())
            .ok()
            .flatten()
            .unwrap_or_else(|| knob.default_latency())
    }

    /// Draw one delay from a knob.
    pub fn sample(&self, knob: Knob) -> Duration {
        self.latency(knob).sample()
    }

    /// One draw of a signed knob (an offset such as `eso-clock-skew`).
    pub fn offset(&self, knob: Knob) -> chrono::Duration {
        self.latency(knob).sample_signed()
    }

    /// Sleep for one draw of a knob.
    pub async fn delay(&self, knob: Knob) {
        let d = self.sample(knob);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Set a knob's latency.
    pub fn set_latency(&self, knob: Knob, latency: Latency) {
        if let Ok(mut m) = self.latencies.write() {
            m.insert(knob, latency);
        }
        tracing::info!(%knob, %latency, "lab knob set");
        self.changed.notify_waiters();
    }

    /// Resolves the next time any fault or knob changes, so a stalled
    /// controller can resume at once when its fault is cleared.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The whole switchboard.
    pub fn snapshot(&self) -> KnobsSnapshot {
        KnobsSnapshot {
            faults: Fault::ALL
                .iter()
                .copied()
                .filter(|f| self.is_on(*f))
                .collect(),
            latencies: Knob::ALL.iter().map(|k| (*k, self.latency(*k))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Fault::ALL {
            assert_eq!(f.name().parse::<Fault>().ok(), Some(f));
        }
        for k in Knob::ALL {
            assert_eq!(k.name().parse::<Knob>().ok(), Some(k));
        }
        let err = "nope".parse::<Fault>().unwrap_err().to_string();
        assert!(err.contains("eso-stall"), "{err}");
    }

    #[test]
    fn latency_parses_and_samples_in_range() {
        let l: Latency = "100ms..200ms".parse().unwrap();
        for _ in 0..100 {
            let d = l.sample();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
        }
        assert_eq!(
            "250ms".parse::<Latency>().unwrap(),
            Latency::Fixed(Duration::from_millis(250))
        );
        assert!("2s..1s".parse::<Latency>().is_err());
        assert!("fast".parse::<Latency>().is_err());
    }

    #[test]
    fn signed_latency_for_the_clock_skew_knob() {
        let neg: Latency = "-1500ms".parse().unwrap();
        assert_eq!(neg, Latency::Negative(Duration::from_millis(1500)));
        assert_eq!(neg.sample(), Duration::ZERO);
        assert_eq!(neg.sample_signed(), chrono::Duration::milliseconds(-1500));
        assert_eq!(neg.to_string().parse::<Latency>().unwrap(), neg);
        let pos: Latency = "2s".parse().unwrap();
        assert_eq!(pos.sample_signed(), chrono::Duration::seconds(2));
        assert_eq!("+2s".parse::<Latency>().unwrap(), pos);
        assert!("-1s..2s".parse::<Latency>().is_err());
        assert!(Knob::EsoClockSkew.check(&neg).is_ok());
        assert!(Knob::EsoLatency.check(&neg).is_err());
        assert!(Knob::EsoLatency.check(&pos).is_ok());
        let k = Knobs::default();
        assert_eq!(k.offset(Knob::EsoClockSkew), chrono::Duration::zero());
        k.set_latency(Knob::EsoClockSkew, neg);
        assert_eq!(
            k.offset(Knob::EsoClockSkew),
            chrono::Duration::milliseconds(-1500)
        );
    }

    #[test]
    fn faults_switch() {
        let k = Knobs::default();
        assert!(!k.is_on(Fault::EsoStall));
        k.set_fault(Fault::EsoStall, true);
        assert!(k.is_on(Fault::EsoStall));
        assert_eq!(k.snapshot().faults, vec![Fault::EsoStall]);
        k.set_fault(Fault::EsoStall, false);
        assert!(k.snapshot().faults.is_empty());
    }
}
