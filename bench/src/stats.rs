//! Small statistics helpers: nearest-rank percentiles of samples, and
//! quantiles of a Prometheus histogram read from the exposition text
//! (interpolated within a bucket, as `histogram_quantile` does).

/// Summary of a sample set (all in the samples' unit).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Nearest-rank percentile of sorted samples, `p` in [0, 1].
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99, max and mean of `samples`.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return Summary {
            n: 0,
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
            mean: f64::NAN,
        };
    }
    Summary {
        n: s.len(),
        p50: percentile(&s, 0.50),
        p99: percentile(&s, 0.99),
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    }
}

/// A histogram summed over every series of one family: cumulative counts
/// per upper bound (`+Inf` last).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// (upper bound, cumulative count), ascending.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Sum the `NAME_bucket` series of every label set in an exposition.
    pub fn from_exposition(text: &str, name: &str) -> Histogram {
        let prefix = format!("{name}_bucket{{");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some(le_at) = rest.find("le=\"") else {
                continue;
            };
            let le_text = &rest[le_at + 4..];
            let Some(end) = le_text.find('"') else {
                continue;
            };
            let le = match &le_text[..end] {
                "+Inf" => f64::INFINITY,
                v => match v.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            // The value follows the closing brace; an exemplar may follow it.
            let Some(close) = rest.find('}') else {
                continue;
            };
            let value = rest[close + 1..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            match by_le.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += value,
                None => by_le.push((le, value)),
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets: by_le }
    }

    /// Total observations.
    pub fn count(&self) -> f64 {
        self.buckets.last().map(|b| b.1).unwrap_or(0.0)
    }

    /// The difference `self - earlier` (observations in between).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map(|b| b.1)
                        .unwrap_or(0.0);
                    (*le, c - before)
                })
                .collect(),
        }
    }

    /// The `q` quantile, linearly interpolated inside its bucket (the
    /// lowest bucket from 0); the last finite bound if it falls in `+Inf`.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return prev.0;
                }
                let in_bucket = c - prev.1;
                if in_bucket <= 0.0 {
                    return le;
                }
                return prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket;
            }
            prev = (le, c);
        }
        prev.0
    }
}

/// Sum of every sample of a counter or gauge family whose labels contain
/// `label_filter` (e.g. `result="skipped"`; empty: all).
pub fn sum_family(text: &str, name: &str, label_filter: &str) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(close) => (&r[..close], &r[close + 1..]),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if !label_filter.is_empty() && !labels.contains(label_filter) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            total += v;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.n, s.p50, s.max), (5, 3.0, 5.0));
        let many: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(summarize(&many).p99, 198.0);
    }

    #[test]
    fn histogram_quantiles_interpolate_and_sum_series() {
        let text = "\
x_bucket{probe=\"a\",le=\"0.001\"} 50\n\
x_bucket{probe=\"a\",le=\"0.01\"} 100\n\
x_bucket{probe=\"a\",le=\"+Inf\"} 100\n\
x_bucket{probe=\"b\",le=\"0.001\"} 50 # {run_id=\"r\"} 0.0005 1.0\n\
x_bucket{probe=\"b\",le=\"0.01\"} 100\n\
x_bucket{probe=\"b\",le=\"+Inf\"} 100\n\
x_count{probe=\"b\"} 100\n";
        let h = Histogram::from_exposition(text, "x");
        assert_eq!(h.count(), 200.0);
        assert!((h.quantile(0.5) - 0.001).abs() < 1e-9);
        assert!((h.quantile(0.75) - 0.0055).abs() < 1e-9);
        assert_eq!(
            sum_family("r_total{probe=\"a\",result=\"skipped\"} 3\nr_total{probe=\"a\",result=\"success\"} 4\n", "r_total", "result=\"skipped\""),
            3.0
        );
    }
}
