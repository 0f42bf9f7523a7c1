//! The Prometheus rules in `alerts/` checked by the real promtool: syntax
//! (`promtool check rules`), unit tests (`promtool test rules`), and the
//! conventions promtool cannot see: every alert has a test case that fires
//! it and one where it stays quiet, its annotations and labels, and a
//! `runbook_url` whose anchor exists in docs/runbooks.md.

mod ops;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

#[test]
fn rule_files_pass_promtool_check_rules() {
    let out = ops::run_ok(
        Command::new(ops::promtool())
            .arg("check")
            .arg("rules")
            .args(ops::rule_files()),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_unit_tests_pass() {
    // promtool resolves `rule_files` relative to each test file.
    let out = ops::run(
        Command::new(ops::promtool())
            .arg("test")
            .arg("rules")
            .args(ops::rule_test_files()),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules failed:\n{text}");
    assert!(!text.contains("FAILED"), "{text}");
}

/// Per alert name: (test cases expecting it to fire, cases expecting silence).
fn alert_test_cases() -> BTreeMap<String, (usize, usize)> {
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for file in ops::rule_test_files() {
        let doc = ops::yaml(&file);
        for test in doc["tests"].as_sequence().into_iter().flatten() {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = case["alertname"]
                    .as_str()
                    .unwrap_or_else(|| {
                        panic!("{}: alert_rule_test without alertname", file.display())
                    })
                    .to_string();
                let fires = case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|a| !a.is_empty());
                let entry = cases.entry(name).or_default();
                if fires {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
        }
    }
    cases
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let alerts: BTreeSet<String> = ops::alerts().into_iter().filter_map(|r| r.alert).collect();
    assert!(
        alerts.len() >= 9,
        "expected the full alert set, got {alerts:?}"
    );
    let cases = alert_test_cases();
    let mut problems = Vec::new();
    for a in &alerts {
        match cases.get(a) {
            None => problems.push(format!("{a}: no test case at all")),
            Some((0, _)) => problems.push(format!("{a}: no test case where it fires")),
            Some((_, 0)) => problems.push(format!("{a}: no test case where it stays quiet")),
            Some(_) => {}
        }
    }
    for tested in cases.keys() {
        if !alerts.contains(tested) {
            problems.push(format!(
                "{tested}: tested but not defined in alerts/*.rules.yml"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_summary_description_severity_team_and_a_runbook_that_exists() {
    let runbooks = ops::read(&ops::root().join("docs/runbooks.md"));
    let anchors: BTreeSet<String> = ops::markdown_anchors(&runbooks).into_iter().collect();
    let mut problems = Vec::new();
    for rule in ops::alerts() {
        let name = rule.alert.clone().unwrap();
        for key in ["summary", "description", "runbook_url"] {
            if rule
                .annotations
                .get(key)
                .is_none_or(|v| v.trim().is_empty())
            {
                problems.push(format!("{name}: annotation {key} missing"));
            }
        }
        match rule.labels.get("severity").map(String::as_str) {
            Some("critical" | "warning" | "info") => {}
            other => problems.push(format!("{name}: severity label {other:?}")),
        }
        match rule.labels.get("team").map(String::as_str) {
            Some("secret-pipeline" | "secret-canary") => {}
            other => problems.push(format!("{name}: team label {other:?}")),
        }
        if let Some(url) = rule.annotations.get("runbook_url") {
            match url.split_once("docs/runbooks.md#") {
                None => problems.push(format!(
                    "{name}: runbook_url {url} does not point into docs/runbooks.md"
                )),
                Some((_, anchor)) if !anchors.contains(anchor) => problems.push(format!(
                    "{name}: runbook_url anchor #{anchor} is not a heading of docs/runbooks.md"
                )),
                Some((_, anchor)) if anchor != name.to_lowercase() => problems.push(format!(
                    "{name}: runbook_url anchor #{anchor} should be the alert's own section"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn prober_errors_page_the_prober_team_not_the_pipeline() {
    let alerts = ops::alerts();
    let team = |name: &str| {
        alerts
            .iter()
            .find(|r| r.alert.as_deref() == Some(name))
            .and_then(|r| r.labels.get("team").cloned())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(team("SecretCanaryProberErrors"), "secret-canary");
    assert_eq!(team("SecretCanaryProberAbsent"), "secret-canary");
    assert_eq!(team("SecretCanaryErrorBudgetBurnFast"), "secret-pipeline");
    // The SLI leaves the prober's own failures out of the pipeline's budget.
    let sli = ops::rules()
        .into_iter()
        .find(|r| {
            r.record.as_deref() == Some("probe:secret_canary_propagation_errors:ratio_rate1h")
        })
        .expect("SLI recording rule");
    assert!(
        sli.expr.contains("secret_canary_prober_errors_total"),
        "{}",
        sli.expr
    );
}

#[test]
fn burn_rate_windows_and_factors_are_the_documented_ones() {
    // The SRE-workbook table: (long, short, factor) per tier, as documented
    // in the rule file's header and docs/runbooks.md.
    let tiers = [
        ("SecretCanaryErrorBudgetBurnFast", "1h", "5m", "14.4"),
        ("SecretCanaryErrorBudgetBurnFast", "6h", "30m", "6"),
        ("SecretCanaryErrorBudgetBurnSlow", "1d", "2h", "3"),
        ("SecretCanaryErrorBudgetBurnSlow", "3d", "6h", "1"),
    ];
    let alerts = ops::alerts();
    let records: BTreeSet<String> = ops::rules().into_iter().filter_map(|r| r.record).collect();
    let runbooks = ops::read(&ops::root().join("docs/runbooks.md"));
    for (alert, long, short, factor) in tiers {
        let rule = alerts
            .iter()
            .find(|r| r.alert.as_deref() == Some(alert))
            .unwrap();
        for w in [long, short] {
            let series = format!("probe:secret_canary_propagation_errors:ratio_rate{w}");
            assert!(records.contains(&series), "no recording rule {series}");
            let term = format!("{series} > ({factor} * 0.01)");
            assert!(
                rule.expr.contains(&term),
                "{alert} lacks `{term}`:\n{}",
                rule.expr
            );
        }
        let row = format!("| {} | {} | {factor} |", human(long), human(short));
        assert!(
            runbooks.contains(&row),
            "docs/runbooks.md lacks the row `{row}`"
        );
    }
}

fn human(w: &str) -> String {
    let (n, unit) = w.split_at(w.len() - 1);
    format!("{n} {unit}")
}

#[test]
fn stage_quantiles_are_recorded_for_p50_p90_p99() {
    let records: BTreeSet<String> = ops::rules().into_iter().filter_map(|r| r.record).collect();
    for q in ["p50", "p90", "p99"] {
        for family in [
            "probe_stage:secret_canary_stage_duration_seconds",
            "probe:secret_canary_end_to_end_duration_seconds",
        ] {
            let name = format!("{family}:{q}_rate30m");
            assert!(records.contains(&name), "missing {name}");
        }
    }
}

#[test]
fn rules_only_use_metrics_the_prober_exports_or_the_rules_record() {
    let known = ops::known_series();
    for rule in ops::rules() {
        for m in ops::metric_names(&rule.expr) {
            let name = rule.alert.as_ref().or(rule.record.as_ref()).unwrap();
            assert!(known.contains(&m), "{name}: unknown series {m}");
        }
    }
}

/// Alert names in an inhibition rule's matchers: `alertname="A"` or
/// `alertname=~"A|B"`.
fn matcher_alerts(matchers: &serde_norway::Value) -> Vec<String> {
    matchers
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .filter_map(|m| {
            m.strip_prefix("alertname=~\"")
                .or_else(|| m.strip_prefix("alertname=\""))
        })
        .flat_map(|rest| {
            rest.trim_end_matches('"')
                .split('|')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn inhibition_rules_pass_amtool_and_make_one_page_per_outage() {
    let path = ops::root().join("alerts/alertmanager-inhibit.yml");
    let text = ops::read(&path);
    // amtool checks a whole configuration: a minimal route around the rules.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        format!("route:\n  receiver: x\nreceivers:\n  - name: x\n{text}"),
    )
    .unwrap();
    let amtool = ops::find_tool("amtool", "AMTOOL", &[]);
    let out = ops::run_ok(Command::new(amtool).arg("check-config").arg(&config));
    assert!(out.contains("SUCCESS"), "{out}");

    let doc = ops::yaml(&path);
    let alerts = ops::alerts();
    let names: BTreeSet<String> = alerts.iter().filter_map(|r| r.alert.clone()).collect();
    let mut held_by_page = BTreeSet::new();
    for rule in doc["inhibit_rules"].as_sequence().unwrap() {
        let sources = matcher_alerts(&rule["source_matchers"]);
        let targets = matcher_alerts(&rule["target_matchers"]);
        assert!(!sources.is_empty() && !targets.is_empty(), "{rule:?}");
        for a in sources.iter().chain(&targets) {
            assert!(names.contains(a), "inhibition names unknown alert {a}");
        }
        for s in &sources {
            assert!(!targets.contains(s), "{s} would inhibit itself");
        }
        // Only the same probe is held back.
        let equal: Vec<&str> = rule["equal"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(equal, ["cluster", "namespace", "job", "probe"], "{rule:?}");
        if sources == ["SecretCanaryProbeFailing"] {
            held_by_page.extend(targets);
        }
    }
    // The page holds back every other alert of the pipeline team about a
    // probe, and its `for:` is no longer than any of theirs, so it is sent
    // first; it keeps firing after recovery.
    let page = alerts
        .iter()
        .find(|r| r.alert.as_deref() == Some("SecretCanaryProbeFailing"))
        .expect("the page");
    assert_eq!(page.labels["severity"], "critical");
    let seconds = |d: &str| -> u64 {
        let (n, unit) = d.split_at(d.len() - 1);
        n.parse::<u64>().unwrap()
            * match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => panic!("{d}"),
            }
    };
    let page_for = seconds(page.for_.as_deref().unwrap());
    for a in &alerts {
        let name = a.alert.clone().unwrap();
        if name == "SecretCanaryProbeFailing" || a.labels["team"] != "secret-pipeline" {
            continue;
        }
        assert!(
            held_by_page.contains(&name),
            "the page does not hold back {name}"
        );
        assert!(
            seconds(a.for_.as_deref().unwrap_or("0s")) >= page_for,
            "{name} can fire before the page"
        );
    }
    let rules = ops::read(&ops::rule_files()[0]);
    assert!(
        rules.contains("keep_firing_for: 35m"),
        "the page outlasts the others' windows"
    );
}
