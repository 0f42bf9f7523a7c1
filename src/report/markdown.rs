//! The report as Markdown, for a pull-request comment or a CI step summary
//! (`$GITHUB_STEP_SUMMARY`): a verdict line, one summary row per probe, each
//! probe's stages with their SLO verdicts and timeline, and the comparison.

use std::fmt::Write as _;

use super::{
    axis, compare, end_to_end_seconds, secs, slo_text, slowest, status_text, timeline,
    verdict_text, Report,
};

/// Make text safe inside a table cell (no pipes, no line breaks, no HTML).
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace(['\r', '\n'], " ")
}

/// Render `report` as Markdown.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let n = report.probes.len();
    let failed = report.probes.iter().filter(|p| !p.passed).count();
    let regressed = report.comparison.as_ref().is_some_and(|c| c.regressed);
    let headline = match (failed, regressed) {
        (0, false) => format!("✅ all {n} probe(s) passed"),
        (0, true) => format!("❌ all {n} probe(s) passed, but a stage regressed"),
        (f, _) => format!("❌ {f} of {n} probe(s) failed"),
    };
    let _ = writeln!(out, "## secret-canary: {headline}\n");
    let _ = writeln!(
        out,
        "| probe | verdict | end to end | slowest stage | ESO sync |\n|---|---|---:|---|---|"
    );
    for p in &report.probes {
        let mark = if p.passed { "✅" } else { "❌" };
        let slow = slowest(p).map_or_else(
            || "-".to_string(),
            |s| format!("{} ({})", s.stage, secs(s.duration_seconds)),
        );
        let _ = writeln!(
            out,
            "| {} | {mark} {} | {} | {} | {} |",
            cell(&p.probe),
            cell(&verdict_text(p)),
            secs(end_to_end_seconds(p)),
            slow,
            p.sync_trigger.map_or("-", |t| t.as_str()),
        );
    }
    let total = axis(report);
    for p in &report.probes {
        let _ = writeln!(
            out,
            "\n### {} — {}\n",
            cell(&p.probe),
            cell(&verdict_text(p))
        );
        if let Some(d) = &p.detail {
            let _ = writeln!(out, "> {}\n", cell(d));
        }
        let _ = writeln!(
            out,
            "| stage | status | duration | SLO | verdict |\n|---|---|---:|---:|---|"
        );
        for s in &p.stages {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                s.stage,
                status_text(s.status),
                secs(s.duration_seconds),
                secs(s.slo_seconds),
                slo_text(s.slo),
            );
        }
        let mut bars = String::new();
        timeline(&mut bars, p, total);
        if !bars.trim().is_empty() {
            let _ = writeln!(
                out,
                "\n<details><summary>timeline</summary>\n\n```text{}```\n\n</details>",
                bars.trim_end_matches(' ')
            );
        }
        let _ = writeln!(out, "\nrun `{}`", cell(&p.run_id));
    }
    if let Some(c) = &report.comparison {
        let _ = writeln!(
            out,
            "\n### Compared with `{}`\n\n{}.\n",
            cell(&c.baseline),
            compare::rule(&c.thresholds)
        );
        let _ = writeln!(
            out,
            "| probe | stage | before | now | delta | change |\n|---|---|---:|---:|---:|---|"
        );
        for s in &c.stages {
            let change = compare::change_text(s.change);
            let change = if s.change.is_regression() {
                format!("❌ **{change}**")
            } else {
                change.to_string()
            };
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {} | {change} |",
                cell(&s.probe),
                s.stage,
                secs(s.before_seconds),
                secs(s.after_seconds),
                compare::delta(s.before_seconds, s.after_seconds),
            );
        }
        for n in &c.notes {
            let _ = writeln!(out, "\n> note: {}", cell(n));
        }
    }
    out
}
