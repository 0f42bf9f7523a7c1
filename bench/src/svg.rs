//! The pictures next to `bench/results.md`, as hand-written SVG (no plotting
//! dependency): the accuracy phase's error distributions per stage, prober
//! against the kubectl-polling baseline (`accuracy.svg`), and memory and
//! `/metrics` scrape time against the number of probes (`footprint.svg`).

use std::fmt::Write as _;

use crate::accuracy::AccuracyResult;
use crate::cost::Measurement;
use crate::real::RealResult;
use crate::stats::percentile;

const PROBER: &str = "#1f77b4";
const BASELINE: &str = "#ff7f0e";
const REAL: &str = "#2ca02c";
const FONT: &str = "font-family=\"sans-serif\"";

/// Escape text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A log10 axis from `lo` to `hi` onto `x0..x1`.
struct LogAxis {
    lo: f64,
    hi: f64,
    x0: f64,
    x1: f64,
}

impl LogAxis {
    fn at(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        self.x0
            + (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
                * (self.x1 - self.x0)
    }

    /// Decades from `lo` to `hi`.
    fn ticks(&self) -> Vec<f64> {
        let mut t = Vec::new();
        let mut v = 10f64.powf(self.lo.log10().ceil());
        while v <= self.hi * 1.0001 {
            t.push(v);
            v *= 10.0;
        }
        t
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else {
        format!("{v} ms")
    }
}

/// A deterministic spread in [-1, 1] for the i-th dot (no RNG: the picture
/// is the same for the same data).
fn spread(i: usize) -> f64 {
    let x = (i as f64 * 0.618_033_988_75).fract();
    x * 2.0 - 1.0
}

/// Every stage's |measured − true| error, one row per stage: each run a
/// dot (prober on the simulated lab blue, on the real cluster green,
/// baseline orange) on a log axis, with p50 and p99 ticks. Either tier may
/// be absent.
pub fn accuracy(res: Option<&AccuracyResult>, real: Option<&RealResult>) -> String {
    type Series<'a> = (String, &'static str, Vec<(&'a str, &'a [f64])>);
    let mut series: Vec<Series> = Vec::new();
    if let Some(a) = res {
        series.push((
            format!("secret-canary, simulated lab ({} runs)", a.prober_runs),
            PROBER,
            a.samples
                .iter()
                .map(|r| (r.stage.as_str(), r.prober_ms.as_slice()))
                .collect(),
        ));
    }
    if let Some(r) = real {
        series.push((
            format!("secret-canary, real cluster ({} runs)", r.runs),
            REAL,
            r.samples
                .iter()
                .map(|x| (x.stage.as_str(), x.prober_ms.as_slice()))
                .collect(),
        ));
    }
    if let Some(a) = res.filter(|a| a.baseline_runs > 0) {
        series.push((
            format!(
                "kubectl-polling baseline, simulated lab ({} runs)",
                a.baseline_runs
            ),
            BASELINE,
            a.samples
                .iter()
                .map(|r| (r.stage.as_str(), r.baseline_ms.as_slice()))
                .collect(),
        ));
    }
    let stages: Vec<&str> = crate::accuracy::STAGES
        .into_iter()
        .filter(|st| {
            series
                .iter()
                .any(|(_, _, v)| v.iter().any(|(x, _)| x == st))
        })
        .collect();
    let (left, right, top, row_h) = (130.0, 890.0, 50.0, 24.0 * series.len().max(2) as f64);
    let height = top + row_h * stages.len() as f64 + 60.0;
    let axis = LogAxis {
        lo: 0.01,
        hi: 3000.0,
        x0: left,
        x1: right,
    };
    let legend: Vec<String> = series
        .iter()
        .map(|(label, color, _)| format!("<tspan fill=\"{color}\">● {}</tspan>", esc(label)))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"920\" height=\"{height}\" viewBox=\"0 0 920 {height}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"460\" y=\"22\" text-anchor=\"middle\" {FONT} font-size=\"15\">Stage timing error, |measured − true| (log scale)</text>\n\
         <text x=\"20\" y=\"40\" {FONT} font-size=\"11\">{}   │ p50   ┃ p99</text>\n",
        legend.join("   ")
    );
    let bottom = top + row_h * stages.len() as f64;
    for t in axis.ticks() {
        let x = axis.at(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT} font-size=\"12\">{}</text>",
            bottom + 16.0,
            fmt_ms(t)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT} font-size=\"12\">error (ms)</text>",
        (left + right) / 2.0,
        bottom + 34.0
    );
    let n = series.len().max(1) as f64;
    for (r, stage) in stages.iter().enumerate() {
        let y0 = top + row_h * r as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y0}\" x2=\"{right}\" y2=\"{y0}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT} font-size=\"12\">{}</text>",
            left - 8.0,
            y0 + row_h / 2.0 + 4.0,
            esc(stage)
        );
        for (k, (_, color, rows)) in series.iter().enumerate() {
            let samples = rows
                .iter()
                .find(|(x, _)| x == stage)
                .map(|(_, v)| *v)
                .unwrap_or(&[]);
            let band = row_h / n;
            let yc = y0 + band * (k as f64 + 0.5);
            for (i, v) in samples.iter().enumerate() {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{color}\" fill-opacity=\"0.45\"/>",
                    axis.at(*v),
                    yc + spread(i) * band * 0.3
                );
            }
            s.push('\n');
            if samples.is_empty() {
                continue;
            }
            let mut sorted = samples.to_vec();
            sorted.sort_by(f64::total_cmp);
            for (q, w) in [(50.0, 1.5), (99.0, 3.5)] {
                let x = axis.at(percentile(&sorted, q));
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"{w}\"/>",
                    yc - band * 0.4,
                    yc + band * 0.4
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A labelled, coloured line of (probes, value) points.
type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One panel of [`footprint`]: lines of (probes, value) on log-log axes.
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    series: Vec<Line<'a>>,
    /// Target lines: (label, value).
    targets: Vec<(&'a str, f64)>,
}

fn panel(s: &mut String, p: &Panel, x0: f64, y0: f64, w: f64, h: f64) {
    let points: Vec<(f64, f64)> = p.series.iter().flat_map(|(_, _, v)| v.clone()).collect();
    let values = points
        .iter()
        .map(|(_, v)| *v)
        .chain(p.targets.iter().map(|(_, v)| *v))
        .filter(|v| *v > 0.0);
    let (mut lo, mut hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        (lo, hi) = (1.0, 10.0);
    }
    let ylo = 10f64.powf((lo * 0.8).log10().floor());
    let yhi = 10f64.powf((hi * 1.2).log10().ceil());
    let xaxis = LogAxis {
        lo: 1.0,
        hi: 1000.0,
        x0: x0 + 50.0,
        x1: x0 + w - 10.0,
    };
    let yaxis = LogAxis {
        lo: ylo,
        hi: yhi,
        x0: y0 + h - 30.0,
        x1: y0 + 25.0,
    };
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT} font-size=\"13\">{}</text>",
        x0 + w / 2.0,
        y0 + 14.0,
        esc(p.title)
    );
    for t in xaxis.ticks() {
        let x = xaxis.at(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT} font-size=\"12\">{t}</text>",
            yaxis.x1,
            yaxis.x0,
            yaxis.x0 + 15.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" {FONT} font-size=\"12\">probes</text>",
        x0 + w / 2.0,
        y0 + h
    );
    for t in yaxis.ticks() {
        let y = yaxis.at(t);
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT} font-size=\"12\">{t} {}</text>",
            xaxis.x0,
            xaxis.x1,
            xaxis.x0 - 4.0,
            y + 4.0,
            p.unit
        );
    }
    for (label, v) in &p.targets {
        let y = yaxis.at(*v);
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" {FONT} font-size=\"12\" fill=\"#c00\">{}</text>",
            xaxis.x0,
            xaxis.x1,
            xaxis.x1 - 2.0,
            y - 4.0,
            esc(label)
        );
    }
    for (i, (label, color, pts)) in p.series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", xaxis.at(*x), yaxis.at(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for (x, y) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"><title>{x} probes: {y:.2} {}</title></circle>",
                xaxis.at(*x),
                yaxis.at(*y),
                p.unit
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"12\" fill=\"{color}\">● {}</text>",
            xaxis.x0 + 8.0,
            y0 + 40.0 + 15.0 * i as f64,
            esc(label)
        );
    }
}

