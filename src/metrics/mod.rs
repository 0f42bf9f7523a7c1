//! Every metric family the prober exports, registered once at start-up into
//! one prometheus-client `Registry`. Label values come only from the config
//! (`probe`) and from fixed enums (`stage`, `reason`, `result`), and every
//! expected series is created zero-valued before the first run.
//!
//! | family | type | labels | meaning |
//! |---|---|---|---|
//! | `secret_canary_stage_duration_seconds` | histogram | probe, stage | how long each completed hop took (exemplar: run_id) |
//! | `secret_canary_end_to_end_duration_seconds` | histogram | probe | store write start to canary observation, successful runs (exemplar: run_id) |
//! | `secret_canary_forced_stage_duration_seconds` | histogram | probe, stage | as `stage_duration`, for runs that forced ESO's sync (`force_sync`); only probes with it enabled |
//! | `secret_canary_forced_end_to_end_duration_seconds` | histogram | probe | as `end_to_end_duration`, forced runs |
//! | `secret_canary_runs_total` | counter | probe, result | runs by result: success, failure, skipped, aborted |
//! | `secret_canary_stage_failures_total` | counter | probe, stage, reason | failed runs by the first stage that did not complete and why |
//! | `secret_canary_prober_errors_total` | counter | probe | runs that failed because of the prober itself (reason `prober_error`) |
//! | `secret_canary_last_run_timestamp_seconds` | gauge | probe | when the last completed run ended (0: none yet) |
//! | `secret_canary_last_success_timestamp_seconds` | gauge | probe | when the last successful run ended (0: none yet) |
//! | `secret_canary_last_run_success` | gauge | probe | 1 if the last run succeeded, else 0 (like blackbox `probe_success`) |
//! | `secret_canary_last_stage_duration_seconds` | gauge | probe, stage | the last run's stage durations (NaN: not completed) |
//! | `secret_canary_run_in_progress` | gauge | probe | 1 while a run is going |
//! | `secret_canary_slo_breaches_total` | counter | probe, stage | completed stages slower than their SLO |
//! | `secret_canary_slo_threshold_seconds` | gauge | probe, stage | the configured SLO thresholds |
//! | `secret_canary_schedule_jitter_seconds` | histogram | probe | how late a run started after its tick was due |
//! | `secret_canary_schedule_missed_ticks_total` | counter | probe | ticks dropped because the process stalled |
//! | `secret_canary_leader` | gauge | - | 1 while this replica runs the probes (holds the Lease, or leader election is off) |
//! | `secret_canary_build_info` | gauge | version, revision | always 1 |
//!
//! A forced run (`chain.force_sync`, `once --force-sync`) skips ESO's
//! refreshInterval, so its durations would flatter the propagation SLO: they
//! go to the `forced_` histograms only and leave `last_stage_duration` and
//! `slo_breaches_total` to natural runs. Results, failures and timestamps
//! count every run, forced or not.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::config::{Config, ProbeConfig};
use crate::slo;
use crate::vocab::{Outcome, Reason, RunResult, Stage, SyncTrigger};

/// The metric name prefix.
pub const PREFIX: &str = "secret_canary";

/// Content type of the OpenMetrics exposition served on `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Stage duration buckets, seconds: 10 ms to 1 h (ESO refresh intervals
/// reach an hour, webhook-injected rollouts take minutes).
pub const DURATION_BUCKETS: [f64; 17] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Schedule jitter buckets, seconds: 0.5 ms to 10 s.
pub const JITTER_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The failure reasons a stage can report: the label matrix of
/// `secret_canary_stage_failures_total`. The probe engine attributes each
/// failure to one of these; a pair outside the matrix is still recorded but
/// was not pre-created. `aborted` is not a failure (shutdown) and appears
/// only in `secret_canary_runs_total{result="aborted"}`.
pub fn reasons(stage: Stage) -> &'static [Reason] {
    use Reason::*;
    match stage {
        Stage::StoreWrite => &[Timeout, StoreError, AuthError, ProberError],
        Stage::EsoSync => &[Timeout, SyncError, NotFound, ApiError, ProberError],
        // sync_error: ESO reported an error after writing an older value.
        Stage::SecretUpdate => &[
            Timeout,
            SyncError,
            NotFound,
            ApiError,
            ValueMismatch,
            ProberError,
        ],
        Stage::ReloaderTrigger => &[Timeout, NotFound, ApiError, ProberError],
        Stage::Rollout => &[
            Timeout,
            RolloutStuck,
            CanaryCrashing,
            NotFound,
            ApiError,
            ProberError,
        ],
        Stage::CanaryObserve => &[
            Timeout,
            CanaryUnreachable,
            CanaryCrashing,
            ValueMismatch,
            NotFound,
            ApiError,
            ProberError,
        ],
        Stage::EndToEnd => &[],
    }
}

