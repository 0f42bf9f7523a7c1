//! The report as JUnit XML for CI test-report views: one `<testcase>` per
//! probe; a failed run is a `<failure>` whose type is the bounded reason and
//! whose message names the stage, a broken SLO or a regression too; an
//! aborted run is an `<error>`. Stage timings go to `<system-out>`.

use std::fmt::Write as _;

use super::{
    compare, end_to_end_seconds, secs, slo_text, status_text, ProbeReport, Report, Verdict,
};
use crate::vocab::RunResult;

/// Escape text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// What makes a probe's test case fail, if anything: (element, type, message, body).
fn problem(p: &ProbeReport, report: &Report) -> Option<(&'static str, String, String, String)> {
    let detail = p.detail.clone().unwrap_or_default();
    if let Some(f) = p.failure {
        let element = if p.result == RunResult::Aborted {
            "error"
        } else {
            "failure"
        };
        let message = format!("{}: {}", f.stage, f.reason);
        return Some((element, f.reason.as_str().to_string(), message, detail));
    }
    if p.result != RunResult::Success {
        return Some((
            "error",
            p.result.as_str().into(),
            p.result.as_str().into(),
            detail,
        ));
    }
    let breached: Vec<String> = p
        .stages
        .iter()
        .filter(|s| s.slo == Verdict::Breached)
        .map(|s| {
            format!(
                "{} took {} (SLO {})",
                s.stage,
                secs(s.duration_seconds),
                secs(s.slo_seconds)
            )
        })
        .collect();
    if !breached.is_empty() {
        let message = format!("SLO breached: {}", breached.join(", "));
        return Some(("failure", "slo_breached".into(), message, String::new()));
    }
    let c = report.comparison.as_ref()?;
    let regressed: Vec<String> = c
        .stages
        .iter()
        .filter(|s| s.probe == p.probe && s.change.is_regression())
        .map(|s| {
            format!(
                "{} {} {} -> {} ({})",
                s.stage,
                compare::change_text(s.change),
                secs(s.before_seconds),
                secs(s.after_seconds),
                compare::delta(s.before_seconds, s.after_seconds)
            )
        })
        .collect();
    if regressed.is_empty() {
        return None;
    }
    let message = format!(
        "regression against {}: {}",
        c.baseline,
        regressed.join(", ")
    );
    Some((
        "failure",
        "regression".into(),
        message,
        compare::rule(&c.thresholds),
    ))
}

/// Render `report` as a JUnit XML document.
pub fn render(report: &Report) -> String {
    let cases: Vec<_> = report
        .probes
        .iter()
        .map(|p| (p, problem(p, report)))
        .collect();
    let failures = cases
        .iter()
        .filter(|(_, x)| matches!(x, Some(("failure", ..))))
        .count();
    let errors = cases
        .iter()
        .filter(|(_, x)| matches!(x, Some(("error", ..))))
        .count();
    let time = |p: &ProbeReport| end_to_end_seconds(p).unwrap_or(0.0);
    let total: f64 = report.probes.iter().map(time).sum();
    let timestamp = report
        .probes
        .first()
        .map(|p| p.started_at.clone())
        .unwrap_or_default();

    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"secret-canary\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{total:.3}\">",
        cases.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"secret-canary once\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\" time=\"{total:.3}\" timestamp=\"{}\">",
        cases.len(),
        esc(&timestamp)
    );
    for (p, problem) in &cases {
        let _ = writeln!(
            out,
            "    <testcase classname=\"secret-canary.probe\" name=\"{}\" time=\"{:.3}\">",
            esc(&p.probe),
            time(p)
        );
        if let Some((element, kind, message, body)) = problem {
            let _ = writeln!(
                out,
                "      <{element} type=\"{}\" message=\"{}\">{}</{element}>",
                esc(kind),
                esc(message),
                esc(body)
            );
        }
        let mut stages = format!("run {}", p.run_id);
        if let Some(t) = p.sync_trigger {
            let _ = write!(stages, ", ESO sync {}", t.as_str());
        }
        stages.push('\n');
        for s in &p.stages {
            let _ = writeln!(
                stages,
                "{:<18} {:<12} {:>12}  SLO {}",
                s.stage.as_str(),
                status_text(s.status),
                secs(s.duration_seconds),
                slo_text(s.slo)
            );
        }
        let _ = writeln!(out, "      <system-out>{}</system-out>", esc(&stages));
        let _ = writeln!(out, "    </testcase>");
    }
    let _ = writeln!(out, "  </testsuite>\n</testsuites>");
    out
}
