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
        result: if n % 13 == 12 {
            RunResult::Aborted
        } else if failure.is_some() {
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
        r#"secret_canary_last_stage_duration_seconds{probe="eso-env",stage="end_to_end"} NaN"#,
        r#"secret_canary_build_info{version=""#,
        "# TYPE secret_canary_stage_duration_seconds histogram",
        "# UNIT secret_canary_stage_duration_seconds seconds",
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    // The Bank-Vaults chain has no ESO stages.
    assert!(!text.contains(r#"probe="bank-vaults",stage="eso_sync""#));
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
    assert_eq!(count_samples(&text), expected_series(&config));
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
    // A probe that forces has no natural histograms, last-run durations or breaches.
    assert!(!text.contains(r#"secret_canary_end_to_end_duration_seconds_count{probe="eso-env"}"#));
    assert!(!text.contains(r#"last_stage_duration_seconds{probe="eso-env""#));
    assert!(!text.contains(r#"slo_breaches_total{probe="eso-env""#));
    assert!(text.contains(r#"slo_threshold_seconds{probe="eso-env",stage="eso_sync"} 10.0"#));
    for n in 0..40 {
        let mut o = outcome(&probe, n);
        o.sync_trigger = Some(SyncTrigger::Forced);
        m.record_outcome(&probe, &o);
    }
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), expected_series(&config));
    // n % 4 == 0 succeeds (10 of 40), but n = 12 is aborted.
    assert!(
        text.contains(
            r#"secret_canary_forced_end_to_end_duration_seconds_count{probe="eso-env"} 9"#
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
        [0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 300.0]
    );
    // eso_sync has a 10 s SLO.
    assert_eq!(
        duration_buckets(eso, Stage::EsoSync),
        [0.01, 0.05, 0.25, 1.0, 5.0, 10.0, 30.0, 300.0]
    );
    // end_to_end's 60 s SLO.
    assert_eq!(
        duration_buckets(eso, Stage::EndToEnd),
        [0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 60.0, 300.0]
    );
    // A 40 s deadline: 30 s is too close to it to add resolution.
    let mut short = eso.clone();
    short.deadline = Some(Duration::from_secs(40));
    assert_eq!(
        duration_buckets(&short, Stage::StoreWrite),
        [0.01, 0.05, 0.25, 1.0, 5.0, 40.0]
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

#[test]
fn a_probe_is_at_most_120_series_and_12_kib() {
    let volume = Config::from_yaml(VOLUME_PROBE, "v.yaml").unwrap();
    let mut forced = volume.probes[0].clone();
    forced.chain.force_sync = true;
    let config = config();
    // Includes a run's blocking signals (`stage_blocked`, one series per
    // stage and reason the cluster can report), skip reasons and
    // change-log overflows.
    for (probe, max_series, max_bytes) in [
        // ESO + Secret volume, as in the benchmark (natural and forced).
        (&volume.probes[0], 120, 12 * 1024),
        (&forced, 120, 12 * 1024),
        // Bank-Vaults restart chain.
        (&config.probes[1], 120, 12 * 1024),
        // The six-stage ESO + Reloader chain with two SLOs is the largest.
        (&config.probes[0], 160, 16 * 1024),
    ] {
        let (series, bytes) = footprint(probe);
        assert_eq!(series, series_of_probe(probe), "{}", probe.name);
        println!("{}: {series} series, {bytes} bytes", probe.name);
        assert!(series <= max_series, "{}: {series} series", probe.name);
        assert!(bytes <= max_bytes, "{}: {bytes} bytes", probe.name);
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
fn blocked_stages_and_skip_reasons_are_pre_created_set_and_cleared() {
    let config = config();
    let mut registry = Registry::default();
    let m = Metrics::for_config(&mut registry, &config);
    let text = encode_openmetrics(&registry).unwrap();
    assert_eq!(count_samples(&text), expected_series(&config), "{text}");
    for needle in [
        r#"secret_canary_stage_blocked{probe="eso-env",stage="eso_sync",reason="sync_error"} 0"#,
        r#"secret_canary_stage_blocked{probe="bank-vaults",stage="canary_observe",reason="unresolved_reference"} 0"#,
        r#"secret_canary_skipped_runs_total{probe="eso-env",reason="run_in_progress"} 0"#,
        r#"secret_canary_skipped_runs_total{probe="eso-env",reason="watcher_failing"} 0"#,
        r#"secret_canary_change_log_overflows_total{probe="eso-env"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle}\n{text}");
    }
    assert!(!text.contains(r#"stage_blocked{probe="eso-env",stage="eso_sync",reason="timeout"}"#));
    let blocked =
        r#"secret_canary_stage_blocked{probe="eso-env",stage="eso_sync",reason="sync_error"} 1"#;
    m.set_blocked("eso-env", Some((Stage::EsoSync, Reason::SyncError)));
    assert!(encode_openmetrics(&registry).unwrap().contains(blocked));
    m.set_blocked("eso-env", Some((Stage::Rollout, Reason::RolloutStuck)));
    let text = encode_openmetrics(&registry).unwrap();
    assert!(!text.contains(blocked));
    assert!(text.contains(
        r#"secret_canary_stage_blocked{probe="eso-env",stage="rollout",reason="rollout_stuck"} 1"#
    ));
    m.set_blocked("eso-env", None);
    let text = encode_openmetrics(&registry).unwrap();
    assert!(!text.contains(r#"stage="rollout",reason="rollout_stuck"} 1"#));
    m.record_skipped("eso-env");
    let mut skipped = outcome(&config.probes[0], 0);
    skipped.result = RunResult::Skipped;
    m.record_outcome(&config.probes[0], &skipped);
    m.record_change_log_overflows("eso-env", 2);
    assert_eq!(m.skipped_for("eso-env", SkipReason::RunInProgress), 1);
    assert_eq!(m.skipped_for("eso-env", SkipReason::WatcherFailing), 1);
    let text = encode_openmetrics(&registry).unwrap();
    assert!(text.contains(r#"secret_canary_change_log_overflows_total{probe="eso-env"} 2"#));
    assert_eq!(count_samples(&text), expected_series(&config));
}
