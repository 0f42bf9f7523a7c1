//! Every metric family the prober exports, registered once at start-up into
//! one prometheus-client `Registry` (as one collector, [`Part`]). Label values come only from the config
//! (`probe`) and from fixed enums (`stage`, `reason`, `result`), and every
//! expected series is created zero-valued before the first run: only the
//! series the probe's chain can produce (its stages, the reasons the
//! pipeline fails each stage with, histogram buckets from its SLOs and
//! deadlines, see [`duration_buckets`]), so a probe costs at most 100
//! series. Rare series are created when they first occur instead: failure
//! reasons from watch faults and the prober itself ([`reasons_for`]), and
//! `stage_blocked`, present only while a run is blocked.
//!
//! Every mutation bumps a generation counter ([`Metrics::generation`]) and
//! the changed probe's own version (or the process-wide series' version);
//! the exporter serves cached bytes while the generation holds, and after a
//! change re-encodes only the parts whose version moved ([`chunks`]). Each
//! probe keeps its series in creation order, so a probe's encoded part is
//! exactly its share of a whole encoding.
//!
//! | family | type | labels | meaning |
//! |---|---|---|---|
//! | `secret_canary_stage_duration_seconds` | histogram | probe, stage | how long each completed hop took (exemplar: run_id); probes without `force_sync` |
//! | `secret_canary_end_to_end_duration_seconds` | histogram | probe | store write start to canary observation, successful runs (exemplar: run_id); probes without `force_sync` |
//! | `secret_canary_forced_stage_duration_seconds` | histogram | probe, stage | as `stage_duration`, for probes that force ESO's sync (`force_sync`) |
//! | `secret_canary_forced_end_to_end_duration_seconds` | histogram | probe | as `end_to_end_duration`, probes that force ESO's sync |
//! | `secret_canary_runs_total` | counter | probe, result | runs by result: success, failure, skipped, aborted (created by the first aborted run: only a shutdown aborts) |
//! | `secret_canary_stage_failures_total` | counter | probe, stage, reason | failed runs by the first stage that did not complete and why |
//! | `secret_canary_prober_errors_total` | counter | probe | runs that failed because of the prober itself (reason `prober_error`) |
//! | `secret_canary_last_run_timestamp_seconds` | gauge | probe | when the last completed run ended (0: none yet) |
//! | `secret_canary_last_success_timestamp_seconds` | gauge | probe | when the last successful run ended (0: none yet) |
//! | `secret_canary_last_run_success` | gauge | probe | 1 if the last run succeeded, else 0 (like blackbox `probe_success`) |
//! | `secret_canary_run_in_progress` | gauge | probe | 1 while a run is going |
//! | `secret_canary_slo_breaches_total` | counter | probe, stage | completed stages slower than their SLO; probes without `force_sync` |
//! | `secret_canary_slo_threshold_seconds` | gauge | probe, stage | the configured SLO thresholds |
//! | `secret_canary_schedule_jitter_seconds` | histogram | - | how late a run started after its tick was due (one scheduler for every probe) |
//! | `secret_canary_schedule_missed_ticks_total` | counter | probe | ticks dropped because the process stalled |
//! | `secret_canary_stage_blocked` | gauge | probe, stage, reason | 1 while the cluster reports the run in flight blocked at this stage for this reason; absent otherwise |
//! | `secret_canary_skipped_runs_total` | counter | probe, reason | ticks that did not start a run: run_in_progress, watcher_failing (each created by its first skip; `runs_total{result="skipped"}` counts them all from 0) |
//! | `secret_canary_change_log_overflows_total` | counter | probe | times a watcher's bounded change log overflowed before a run read it (created by the first) |
//! | `secret_canary_leader` | gauge | - | 1 while this replica runs the probes (holds the Lease, or leader election is off) |
//! | `secret_canary_build_info` | gauge | version, revision | always 1 |
//!
//! A forced run (`chain.force_sync`, `once --force-sync`) skips ESO's
//! refreshInterval, so its durations would flatter the propagation SLO: a
//! probe that forces (every run of it does) has the `forced_` histograms
//! instead of the natural ones, and no `slo_breaches_total`, which is about
//! natural runs. Results, failures and
//! timestamps count every run, forced or not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    MetricEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::config::{Config, ProbeConfig};
use crate::slo;
use crate::vocab::{Outcome, Reason, RunResult, Stage};

/// The metric name prefix.
pub const PREFIX: &str = "secret_canary";

