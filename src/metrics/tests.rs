//! Unit tests of `metrics`.

use super::*;
use crate::config::Config;
use crate::vocab::{Failure, StageTiming, SyncTrigger};
use chrono::Utc;

pub(crate) const TWO_PROBES: &str = r#"
probes:
  - name: eso-env
    interval: 30s
    slo: {eso_sync: 10s, end_to_end: 60s}
    store: {address: "http://127.0.0.1:8200", path: canary/eso-env, auth: {token: {env: VAULT_TOKEN}}}
    chain:
      namespace: canary
      external_secret: canary-env
      secret: {name: canary-env}
      rollout: {deployment: canary-env, trigger: reloader}
      canary: {selector: app=canary-env, source: env}
  - name: bank-vaults
    schedule: "0 */5 * * * *"
    store: {address: "http://127.0.0.1:8200", path: canary/bv, auth: {token: {file: /tmp/t}}}
    chain:
      namespace: canary
      rollout: {deployment: canary-bv, trigger: restart}
      canary: {selector: app=canary-bv, source: env}
"#;

fn config() -> Config {
    Config::from_yaml(TWO_PROBES, "test.yaml").unwrap()
}

fn outcome(probe: &ProbeConfig, n: usize) -> Outcome {
    let t0 = Utc::now();
    let stages = probe.stages();
    let fail_at = match n % 4 {
        0 => None,
        _ => Some(stages[n % stages.len()]),
    };
    let mut timings = Vec::new();
    for (i, &stage) in stages.iter().enumerate() {
        let completed = fail_at != Some(stage);
        timings.push(StageTiming {
            stage,
            started_at: t0,
            completed_at: completed.then_some(t0),
            duration: completed
                .then(|| Duration::from_millis(100 * (i as u64 + 1) * (n as u64 % 7 + 1))),
        });
        if !completed {
            break;
        }
    }
    let failure = fail_at.map(|stage| {
        let reasons = reasons_for(probe, stage);
        Failure {
            stage,
            reason: reasons[n % reasons.len()],
        }
    });
    Outcome {
        probe: probe.name.clone(),
        run_id: format!("run-{n}"),
        digest: Some("ab".repeat(32)),
        started_at: t0,
        finished_at: t0 + chrono::Duration::milliseconds(1500),
        stages: timings,
        failure,
        result: if failure.is_some() {
            RunResult::Failure
        } else {
            RunResult::Success
        },
        detail: None,
        sync_trigger: None,
        watch_gaps: Vec::new(),
    }
}

