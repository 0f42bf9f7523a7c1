//! Shared helpers of the operations-kit tests (`tests/alerts.rs`,
//! `tests/dashboards.rs`, `tests/chart.rs`): finding the real tools, reading
//! the rule files and dashboards, and extracting every PromQL expression a
//! dashboard runs so both the static check (promtool) and a live query
//! runner (against a real Prometheus) use the same extraction.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The repository root (the product crate's manifest directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Find an executable: `$ENV_VAR` if set, else `PATH`, else the listed
/// fallbacks. Panics with an actionable message when it is missing: these
/// tests check artifacts with the real tools and must not pass silently.
pub fn find_tool(name: &str, env_var: &str, fallbacks: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if let Some(p) = from_path {
        return p;
    }
    for f in fallbacks {
        let p = root().join(f);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} is missing: these tests run the real tool. Install it with \
         scripts/setup.sh (Debian package `prometheus` for promtool), or set {env_var}=/path/to/{name}"
    );
}

/// The real promtool.
pub fn promtool() -> PathBuf {
    find_tool("promtool", "PROMTOOL", &[])
}

/// The virtualenv Python that has helm-sdkpy (scripts/setup.sh installs it).
pub fn venv_python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (it installs helm-sdkpy into ./.venv)",
        p.display()
    );
    p
}

/// Run a command; the output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// Run a command and panic with its stdout and stderr unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Files in `dir` (relative to the root) whose names end with `suffix`, sorted.
pub fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

/// The Prometheus rule files (sources of the chart's PrometheusRule).
pub fn rule_files() -> Vec<PathBuf> {
    let f = files("alerts", ".rules.yml");
    assert!(!f.is_empty(), "no alerts/*.rules.yml");
    f
}

/// The promtool unit-test files.
pub fn rule_test_files() -> Vec<PathBuf> {
    let f = files("alerts/tests", ".yml");
    assert!(!f.is_empty(), "no alerts/tests/*.yml");
    f
}

/// The Grafana dashboards (sources of the chart's dashboard ConfigMap).
pub fn dashboard_files() -> Vec<PathBuf> {
    let f = files("dashboards", ".json");
    assert!(!f.is_empty(), "no dashboards/*.json");
    f
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: &Path) -> Json {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One rule (alerting or recording) of a rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    pub file: PathBuf,
    pub group: String,
    /// `Some` for alerting rules.
    pub alert: Option<String>,
    /// `Some` for recording rules.
    pub record: Option<String>,
    pub expr: String,
    pub for_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

fn string_map(v: Option<&Yaml>) -> BTreeMap<String, String> {
    v.and_then(Yaml::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Yaml::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap_or_default().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every rule of every rule file.
pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for file in rule_files() {
        let doc = yaml(&file);
        let groups = doc["groups"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{}: no groups", file.display()));
        for g in groups {
            let group = g["name"].as_str().unwrap_or_default().to_string();
            for r in g["rules"].as_sequence().into_iter().flatten() {
                out.push(Rule {
                    file: file.clone(),
                    group: group.clone(),
                    alert: r["alert"].as_str().map(str::to_string),
                    record: r["record"].as_str().map(str::to_string),
                    expr: r["expr"].as_str().unwrap_or_default().to_string(),
                    for_: r["for"].as_str().map(str::to_string),
                    labels: string_map(r.get("labels")),
                    annotations: string_map(r.get("annotations")),
                });
            }
        }
    }
    out
}

/// Every alerting rule.
pub fn alerts() -> Vec<Rule> {
    rules().into_iter().filter(|r| r.alert.is_some()).collect()
}

/// One PromQL expression a dashboard runs.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The dashboard's file name.
    pub dashboard: String,
    /// Panel title, or `variable NAME` for a template variable's query.
    pub panel: String,
    /// The target's refId (`A`, `B`, ...).
    pub ref_id: String,
    /// The expression as written, with Grafana variables.
    pub expr: String,
}

/// Every panel in a dashboard, rows' nested panels included.
pub fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression of a dashboard: each panel target's `expr`, and
/// the metric selector inside each `label_values(SELECTOR, label)` variable
/// query (the rest of a variable query is Grafana syntax, not PromQL).
pub fn dashboard_queries(name: &str, dashboard: &Json) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(PanelQuery {
                    dashboard: name.to_string(),
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                    expr: expr.to_string(),
                });
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = match &v["query"] {
            Json::String(s) => s.clone(),
            Json::Object(o) => o
                .get("query")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => continue,
        };
        if let Some(selector) = label_values_selector(&q) {
            out.push(PanelQuery {
                dashboard: name.to_string(),
                panel: format!("variable {}", v["name"].as_str().unwrap_or("?")),
                ref_id: "query".into(),
                expr: selector,
            });
        }
    }
    out
}