/// Content type of the OpenMetrics exposition served on `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The compact default stage duration buckets, seconds: 50 ms to 1 h, each
/// 4–6 times the last (10 above 30 s, where only long deadlines reach). A
/// stage's histogram has those below its deadline, the deadline itself,
/// and its SLO threshold (see [`duration_buckets`]). Nothing below 50 ms:
/// `histogram_quantile` reads a quantile in the first bucket as a share of
/// 0–50 ms, which is as precise as any SLO of seconds needs (an SLO below
/// 50 ms still gets its own bucket).
pub const DEFAULT_DURATION_BUCKETS: [f64; 7] = [0.05, 0.25, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// Schedule jitter buckets, seconds: 1 ms to 10 s (one histogram for the
/// whole scheduler).
pub const JITTER_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A default bucket this close (as a ratio) to a configured boundary (an
/// SLO threshold or the deadline) is left out: it would add a series
/// without adding resolution.
const NEAR: f64 = 1.5;

/// The buckets of `stage`'s duration histogram for `probe`: the default
/// buckets below the stage's deadline (no completed stage is slower, so
/// buckets above it would stay empty), the deadline, and the stage's SLO
/// threshold T when it has one, so whether a quantile is within the SLO
/// (`histogram_quantile(0.99, ...) <= T`) is answered exactly; elsewhere a
/// quantile is interpolated within a bucket 4–6 times wide. Defaults within
/// a factor 1.5 of T or the deadline are left out. Sorted, distinct.
pub fn duration_buckets(probe: &ProbeConfig, stage: Stage) -> Vec<f64> {
    let deadline = probe
        .stage_deadline(stage)
        .min(probe.deadline())
        .as_secs_f64();
    let mut fixed = vec![deadline];
    if let Some(t) = probe.slo(stage) {
        let t = t.as_secs_f64();
        if t > 0.0 && t < deadline {
            fixed.push(t);
        }
    }
    let near = |b: f64| fixed.iter().any(|&f| b < f * NEAR && b > f / NEAR);
    let mut buckets: Vec<f64> = DEFAULT_DURATION_BUCKETS
        .iter()
        .copied()
        .filter(|&b| b < deadline && !near(b))
        .chain(fixed.iter().copied().filter(|&b| b > 0.0))
        .collect();
    buckets.sort_by(f64::total_cmp);
    buckets.dedup();
    buckets
}

/// Every reason any run may report for `stage` (the union over chains).
/// `aborted` is not a failure (shutdown) and appears only in
/// `secret_canary_runs_total{result="aborted"}`.
pub fn reasons(stage: Stage) -> &'static [Reason] {
    use Reason::*;
    match stage {
        Stage::StoreWrite => &[Timeout, StoreError, AuthError, ProberError],
        // Every watched stage: not_found (404), prober_error (the prober's
        // own RBAC or credentials refused: 400/401/403/422) and api_error
        // from its watcher's faults.
        // prober_error also: a force-sync patch refused, or one ESO would
        // ignore (refreshPolicy CreatedOnce, refreshInterval 0).
        Stage::EsoSync => &[Timeout, SyncError, NotFound, ApiError, ProberError],
        // sync_error: ESO reported an error after writing an older value.
        Stage::SecretUpdate => &[Timeout, SyncError, NotFound, ApiError, ProberError],
        // prober_error also: a restart patch refused.
        Stage::ReloaderTrigger => &[Timeout, NotFound, ApiError, ProberError],
        Stage::Rollout => &[
            Timeout,
            RolloutStuck,
            CanaryCrashing,
            NotFound,
            ApiError,
            ProberError,
        ],
        // prober_error also: the canary HTTP client could not be built.
        // unresolved_reference: a canary runs with a literal `vault:` value.
        Stage::CanaryObserve => &[
            Timeout,
            CanaryUnreachable,
            CanaryCrashing,
            ValueMismatch,
            UnresolvedReference,
            NotFound,
            ApiError,
            ProberError,
        ],
        Stage::EndToEnd => &[],
    }
}

/// The reasons a stage can be reported blocked while a run goes: the label
/// matrix of `secret_canary_stage_blocked` (what the cluster says: a
/// condition, a missing object, a canary's answer, a failing watch; never
/// a plain timeout or an unreachable canary). The store write is never
/// "blocked": it fails at once.
pub fn blocked_reasons(stage: Stage) -> Vec<Reason> {
    if stage == Stage::StoreWrite {
        return Vec::new();
    }
    reasons(stage)
        .iter()
        .copied()
        .filter(|r| !matches!(r, Reason::Timeout | Reason::CanaryUnreachable))
        .collect()
}

/// Why a tick did not start a run (`secret_canary_skipped_runs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The previous run of the probe was still going.
    RunInProgress,
    /// A watcher was failing (`api_error`) and did not recover in time.
    WatcherFailing,
}

impl SkipReason {
    /// Every skip reason, each a series.
    pub const ALL: [SkipReason; 2] = [SkipReason::RunInProgress, SkipReason::WatcherFailing];

    /// The snake_case label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::RunInProgress => "run_in_progress",
            SkipReason::WatcherFailing => "watcher_failing",
        }
    }
}