/// Every run result, each a `secret_canary_runs_total` series.
pub const RESULTS: [RunResult; 4] = [
    RunResult::Success,
    RunResult::Failure,
    RunResult::Skipped,
    RunResult::Aborted,
];

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

type DurationFamily<L> = Family<L, HistogramWithExemplars<RunIdExemplar>>;
type F64Gauge = Gauge<f64, AtomicU64>;

fn duration_histogram() -> HistogramWithExemplars<RunIdExemplar> {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

fn jitter_histogram() -> Histogram {
    Histogram::new(JITTER_BUCKETS)
}

/// Handles to every family; cheap to clone (the families are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    stage_duration: DurationFamily<StageLabels>,
    end_to_end: DurationFamily<ProbeLabels>,
    forced_stage_duration: DurationFamily<StageLabels>,
    forced_end_to_end: DurationFamily<ProbeLabels>,
    runs: Family<ResultLabels, Counter>,
    stage_failures: Family<FailureLabels, Counter>,
    prober_errors: Family<ProbeLabels, Counter>,
    last_run: Family<ProbeLabels, F64Gauge>,
    last_success: Family<ProbeLabels, F64Gauge>,
    last_run_success: Family<ProbeLabels, Gauge>,
    last_stage_duration: Family<StageLabels, F64Gauge>,
    in_progress: Family<ProbeLabels, Gauge>,
    slo_breaches: Family<StageLabels, Counter>,
    slo_threshold: Family<StageLabels, F64Gauge>,
    jitter: Family<ProbeLabels, Histogram>,
    missed_ticks: Family<ProbeLabels, Counter>,
    build_info: Family<BuildLabels, Gauge>,
    leader: Gauge,
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
        let m = Metrics {
            stage_duration: Family::new_with_constructor(duration_histogram),
            end_to_end: Family::new_with_constructor(duration_histogram),
            forced_stage_duration: Family::new_with_constructor(duration_histogram),
            forced_end_to_end: Family::new_with_constructor(duration_histogram),
            runs: Family::default(),
            stage_failures: Family::default(),
            prober_errors: Family::default(),
            last_run: Family::default(),
            last_success: Family::default(),
            last_run_success: Family::default(),
            last_stage_duration: Family::default(),
            in_progress: Family::default(),
            slo_breaches: Family::default(),
            slo_threshold: Family::default(),
            jitter: Family::new_with_constructor(jitter_histogram),
            missed_ticks: Family::default(),
            build_info: Family::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register_with_unit(
            "stage_duration",
            "Duration of each completed stage of a probe run",
            Unit::Seconds,
            m.stage_duration.clone(),
        );
        r.register_with_unit(
            "end_to_end_duration",
            "Duration from the store write starting to every canary observing the value, successful runs",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        r.register_with_unit(
            "forced_stage_duration",
            "Duration of each completed stage of a probe run that forced ESO's sync (force-sync annotation)",
            Unit::Seconds,
            m.forced_stage_duration.clone(),
        );
        r.register_with_unit(
            "forced_end_to_end_duration",
            "Duration from the store write starting to every canary observing the value, successful runs that forced ESO's sync",
            Unit::Seconds,
            m.forced_end_to_end.clone(),
        );
        r.register(
            "runs",
            "Probe runs by result (success, failure, skipped: previous run still going, aborted: shutdown)",
            m.runs.clone(),
        );
        r.register(
            "stage_failures",
            "Failed probe runs by the first stage that did not complete and a bounded reason",
            m.stage_failures.clone(),
        );
        r.register(
            "prober_errors",
            "Probe runs that failed because of the prober itself (its bug or misconfiguration), not the pipeline",
            m.prober_errors.clone(),
        );
        r.register_with_unit(
            "last_run_timestamp",
            "When the last completed probe run ended, seconds since the epoch (0: none yet)",
            Unit::Seconds,
            m.last_run.clone(),
        );
        r.register_with_unit(
            "last_success_timestamp",
            "When the last successful probe run ended, seconds since the epoch (0: none yet)",
            Unit::Seconds,
            m.last_success.clone(),
        );
        r.register(
            "last_run_success",
            "Whether the last completed probe run succeeded (1) or not (0)",
            m.last_run_success.clone(),
        );
        r.register_with_unit(
            "last_stage_duration",
            "Stage durations of the last completed probe run (NaN: the stage did not complete)",
            Unit::Seconds,
            m.last_stage_duration.clone(),
        );
        r.register(
            "run_in_progress",
            "Whether a run of the probe is in progress (1) or not (0)",
            m.in_progress.clone(),
        );
        r.register(
            "slo_breaches",
            "Completed stages that took longer than their configured SLO threshold",
            m.slo_breaches.clone(),
        );
        r.register_with_unit(
            "slo_threshold",
            "Configured SLO threshold per stage",
            Unit::Seconds,
            m.slo_threshold.clone(),
        );
        r.register_with_unit(
            "schedule_jitter",
            "Delay between a tick being due and its run starting",
            Unit::Seconds,
            m.jitter.clone(),
        );
        r.register(
            "schedule_missed_ticks",
            "Ticks dropped because the prober fell behind its schedule (stall, clock step)",
            m.missed_ticks.clone(),
        );
        r.register(
            "leader",
            "Whether this replica runs the probes (1): it holds the leader Lease, or leader election is off",
            m.leader.clone(),
        );
        r.register(
            "build_info",
            "Build information of the running prober (always 1)",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                revision: option_env!("SECRET_CANARY_REVISION")
                    .unwrap_or("unknown")
                    .to_string(),
            })
            .set(1);
        m
    }

    /// The `secret_canary_leader` gauge, for the leader elector (or set to 1
    /// when leader election is off).
    pub fn leader_gauge(&self) -> Gauge {
        self.leader.clone()
    }

    /// Register into `registry` and create every series `config` implies.
    pub fn for_config(registry: &mut Registry, config: &Config) -> Metrics {
        let m = Metrics::register(registry);
        for probe in &config.probes {
            m.init_probe(probe);
        }
        m
    }

    /// Create every series of one probe, zero-valued (durations of runs not
    /// yet seen are NaN, which is not a measurement of 0 s).
    pub fn init_probe(&self, probe: &ProbeConfig) {
        let name = probe.name.as_str();
        let p = probe_labels(name);
        let _ = self.end_to_end.get_or_create(&p);
        for result in RESULTS {
            let _ = self.runs.get_or_create(&ResultLabels {
                probe: name.to_string(),
                result,
            });
        }
        let _ = self.prober_errors.get_or_create(&p);
        let _ = self.last_run.get_or_create(&p);
        let _ = self.last_success.get_or_create(&p);
        let _ = self.last_run_success.get_or_create(&p);
        let _ = self.in_progress.get_or_create(&p);
        let _ = self.jitter.get_or_create(&p);
        let _ = self.missed_ticks.get_or_create(&p);
        for stage in probe.stages() {
            let _ = self
                .stage_duration
                .get_or_create(&stage_labels(name, stage));
            for &reason in reasons(stage) {
                let _ = self.stage_failures.get_or_create(&FailureLabels {
                    probe: name.to_string(),
                    stage,
                    reason,
                });
            }
        }
        if probe.chain.force_sync {
            let _ = self.forced_end_to_end.get_or_create(&p);
            for stage in probe.stages() {
                let _ = self
                    .forced_stage_duration
                    .get_or_create(&stage_labels(name, stage));
            }
        }
        for stage in probe.stages().into_iter().chain([Stage::EndToEnd]) {
            self.last_stage_duration
                .get_or_create(&stage_labels(name, stage))
                .set(f64::NAN);
        }
        for (stage, threshold) in &probe.slo {
            let _ = self.slo_breaches.get_or_create(&stage_labels(name, *stage));
            self.slo_threshold
                .get_or_create(&stage_labels(name, *stage))
                .set(threshold.0.as_secs_f64());
        }
    }

    /// A run of `probe` has started.
    pub fn run_started(&self, probe: &str) {
        self.in_progress.get_or_create(&probe_labels(probe)).set(1);
    }

    /// A tick found the previous run of `probe` still going.
    pub fn record_skipped(&self, probe: &str) {
        self.runs
            .get_or_create(&ResultLabels {
                probe: probe.to_string(),
                result: RunResult::Skipped,
            })
            .inc();
    }

    /// The scheduler dropped `n` ticks of `probe`.
    pub fn record_missed_ticks(&self, probe: &str, n: u64) {
        self.missed_ticks
            .get_or_create(&probe_labels(probe))
            .inc_by(n);
    }

    /// How late a run of `probe` started after its tick was due.
    pub fn observe_schedule_jitter(&self, probe: &str, lateness: Duration) {
        self.jitter
            .get_or_create(&probe_labels(probe))
            .observe(lateness.as_secs_f64());
    }

    /// Record a finished run (and clear run-in-progress).
    pub fn record_outcome(&self, probe: &ProbeConfig, outcome: &Outcome) {
        let name = probe.name.as_str();
        let p = probe_labels(name);
        self.in_progress.get_or_create(&p).set(0);
        self.runs
            .get_or_create(&ResultLabels {
                probe: name.to_string(),
                result: outcome.result,
            })
            .inc();
        // A shutdown says nothing about the pipeline: leave the last-run state alone.
        if outcome.result == RunResult::Aborted {
            return;
        }
        let exemplar = || {
            Some(RunIdExemplar {
                run_id: outcome.run_id.clone(),
            })
        };
        let at = Some(SystemTime::from(outcome.finished_at));
        let forced = outcome.sync_trigger == Some(SyncTrigger::Forced);
        let (stage_family, e2e_family) = if forced {
            (&self.forced_stage_duration, &self.forced_end_to_end)
        } else {
            (&self.stage_duration, &self.end_to_end)
        };
        for stage in probe.stages() {
            let d = outcome.duration(stage);
            if let Some(d) = d {
                stage_family
                    .get_or_create(&stage_labels(name, stage))
                    .observe(d.as_secs_f64(), exemplar(), at);
            }
            if !forced {
                self.last_stage_duration
                    .get_or_create(&stage_labels(name, stage))
                    .set(d.map_or(f64::NAN, |d| d.as_secs_f64()));
            }
        }
        let e2e = slo::end_to_end(outcome);
        if let Some(d) = e2e {
            e2e_family
                .get_or_create(&p)
                .observe(d.as_secs_f64(), exemplar(), at);
        }
        if !forced {
            self.last_stage_duration
                .get_or_create(&stage_labels(name, Stage::EndToEnd))
                .set(e2e.map_or(f64::NAN, |d| d.as_secs_f64()));
            for breach in slo::slo_breaches(probe, outcome) {
                self.slo_breaches
                    .get_or_create(&stage_labels(name, breach))
                    .inc();
            }
        }
        let ended = epoch_seconds(outcome.finished_at);
        self.last_run.get_or_create(&p).set(ended);
        let success = outcome.result == RunResult::Success;
        self.last_run_success
            .get_or_create(&p)
            .set(i64::from(success));
        if success {
            self.last_success.get_or_create(&p).set(ended);
        }
        if let Some(failure) = outcome.failure {
            self.stage_failures
                .get_or_create(&FailureLabels {
                    probe: name.to_string(),
                    stage: failure.stage,
                    reason: failure.reason,
                })
                .inc();
            if failure.reason == Reason::ProberError {
                self.prober_errors.get_or_create(&p).inc();
            }
        }
    }

    /// `secret_canary_runs_total{probe, result="skipped"}` (for tests and benchmarks).
    pub fn skipped(&self, probe: &str) -> u64 {
        self.runs_of(probe, RunResult::Skipped)
    }

    /// `secret_canary_runs_total{probe, result}`.
    pub fn runs_of(&self, probe: &str, result: RunResult) -> u64 {
        self.runs
            .get(&ResultLabels {
                probe: probe.to_string(),
                result,
            })
            .map_or(0, |c| c.get())
    }
}