/// `label_values(up{job="x"}, instance)` -> `up{job="x"}`.
pub fn label_values_selector(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    // The label is after the last comma outside braces.
    let mut depth = 0i32;
    let mut split = None;
    for (i, c) in inner.char_indices() {
        match c {
            '{' | '(' => depth += 1,
            '}' | ')' => depth -= 1,
            ',' if depth == 0 => split = Some(i),
            _ => {}
        }
    }
    split.map(|i| inner[..i].trim().to_string())
}

/// Values for Grafana's variables when an expression is evaluated outside
/// Grafana. A live runner passes the real probe and cluster.
#[derive(Debug, Clone)]
pub struct Vars {
    pub cluster: String,
    pub probe: String,
    pub stage: String,
    pub rate_interval: String,
    pub interval: String,
    pub range: String,
}

impl Default for Vars {
    /// Match-all regexes (the dashboards use `=~` for every variable).
    fn default() -> Self {
        Vars {
            cluster: ".*".into(),
            probe: ".*".into(),
            stage: ".*".into(),
            rate_interval: "5m".into(),
            interval: "1m".into(),
            range: "1d".into(),
        }
    }
}

/// Replace Grafana variables (`$x`, `${x}`, `${x:regex}`) with values.
pub fn substitute(expr: &str, vars: &Vars) -> String {
    let table: [(&str, &str); 6] = [
        ("__rate_interval", &vars.rate_interval),
        ("__interval", &vars.interval),
        ("__range", &vars.range),
        ("cluster", &vars.cluster),
        ("probe", &vars.probe),
        ("stage", &vars.stage),
    ];
    let mut out = expr.to_string();
    for (name, value) in table {
        for pattern in [
            format!("${{{name}:regex}}"),
            format!("${{{name}:pipe}}"),
            format!("${{{name}}}"),
            format!("${name}"),
        ] {
            out = out.replace(&pattern, value);
        }
    }
    out
}

/// A rule file with each expression as a recording rule, so that
/// `promtool check rules` parses every one of them.
pub fn recording_rules_file(queries: &[PanelQuery], vars: &Vars) -> String {
    let mut groups = Vec::new();
    let rules: Vec<Yaml> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("record".into(), format!("dashboard_query:{i}").into());
            m.insert("expr".into(), substitute(&q.expr, vars).into());
            Yaml::Mapping(m)
        })
        .collect();
    let mut g = serde_yaml::Mapping::new();
    g.insert("name".into(), "dashboard-queries".into());
    g.insert("rules".into(), Yaml::Sequence(rules));
    groups.push(Yaml::Mapping(g));
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("groups".into(), Yaml::Sequence(groups));
    serde_yaml::to_string(&Yaml::Mapping(doc)).unwrap()
}

/// Anchors of a Markdown file, as GitHub makes them from headings (lower
/// case, punctuation dropped, spaces to dashes), plus explicit `<a id=..>`.
pub fn markdown_anchors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            let h = h.trim_start_matches('#').trim();
            let slug: String = h
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            out.push(slug);
        }
        let mut rest = line;
        while let Some(i) = rest.find("<a id=\"") {
            let after = &rest[i + 7..];
            if let Some(end) = after.find('"') {
                out.push(after[..end].to_string());
                rest = &after[end..];
            } else {
                break;
            }
        }
    }
    out
}

/// Every series name the prober exports (from the family table in
/// src/metrics/mod.rs's module docs, histograms with their `_bucket`, `_count`
/// and `_sum`) plus every series the rule files record.
pub fn known_series() -> BTreeSet<String> {
    let src = read(&root().join("src/metrics/mod.rs"));
    let mut out = BTreeSet::new();
    for line in src.lines() {
        let Some(row) = line.strip_prefix("//! | `") else {
            continue;
        };
        let Some((name, rest)) = row.split_once('`') else {
            continue;
        };
        let kind = rest
            .trim_start_matches([' ', '|'])
            .split(' ')
            .next()
            .unwrap_or("");
        out.insert(name.to_string());
        if kind == "histogram" {
            for s in ["_bucket", "_count", "_sum"] {
                out.insert(format!("{name}{s}"));
            }
        }
    }
    assert!(
        out.contains("secret_canary_runs_total"),
        "could not read the metric family table of src/metrics/mod.rs"
    );
    out.extend(rules().into_iter().filter_map(|r| r.record));
    out
}

/// The secret-canary series names an expression reads (identifiers that
/// contain `secret_canary`; label values never do).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.contains("secret_canary"))
        .map(str::to_string)
        .collect()
}