impl EncodeLabelValue for SkipReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// `{probe, reason}` of `skipped_runs_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// The probe's configured name.
    pub probe: String,
    /// Why the tick was skipped.
    pub reason: SkipReason,
}

/// The reasons whose `secret_canary_stage_failures_total` series are
/// created at start-up for `stage` of `probe`: a timeout and what the
/// pipeline itself reports (ESO's sync error, a stuck rollout, a crashing,
/// unreachable or wrong canary, the store refusing the write), which the
/// alert rules count from the first failure on (`increase(...) >= 2`, a
/// failure share). Every other reason of [`reasons`] is recorded too, its
/// series created on first occurrence: `not_found` and `api_error` (a
/// watch's faults: the API server failing or an object missing, also shown
/// by `skipped_runs_total{reason="watcher_failing"}` and `stage_blocked`),
/// `prober_error` (counted per probe, pre-created, in
/// `secret_canary_prober_errors_total`, which the prober-team alerts use),
/// and `unresolved_reference` on chains with an ExternalSecret (only a
/// secret-injection webhook leaves a `vault:` reference in a canary).
pub fn reasons_for(probe: &ProbeConfig, stage: Stage) -> Vec<Reason> {
    reasons(stage)
        .iter()
        .copied()
        .filter(|r| !matches!(r, Reason::NotFound | Reason::ApiError | Reason::ProberError))
        .filter(|r| *r != Reason::UnresolvedReference || probe.chain.external_secret.is_none())
        .collect()
}

/// The run results whose `secret_canary_runs_total` series are created at
/// start-up. `aborted` (only a shutdown aborts a run) is created by the
/// first aborted run.
pub const RESULTS: [RunResult; 3] = [RunResult::Success, RunResult::Failure, RunResult::Skipped];

impl EncodeLabelValue for Stage {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

impl EncodeLabelValue for RunResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// `{probe}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// The probe's configured name.
    pub probe: String,
}

/// `{probe, stage}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// The probe's configured name.
    pub probe: String,
    /// The hop.
    pub stage: Stage,
}

/// `{probe, stage, reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The probe's configured name.
    pub probe: String,
    /// The first stage that did not complete.
    pub stage: Stage,
    /// Why.
    pub reason: Reason,
}

/// `{probe, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The probe's configured name.
    pub probe: String,
    /// How the run ended.
    pub result: RunResult,
}

/// `{version, revision}` of `build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: String,
    /// The source revision (`SECRET_CANARY_REVISION` at build time, else `unknown`).
    pub revision: String,
}

/// The exemplar carried by histogram buckets: which run it was.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunIdExemplar {
    /// The run's id, as in logs and `/probes`.
    pub run_id: String,
}

type Exemplared = HistogramWithExemplars<RunIdExemplar>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// One family's series of one probe, in creation order (a fixed order, so
/// a probe's encoded chunk and a whole encoding agree byte for byte).
#[derive(Debug)]
struct Series<L, M> {
    inner: RwLock<Vec<(L, M)>>,
}

impl<L, M> Default for Series<L, M> {
    fn default() -> Self {
        Series {
            inner: RwLock::new(Vec::new()),
        }
    }
}

impl<L: PartialEq + Clone + EncodeLabelSet, M: Clone + Default + EncodeMetric> Series<L, M> {
    /// The series for `labels` (a handle sharing its value), created at its
    /// default when missing.
    fn get_or_create(&self, labels: &L) -> M {
        if let Some(m) = self.get(labels) {
            return m;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some((_, m)) = inner.iter().find(|(l, _)| l == labels) {
            return m.clone();
        }
        let m = M::default();
        inner.push((labels.clone(), m.clone()));
        m
    }

    fn get(&self, labels: &L) -> Option<M> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .iter()
            .find(|(l, _)| l == labels)
            .map(|(_, m)| m.clone())
    }

