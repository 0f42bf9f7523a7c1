//! The Grafana dashboards in `dashboards/`: valid JSON in the current schema
//! with the datasource, `cluster` and `probe` variables, the panels the SRE
//! needs, and every panel's PromQL parsed by the real promtool (each
//! expression, with Grafana's variables substituted, becomes a recording rule
//! in a temporary rule file for `promtool check rules`). Expression
//! extraction lives in `tests/ops` so a live query runner reuses it.

mod ops;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value as Json;

fn dashboards() -> Vec<(String, Json)> {
    ops::dashboard_files()
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, ops::json(&p))
        })
        .collect()
}

#[test]
fn dashboards_use_a_current_schema_and_have_the_expected_variables() {
    for (name, d) in dashboards() {
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!(schema >= 39, "{name}: schemaVersion {schema} < 39");
        assert!(
            d["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty() && u.len() <= 40),
            "{name}: uid"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: title"
        );
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let var = |n: &str| {
            vars.iter()
                .find(|v| v["name"] == n)
                .unwrap_or_else(|| panic!("{name}: no variable {n}"))
        };
        let ds = var("datasource");
        assert_eq!(ds["type"], "datasource", "{name}");
        assert_eq!(ds["query"], "prometheus", "{name}");
        for v in ["cluster", "namespace", "job", "probe"] {
            let v = var(v);
            assert_eq!(v["type"], "query", "{name}: {v}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}: {v}");
            // `.*` so a single cluster without a `cluster` label still matches.
            assert_eq!(v["allValue"], ".*", "{name}: {v}");
            assert_eq!(v["includeAll"], true, "{name}: {v}");
        }
    }
}

#[test]
fn panels_are_well_formed_and_query_through_the_datasource_variable() {
    for (name, d) in dashboards() {
        let mut ids = BTreeSet::new();
        for p in ops::panels(&d) {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: panel {title} has no id"));
            assert!(ids.insert(id), "{name}: duplicate panel id {id}");
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{name}: panel {title} is wider than the grid");
            if p["type"] == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{name}: panel {id} has no title");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: {title}");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("{name}: {title} has no query"));
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(
                    expr.contains("$cluster"),
                    "{name}: {title}: no $cluster filter: {expr}"
                );
                // Process-wide series (no probe label): build info and the
                // scheduler's jitter.
                let process_wide = ["secret_canary_build_info", "secret_canary_schedule_jitter"];
                if !process_wide.iter().any(|m| expr.contains(m)) {
                    assert!(
                        expr.contains("$probe"),
                        "{name}: {title}: no $probe filter: {expr}"
                    );
                }
            }
        }
    }
}

#[test]
fn dashboards_have_the_panels_an_sre_needs() {
    let mut titles = Vec::new();
    let mut types = BTreeSet::new();
    for (_, d) in dashboards() {
        for p in ops::panels(&d) {
            titles.push(p["title"].as_str().unwrap_or_default().to_lowercase());
            types.insert(p["type"].as_str().unwrap_or_default().to_string());
        }
    }
    for needle in [
        "slo compliance",
        "error budget remaining",
        "burn rate",
        "stage latency p50",
        "stage latency p90",
        "stage latency p99",
        "heatmap",
        "failures by stage and reason",
        "age of last success",
        "runs in progress",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needle)),
            "no panel about {needle:?}; panels: {titles:?}"
        );
    }
    assert!(types.contains("heatmap"), "no heatmap panel");
}