#[test]
fn every_expected_series_exists_at_start_up() {
    let config = config();
    let mut registry = Registry::default();
    let _m = Metrics::for_config(&mut registry, &config);
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), expected_series(&config), "{text}");
    assert!(text.ends_with("# EOF\n"));
    for needle in [
        r#"secret_canary_runs_total{probe="eso-env",result="skipped"} 0"#,
        r#"secret_canary_stage_failures_total{probe="eso-env",stage="eso_sync",reason="sync_error"} 0"#,
        r#"secret_canary_stage_failures_total{probe="bank-vaults",stage="rollout",reason="canary_crashing"} 0"#,
        r#"secret_canary_prober_errors_total{probe="bank-vaults"} 0"#,
        r#"secret_canary_slo_threshold_seconds{probe="eso-env",stage="end_to_end"} 60.0"#,
        r#"secret_canary_build_info{version=""#,
        "# TYPE secret_canary_stage_duration_seconds histogram",
        "# UNIT secret_canary_stage_duration_seconds seconds",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    // The Bank-Vaults chain has no ESO stages.
    assert!(!text.contains(r#"probe="bank-vaults",stage="eso_sync""#));
    // Rare series are created when they first occur, not at start-up.
    for absent in [
        r#"reason="not_found""#,
        r#"reason="api_error""#,
        r#"stage_failures_total{probe="eso-env",stage="rollout",reason="prober_error"}"#,
        r#"probe="eso-env",stage="canary_observe",reason="unresolved_reference""#,
        "secret_canary_stage_blocked{",
        "secret_canary_skipped_runs_total{",
        "secret_canary_change_log_overflows_total{",
        r#"result="aborted""#,
    ] {
        assert!(!text.contains(absent), "{absent} pre-created\n{text}");
    }
    // Bank-Vaults' canaries can run with an unresolved `vault:` reference.
    assert!(text.contains(
        r#"secret_canary_stage_failures_total{probe="bank-vaults",stage="canary_observe",reason="unresolved_reference"} 0"#
    ));
    // A rare reason is recorded when it occurs, its series created then.
    let probe = &config.probes[0];
    let mut o = outcome(probe, 1);
    o.result = RunResult::Failure;
    o.failure = Some(Failure {
        stage: Stage::Rollout,
        reason: Reason::ProberError,
    });
    _m.record_outcome(probe, &o);
    let text = encode_openmetrics(&registry).unwrap();
    assert!(text.contains(
        r#"secret_canary_stage_failures_total{probe="eso-env",stage="rollout",reason="prober_error"} 1"#
    ));
    assert!(text.contains(r#"secret_canary_prober_errors_total{probe="eso-env"} 1"#));
    assert_eq!(count_samples(&text), expected_series(&config) + 1);
}

#[test]
fn outcomes_never_grow_the_series_count() {
    let config = config();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    for n in 0..100 {
        for probe in &config.probes {
            m.run_started(&probe.name);
            m.record_outcome(probe, &outcome(probe, n));
        }
        m.record_skipped("eso-env");
        m.observe_schedule_jitter(Duration::from_millis(3));
    }
    let text = encode_openmetrics(&registry).unwrap();
    // The first skip created `skipped_runs_total{reason="run_in_progress"}`.
    assert_eq!(count_samples(&text), expected_series(&config) + 1);
    assert_eq!(m.skipped("eso-env"), 100);
    assert!(
        text.contains(r#"# {run_id="run-"#),
        "exemplars missing:\n{text}"
    );
}

#[test]
fn forced_runs_are_exported_apart_and_the_series_count_stays_exact() {
    let mut config = config();
    config.probes[0].chain.force_sync = true;
    let probe = config.probes[0].clone();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), expected_series(&config), "{text}");
    assert!(
        text.contains(
            r#"secret_canary_forced_end_to_end_duration_seconds_count{probe="eso-env"} 0"#
        ),
        "{text}"
    );
    assert!(!text.contains(r#"forced_end_to_end_duration_seconds_count{probe="bank-vaults"}"#));
    // A probe that forces has no natural histograms or breaches.
    assert!(!text.contains(r#"secret_canary_end_to_end_duration_seconds_count{probe="eso-env"}"#));
    assert!(!text.contains(r#"slo_breaches_total{probe="eso-env""#));
    assert!(text.contains(r#"slo_threshold_seconds{probe="eso-env",stage="eso_sync"} 10.0"#));
    for n in 0..40 {
        let mut o = outcome(&probe, n);
        o.sync_trigger = Some(SyncTrigger::Forced);
        m.record_outcome(&probe, &o);
    }
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), expected_series(&config));
    // n % 4 == 0 succeeds (10 of 40).
    assert!(
        text.contains(
            r#"secret_canary_forced_end_to_end_duration_seconds_count{probe="eso-env"} 10"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"secret_canary_end_to_end_duration_seconds_count{probe="bank-vaults"} 0"#),
        "{text}"
    );
}

#[test]
fn buckets_come_from_the_deadline_and_the_slo() {
    let config = config();
    let eso = &config.probes[0];
    // Default deadline 300 s, no SLO on store_write: the defaults below 300 s and 300 s.
    assert_eq!(
        duration_buckets(eso, Stage::StoreWrite),
        [0.05, 0.25, 1.0, 5.0, 30.0, 300.0]
    );
    // eso_sync has a 10 s SLO.
    assert_eq!(
        duration_buckets(eso, Stage::EsoSync),
        [0.05, 0.25, 1.0, 5.0, 10.0, 30.0, 300.0]
    );
    // end_to_end's 60 s SLO.
    assert_eq!(
        duration_buckets(eso, Stage::EndToEnd),
        [0.05, 0.25, 1.0, 5.0, 30.0, 60.0, 300.0]
    );
    // A 40 s deadline: 30 s is too close to it to add resolution.
    let mut short = eso.clone();
    short.deadline = Some(Duration::from_secs(40));
    assert_eq!(
        duration_buckets(&short, Stage::StoreWrite),
        [0.05, 0.25, 1.0, 5.0, 40.0]
    );
    for p in &config.probes {
        for stage in p.stages().into_iter().chain([Stage::EndToEnd]) {
            let b = duration_buckets(p, stage);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            if let Some(t) = p.slo(stage) {
                assert!(b.contains(&t.as_secs_f64()), "{stage}: {b:?}");
            }
        }
    }
}

const VOLUME_PROBE: &str = r#"
probes:
  - name: eso-volume
    interval: 30s
    slo: {end_to_end: 120s}
    store: {address: "http://127.0.0.1:8200", path: canary/eso-volume, auth: {token: {env: VAULT_TOKEN}}}
    chain:
      namespace: canary
      external_secret: canary-volume
      secret: {name: canary-volume}
      canary: {selector: app=canary-volume, source: file}
"#;

/// One more probe's series and bytes in an exposition that has one like it
/// already (the families' HELP and TYPE lines are paid once, not per
/// probe): OpenMetrics, after 200 runs of every outcome with UUID-long run
/// ids, so every bucket a stage reaches holds an exemplar.
fn footprint(probe: &ProbeConfig) -> (usize, usize) {
    let exposition = |copies: usize| {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        for c in 0..copies {
            let mut p = probe.clone();
            p.name = format!("{}-{c}", probe.name);
            m.init_probe(&p);
            for n in 0..200 {
                let mut o = outcome(&p, n);
                o.run_id = format!("{n:08}-0000-4000-8000-000000000000");
                m.record_outcome(&p, &o);
            }
        }
        encode_openmetrics(&registry).unwrap()
    };
    let (one, two) = (exposition(1), exposition(2));
    (
        count_samples(&two) - count_samples(&one),
        two.len() - one.len(),
    )
}

/// The probes of the lab's reference scenario (`lab/scenarios/reference.yaml`).
fn reference_probes() -> Config {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/scenarios/reference.yaml");
    let scenario: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let prober = scenario["prober"]
        .as_str()
        .unwrap()
        .replace("${DIR}", "/tmp/lab")
        .replace("${VAULT_ADDR}", "http://127.0.0.1:8200");
    Config::from_yaml(&prober, path).unwrap()
}

#[test]
fn a_probe_is_at_most_100_series_and_10_kib() {
    let reference = reference_probes();
    assert_eq!(reference.probes.len(), 3);
    let volume = Config::from_yaml(VOLUME_PROBE, "v.yaml").unwrap();
    let mut forced = reference.probes[1].clone();
    forced.chain.force_sync = true;
    let config = config();
    // Every probe of the reference scenario (ESO + Reloader + env, the
    // six-stage chain with two SLOs, is the largest), one forcing ESO's
    // sync, and the unit tests' own. `stage_blocked` adds one series while
    // a run is blocked: the budget holds with it.
    let probes = reference
        .probes
        .iter()
        .chain([&forced, &volume.probes[0]])
        .chain(&config.probes);
    for probe in probes {
        let (series, bytes) = footprint(probe);
        assert_eq!(series, series_of_probe(probe), "{}", probe.name);
        println!("{}: {series} series, {bytes} bytes", probe.name);
        assert!(series < 100, "{}: {series} series", probe.name);
        assert!(bytes <= 10 * 1024, "{}: {bytes} bytes", probe.name);
    }
}

#[test]
fn every_mutation_moves_the_generation() {
    let config = config();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    let g = m.generation();
    let probe = &config.probes[0];
    let mut last = g.get();
    let mut moved = |what: &str| {
        let now = g.get();
        assert!(now > last, "{what} did not bump the generation");
        last = now;
    };
    m.run_started(&probe.name);
    moved("run_started");
    m.record_outcome(probe, &outcome(probe, 0));
    moved("record_outcome");
    m.record_skipped(&probe.name);
    moved("record_skipped");
    m.record_missed_ticks(&probe.name, 2);
    moved("record_missed_ticks");
    m.observe_schedule_jitter(Duration::from_millis(1));
    moved("observe_schedule_jitter");
    m.leader_gauge().set(1);
    moved("leader");
    m.set_blocked(&probe.name, Some((Stage::EsoSync, Reason::SyncError)));
    moved("set_blocked");
    m.set_blocked(&probe.name, None);
    moved("set_blocked(None)");
    m.record_change_log_overflows(&probe.name, 1);
    moved("record_change_log_overflows");
    let mut skipped = outcome(probe, 1);
    skipped.result = RunResult::Skipped;
    m.record_outcome(probe, &skipped);
    moved("record_outcome(skipped: watcher_failing)");
}

#[test]
fn a_success_sets_last_run_gauges_and_a_prober_error_is_told_apart() {
    let config = config();
    let probe = &config.probes[0];
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    let ok = outcome(probe, 0);
    m.record_outcome(probe, &ok);
    let mut bad = outcome(probe, 1);
    bad.failure = Some(Failure {
        stage: Stage::StoreWrite,
        reason: Reason::ProberError,
    });
    bad.result = RunResult::Failure;
    m.record_outcome(probe, &bad);
    let text = encode_openmetrics(&registry).unwrap();
    assert!(text.contains(r#"secret_canary_last_run_success{probe="eso-env"} 0"#));
    assert!(text.contains(r#"secret_canary_prober_errors_total{probe="eso-env"} 1"#));
    assert!(text.contains(
            r#"secret_canary_stage_failures_total{probe="eso-env",stage="store_write",reason="prober_error"} 1"#
        ));
    assert!(text.contains(r#"secret_canary_runs_total{probe="eso-env",result="success"} 1"#));
    let prefix = r#"secret_canary_last_success_timestamp_seconds{probe="eso-env"} "#;
    let ts: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap()
        .parse()
        .unwrap();
    assert!((ts - epoch_seconds(ok.finished_at)).abs() < 1e-3, "{ts}");
}

#[test]
fn prometheus_text_has_no_exemplars() {
    let config = config();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    m.record_outcome(&config.probes[0], &outcome(&config.probes[0], 0));
    let text = encode_prometheus_text(&registry).unwrap();
    assert!(!text.contains("# {"));
    assert!(!text.contains("# EOF"));
    assert_eq!(count_samples(&text), expected_series(&config));
}

#[test]
fn a_blocked_stage_and_rare_counters_exist_only_once_they_occur() {
    let config = config();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), expected_series(&config), "{text}");
    assert!(!text.contains("secret_canary_stage_blocked{"), "{text}");
    let blocked =
        r#"secret_canary_stage_blocked{probe="eso-env",stage="eso_sync",reason="sync_error"} 1"#;
    m.set_blocked("eso-env", Some((Stage::EsoSync, Reason::SyncError)));
    let text = encode_openmetrics(&registry).unwrap();
    assert!(text.contains(blocked), "{text}");
    assert_eq!(count_samples(&text), expected_series(&config) + 1);
    m.set_blocked("eso-env", Some((Stage::Rollout, Reason::RolloutStuck)));
    let text = encode_openmetrics(&registry).unwrap();
    assert!(!text.contains(r#"stage_blocked{probe="eso-env",stage="eso_sync""#));
    assert!(text.contains(
        r#"secret_canary_stage_blocked{probe="eso-env",stage="rollout",reason="rollout_stuck"} 1"#
    ));
    // One series per probe at most, and none once the run is over.
    assert_eq!(count_samples(&text), expected_series(&config) + 1);
    m.set_blocked("eso-env", None);
    let text = encode_openmetrics(&registry).unwrap();
    assert!(!text.contains("secret_canary_stage_blocked{"), "{text}");
    assert_eq!(count_samples(&text), expected_series(&config));
    m.record_skipped("eso-env");
    let mut skipped = outcome(&config.probes[0], 0);
    skipped.result = RunResult::Skipped;
    m.record_outcome(&config.probes[0], &skipped);
    m.record_change_log_overflows("eso-env", 2);
    let mut aborted = outcome(&config.probes[0], 0);
    aborted.result = RunResult::Aborted;
    m.record_outcome(&config.probes[0], &aborted);
    assert_eq!(m.skipped_for("eso-env", SkipReason::RunInProgress), 1);
    assert_eq!(m.skipped_for("eso-env", SkipReason::WatcherFailing), 1);
    let text = encode_openmetrics(&registry).unwrap();
    for needle in [
        r#"secret_canary_change_log_overflows_total{probe="eso-env"} 2"#,
        r#"secret_canary_skipped_runs_total{probe="eso-env",reason="run_in_progress"} 1"#,
        r#"secret_canary_skipped_runs_total{probe="eso-env",reason="watcher_failing"} 1"#,
        r#"secret_canary_runs_total{probe="eso-env",result="aborted"} 1"#,
        r#"secret_canary_runs_total{probe="eso-env",result="skipped"} 2"#,
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    assert_eq!(count_samples(&text), expected_series(&config) + 4);
}

#[test]
fn every_rare_series_at_once_is_max_series() {
    let config = reference_probes();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    for probe in &config.probes {
        let name = probe.name.as_str();
        for stage in probe.stages() {
            for &reason in reasons(stage) {
                let mut o = outcome(probe, 1);
                o.result = RunResult::Failure;
                o.failure = Some(Failure { stage, reason });
                m.record_outcome(probe, &o);
            }
        }
        let mut o = outcome(probe, 0);
        o.result = RunResult::Aborted;
        m.record_outcome(probe, &o);
        o.result = RunResult::Skipped;
        m.record_outcome(probe, &o);
        m.record_skipped(name);
        m.record_change_log_overflows(name, 1);
        m.set_blocked(name, Some((Stage::CanaryObserve, Reason::ValueMismatch)));
    }
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), max_series(&config), "{text}");
    let env = &config.probes[0];
    assert_eq!(max_series_of_probe(env), 113, "{}", env.name);
}

/// After any sequence of changes (runs ending at random across probes,
/// natural and forced, skips, blocks, jitter, the leader flag), the
/// exposition concatenated from per-probe chunks is byte for byte the
/// whole registry's encoding, in both formats, and a scrape re-encodes
/// only the probes that changed.
#[test]
fn chunked_equals_whole() {
    use super::chunks::{ChunkedExposition, Format};
    use rand::{Rng, SeedableRng};

    let mut config = reference_probes();
    config
        .probes
        .extend(config.probes.clone().into_iter().map(|mut p| {
            p.name = format!("{}-forced", p.name);
            p.chain.force_sync = true;
            p
        }));
    config.probes.extend(self::config().probes);
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    let om = ChunkedExposition::new(&m, Format::OpenMetrics);
    let text = ChunkedExposition::new(&m, Format::PrometheusText);
    let check = |step: usize| {
        let whole_om = encode_openmetrics(&registry).unwrap();
        let whole_text = encode_prometheus_text(&registry).unwrap();
        assert_eq!(
            std::str::from_utf8(&om.encode().unwrap().to_bytes()).unwrap(),
            whole_om,
            "OpenMetrics, step {step}"
        );
        assert_eq!(om.encode_whole().unwrap(), whole_om);
        assert_eq!(
            std::str::from_utf8(&text.encode().unwrap().to_bytes()).unwrap(),
            whole_text,
            "text 0.0.4, step {step}"
        );
    };
    check(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let gauge = m.leader_gauge();
    for step in 1..400 {
        let p = &config.probes[rng.random_range(0..config.probes.len())];
        match rng.random_range(0..10) {
            0..=4 => {
                let mut o = outcome(p, rng.random_range(0..50));
                if rng.random_ratio(1, 20) {
                    o.result = RunResult::Aborted;
                    o.failure = None;
                }
                m.run_started(&p.name);
                m.record_outcome(p, &o);
            }
            5 => m.record_skipped(&p.name),
            6 => {
                let stage = p.stages()[rng.random_range(1..p.stages().len())];
                let reasons = blocked_reasons(stage);
                let blocked = (!reasons.is_empty() && rng.random_bool(0.6))
                    .then(|| (stage, reasons[rng.random_range(0..reasons.len())]));
                m.set_blocked(&p.name, blocked);
            }
            7 => m.observe_schedule_jitter(Duration::from_micros(rng.random_range(0..50_000))),
            8 => m.record_change_log_overflows(&p.name, rng.random_range(0..2)),
            _ => {
                m.record_missed_ticks(&p.name, 1);
                gauge.set(rng.random_range(0..2));
            }
        }
        // Sometimes several changes between scrapes.
        if rng.random_ratio(2, 3) {
            check(step);
        }
    }
    check(400);

    // A run's end re-encodes that probe's part alone; nothing changed, nothing.
    let before = om.parts_encoded();
    let p = &config.probes[1];
    m.run_started(&p.name);
    m.record_outcome(p, &outcome(p, 3));
    check(401);
    assert_eq!(om.parts_encoded(), before + 1);
    check(402);
    assert_eq!(om.parts_encoded(), before + 1);
    m.observe_schedule_jitter(Duration::from_millis(2));
    check(403);
    assert_eq!(om.parts_encoded(), before + 2);
}