    /// Remove the series; whether it existed.
    fn remove(&self, labels: &L) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let before = inner.len();
        inner.retain(|(l, _)| l != labels);
        inner.len() != before
    }

    fn is_empty(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn encode(&self, family: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        for (labels, m) in inner.iter() {
            m.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

/// One probe's duration histograms, each with its own buckets.
#[derive(Debug)]
struct ProbeDurations {
    /// The probe forces ESO's sync: the series are the `forced_` ones.
    forced: bool,
    stages: Vec<(StageLabels, Exemplared)>,
    end_to_end: (ProbeLabels, Exemplared),
}

impl ProbeDurations {
    fn new(probe: &ProbeConfig) -> ProbeDurations {
        let name = probe.name.as_str();
        let hist = |stage| Exemplared::new(duration_buckets(probe, stage).into_iter());
        ProbeDurations {
            forced: probe.chain.force_sync,
            stages: probe
                .stages()
                .into_iter()
                .map(|stage| (stage_labels(name, stage), hist(stage)))
                .collect(),
            end_to_end: (probe_labels(name), hist(Stage::EndToEnd)),
        }
    }
}

/// Every series of one probe. Its own version moves with each change to
/// them, so the exposition re-encodes only the probes that changed
/// ([`chunks`]).
#[derive(Debug, Default)]
pub(crate) struct ProbeSeries {
    version: AtomicU64,
    /// Set by [`Metrics::init_probe`] (a probe only ever run, in tests, has none).
    durations: std::sync::OnceLock<ProbeDurations>,
    runs: Series<ResultLabels, Counter>,
    stage_failures: Series<FailureLabels, Counter>,
    prober_errors: Series<ProbeLabels, Counter>,
    last_run: Series<ProbeLabels, F64Gauge>,
    last_success: Series<ProbeLabels, F64Gauge>,
    last_run_success: Series<ProbeLabels, Gauge>,
    in_progress: Series<ProbeLabels, Gauge>,
    slo_breaches: Series<StageLabels, Counter>,
    slo_threshold: Series<StageLabels, F64Gauge>,
    missed_ticks: Series<ProbeLabels, Counter>,
    stage_blocked: Series<FailureLabels, Gauge>,
    skipped_runs: Series<SkipLabels, Counter>,
    change_log_overflows: Series<ProbeLabels, Counter>,
}

impl ProbeSeries {
    /// Bumped after every change to the probe's series.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    fn durations_of(&self, forced: bool) -> Option<&ProbeDurations> {
        self.durations.get().filter(|d| d.forced == forced)
    }
}

#[derive(Debug, Default)]
struct ProbeIndex {
    order: Vec<Arc<ProbeSeries>>,
    index: HashMap<String, usize>,
}

/// What every handle of [`Metrics`] shares.
#[derive(Debug)]
pub(crate) struct Shared {
    probes: RwLock<ProbeIndex>,
    jitter: Histogram,
    leader: Gauge,
    build_info: (BuildLabels, Gauge),
    /// Bumped after every change to the process-wide series (jitter, leader).
    process_version: Generation,
    generation: Generation,
}

impl Shared {
    /// The series of `probe`, created (empty) when missing.
    fn probe(&self, probe: &str) -> Arc<ProbeSeries> {
        {
            let idx = self.probes.read().unwrap_or_else(|p| p.into_inner());
            if let Some(&i) = idx.index.get(probe) {
                return idx.order[i].clone();
            }
        }
        let mut idx = self.probes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = idx.index.get(probe) {
            return idx.order[i].clone();
        }
        let series = Arc::new(ProbeSeries::default());
        let at = idx.order.len();
        idx.order.push(series.clone());
        idx.index.insert(probe.to_string(), at);
        self.generation.bump();
        series
    }

    /// The series of `probe`, if it has any.
    fn find(&self, probe: &str) -> Option<Arc<ProbeSeries>> {
        let idx = self.probes.read().unwrap_or_else(|p| p.into_inner());
        idx.index.get(probe).map(|&i| idx.order[i].clone())
    }

    /// Every probe's series, in the order the probes were added.
    pub(crate) fn probes(&self) -> Vec<Arc<ProbeSeries>> {
        self.probes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .order
            .clone()
    }

    pub(crate) fn process_version(&self) -> u64 {
        self.process_version.get()
    }
}

/// Which series a [`Part`] encodes.
#[derive(Debug, Clone)]
pub(crate) enum Select {
    /// Every series: the whole exposition.
    All,
    /// The process-wide series only (jitter, leader, build info).
    Process,
    /// One probe's series only.
    Probe(Arc<ProbeSeries>),
    /// No series: every family's HELP/TYPE/UNIT lines, in exposition order.
    Headers,
}

/// A collector encoding the families in their exposition order, with the
/// series [`Select`]ed. A family without any selected series is left out
/// (as a prometheus-client `Registry` leaves out an empty `Family`), except
/// with [`Select::Headers`].
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) shared: Arc<Shared>,
    pub(crate) select: Select,
}

const STAGE_DURATION_HELP: &str = "Duration of each completed stage of a probe run";
const END_TO_END_HELP: &str =
    "Duration from the store write starting to every canary observing the value, successful runs";
const FORCED_STAGE_DURATION_HELP: &str =
    "Duration of each completed stage of a probe run that forced ESO's sync (force-sync annotation)";
const FORCED_END_TO_END_HELP: &str = "Duration from the store write starting to every canary observing the value, successful runs that forced ESO's sync";