/// Values of a dashboard's constant variables (e.g. `slo_objective`).
fn constants(d: &Json) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "constant")
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["query"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_panel_query_parses_with_promtool() {
    let mut queries = Vec::new();
    for (name, d) in dashboards() {
        let consts = constants(&d);
        for mut q in ops::dashboard_queries(&name, &d) {
            for (k, v) in &consts {
                q.expr = q.expr.replace(&format!("${k}"), v);
            }
            queries.push(q);
        }
    }
    assert!(queries.len() >= 20, "only {} queries found", queries.len());
    let vars = ops::Vars::default();
    for q in &queries {
        let s = ops::substitute(&q.expr, &vars);
        assert!(
            !s.contains('$'),
            "{} / {}: unsubstituted variable in {s}",
            q.dashboard,
            q.panel
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.rules.yml");
    std::fs::write(&file, ops::recording_rules_file(&queries, &vars)).unwrap();
    let out = ops::run(
        Command::new(ops::promtool())
            .arg("check")
            .arg("rules")
            .arg(&file),
    );
    if !out.status.success() {
        let index: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                format!(
                    "  dashboard_query:{i} = {} / {} / {}",
                    q.dashboard, q.panel, q.ref_id
                )
            })
            .collect();
        panic!(
            "promtool rejected a dashboard query:\n{}{}\nqueries:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            index.join("\n")
        );
    }
}

#[test]
fn dashboards_only_use_metrics_the_prober_exports_or_the_rules_record() {
    let known = ops::known_series();
    for (name, d) in dashboards() {
        for q in ops::dashboard_queries(&name, &d) {
            for m in ops::metric_names(&q.expr) {
                assert!(
                    known.contains(&m),
                    "{name} / {}: unknown series {m}",
                    q.panel
                );
            }
        }
    }
}

#[test]
fn variable_substitution_covers_grafana_forms() {
    let v = ops::Vars {
        probe: "eso-env".into(),
        ..ops::Vars::default()
    };
    assert_eq!(
        ops::substitute(
            r#"x{probe=~"${probe:regex}", c=~"$cluster"}[$__rate_interval]"#,
            &v
        ),
        r#"x{probe=~"eso-env", c=~".*"}[5m]"#
    );
    assert_eq!(
        ops::label_values_selector(r#"label_values(up{a=~"b,c"}, probe)"#).as_deref(),
        Some(r#"up{a=~"b,c"}"#)
    );
}

/// The labels that tell two probers' probes apart.
const IDENTITY: [&str; 3] = ["cluster", "namespace", "job"];

#[test]
fn every_query_filters_and_aggregates_by_cluster_namespace_and_job() {
    for (name, d) in dashboards() {
        for q in ops::dashboard_queries(&name, &d) {
            if q.panel == "variable cluster" {
                continue;
            }
            let at = format!("{name} / {} [{}]", q.panel, q.ref_id);
            // Every selector of a secret-canary series carries the variables.
            for (i, _) in q.expr.match_indices("secret_canary_") {
                let rest = &q.expr[i..];
                let name_end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                if i > 0 && q.expr[..i].ends_with(':') {
                    continue; // inside a recorded name (probe:secret_canary_...)
                }
                let sel = &rest[name_end..];
                assert!(
                    sel.starts_with('{'),
                    "{at}: a selector without labels: {}",
                    &rest[..name_end]
                );
                let sel = &sel[..sel.find('}').unwrap()];
                let need: &[&str] = match q.panel.as_str() {
                    "variable namespace" => &["cluster"],
                    "variable job" => &["cluster", "namespace"],
                    _ => &IDENTITY,
                };
                for l in need {
                    assert!(
                        sel.contains(&format!("{l}=~\"${l}\"")),
                        "{at}: {l} not filtered in {sel}"
                    );
                }
            }
            // Every aggregation keeps them (histogram buckets summed by `le`
            // for one heatmap are the exception).
            for (i, _) in q.expr.match_indices(" by (") {
                let labels = &q.expr[i + 5..];
                let labels = &labels[..labels.find(')').unwrap()];
                if labels == "le" {
                    continue;
                }
                for l in IDENTITY {
                    assert!(
                        labels.split(", ").any(|x| x == l),
                        "{at}: by ({labels}) drops {l}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_error_budget_panel_says_what_window_it_covers() {
    for (name, d) in dashboards() {
        let budget: Vec<&Json> = ops::panels(&d)
            .into_iter()
            .filter(|p| {
                p["title"]
                    .as_str()
                    .is_some_and(|t| t.contains("Error budget remaining"))
            })
            .collect();
        assert_eq!(budget.len(), 1, "{name}");
        let p = budget[0];
        let title = p["title"].as_str().unwrap();
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        // The window in the title is the one the query uses.
        assert!(title.contains("30-day"), "{title}");
        assert!(exprs[0].contains("[30d]"), "{}", exprs[0]);
        // And a second query says how much of it the data covers.
        assert!(
            exprs
                .iter()
                .any(|e| e.contains("count_over_time(") && e.contains("[30d]")),
            "{exprs:?}"
        );
        assert!(p["description"].as_str().unwrap().contains("data covers"));
    }
}