/// Resident memory and `/metrics` scrape time against the number of
/// probes (cost runs and the scale run).
pub fn footprint(cost: &[Measurement], scale: Option<&Measurement>) -> String {
    let all: Vec<&Measurement> = cost.iter().chain(scale).collect();
    let mib = |b: u64| b as f64 / 1048576.0;
    let memory = Panel {
        title: "Resident memory of secret-canary run",
        unit: "MiB",
        series: vec![
            (
                "RSS at the end",
                PROBER,
                all.iter()
                    .map(|m| (m.probes as f64, mib(m.at_end.rss)))
                    .collect(),
            ),
            (
                "RSS when ready",
                "#2ca02c",
                all.iter()
                    .map(|m| (m.probes as f64, mib(m.at_ready.rss)))
                    .collect(),
            ),
        ],
        targets: vec![("20 MiB at 10 probes", 20.0)],
    };
    let scrape = Panel {
        title: "/metrics scrape time",
        unit: "ms",
        series: vec![
            (
                "p99",
                BASELINE,
                all.iter()
                    .map(|m| (m.probes as f64, m.scrape_ms.p99.max(0.001)))
                    .collect(),
            ),
            (
                "p50",
                PROBER,
                all.iter()
                    .map(|m| (m.probes as f64, m.scrape_ms.p50.max(0.001)))
                    .collect(),
            ),
        ],
        targets: vec![("5 ms at 100", 5.0), ("50 ms at 1,000", 50.0)],
    };
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"920\" height=\"340\" viewBox=\"0 0 920 340\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
    );
    panel(&mut s, &memory, 10.0, 10.0, 440.0, 320.0);
    panel(&mut s, &scrape, 470.0, 10.0, 440.0, 320.0);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accuracy::StageSamples;

    #[test]
    fn pictures_are_well_formed_svg() {
        let res = AccuracyResult {
            prober_runs: 3,
            baseline_runs: 2,
            samples: vec![StageSamples {
                stage: "eso_sync".into(),
                prober_ms: vec![0.2, 0.4, 3.0],
                baseline_ms: vec![500.0, 900.0],
            }],
            ..Default::default()
        };
        let a = accuracy(Some(&res), None);
        assert!(a.starts_with("<svg") && a.ends_with("</svg>\n"));
        assert_eq!(a.matches("<circle").count(), 5);
        let real = RealResult {
            runs: 2,
            samples: vec![StageSamples {
                stage: "rollout".into(),
                prober_ms: vec![1.0, 2.0],
                baseline_ms: vec![],
            }],
            ..Default::default()
        };
        let both = accuracy(Some(&res), Some(&real));
        assert_eq!(both.matches("<circle").count(), 7);
        assert!(both.contains("real cluster (2 runs)") && both.contains(">rollout<"));
        let alone = accuracy(None, Some(&real));
        assert_eq!(alone.matches("<circle").count(), 2);
        let f = footprint(&[], None);
        assert!(f.ends_with("</svg>\n"));
        for svg in [&a, &f, &both, &alone] {
            // No element carries an attribute twice (a well-formedness error).
            for element in svg.split('<').skip(1) {
                let tag = element.split('>').next().unwrap_or_default();
                let mut names: Vec<&str> = tag
                    .split_whitespace()
                    .filter_map(|a| a.split_once('=').map(|(n, _)| n))
                    .collect();
                let n = names.len();
                names.sort_unstable();
                names.dedup();
                assert_eq!(names.len(), n, "duplicate attribute in <{tag}>");
            }
        }
    }
}