impl Collector for Part {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all = match self.select {
            Select::All => self.shared.probes(),
            _ => Vec::new(),
        };
        let (probes, process, headers): (Vec<&ProbeSeries>, bool, bool) = match &self.select {
            Select::All => (all.iter().map(|p| p.as_ref()).collect(), true, false),
            Select::Process => (Vec::new(), true, false),
            Select::Probe(p) => (vec![p.as_ref()], false, false),
            Select::Headers => (Vec::new(), false, true),
        };
        macro_rules! family {
            ($field:ident, $name:literal, $help:literal, $unit:expr, $ty:expr) => {{
                if headers || probes.iter().any(|p| !p.$field.is_empty()) {
                    // As a `Registry` does, the help ends with a period.
                    let mut f =
                        encoder.encode_descriptor($name, concat!($help, "."), $unit, $ty)?;
                    for p in &probes {
                        p.$field.encode(&mut f)?;
                    }
                }
            }};
        }
        macro_rules! process {
            ($name:literal, $help:literal, $unit:expr, $ty:expr, |$f:ident| $body:expr) => {{
                if headers || process {
                    let $f = encoder.encode_descriptor($name, concat!($help, "."), $unit, $ty)?;
                    if process {
                        $body?;
                    }
                }
            }};
        }
        use MetricType::{Counter as C, Gauge as G};
        family!(
            runs,
            "runs",
            "Probe runs by result (success, failure, skipped: previous run still going, aborted: shutdown)",
            None,
            C
        );
        family!(
            stage_failures,
            "stage_failures",
            "Failed probe runs by the first stage that did not complete and a bounded reason",
            None,
            C
        );
        family!(
            prober_errors,
            "prober_errors",
            "Probe runs that failed because of the prober itself (its bug or misconfiguration), not the pipeline",
            None,
            C
        );
        family!(
            last_run,
            "last_run_timestamp",
            "When the last completed probe run ended, seconds since the epoch (0: none yet)",
            Some(&Unit::Seconds),
            G
        );
        family!(
            last_success,
            "last_success_timestamp",
            "When the last successful probe run ended, seconds since the epoch (0: none yet)",
            Some(&Unit::Seconds),
            G
        );
        family!(
            last_run_success,
            "last_run_success",
            "Whether the last completed probe run succeeded (1) or not (0)",
            None,
            G
        );
        family!(
            in_progress,
            "run_in_progress",
            "Whether a run of the probe is in progress (1) or not (0)",
            None,
            G
        );
        family!(
            slo_breaches,
            "slo_breaches",
            "Completed stages that took longer than their configured SLO threshold",
            None,
            C
        );
        family!(
            slo_threshold,
            "slo_threshold",
            "Configured SLO threshold per stage",
            Some(&Unit::Seconds),
            G
        );
        process!(
            "schedule_jitter",
            "Delay between a tick being due and its run starting, every probe",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            |f| self.shared.jitter.encode(f)
        );
        family!(
            missed_ticks,
            "schedule_missed_ticks",
            "Ticks dropped because the prober fell behind its schedule (stall, clock step)",
            None,
            C
        );
        process!(
            "leader",
            "Whether this replica runs the probes (1): it holds the leader Lease, or leader election is off",
            None,
            G,
            |f| self.shared.leader.encode(f)
        );
        family!(
            stage_blocked,
            "stage_blocked",
            "1 while the cluster reports the run in flight blocked at this stage for this reason (ExternalSecret Ready=False, a missing object, a failing watch, ...); absent otherwise (the series exists only while blocked)",
            None,
            G
        );
        family!(
            skipped_runs,
            "skipped_runs",
            "Ticks that did not start a run, by reason (run_in_progress: the previous run was still going; watcher_failing: a watcher was failing)",
            None,
            C
        );
        family!(
            change_log_overflows,
            "change_log_overflows",
            "Times a watcher's bounded change log overflowed before a run read it (events missed; the run went on from the objects' state)",
            None,
            C
        );
        process!(
            "build_info",
            "Build information of the running prober (always 1)",
            None,
            G,
            |f| {
                let mut f = f;
                let (labels, g) = &self.shared.build_info;
                g.encode(f.encode_family(labels)?)
            }
        );
        // The duration histograms: per probe and stage, each with its own
        // buckets (a prometheus-client `Family` gives every series the same).
        for forced in [false, true] {
            let (stage_name, stage_help, e2e_name, e2e_help) = if forced {
                (
                    "forced_stage_duration",
                    FORCED_STAGE_DURATION_HELP,
                    "forced_end_to_end_duration",
                    FORCED_END_TO_END_HELP,
                )
            } else {
                (
                    "stage_duration",
                    STAGE_DURATION_HELP,
                    "end_to_end_duration",
                    END_TO_END_HELP,
                )
            };
            let with: Vec<&ProbeDurations> = probes
                .iter()
                .filter_map(|p| p.durations_of(forced))
                .collect();
            if !headers && with.is_empty() {
                continue;
            }
            let unit = Some(&Unit::Seconds);
            let mut f =
                encoder.encode_descriptor(stage_name, stage_help, unit, MetricType::Histogram)?;
            for d in &with {
                for (labels, h) in &d.stages {
                    h.encode(f.encode_family(labels)?)?;
                }
            }
            let mut f =
                encoder.encode_descriptor(e2e_name, e2e_help, unit, MetricType::Histogram)?;
            for d in &with {
                let (labels, h) = &d.end_to_end;
                h.encode(f.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The exposition's version: bumped after every change to a metric, so the
/// exporter encodes once per change and serves copies in between.
#[derive(Debug, Clone, Default)]
pub struct Generation(Arc<AtomicU64>);

impl Generation {
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Something changed (call after the change).
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// A 0/1 gauge handed out of [`Metrics`] (the leader flag): setting it
/// bumps the exposition's [`Generation`].
#[derive(Debug, Clone)]
pub struct FlagGauge {
    shared: Arc<Shared>,
}

impl Default for FlagGauge {
    /// A gauge of metrics of its own (tests).
    fn default() -> Self {
        Metrics::register(&mut Registry::default()).leader_gauge()
    }
}

impl FlagGauge {
    /// Set the gauge (only a change bumps the generation).
    pub fn set(&self, v: i64) {
        if self.shared.leader.set(v) != v {
            self.shared.process_version.bump();
            self.shared.generation.bump();
        }
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.shared.leader.get()
    }
}

/// Handles to every family; cheap to clone (the series are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    shared: Arc<Shared>,
}

fn probe_labels(probe: &str) -> ProbeLabels {
    ProbeLabels {
        probe: probe.to_string(),
    }
}

fn stage_labels(probe: &str, stage: Stage) -> StageLabels {
    StageLabels {
        probe: probe.to_string(),
        stage,
    }
}

fn epoch_seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

impl Metrics {
    /// Register every family into `registry` (pass an unprefixed registry:
    /// the names carry the `secret_canary_` prefix themselves).
    pub fn register(registry: &mut Registry) -> Metrics {
        let build_info = Gauge::default();
        build_info.set(1);
        let shared = Arc::new(Shared {
            probes: RwLock::new(ProbeIndex::default()),
            jitter: Histogram::new(JITTER_BUCKETS),
            leader: Gauge::default(),
            build_info: (
                BuildLabels {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    revision: option_env!("SECRET_CANARY_REVISION")
                        .unwrap_or("unknown")
                        .to_string(),
                },
                build_info,
            ),
            process_version: Generation::default(),
            generation: Generation::default(),
        });
        registry
            .sub_registry_with_prefix(PREFIX)
            .register_collector(Box::new(Part {
                shared: shared.clone(),
                select: Select::All,
            }));
        Metrics { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The `secret_canary_leader` gauge, for the leader elector (or set to 1
    /// when leader election is off).
    pub fn leader_gauge(&self) -> FlagGauge {
        FlagGauge {
            shared: self.shared.clone(),
        }
    }

    /// The exposition's version: it changes after every change to a metric.
    pub fn generation(&self) -> Generation {
        self.shared.generation.clone()
    }

    /// Register into `registry` and create every series `config` implies.
    pub fn for_config(registry: &mut Registry, config: &Config) -> Metrics {
        let m = Metrics::register(registry);
        for probe in &config.probes {
            m.init_probe(probe);
        }
        m
    }

    /// Change `probe`'s series, then mark it changed.
    fn change<T>(&self, probe: &str, f: impl FnOnce(&ProbeSeries) -> T) -> T {
        let series = self.shared.probe(probe);
        let out = f(&series);
        series.changed();
        self.shared.generation.bump();
        out
    }

    /// Create every series of one probe, zero-valued (durations of runs not
    /// yet seen are NaN, which is not a measurement of 0 s).
    pub fn init_probe(&self, probe: &ProbeConfig) {
        let name = probe.name.as_str();
        let p = probe_labels(name);
        self.change(name, |s| {
            // A probe initialised twice keeps its first series.
            let _ = s.durations.set(ProbeDurations::new(probe));
            for result in RESULTS {
                let _ = s.runs.get_or_create(&ResultLabels {
                    probe: name.to_string(),
                    result,
                });
            }
            let _ = s.prober_errors.get_or_create(&p);
            let _ = s.last_run.get_or_create(&p);
            let _ = s.last_success.get_or_create(&p);
            let _ = s.last_run_success.get_or_create(&p);
            let _ = s.in_progress.get_or_create(&p);
            let _ = s.missed_ticks.get_or_create(&p);
            for stage in probe.stages() {
                for reason in reasons_for(probe, stage) {
                    let _ = s.stage_failures.get_or_create(&FailureLabels {
                        probe: name.to_string(),
                        stage,
                        reason,
                    });
                }
            }
            let natural = !probe.chain.force_sync;
            for (stage, threshold) in &probe.slo {
                if natural {
                    let _ = s.slo_breaches.get_or_create(&stage_labels(name, *stage));
                }
                s.slo_threshold
                    .get_or_create(&stage_labels(name, *stage))
                    .set(threshold.0.as_secs_f64());
            }
        });
    }

    /// A run of `probe` has started.
    pub fn run_started(&self, probe: &str) {
        self.change(probe, |s| {
            s.in_progress.get_or_create(&probe_labels(probe)).set(1);
        });
    }

    /// A tick found the previous run of `probe` still going.
    pub fn record_skipped(&self, probe: &str) {
        self.change(probe, |s| {
            s.runs
                .get_or_create(&ResultLabels {
                    probe: probe.to_string(),
                    result: RunResult::Skipped,
                })
                .inc();
            count_skip(s, probe, SkipReason::RunInProgress);
        });
    }

    /// `secret_canary_skipped_runs_total{probe, reason}`.
    pub fn skipped_for(&self, probe: &str, reason: SkipReason) -> u64 {
        self.shared
            .find(probe)
            .and_then(|s| {
                s.skipped_runs.get(&SkipLabels {
                    probe: probe.to_string(),
                    reason,
                })
            })
            .map_or(0, |c| c.get())
    }

    /// The cluster says the run of `probe` in flight is blocked at `stage`
    /// for `reason` (`None`: it is not, or no run is in flight): that
    /// series is 1, and the probe has no other. A probe has at most one
    /// `stage_blocked` series, present only while blocked: pre-creating
    /// every (stage, reason) pair at 0 cost 15–22 series per probe.
    pub fn set_blocked(&self, probe: &str, blocked: Option<(Stage, Reason)>) {
        self.change(probe, |s| {
            for stage in Stage::CHAIN {
                for reason in blocked_reasons(stage) {
                    if Some((stage, reason)) != blocked {
                        s.stage_blocked.remove(&FailureLabels {
                            probe: probe.to_string(),
                            stage,
                            reason,
                        });
                    }
                }
            }
            if let Some((stage, reason)) = blocked {
                s.stage_blocked
                    .get_or_create(&FailureLabels {
                        probe: probe.to_string(),
                        stage,
                        reason,
                    })
                    .set(1);
            }
        });
    }

    /// Runs of `probe` found `n` more change-log overflows.
    pub fn record_change_log_overflows(&self, probe: &str, n: u64) {
        if n > 0 {
            self.change(probe, |s| {
                s.change_log_overflows
                    .get_or_create(&probe_labels(probe))
                    .inc_by(n);
            });
        }
    }

    /// The scheduler dropped `n` ticks of `probe`.
    pub fn record_missed_ticks(&self, probe: &str, n: u64) {
        self.change(probe, |s| {
            s.missed_ticks.get_or_create(&probe_labels(probe)).inc_by(n);
        });
    }

    /// How late a run (of any probe) started after its tick was due.
    pub fn observe_schedule_jitter(&self, lateness: Duration) {
        self.shared.jitter.observe(lateness.as_secs_f64());
        self.shared.process_version.bump();
        self.shared.generation.bump();
    }

    /// Record a finished run (and clear run-in-progress).
    pub fn record_outcome(&self, probe: &ProbeConfig, outcome: &Outcome) {
        self.change(&probe.name, |s| record(s, probe, outcome));
    }

    /// `secret_canary_runs_total{probe, result="skipped"}` (for tests and benchmarks).
    pub fn skipped(&self, probe: &str) -> u64 {
        self.runs_of(probe, RunResult::Skipped)
    }

    /// `secret_canary_runs_total{probe, result}`.
    pub fn runs_of(&self, probe: &str, result: RunResult) -> u64 {
        self.shared
            .find(probe)
            .and_then(|s| {
                s.runs.get(&ResultLabels {
                    probe: probe.to_string(),
                    result,
                })
            })
            .map_or(0, |c| c.get())
    }
}

/// Callers mark the probe changed.
fn count_skip(s: &ProbeSeries, probe: &str, reason: SkipReason) {
    s.skipped_runs
        .get_or_create(&SkipLabels {
            probe: probe.to_string(),
            reason,
        })
        .inc();
}

fn record(s: &ProbeSeries, probe: &ProbeConfig, outcome: &Outcome) {
    let name = probe.name.as_str();
    let p = probe_labels(name);
    s.in_progress.get_or_create(&p).set(0);
    s.runs
        .get_or_create(&ResultLabels {
            probe: name.to_string(),
            result: outcome.result,
        })
        .inc();
    // A shutdown, or a tick skipped because a watcher was failing, says
    // nothing about the pipeline: leave the last-run state alone.
    if outcome.result == RunResult::Skipped {
        count_skip(s, name, SkipReason::WatcherFailing);
    }
    if matches!(outcome.result, RunResult::Aborted | RunResult::Skipped) {
        return;
    }
    let exemplar = || {
        Some(RunIdExemplar {
            run_id: outcome.run_id.clone(),
        })
    };
    let at = Some(SystemTime::from(outcome.finished_at));
    // Whether runs force ESO's sync is the probe's config (every run of
    // a `force_sync` probe does), so the series set follows the config.
    let forced = probe.chain.force_sync;
    let durations = s.durations.get();
    for stage in probe.stages() {
        let d = outcome.duration(stage);
        // Measured across a watch gap: reported, not a pipeline latency.
        let gap = outcome.watch_gaps.contains(&stage);
        if let (Some(d), Some(series), false) = (d, durations, gap) {
            if let Some((_, h)) = series.stages.iter().find(|(l, _)| l.stage == stage) {
                h.observe(d.as_secs_f64(), exemplar(), at);
            }
        }
    }
    let e2e = slo::end_to_end(outcome);
    let gap = outcome.watch_gaps.contains(&Stage::EndToEnd);
    if let (Some(d), Some(series), false) = (e2e, durations, gap) {
        series.end_to_end.1.observe(d.as_secs_f64(), exemplar(), at);
    }
    if !forced {
        for breach in slo::slo_breaches(probe, outcome) {
            s.slo_breaches
                .get_or_create(&stage_labels(name, breach))
                .inc();
        }
    }
    let ended = epoch_seconds(outcome.finished_at);
    s.last_run.get_or_create(&p).set(ended);
    let success = outcome.result == RunResult::Success;
    s.last_run_success.get_or_create(&p).set(i64::from(success));
    if success {
        s.last_success.get_or_create(&p).set(ended);
    }
    if let Some(failure) = outcome.failure {
        s.stage_failures
            .get_or_create(&FailureLabels {
                probe: name.to_string(),
                stage: failure.stage,
                reason: failure.reason,
            })
            .inc();
        if failure.reason == Reason::ProberError {
            s.prober_errors.get_or_create(&p).inc();
        }
    }
}

/// How many samples (exposition lines) one probe adds to a registry built
/// by [`Metrics::for_config`], before and after any number of runs whose
/// failures stay inside [`reasons_for`] (plus one `stage_blocked` series
/// while a run of it is blocked, and one per other reason that occurred).
pub fn series_of_probe(p: &ProbeConfig) -> usize {
    let stages = p.stages();
    let natural = !p.chain.force_sync;
    // Each histogram series is its buckets, +Inf, _sum and _count.
    let histograms: usize = stages
        .iter()
        .copied()
        .chain([Stage::EndToEnd])
        .map(|s| duration_buckets(p, s).len() + 3)
        .sum();
    let failures: usize = stages.iter().map(|s| reasons_for(p, *s).len()).sum();
    histograms          // (forced_)stage_duration, (forced_)end_to_end_duration
        + RESULTS.len() // runs_total
        + failures      // stage_failures_total
        + 1             // prober_errors_total
        + 3             // last_run_timestamp, last_success_timestamp, last_run_success
        + 1             // run_in_progress
        + if natural { p.slo.len() } else { 0 } // slo_breaches_total
        + p.slo.len()   // slo_threshold_seconds
        + 1 // schedule_missed_ticks_total
}

/// How many samples (exposition lines) a registry built by
/// [`Metrics::for_config`] has, before and after any number of runs whose
/// failures stay inside [`reasons_for`]: the series count is a function of
/// the config alone.
pub fn expected_series(config: &Config) -> usize {
    // build_info, leader and the scheduler's jitter histogram, then each probe's series.
    2 + (JITTER_BUCKETS.len() + 3) + config.probes.iter().map(series_of_probe).sum::<usize>()
}

/// The most samples one probe can add: [`series_of_probe`] plus every
/// series created on first occurrence (each other failure reason of its
/// stages, one `stage_blocked`, both skip reasons, the change-log overflow
/// counter and `runs_total{result="aborted"}`). No label value comes from
/// anything but the config and fixed enums, so this bound holds forever.
pub fn max_series_of_probe(p: &ProbeConfig) -> usize {
    let rare_reasons: usize = p
        .stages()
        .iter()
        .map(|s| reasons(*s).len() - reasons_for(p, *s).len())
        .sum();
    series_of_probe(p) + rare_reasons + 1 + SkipReason::ALL.len() + 1 + 1
}

/// The most samples a registry built by [`Metrics::for_config`] can have.
pub fn max_series(config: &Config) -> usize {
    expected_series(config) - config.probes.iter().map(series_of_probe).sum::<usize>()
        + config.probes.iter().map(max_series_of_probe).sum::<usize>()
}

/// The registry in the OpenMetrics text format (ends with `# EOF`).
pub fn encode_openmetrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The registry in the Prometheus text format 0.0.4 (no exemplars), for
/// scrapers and tools that do not speak OpenMetrics (`promtool check metrics`
/// up to Prometheus 2.x reads only this format).
pub fn encode_prometheus_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// Count the samples in an exposition (lines that are not comments).
pub fn count_samples(exposition: &str) -> usize {
    exposition
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

pub mod chunks;

#[cfg(test)]
pub(crate) mod tests;