/// How many samples (exposition lines) a registry built by
/// [`Metrics::for_config`] has, before and after any number of runs whose
/// failures stay inside [`reasons`]: the series count is a function of the
/// config alone.
pub fn expected_series(config: &Config) -> usize {
    // Each histogram series is its buckets, +Inf, _sum and _count.
    let duration_hist = DURATION_BUCKETS.len() + 3;
    let jitter_hist = JITTER_BUCKETS.len() + 3;
    let per_probe = |p: &ProbeConfig| {
        let stages = p.stages();
        let n = stages.len();
        let failures: usize = stages.iter().map(|s| reasons(*s).len()).sum();
        n * duration_hist   // stage_duration
            + duration_hist // end_to_end_duration
            + RESULTS.len() // runs_total
            + failures      // stage_failures_total
            + 1             // prober_errors_total
            + 3             // last_run_timestamp, last_success_timestamp, last_run_success
            + (n + 1)       // last_stage_duration (+ end_to_end)
            + 1             // run_in_progress
            + 2 * p.slo.len() // slo_breaches_total, slo_threshold_seconds
            + jitter_hist   // schedule_jitter
            + 1 // schedule_missed_ticks_total
            + if p.chain.force_sync { (n + 1) * duration_hist } else { 0 } // forced_*
    };
    // build_info and leader, then each probe's series.
    2 + config.probes.iter().map(per_probe).sum::<usize>()
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

#[cfg(test)]
pub(crate) mod tests;
